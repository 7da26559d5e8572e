use super::*;

const FINGERPRINT: &str = "blake3:test";

fn plan(samples: u64, shuffle: Shuffle) -> EpochPlan {
    EpochPlan::new(samples, FINGERPRINT, 7, 3, shuffle).unwrap()
}

fn order(plan: &EpochPlan) -> Vec<u64> {
    (0..plan.len())
        .map(|p| plan.sample_at(p).unwrap())
        .collect()
}

fn modes() -> Vec<Shuffle> {
    let mut modes = vec![Shuffle::None, Shuffle::Exact];
    for block in [1, 3, 16] {
        for window in [1, 2, 5] {
            modes.push(Shuffle::Block { block, window });
        }
    }
    modes
}

#[test]
fn every_mode_orders_every_sample_exactly_once() {
    for samples in [0, 1, 2, 15, 16, 17, 100, 257, 1000] {
        for shuffle in modes() {
            let plan = plan(samples, shuffle);
            let mut seen = order(&plan);
            assert_eq!(plan.sample_at(samples), None);
            seen.sort_unstable();
            assert_eq!(
                seen,
                (0..samples).collect::<Vec<_>>(),
                "{samples} samples, {shuffle:?}"
            );
        }
    }
}

#[test]
fn the_order_is_a_pure_function_of_its_inputs() {
    let shuffles = [
        Shuffle::Exact,
        Shuffle::Block {
            block: 8,
            window: 4,
        },
    ];
    for shuffle in shuffles {
        let base = order(&plan(500, shuffle));
        assert_eq!(
            base,
            order(&plan(500, shuffle)),
            "{shuffle:?} not reproducible"
        );
        assert_ne!(
            base,
            (0..500).collect::<Vec<_>>(),
            "{shuffle:?} did not shuffle"
        );
        let others = [
            EpochPlan::new(500, FINGERPRINT, 8, 3, shuffle).unwrap(),
            EpochPlan::new(500, FINGERPRINT, 7, 4, shuffle).unwrap(),
            EpochPlan::new(500, "blake3:other", 7, 3, shuffle).unwrap(),
        ];
        for other in &others {
            assert_ne!(
                order(other),
                base,
                "{shuffle:?}: seed, epoch and data must all count"
            );
        }
    }
    assert_eq!(order(&plan(50, Shuffle::None)), (0..50).collect::<Vec<_>>());
}

#[test]
fn ranks_split_one_order_evenly_for_any_world_size() {
    for samples in [0, 1, 7, 100, 101] {
        for shuffle in [
            Shuffle::None,
            Shuffle::Exact,
            Shuffle::Block {
                block: 4,
                window: 3,
            },
        ] {
            let plan = plan(samples, shuffle);
            let global = order(&plan);
            for world in 1..=8u64 {
                for remainder in [Remainder::Drop, Remainder::Pad] {
                    let expected_len = match remainder {
                        Remainder::Drop => samples / world,
                        Remainder::Pad => samples.div_ceil(world),
                    };
                    for rank in 0..world {
                        let slice = plan.slice(rank, world, remainder).unwrap();
                        let taken: Vec<u64> = slice.iter_from(0).collect();
                        assert_eq!(
                            taken.len() as u64,
                            expected_len,
                            "{samples}, {world}, {remainder:?}"
                        );
                        // Rank r reads positions r, r + world, ... of the one global order
                        // (wrapping to its start for Pad).
                        for (i, &sample) in taken.iter().enumerate() {
                            let position = (rank + i as u64 * world) as usize % global.len();
                            assert_eq!(sample, global[position]);
                        }
                        // Resuming mid-slice continues with exactly the same ids.
                        let half = expected_len / 2;
                        assert_eq!(
                            slice.iter_from(half).collect::<Vec<_>>(),
                            taken[half as usize..]
                        );
                    }
                }
            }
            // Drop reads every sample at most once; Pad every sample at least once.
            let distinct = |remainder| {
                let mut read: Vec<u64> = (0..3)
                    .flat_map(|rank| {
                        plan.slice(rank, 3, remainder)
                            .unwrap()
                            .iter_from(0)
                            .collect::<Vec<_>>()
                    })
                    .collect();
                read.sort_unstable();
                read.dedup();
                read.len() as u64
            };
            assert_eq!(distinct(Remainder::Drop), samples / 3 * 3);
            assert_eq!(distinct(Remainder::Pad), samples);
        }
    }
}

#[test]
fn bad_slices_and_blocks_are_typed_errors() {
    let plan = plan(10, Shuffle::Exact);
    assert!(matches!(
        plan.slice(0, 0, Remainder::Drop),
        Err(Error::InvalidPlan { .. })
    ));
    assert!(matches!(
        plan.slice(4, 4, Remainder::Pad),
        Err(Error::InvalidPlan { .. })
    ));
    for (block, window) in [(0, 1), (1, 0)] {
        let result = EpochPlan::new(10, FINGERPRINT, 0, 0, Shuffle::Block { block, window });
        assert!(matches!(result, Err(Error::InvalidPlan { .. })));
    }
}

/// The block shuffle's memory bound: each group of `window × block` consecutive positions
/// reads from at most `window` blocks, so a streaming reader holds at most that many.
#[test]
fn a_block_shuffle_touches_at_most_window_blocks_per_group() {
    for (samples, block, window) in [(1000, 16, 4), (1001, 16, 4), (999, 10, 3), (50, 7, 1)] {
        let plan = plan(samples, Shuffle::Block { block, window });
        let global = order(&plan);
        let Order::Block(blocks) = &plan.order else {
            unreachable!("a block plan")
        };
        let mut start = 0usize;
        let mut group = 0;
        while start < global.len() {
            let end = start + blocks.group_len(group) as usize;
            let mut touched: Vec<u64> = global[start..end].iter().map(|s| s / block).collect();
            touched.sort_unstable();
            touched.dedup();
            assert!(touched.len() as u64 <= window, "group {group}: {touched:?}");
            start = end;
            group += 1;
        }
        assert_eq!(start, global.len());
        // Inside one group the samples are mixed, not left in block order.
        if window > 1 {
            let first: Vec<u64> = global[..(window * block) as usize].to_vec();
            let mut sorted = first.clone();
            sorted.sort_unstable();
            assert_ne!(first, sorted);
        }
    }
}

/// Over many seeds, an exact shuffle puts sample 0 at each position equally often
/// (chi-square, 9 degrees of freedom, 0.1 % level: 27.88).
#[test]
fn an_exact_shuffle_is_uniform_over_seeds() {
    let (samples, trials) = (10u64, 20_000u64);
    let mut counts = [0u64; 10];
    for seed in 0..trials {
        let plan = EpochPlan::new(samples, FINGERPRINT, seed, 0, Shuffle::Exact).unwrap();
        let position = (0..samples)
            .find(|&p| plan.sample_at(p) == Some(0))
            .unwrap();
        counts[position as usize] += 1;
    }
    let expected = trials as f64 / samples as f64;
    let chi2: f64 = counts
        .iter()
        .map(|&c| (c as f64 - expected).powi(2) / expected)
        .sum();
    assert!(chi2 < 27.88, "chi-square {chi2:.1}: {counts:?}");
}

/// Issue 21, defect 10: a block or window larger than the epoch (from flags, a resumed state
/// or a checkpoint) orders exactly like the largest meaningful one, instead of overflowing
/// `window × block` into a division by zero inside a worker.
#[test]
fn oversized_blocks_and_windows_order_like_the_whole_epoch() {
    for samples in [1, 17, 1000] {
        let whole = order(&plan(
            samples,
            Shuffle::Block {
                block: samples,
                window: 1,
            },
        ));
        for (block, window) in [(u64::MAX, u64::MAX), (u64::MAX, 1), (samples + 1, 1 << 40)] {
            let huge = order(&plan(samples, Shuffle::Block { block, window }));
            assert_eq!(
                huge, whole,
                "{samples} samples, block {block}, window {window}"
            );
        }
        // A window over more blocks than there are equals a window of all of them.
        let all = order(&plan(
            samples,
            Shuffle::Block {
                block: 4,
                window: samples.div_ceil(4),
            },
        ));
        let beyond = order(&plan(
            samples,
            Shuffle::Block {
                block: 4,
                window: u64::MAX,
            },
        ));
        assert_eq!(beyond, all, "{samples} samples, window past the blocks");
    }
}
