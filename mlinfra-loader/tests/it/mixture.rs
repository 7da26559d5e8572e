//! Weighted mixing: exact per-epoch counts, coverage across epochs, determinism, the rows
//! delivered are the rows located, and bad mixtures are typed errors.

use std::collections::HashMap;
use std::sync::Arc;

use mlinfra_loader::{Error, Loader, Mixture, Shuffle, Source, Tensors};

use crate::fixtures::Fixture;

/// Three parts of 100, 300 and 50 rows (each `id` column counts from 0).
fn parts(dir: &std::path::Path) -> Vec<Arc<dyn Source>> {
    [100, 300, 50]
        .into_iter()
        .enumerate()
        .map(|(i, rows)| {
            let part = dir.join(format!("part{i}"));
            std::fs::create_dir_all(&part).unwrap();
            Arc::new(Fixture::write(&part, rows).cache()) as Arc<dyn Source>
        })
        .collect()
}

/// Every (part, row) delivered in epochs `epochs`, checking each batch's `id` column against
/// the row the mixture says each sample is.
fn deliveries(
    mixture: &Arc<Mixture>,
    shuffle: Shuffle,
    workers: usize,
    epochs: u64,
) -> Vec<(usize, u64)> {
    let mut loader = Loader::builder(mixture.clone(), 64)
        .collate(Tensors::new().columns(["id"]))
        .shuffle(shuffle)
        .seed(5)
        .workers(workers)
        .build()
        .unwrap();
    let mut delivered = Vec::new();
    for epoch in 0..epochs {
        for batch in loader.by_ref() {
            let batch = batch.unwrap();
            let column: Vec<i64> = batch.data.get("id").unwrap().try_to_vec().unwrap();
            for (&id, &value) in batch.ids.iter().zip(&column) {
                let (part, row) = mixture.locate(epoch, id).unwrap();
                assert_eq!(value as u64, row, "sample {id} of epoch {epoch}");
                delivered.push((part, row));
            }
        }
        loader.next_epoch().unwrap();
    }
    delivered
}

fn tally(delivered: &[(usize, u64)]) -> HashMap<(usize, u64), u64> {
    let mut counts = HashMap::new();
    for &key in delivered {
        *counts.entry(key).or_insert(0) += 1;
    }
    counts
}

#[test]
fn each_epoch_draws_exact_counts_and_every_pass_covers_its_part() {
    let dir = tempfile::tempdir().unwrap();
    let [a, b, c]: [Arc<dyn Source>; 3] = parts(dir.path()).try_into().ok().unwrap();
    // 1000 an epoch: 500 from a (5 passes of 100), 300 from b (1 pass), 200 from c (4 passes).
    let mixture = Arc::new(Mixture::new(vec![(a, 5.0), (b, 3.0), (c, 2.0)], 1000, 9).unwrap());
    assert_eq!(mixture.counts(), [500, 300, 200]);
    let delivered = deliveries(&mixture, Shuffle::None, 2, 1);
    assert_eq!(delivered.len(), 1000);
    let counts = tally(&delivered);
    for (part, rows, times) in [(0, 100, 5), (1, 300, 1), (2, 50, 4)] {
        for row in 0..rows {
            assert_eq!(
                counts.get(&(part, row)),
                Some(&times),
                "part {part} row {row}"
            );
        }
    }
    // Interleaved, not concatenated: the first 100 samples already hold every part.
    let head: std::collections::HashSet<usize> = delivered[..100].iter().map(|d| d.0).collect();
    assert_eq!(head.len(), 3);
}

#[test]
fn a_down_weighted_part_delivers_every_row_before_repeating_across_epochs() {
    let dir = tempfile::tempdir().unwrap();
    let [a, b, _]: [Arc<dyn Source>; 3] = parts(dir.path()).try_into().ok().unwrap();
    // 200 an epoch: 100 from b's 300 rows, so three epochs make one pass over b.
    let mixture = Arc::new(Mixture::new(vec![(a, 1.0), (b, 1.0)], 200, 1).unwrap());
    let delivered = deliveries(&mixture, Shuffle::Exact, 3, 3);
    let from_b: Vec<u64> = delivered.iter().filter(|d| d.0 == 1).map(|d| d.1).collect();
    assert_eq!(from_b.len(), 300);
    let mut sorted = from_b.clone();
    sorted.sort_unstable();
    assert_eq!(
        sorted,
        (0..300).collect::<Vec<_>>(),
        "one pass over b in 3 epochs"
    );
}

/// A part of weight 0 is never asked for rows, and the others fill the epoch.
#[test]
fn a_zero_weight_part_contributes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let [a, b, _]: [Arc<dyn Source>; 3] = parts(dir.path()).try_into().ok().unwrap();
    let mixture = Arc::new(Mixture::new(vec![(a, 1.0), (b, 0.0)], 150, 2).unwrap());
    assert_eq!(mixture.counts(), [150, 0]);
    let delivered = deliveries(&mixture, Shuffle::Exact, 2, 1);
    assert_eq!(delivered.len(), 150);
    assert!(delivered.iter().all(|&(part, _)| part == 0));
}

#[test]
fn mixing_is_deterministic_whatever_the_workers() {
    let dir = tempfile::tempdir().unwrap();
    let parts = parts(dir.path());
    let weighted = |seed| {
        let parts = parts.iter().cloned().zip([0.2, 0.5, 0.3]).collect();
        Arc::new(Mixture::new(parts, 777, seed).unwrap())
    };
    let one = deliveries(&weighted(3), Shuffle::Exact, 1, 2);
    assert_eq!(deliveries(&weighted(3), Shuffle::Exact, 4, 2), one);
    assert_ne!(deliveries(&weighted(4), Shuffle::Exact, 1, 2), one);
    assert_ne!(
        weighted(3).fingerprint().unwrap(),
        weighted(4).fingerprint().unwrap()
    );
}

#[test]
fn impossible_mixtures_are_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    let parts = parts(dir.path());
    let a = || parts[0].clone();
    for (mixture, why) in [
        (vec![], "no parts"),
        (vec![(a(), f64::NAN)], "weight NaN"),
        (vec![(a(), -1.0)], "weight -1"),
        (vec![(a(), 0.0), (a(), 0.0)], "sum to 0"),
    ] {
        match Mixture::new(mixture, 10, 0) {
            Err(Error::InvalidPlan { reason }) => assert!(reason.contains(why), "{reason}"),
            other => panic!("{why}: {other:?}"),
        }
    }
    assert!(matches!(
        Mixture::new(vec![(a(), 1.0)], 0, 0),
        Err(Error::InvalidPlan { .. })
    ));
    // A part with other columns.
    let projected = dir.path().join("projected");
    let fixture = Fixture::write(
        &{
            std::fs::create_dir_all(&projected).unwrap();
            projected
        },
        10,
    );
    let other: Arc<dyn Source> = Arc::new(fixture.dataset().project(&["id"]).unwrap());
    match Mixture::new(vec![(a(), 1.0), (other, 1.0)], 10, 0) {
        Err(Error::InvalidPlan { reason }) => assert!(reason.contains("other columns"), "{reason}"),
        other => panic!("{other:?}"),
    }
}
