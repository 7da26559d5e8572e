//! Collectives against a naive reference, and a broken group failing instead of hanging.

use std::thread;

use mlinfra_train::Error;
use mlinfra_train::collective::{Collective, ThreadGroup, shard_range};

/// Runs `f` on every rank of a thread group and returns the ranks' results in rank order.
pub fn on_ranks<T: Send>(
    world: usize,
    f: impl Fn(mlinfra_train::collective::ThreadCollective) -> T + Sync,
) -> Vec<T> {
    let f = &f;
    thread::scope(|scope| {
        let handles: Vec<_> = ThreadGroup::new(world)
            .into_iter()
            .map(|rank| scope.spawn(move || f(rank)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

/// Rank r's input: values that sum exactly in f32, different per rank and element.
fn input(rank: usize, len: usize) -> Vec<f32> {
    (0..len).map(|i| (rank * 1000 + i) as f32 * 0.5).collect()
}

fn naive_sum(world: usize, len: usize) -> Vec<f32> {
    (0..len)
        .map(|i| (0..world).map(|r| f64::from(input(r, len)[i])).sum::<f64>() as f32)
        .collect()
}

#[test]
fn every_operation_matches_the_naive_reference() {
    for world in [1, 2, 3, 4] {
        let len = 10; // not a multiple of 3 or 4: uneven shards
        let sum = naive_sum(world, len);
        let results = on_ranks(world, |mut c| {
            let rank = c.rank();
            let mut reduced = input(rank, len);
            c.all_reduce(&mut reduced).unwrap();
            let mut shard = vec![0.0; shard_range(len, rank, world).len()];
            c.reduce_scatter(&input(rank, len), &mut shard).unwrap();
            let mut gathered = vec![0.0; len];
            c.all_gather(&shard, &mut gathered).unwrap();
            let mut broadcast = input(rank, len);
            c.broadcast(&mut broadcast, world - 1).unwrap();
            let mut scalars = [rank as f64, 1.0];
            c.all_reduce_f64(&mut scalars).unwrap();
            c.barrier().unwrap();
            (reduced, shard, gathered, broadcast, scalars)
        });
        for (rank, (reduced, shard, gathered, broadcast, scalars)) in results.iter().enumerate() {
            assert_eq!(reduced, &sum, "all_reduce, world {world} rank {rank}");
            assert_eq!(
                shard[..],
                sum[shard_range(len, rank, world)],
                "reduce_scatter"
            );
            assert_eq!(gathered, &sum, "all_gather of the reduced shards");
            assert_eq!(
                broadcast,
                &input(world - 1, len),
                "broadcast from the last rank"
            );
            let ranks: f64 = (0..world).map(|r| r as f64).sum();
            assert_eq!(scalars, &[ranks, world as f64]);
        }
    }
}

/// A rank that leaves (here: returns without taking part) fails the others' call; no hang.
#[test]
fn a_rank_that_leaves_fails_the_others_instead_of_hanging() {
    let results = on_ranks(3, |mut c| {
        if c.rank() == 1 {
            return None; // dropped: leaves the group
        }
        let mut buffer = vec![1.0; 4];
        Some(c.all_reduce(&mut buffer))
    });
    for result in [&results[0], &results[2]] {
        let error = result.as_ref().unwrap().as_ref().unwrap_err();
        assert!(
            matches!(error, Error::CollectiveAborted { .. }),
            "{error:?}"
        );
    }
}

#[test]
fn ranks_with_different_lengths_get_a_typed_error() {
    let results = on_ranks(2, |mut c| {
        let mut buffer = vec![1.0; 3 + c.rank()];
        c.all_reduce(&mut buffer)
    });
    for result in results {
        let error = result.unwrap_err();
        assert!(error.to_string().contains("rank 1 4"), "{error}");
    }
}
