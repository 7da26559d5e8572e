//! The prefetching pipeline: order, determinism across workers and ranks, data integrity,
//! failures, shutdown and backpressure.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arrow::datatypes::SchemaRef;
use burn::tensor::{BoolStore, DType, TensorData};
use mlinfra_data::RowRefs;
use mlinfra_loader::collate::{self, ArrowRows};
use mlinfra_loader::{
    Batch, Error, Loader, LoaderState, Remainder, Shuffle, Source, TensorBatch, Tensors,
};

use crate::fixtures::{self, EMB_DIM, Fixture};

fn fixture(rows: u64) -> (tempfile::TempDir, Fixture) {
    let dir = tempfile::tempdir().unwrap();
    let fixture = Fixture::write(dir.path(), rows);
    (dir, fixture)
}

fn collect(loader: &mut Loader) -> Vec<Batch<TensorBatch>> {
    loader.by_ref().map(|batch| batch.unwrap()).collect()
}

fn ids(batches: &[Batch<TensorBatch>]) -> Vec<u64> {
    batches.iter().flat_map(|b| b.ids.iter().copied()).collect()
}

/// Every column of `batch` holds exactly the values of the ids it claims, checked against the
/// generating functions.
fn check_contents(batch: &Batch<TensorBatch>) {
    let n = batch.ids.len();
    let data = &batch.data;
    let id = data.get("id").unwrap();
    assert_eq!((id.dtype(), id.shape().as_slice()), (DType::I64, &[n][..]));
    let want: Vec<i64> = batch.ids.iter().map(|&i| i as i64).collect();
    assert_eq!(id.as_slice::<i64>().unwrap(), want);

    let emb = data.get("emb").unwrap();
    assert_eq!(emb.shape().as_slice(), &[n, EMB_DIM]);
    let want: Vec<f32> = batch
        .ids
        .iter()
        .flat_map(|&i| (0..EMB_DIM).map(move |k| fixtures::emb(i, k)))
        .collect();
    assert_eq!(emb.as_slice::<f32>().unwrap(), want);

    let label = data.get("label").unwrap();
    let want: Vec<i32> = batch.ids.iter().map(|&i| fixtures::label(i)).collect();
    assert_eq!(label.as_slice::<i32>().unwrap(), want);

    let flag = data.get("flag").unwrap();
    assert_eq!(flag.dtype(), DType::Bool(BoolStore::Native));
    let want: Vec<u8> = batch
        .ids
        .iter()
        .map(|&i| fixtures::flag(i).into())
        .collect();
    assert_eq!(flag.as_bytes(), want);
}

fn no_tokens() -> Tensors {
    Tensors::new().columns(["id", "emb", "label", "flag"])
}

#[test]
fn an_epoch_delivers_the_plan_in_order_with_the_right_contents() {
    let (_dir, fixture) = fixture(1000);
    for shuffle in [
        Shuffle::None,
        Shuffle::Exact,
        Shuffle::Block {
            block: 64,
            window: 4,
        },
    ] {
        let mut loader = Loader::builder(fixture.cache(), 37)
            .collate(no_tokens())
            .shuffle(shuffle)
            .seed(11)
            .workers(3)
            .build()
            .unwrap();
        let batches = collect(&mut loader);
        assert_eq!(batches.len(), 1000usize.div_ceil(37), "{shuffle:?}");
        let plan = loader.state().plan().unwrap();
        let want: Vec<u64> = (0..1000).map(|p| plan.sample_at(p).unwrap()).collect();
        assert_eq!(ids(&batches), want, "{shuffle:?}");
        for (i, batch) in batches.iter().enumerate() {
            assert_eq!(batch.index, i as u64);
            check_contents(batch);
        }
        assert_eq!(loader.state().consumed(), 1000);
        assert!(loader.next().is_none(), "the epoch is over");
    }
}

#[test]
fn the_worker_count_changes_nothing_delivered() {
    let (_dir, fixture) = fixture(500);
    let cache = Arc::new(fixture.cache());
    let run = |workers: usize, prefetch: usize| {
        let mut loader = Loader::builder(cache.clone(), 16)
            .collate(no_tokens())
            .shuffle(Shuffle::Exact)
            .seed(3)
            .epoch(2)
            .workers(workers)
            .prefetch(prefetch)
            .build()
            .unwrap();
        let batches = collect(&mut loader);
        let emb: Vec<Vec<f32>> = batches
            .iter()
            .map(|b| b.data.get("emb").unwrap().try_to_vec::<f32>().unwrap())
            .collect();
        (ids(&batches), emb)
    };
    let one = run(1, 1);
    for (workers, prefetch) in [(2, 4), (4, 16), (7, 3)] {
        assert_eq!(run(workers, prefetch), one, "{workers} workers");
    }
}

#[test]
fn ranks_get_equal_batches_that_together_are_the_epoch() {
    let (_dir, fixture) = fixture(1000);
    let cache = Arc::new(fixture.cache());
    for (world, remainder) in [
        (3, Remainder::Drop),
        (3, Remainder::Pad),
        (8, Remainder::Pad),
    ] {
        let mut per_rank = Vec::new();
        for rank in 0..world {
            let mut loader = Loader::builder(cache.clone(), 10)
                .collate(no_tokens())
                .shuffle(Shuffle::Exact)
                .rank(rank, world)
                .remainder(remainder)
                .workers(2)
                .build()
                .unwrap();
            let batches = collect(&mut loader);
            per_rank.push((batches.len(), ids(&batches)));
        }
        let (steps, _) = per_rank[0];
        assert!(
            per_rank.iter().all(|(n, _)| *n == steps),
            "{world} ranks: unequal batch counts {:?}",
            per_rank.iter().map(|(n, _)| n).collect::<Vec<_>>()
        );
        let mut seen: Vec<u64> = per_rank.iter().flat_map(|(_, ids)| ids.clone()).collect();
        seen.sort_unstable();
        seen.dedup();
        let expect_all = remainder == Remainder::Pad || 1000 % world == 0;
        assert_eq!(
            seen.len() as u64,
            if expect_all {
                1000
            } else {
                1000 - 1000 % world
            },
            "{world} ranks, {remainder:?}"
        );
    }
}

#[test]
fn resuming_mid_epoch_continues_exactly_also_on_another_world_size() {
    let (_dir, fixture) = fixture(600);
    let cache = Arc::new(fixture.cache());
    let builder = |world: u64, rank: u64| {
        Loader::builder(cache.clone(), 8)
            .collate(no_tokens())
            .shuffle(Shuffle::Exact)
            .seed(99)
            .rank(rank, world)
            .remainder(Remainder::Drop)
    };
    // Uninterrupted, on 2 ranks: the global order, position by position.
    let mut uninterrupted = vec![None; 600];
    for rank in 0..2 {
        let mut loader = builder(2, rank).build().unwrap();
        for (i, id) in ids(&collect(&mut loader)).into_iter().enumerate() {
            uninterrupted[(rank + 2 * i as u64) as usize] = Some(id);
        }
    }
    // 5 batches on 2 ranks, saved, resumed on 3 ranks with other batch sizes and workers.
    let mut read = vec![None; 600];
    let mut saved = None;
    for rank in 0..2 {
        let mut loader = builder(2, rank).build().unwrap();
        for (i, id) in loader
            .by_ref()
            .take(5)
            .flat_map(|b| b.unwrap().ids)
            .enumerate()
        {
            read[(rank + 2 * i as u64) as usize] = Some(id);
        }
        saved = Some(serde_json::to_string(loader.state()).unwrap());
    }
    let state: LoaderState = serde_json::from_str(&saved.unwrap()).unwrap();
    assert_eq!(state.consumed(), 2 * 5 * 8);
    for rank in 0..3 {
        let mut loader = builder(3, rank)
            .resume(state.clone())
            .workers(3)
            .build()
            .unwrap();
        for (i, id) in ids(&collect(&mut loader)).into_iter().enumerate() {
            let position = (state.consumed() + rank + 3 * i as u64) as usize;
            assert!(read[position].is_none(), "position {position} read twice");
            read[position] = Some(id);
        }
    }
    // 520 positions were left for 3 ranks: with `Drop`, the last one is not read.
    assert_eq!(read.iter().filter(|id| id.is_none()).count(), 520 % 3);
    for (position, id) in read.iter().enumerate() {
        if id.is_some() {
            assert_eq!(*id, uninterrupted[position], "position {position}");
        }
    }
}

/// A state saved after the last batch of a padded epoch counts past the end (the padding wraps
/// around): resuming from it delivers nothing more this epoch, then goes on.
#[test]
fn resuming_after_the_last_padded_batch_ends_the_epoch_cleanly() {
    let (_dir, fixture) = fixture(10);
    let cache = Arc::new(fixture.cache());
    let builder = |rank| {
        Loader::builder(cache.clone(), 2)
            .collate(no_tokens())
            .shuffle(Shuffle::Exact)
            .rank(rank, 4)
            .remainder(Remainder::Pad)
    };
    let mut loader = builder(0).build().unwrap();
    assert_eq!(
        collect(&mut loader).len(),
        2,
        "ceil(10 / 4) = 3 samples: 2 batches"
    );
    let state = loader.state().clone();
    assert_eq!(state.consumed(), 12, "past the 10 samples");
    let mut resumed = builder(1).resume(state).build().unwrap();
    assert_eq!(resumed.batches_in_epoch(), 0);
    assert!(resumed.next().is_none());
    resumed.next_epoch().unwrap();
    assert_eq!(collect(&mut resumed).len(), 2);
}

#[test]
fn epochs_advance_and_reshuffle() {
    let (_dir, fixture) = fixture(200);
    let mut loader = Loader::builder(fixture.cache(), 50)
        .collate(no_tokens())
        .shuffle(Shuffle::Exact)
        .build()
        .unwrap();
    let first = ids(&collect(&mut loader));
    loader.next_epoch().unwrap();
    assert_eq!((loader.epoch(), loader.state().consumed()), (1, 0));
    let second = ids(&collect(&mut loader));
    assert_ne!(first, second);
    let (mut a, mut b) = (first, second);
    a.sort_unstable();
    b.sort_unstable();
    assert_eq!(a, b);
    assert_eq!(a, (0..200).collect::<Vec<_>>());
}

#[test]
fn the_parquet_dataset_and_its_cache_deliver_the_same_batches() {
    let (_dir, fixture) = fixture(400);
    let run = |source: Box<dyn FnOnce() -> Loader>| {
        let mut loader = source();
        collect(&mut loader)
            .into_iter()
            .map(|b| {
                (
                    b.ids,
                    b.data.get("emb").unwrap().try_to_vec::<f32>().unwrap(),
                )
            })
            .collect::<Vec<_>>()
    };
    let from_cache = run(Box::new(|| {
        Loader::builder(fixture.cache(), 32)
            .collate(no_tokens())
            .shuffle(Shuffle::Exact)
            .build()
            .unwrap()
    }));
    let from_parquet = run(Box::new(|| {
        Loader::builder(fixture.dataset(), 32)
            .collate(no_tokens())
            .shuffle(Shuffle::Exact)
            .build()
            .unwrap()
    }));
    assert_eq!(from_cache, from_parquet);
}

/// Sequential batches inside one cache batch point into the memory map; shuffled ones are
/// gathered into pooled buffers that come back after the consumer drops them.
#[test]
fn contiguous_batches_are_views_of_the_mapping_and_gathered_ones_are_recycled() {
    let (_dir, fixture) = fixture(512);
    let cache = Arc::new(fixture.cache());
    let mapping = cache.files()[0].mapped_bytes().as_ptr_range();
    let mapping = mapping.start as usize..mapping.end as usize;
    let mut loader = Loader::builder(cache.clone(), 64) // cache batches are 64 rows
        .collate(no_tokens())
        .workers(2)
        .build()
        .unwrap();
    for batch in collect(&mut loader) {
        check_contents(&batch);
        for name in ["id", "emb", "label"] {
            let address = batch.data.get(name).unwrap().as_bytes().as_ptr() as usize;
            assert!(mapping.contains(&address), "{name} was copied");
        }
    }
    // Only the bools (bit-packed in Arrow) needed a buffer: one per batch.
    let buffers = loader.stats().buffers;
    assert_eq!(buffers.allocated + buffers.reused, loader.stats().batches);

    let mut loader = Loader::builder(cache, 64)
        .collate(no_tokens())
        .shuffle(Shuffle::Exact)
        .workers(2)
        .prefetch(2)
        .build()
        .unwrap();
    for _ in 0..6 {
        for batch in loader.by_ref() {
            let batch = batch.unwrap();
            check_contents(&batch);
            let address = batch.data.get("emb").unwrap().as_bytes().as_ptr() as usize;
            assert!(!mapping.contains(&address));
            assert!(address.is_multiple_of(64));
        }
        loader.next_epoch().unwrap();
    }
    // 6 epochs × 8 batches × 4 columns = 192 buffers used. At most 2 batches in flight plus
    // the one the consumer holds (and one it just dropped) are alive at once: 4 × 4 buffers.
    let buffers = loader.stats().buffers;
    assert_eq!(buffers.allocated + buffers.reused, 192);
    assert!(buffers.allocated <= 16, "{buffers:?}");
}

/// The hand-off to burn: a tensor built from a batch computes what an f64 reference does.
#[test]
fn batches_become_burn_tensors() {
    use burn::tensor::Tensor;
    let (_dir, fixture) = fixture(300);
    let device = mlinfra_loader::Device::Cpu.to_burn().unwrap();
    let mut loader = Loader::builder(fixture.cache(), 25)
        .collate(no_tokens())
        .shuffle(Shuffle::Exact)
        .build()
        .unwrap();
    assert!(!loader.staging().pinned, "nothing is pinned on the CPU");
    let mut batch = loader.next().unwrap().unwrap();
    let emb = Tensor::<2>::from_data(batch.data.remove("emb").unwrap(), &device);
    let row_sums: Vec<f32> = emb.sum_dim(1).into_data().try_to_vec::<f32>().unwrap();
    for (sum, &id) in row_sums.iter().zip(&batch.ids) {
        let want: f64 = (0..EMB_DIM).map(|k| fixtures::emb(id, k) as f64).sum();
        assert!(
            (*sum as f64 - want).abs() < 1e-4,
            "row {id}: {sum} vs {want}"
        );
    }
}

#[test]
fn token_lists_are_padded_with_a_mask() {
    let (_dir, fixture) = fixture(100);
    for (pad, side) in [
        (mlinfra_loader::Pad::new(-1), "right"),
        (
            mlinfra_loader::Pad::new(-1)
                .side(collate::PadSide::Left)
                .multiple_of(4),
            "left",
        ),
        (mlinfra_loader::Pad::new(0).max_len(3), "capped"),
    ] {
        let mut loader = Loader::builder(fixture.cache(), 9)
            .collate(Tensors::new().columns(["tokens"]).pad("tokens", pad))
            .shuffle(Shuffle::Exact)
            .build()
            .unwrap();
        for batch in loader.by_ref() {
            let batch = batch.unwrap();
            let longest = batch
                .ids
                .iter()
                .map(|&id| fixtures::tokens(id).len())
                .max()
                .unwrap();
            let len = match side {
                "right" => longest,
                "left" => longest.next_multiple_of(4),
                _ => longest.min(3),
            };
            let tokens = batch.data.get("tokens").unwrap();
            let mask = batch.data.get("tokens_mask").unwrap();
            assert_eq!(tokens.shape().as_slice(), &[batch.ids.len(), len], "{side}");
            let tokens = tokens.as_slice::<i32>().unwrap();
            let mask = mask.as_bytes();
            for (i, &id) in batch.ids.iter().enumerate() {
                let mut real = fixtures::tokens(id);
                real.truncate(len);
                let pad_value = if side == "capped" { 0 } else { -1 };
                let pads = vec![pad_value; len - real.len()];
                let (want, want_mask): (Vec<i32>, Vec<u8>) = if side == "left" {
                    (
                        [pads.clone(), real.clone()].concat(),
                        [vec![0; pads.len()], vec![1; real.len()]].concat(),
                    )
                } else {
                    (
                        [real.clone(), pads.clone()].concat(),
                        [vec![1; real.len()], vec![0; pads.len()]].concat(),
                    )
                };
                assert_eq!(&tokens[i * len..(i + 1) * len], want, "{side}, row {id}");
                assert_eq!(&mask[i * len..(i + 1) * len], want_mask, "{side}, row {id}");
            }
        }
    }
}

/// Issue 21 (unchecked size products): a `multiple_of` that rounds the padded length past
/// `usize` wrapped (or, in debug builds, panicked inside a worker); the product of rows,
/// length and width too. Now a typed collate error, and a cap still wins.
#[test]
fn a_padded_length_that_overflows_is_an_error_and_a_cap_still_applies() {
    let (_dir, fixture) = fixture(20);
    let huge = mlinfra_loader::Pad::new(0).multiple_of(usize::MAX);
    let mut loader = Loader::builder(fixture.cache(), 4)
        .collate(Tensors::new().columns(["tokens"]).pad("tokens", huge))
        .build()
        .unwrap();
    let error = loader.next().unwrap().unwrap_err();
    assert!(error.to_string().contains("overflow"), "{error}");
    let capped = huge.max_len(3);
    let mut loader = Loader::builder(fixture.cache(), 4)
        .collate(Tensors::new().columns(["tokens"]).pad("tokens", capped))
        .build()
        .unwrap();
    let batch = loader.next().unwrap().unwrap();
    let tokens = batch.data.get("tokens").unwrap();
    assert_eq!(tokens.shape().as_slice(), &[4, 3]);
}

#[test]
fn columns_that_are_not_tensors_are_named_in_the_error() {
    let (_dir, fixture) = fixture(50);
    // `tokens` is a variable-length list: without a Pad it cannot be a tensor.
    let mut loader = Loader::builder(fixture.cache(), 10).build().unwrap();
    let error = loader.next().unwrap().unwrap_err();
    let message = error.to_string();
    assert!(
        matches!(&error, Error::Batch { batch: 0, source, .. } if matches!(**source, Error::Collate { .. })),
        "{error:?}"
    );
    assert!(
        message.contains("`tokens`") && message.contains("pad"),
        "{message}"
    );
    assert!(loader.next().is_none(), "a failed epoch ends");
}

#[test]
fn a_null_in_a_tensor_column_is_an_error_naming_it() {
    let schema = Arc::new(arrow::datatypes::Schema::new(vec![
        arrow::datatypes::Field::new("x", arrow::datatypes::DataType::Float32, true),
    ]));
    let batch = arrow::array::RecordBatch::try_new(
        schema,
        vec![Arc::new(arrow::array::Float32Array::from(vec![
            Some(1.0),
            None,
            Some(3.0),
        ]))],
    )
    .unwrap();
    let source = Batches::new(batch);
    let mut loader = Loader::builder(source, 1).workers(1).build().unwrap();
    assert_eq!(loader.next().unwrap().unwrap().ids, [0]);
    let message = loader.next().unwrap().unwrap_err().to_string();
    assert!(
        message.contains("batch 1 of epoch 0") && message.contains("column `x` is null"),
        "{message}"
    );
}

/// An in-memory source over one batch that can be told to fail or stall.
struct Batches {
    batch: arrow::array::RecordBatch,
    reads: AtomicU64,
    fail_on: Option<u64>,
    delay: Duration,
}

impl Batches {
    fn new(batch: arrow::array::RecordBatch) -> Batches {
        Batches {
            batch,
            reads: AtomicU64::new(0),
            fail_on: None,
            delay: Duration::ZERO,
        }
    }

    fn counting(rows: u64) -> Batches {
        Batches::new(fixtures::batch(0..rows))
    }
}

impl Source for Batches {
    fn num_samples(&self) -> u64 {
        self.batch.num_rows() as u64
    }
    fn fingerprint(&self) -> mlinfra_loader::Result<String> {
        Ok("test:batches".into())
    }
    fn schema(&self) -> SchemaRef {
        self.batch.schema()
    }
    fn rows(&self, ids: &[u64]) -> mlinfra_loader::Result<RowRefs> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        std::thread::sleep(self.delay);
        if let Some(bad) = self.fail_on
            && ids.contains(&bad)
        {
            return Err(mlinfra_data::Error::RowOutOfRange {
                index: bad,
                rows: 0,
            }
            .into());
        }
        let indices = arrow::array::UInt64Array::from(ids.to_vec());
        let taken = arrow::compute::take_record_batch(&self.batch, &indices).unwrap();
        Ok(RowRefs::from_batch(taken))
    }
}

#[test]
fn a_source_error_arrives_at_its_batch_after_the_ones_before() {
    let mut source = Batches::counting(100);
    source.fail_on = Some(55);
    let mut loader = Loader::builder(source, 10)
        .collate(no_tokens())
        .workers(4)
        .build()
        .unwrap();
    for i in 0..5 {
        assert_eq!(loader.next().unwrap().unwrap().index, i);
    }
    match loader.next().unwrap() {
        Err(Error::Batch {
            batch: 5, source, ..
        }) => assert!(matches!(*source, Error::Data(_)), "{source:?}"),
        other => panic!("{other:?}"),
    }
    assert!(loader.next().is_none());
    assert_eq!(
        loader.state().consumed(),
        50,
        "the state stops at the last good batch"
    );
}

#[test]
fn a_panicking_collate_surfaces_as_an_error_not_a_hang() {
    let loader = Loader::builder(Batches::counting(100), 10)
        .collate(collate::from_fn(|rows: &RowRefs| {
            use arrow::array::AsArray;
            let batch = rows.interleave().unwrap();
            let ids = batch
                .column(0)
                .as_primitive::<arrow::datatypes::Int64Type>();
            assert!(!ids.values().contains(&73), "sample 73 is cursed");
            Ok::<_, std::io::Error>(rows.len())
        }))
        .workers(3)
        .build()
        .unwrap();
    let results: Vec<_> = loader.collect();
    assert_eq!(results.len(), 8, "7 good batches, then the failure");
    assert!(
        results[..7]
            .iter()
            .all(|r| matches!(r, Ok(b) if b.data == 10))
    );
    match &results[7] {
        Err(Error::Batch {
            batch: 7, source, ..
        }) => match &**source {
            Error::WorkerPanicked { message } => assert!(message.contains("cursed")),
            other => panic!("{other:?}"),
        },
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_user_collate_error_is_reported_with_its_batch() {
    let mut loader = Loader::builder(Batches::counting(30), 10)
        .collate(collate::from_fn(|_: &RowRefs| {
            Err::<(), _>(std::io::Error::other("tokenizer missing"))
        }))
        .build()
        .unwrap();
    let message = loader.next().unwrap().unwrap_err().to_string();
    assert_eq!(
        message,
        "batch 0 of epoch 0: collate function failed: tokenizer missing"
    );
}

#[test]
fn dropping_the_loader_mid_epoch_joins_every_worker() {
    let mut source = Batches::counting(1000);
    source.delay = Duration::from_millis(5);
    let source = Arc::new(source);
    let mut loader = Loader::builder(source.clone(), 10)
        .collate(ArrowRows)
        .workers(4)
        .build()
        .unwrap();
    loader.next().unwrap().unwrap();
    assert!(Arc::strong_count(&source) > 1);
    drop(loader);
    // Workers hold the source; all of them are gone once `drop` returns.
    assert_eq!(Arc::strong_count(&source), 1);
}

#[test]
fn a_slow_consumer_bounds_the_batches_in_flight() {
    let source = Arc::new(Batches::counting(1000));
    let mut loader = Loader::builder(source.clone(), 10)
        .collate(no_tokens())
        .workers(4)
        .prefetch(3)
        .build()
        .unwrap();
    for delivered in 1..=5u64 {
        loader.next().unwrap().unwrap();
        std::thread::sleep(Duration::from_millis(30)); // the "train step"
        let reads = source.reads.load(Ordering::SeqCst);
        assert!(
            reads <= delivered + 3,
            "{reads} reads after {delivered} batches"
        );
        assert!(loader.stats().in_flight <= 3);
    }
}

#[test]
fn the_byte_budget_bounds_the_batches_in_flight() {
    let source = Arc::new(Batches::counting(1000));
    // One batch of 10 rows: 10 × (8 + 16 + 4 + 1) = 290 bytes. A budget of 700 allows 2.
    let mut loader = Loader::builder(source.clone(), 10)
        .collate(no_tokens())
        .workers(4)
        .prefetch(16)
        .max_buffered_bytes(700)
        .build()
        .unwrap();
    for delivered in 1..=5u64 {
        let batch = loader.next().unwrap().unwrap();
        assert_eq!(batch.data.num_bytes(), 290);
        std::thread::sleep(Duration::from_millis(30));
        let reads = source.reads.load(Ordering::SeqCst);
        // The first tickets (one per worker) go out before any size is known.
        assert!(
            reads <= (delivered + 2).max(4),
            "{reads} reads after {delivered} batches"
        );
        assert!(loader.stats().buffered_bytes <= 4 * 290);
    }
    let stats = loader.stats();
    assert!(stats.buffered_bytes <= 2 * 290, "{stats:?}");
}

#[test]
fn stats_count_what_was_delivered() {
    let (_dir, fixture) = fixture(300);
    let mut loader = Loader::builder(fixture.dataset(), 30)
        .collate(no_tokens())
        .shuffle(Shuffle::Exact)
        .build()
        .unwrap();
    let batches = collect(&mut loader);
    let stats = loader.stats();
    assert_eq!((stats.batches, stats.samples), (10, 300));
    assert_eq!(batches.len(), 10);
    assert!(stats.first_batch.is_some());
    assert!(
        stats.source.bytes_read > 0,
        "a Parquet source counts its reads"
    );
    assert!(stats.read_time > Duration::ZERO);
    assert!(stats.samples_per_s() > 0.0);
    assert_eq!((stats.in_flight, stats.queue_depth), (0, 0));
}

#[test]
fn impossible_configurations_are_typed_errors() {
    let (_dir, fixture) = fixture(50);
    let cache = Arc::new(fixture.cache());
    let error = Loader::builder(cache.clone(), 0).build().unwrap_err();
    assert!(matches!(error, Error::InvalidPlan { .. }), "{error:?}");
    let error = Loader::builder(cache.clone(), 8)
        .rank(3, 3)
        .build()
        .unwrap_err();
    assert!(matches!(error, Error::InvalidPlan { .. }), "{error:?}");
    let other = LoaderState::new("blake3:other", 50, 0, Shuffle::Exact, Remainder::Drop);
    let error = Loader::builder(cache, 8).resume(other).build().unwrap_err();
    assert!(matches!(error, Error::StateMismatch { .. }), "{error:?}");
}

/// Tensor data built by hand compares equal to the loader's: the check functions above are
/// not vacuous.
#[test]
fn check_contents_catches_a_wrong_row() {
    let (_dir, fixture) = fixture(50);
    let mut loader = Loader::builder(fixture.cache(), 5)
        .collate(no_tokens())
        .build()
        .unwrap();
    let mut batch = loader.next().unwrap().unwrap();
    batch.ids[2] = 40;
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check_contents(&batch)));
    assert!(caught.is_err());
    let _ = TensorData::new(vec![0f32], [1]);
}

/// Issue 22, item 5: packing. Every sample of a batch lies, whole (or cut to `seq_len`), in
/// exactly one row, in one segment; positions restart at 0 per segment; padding is segment 0;
/// and the loader's token counts say how full the rows are.
#[test]
fn token_lists_are_packed_into_full_rows_with_per_sequence_positions() {
    let (_dir, fixture) = fixture(100);
    for seq_len in [8usize, 5] {
        let mut loader = Loader::builder(fixture.cache(), 12)
            .collate(
                Tensors::new()
                    .columns(["tokens"])
                    .pack("tokens", mlinfra_loader::Pack::new(seq_len, -1)),
            )
            .shuffle(Shuffle::Exact)
            .build()
            .unwrap();
        let (mut real, mut slots) = (0u64, 0u64);
        for batch in loader.by_ref() {
            let batch = batch.unwrap();
            let tokens = batch.data.get("tokens").unwrap();
            let [rows, len] = tokens.shape().as_slice().try_into().unwrap();
            assert_eq!(len, seq_len);
            let tokens = tokens.as_slice::<i64>().unwrap();
            let positions = batch.data.get("tokens_positions").unwrap();
            let positions = positions.as_slice::<i64>().unwrap();
            let segments = batch.data.get("tokens_segments").unwrap();
            let segments = segments.as_slice::<i32>().unwrap();
            let mask = batch.data.get("tokens_loss_mask").unwrap().as_bytes();
            // The sequences the rows hold, read back through the segment ids.
            let mut found: Vec<Vec<i64>> = Vec::new();
            for row in 0..rows {
                let cells = row * len..(row + 1) * len;
                let mut last = 0;
                for cell in cells {
                    let segment = segments[cell];
                    if segment == 0 {
                        assert_eq!((tokens[cell], positions[cell], mask[cell]), (-1, 0, 0));
                        last = i32::MAX; // padding only at the end of a row
                        continue;
                    }
                    assert!(last != i32::MAX, "a token after padding in row {row}");
                    if segment != last {
                        assert_eq!(segment, last + 1, "segments count up in row {row}");
                        found.push(Vec::new());
                        last = segment;
                    }
                    let sequence = found.last_mut().unwrap();
                    assert_eq!(positions[cell], sequence.len() as i64, "positions restart");
                    assert_eq!(mask[cell], 1, "every real token is trained without a mask");
                    sequence.push(tokens[cell]);
                }
            }
            let mut want: Vec<Vec<i64>> = batch
                .ids
                .iter()
                .map(|&id| {
                    let mut t: Vec<i64> = fixtures::tokens(id).into_iter().map(i64::from).collect();
                    t.truncate(seq_len);
                    t
                })
                .collect();
            found.sort();
            want.sort();
            assert_eq!(found, want, "seq_len {seq_len}");
            let batch_real: usize = want.iter().map(Vec::len).sum();
            // Best-fit decreasing never needs more than twice the lower bound of rows.
            assert!(rows <= 2 * batch_real.div_ceil(seq_len), "{rows} rows");
            assert_eq!(
                batch.data.token_count(),
                mlinfra_loader::TokenCount {
                    real: batch_real as u64,
                    slots: (rows * len) as u64
                }
            );
            real += batch_real as u64;
            slots += (rows * len) as u64;
        }
        let stats = loader.stats();
        assert_eq!((stats.tokens, stats.token_slots), (real, slots));
        let efficiency = stats.packing_efficiency().unwrap();
        assert!(
            efficiency > 0.75,
            "seq_len {seq_len}: efficiency {efficiency}"
        );
        mlinfra_test_utils::log_line(&format!(
            "packing into rows of {seq_len}: efficiency {efficiency:.3}"
        ));
    }
    // Other per-sample columns cannot ride along in packed rows.
    let mut loader = Loader::builder(fixture.cache(), 4)
        .collate(
            Tensors::new()
                .columns(["tokens", "label"])
                .pack("tokens", mlinfra_loader::Pack::new(8, 0)),
        )
        .build()
        .unwrap();
    let error = loader.next().unwrap().unwrap_err().to_string();
    assert!(
        error.contains("`label` cannot be collated with packed `tokens`"),
        "{error}"
    );
}
