//! Block tables, prefix reuse and copy-on-write (`kv::KvCacheManager`).

use std::collections::HashMap;

use mlinfra_serve::Error;
use mlinfra_serve::kv::{BlockCopy, KvCacheManager, PrefixKeys, SeqId};
use mlinfra_test_utils::rng::SplitMix64;

use crate::fake_kv::FakeKv;

const BS: usize = 4;

/// Admits `seq` with all of `tokens`, "computes" them and commits.
fn run_prompt(kv: &mut KvCacheManager, seq: SeqId, tokens: &[u32]) -> usize {
    let probe = kv.probe(tokens, &PrefixKeys::default());
    let hit = probe.hit_tokens();
    assert!(kv.admit(seq, probe, tokens.len(), 0).unwrap());
    kv.commit(seq, tokens).unwrap();
    hit
}

#[test]
fn a_repeated_prefix_reuses_the_cached_blocks() {
    let mut kv = KvCacheManager::new(16, BS, true).unwrap();
    let prompt: Vec<u32> = (0..10).collect();
    assert_eq!(run_prompt(&mut kv, 1, &prompt), 0);
    let first = kv.block_table(1).unwrap().to_vec();
    kv.free(1).unwrap();

    // The same prompt: its two full blocks come back (same ids), the partial one does not.
    assert_eq!(run_prompt(&mut kv, 2, &prompt), 8);
    assert_eq!(kv.block_table(2).unwrap()[..2], first[..2]);

    // Sharing the first block only, while sequence 2 still runs: references, not copies.
    let mut other = prompt.clone();
    other[5] = 99;
    assert_eq!(run_prompt(&mut kv, 3, &other), 4);
    assert_eq!(kv.block_table(3).unwrap()[0], first[0]);
    assert_eq!(kv.pool().ref_count(first[0]).unwrap(), 2);
    assert_eq!(
        kv.block_table(3).unwrap()[1..]
            .iter()
            .filter(|b| first.contains(b))
            .count(),
        0
    );

    // Another adapter's KV differs: no hit.
    let adapter = PrefixKeys {
        adapter: Some("sql".into()),
        salt: None,
    };
    assert_eq!(kv.probe(&prompt, &adapter).hit_tokens(), 0);

    let stats = kv.prefix_stats();
    assert_eq!((stats.queried_tokens, stats.hit_tokens), (30, 12));
}

#[test]
fn the_last_token_is_always_computed() {
    let mut kv = KvCacheManager::new(8, BS, true).unwrap();
    let prompt: Vec<u32> = (0..8).collect();
    run_prompt(&mut kv, 1, &prompt);
    kv.free(1).unwrap();
    // Both blocks are cached, but reusing the second would leave nothing to compute.
    let probe = kv.probe(&prompt, &PrefixKeys::default());
    assert_eq!(probe.hit_tokens(), 4);
    let error = kv.admit(2, probe, 4, 0).unwrap_err();
    assert!(
        matches!(error, Error::InvalidSequence { seq: 2, .. }),
        "{error}"
    );
}

#[test]
fn without_prefix_caching_nothing_is_shared() {
    let mut kv = KvCacheManager::new(8, BS, false).unwrap();
    let prompt: Vec<u32> = (0..9).collect();
    run_prompt(&mut kv, 1, &prompt);
    kv.free(1).unwrap();
    assert_eq!(run_prompt(&mut kv, 2, &prompt), 0);
    assert_eq!(kv.pool().num_cached(), 0);
}

#[test]
fn a_forked_partial_block_is_copied_on_the_first_write() {
    let mut kv = KvCacheManager::new(8, BS, true).unwrap();
    let mut fake = FakeKv::new(8, BS);
    let prompt: Vec<u32> = (10..16).collect(); // one full block, one with 2 of 4 slots
    run_prompt(&mut kv, 1, &prompt);
    let parent = kv.block_table(1).unwrap().to_vec();
    fake.write(&parent, &prompt, 0, 6);
    kv.fork(1, 2).unwrap();
    assert_eq!(kv.block_table(2).unwrap(), parent);
    assert_eq!(kv.pool().ref_count(parent[1]).unwrap(), 2);

    // The child writes token 6 first: it gets a copy of the partial block.
    let copies = kv.allocate_slots(2, 7).unwrap().unwrap();
    let child = kv.block_table(2).unwrap().to_vec();
    assert_eq!(
        copies,
        [BlockCopy {
            src: parent[1],
            dst: child[1]
        }]
    );
    assert_eq!(child[0], parent[0], "full blocks stay shared");
    fake.copy(&copies);
    fake.write(&child, &[10, 11, 12, 13, 14, 15, 77], 6, 7);

    // The parent now owns its block alone and writes in place.
    assert_eq!(kv.allocate_slots(1, 7).unwrap().unwrap(), []);
    assert_eq!(kv.block_table(1).unwrap(), parent);
    fake.write(&parent, &[10, 11, 12, 13, 14, 15, 88], 6, 7);

    let read = |table: &[u32]| {
        fake.read(table, 7)
            .into_iter()
            .map(Option::unwrap)
            .collect::<Vec<_>>()
    };
    assert_eq!(read(&parent), [10, 11, 12, 13, 14, 15, 88]);
    assert_eq!(read(&child), [10, 11, 12, 13, 14, 15, 77]);
    kv.free(1).unwrap();
    kv.free(2).unwrap();
    assert_eq!(kv.pool().num_free(), 8);
}

#[test]
fn referenced_blocks_are_never_evicted_and_shortfalls_change_nothing() {
    let mut kv = KvCacheManager::new(4, BS, true).unwrap();
    let prompt: Vec<u32> = (0..12).collect(); // three blocks
    run_prompt(&mut kv, 1, &prompt);
    // One block is free; a sequence needing two does not fit, and nothing moves.
    let probe = kv.probe(&[50; 8], &PrefixKeys::default());
    assert!(!kv.admit(2, probe, 8, 0).unwrap());
    assert!(kv.block_table(2).is_none());
    assert_eq!(kv.allocate_slots(1, 20).unwrap(), None);
    assert_eq!(kv.num_tokens(1), 12);
    assert_eq!(kv.pool().num_free(), 1);
    // The watermark counts too.
    let probe = kv.probe(&[50; 4], &PrefixKeys::default());
    assert!(!kv.admit(2, probe.clone(), 4, 1).unwrap());
    assert!(kv.admit(2, probe, 4, 0).unwrap());
}

#[test]
fn misuse_is_a_typed_error() {
    let mut kv = KvCacheManager::new(4, BS, true).unwrap();
    let is_invalid =
        |result: Result<_, Error>| matches!(result, Err(Error::InvalidSequence { .. }));
    assert!(is_invalid(kv.allocate_slots(9, 4).map(|_| ())));
    assert!(is_invalid(kv.free(9)));
    assert!(is_invalid(kv.fork(9, 10)));
    assert!(is_invalid(kv.commit(9, &[1])));
    run_prompt(&mut kv, 1, &[1, 2, 3]);
    let probe = kv.probe(&[1, 2, 3], &PrefixKeys::default());
    assert!(
        is_invalid(kv.admit(1, probe, 3, 0).map(|_| ())),
        "admitted twice"
    );
    assert!(
        is_invalid(kv.allocate_slots(1, 2).map(|_| ())),
        "shrinking by growing"
    );
    assert!(
        is_invalid(kv.commit(1, &[1, 2, 3, 4])),
        "more tokens than slots"
    );
    assert!(is_invalid(kv.fork(1, 1)));
    assert!(is_invalid(kv.truncate(1, 5)));

    // A probe taken before its hit was evicted is stale.
    let mut kv = KvCacheManager::new(2, BS, true).unwrap();
    run_prompt(&mut kv, 1, &[1, 2, 3, 4, 5]);
    kv.free(1).unwrap();
    let probe = kv.probe(&[1, 2, 3, 4, 5], &PrefixKeys::default());
    assert_eq!(probe.hit_tokens(), 4);
    run_prompt(&mut kv, 2, &[9; 8]); // takes both blocks, evicting the cached one
    kv.free(2).unwrap();
    let error = kv.admit(3, probe, 5, 0).unwrap_err();
    assert!(error.to_string().contains("stale"), "{error}");
}

/// Random admissions (over a few shared prefixes), growth, forks, truncations and frees,
/// checked after every operation: reference counts equal table occurrences, free blocks
/// are exactly the unreferenced ones, and every sequence reads its own tokens back
/// through its table (so no shared block was written, and no referenced block evicted).
#[test]
fn randomized_operations_keep_blocks_conserved_and_contents_intact() {
    const BLOCKS: usize = 24;
    for seed in 0..40 {
        let mut rng = SplitMix64::new(seed);
        let mut kv = KvCacheManager::new(BLOCKS, BS, seed % 4 != 0).unwrap();
        let mut fake = FakeKv::new(BLOCKS, BS);
        let prefixes: Vec<Vec<u32>> = (0..3)
            .map(|p| (0..10).map(|i| p * 100 + i).collect())
            .collect();
        let mut live: HashMap<SeqId, Vec<u32>> = HashMap::new(); // computed tokens
        let mut next_id = 0;
        let mut hits = 0;
        for _ in 0..400 {
            let ids: Vec<SeqId> = {
                let mut ids: Vec<_> = live.keys().copied().collect();
                ids.sort_unstable();
                ids
            };
            let pick = |rng: &mut SplitMix64| ids[(rng.next_u64() % ids.len() as u64) as usize];
            match rng.next_u64() % 6 {
                0 | 1 => {
                    let prefix = &prefixes[(rng.next_u64() % 3) as usize];
                    let take = 1 + (rng.next_u64() % 10) as usize;
                    let mut tokens = prefix[..take].to_vec();
                    tokens.extend(
                        (0..rng.next_u64() % 6).map(|_| 1000 + (rng.next_u64() % 5) as u32),
                    );
                    let probe = kv.probe(&tokens, &PrefixKeys::default());
                    let hit = probe.hit_tokens();
                    if kv.admit(next_id, probe, tokens.len(), 0).unwrap() {
                        let table = kv.block_table(next_id).unwrap();
                        assert_eq!(
                            fake.read(table, hit),
                            tokens[..hit].iter().map(|&t| Some(t)).collect::<Vec<_>>(),
                            "seed {seed}: a prefix hit must hold the prompt's KV"
                        );
                        hits += hit;
                        fake.write(table, &tokens, hit, tokens.len());
                        kv.commit(next_id, &tokens).unwrap();
                        live.insert(next_id, tokens);
                    }
                    next_id += 1;
                }
                2 if !ids.is_empty() => {
                    let seq = pick(&mut rng);
                    let grow = 1 + (rng.next_u64() % 6) as usize;
                    let tokens = live.get_mut(&seq).unwrap();
                    let start = tokens.len();
                    if let Some(copies) = kv.allocate_slots(seq, start + grow).unwrap() {
                        fake.copy(&copies);
                        tokens.extend((0..grow).map(|_| 2000 + (rng.next_u64() % 7) as u32));
                        fake.write(kv.block_table(seq).unwrap(), tokens, start, start + grow);
                        kv.commit(seq, tokens).unwrap();
                    }
                }
                3 if !ids.is_empty() => {
                    let parent = pick(&mut rng);
                    kv.fork(parent, next_id).unwrap();
                    live.insert(next_id, live[&parent].clone());
                    next_id += 1;
                }
                4 if !ids.is_empty() => {
                    let seq = pick(&mut rng);
                    let tokens = live.get_mut(&seq).unwrap();
                    let keep = (rng.next_u64() % (tokens.len() as u64 + 1)) as usize;
                    kv.truncate(seq, keep).unwrap();
                    tokens.truncate(keep);
                    if keep == 0 {
                        kv.free(seq).unwrap();
                        live.remove(&seq);
                    }
                }
                5 if !ids.is_empty() => {
                    let seq = pick(&mut rng);
                    kv.free(seq).unwrap();
                    live.remove(&seq);
                }
                _ => {}
            }
            let mut counts = [0u32; BLOCKS];
            for (&seq, tokens) in &live {
                let table = kv.block_table(seq).unwrap();
                assert_eq!(table.len(), tokens.len().div_ceil(BS), "seed {seed}");
                for &block in table {
                    counts[block as usize] += 1;
                }
                let read: Vec<u32> = fake
                    .read(table, tokens.len())
                    .into_iter()
                    .map(Option::unwrap)
                    .collect();
                assert_eq!(&read, tokens, "seed {seed}: sequence {seq}'s KV changed");
            }
            for (block, &count) in counts.iter().enumerate() {
                assert_eq!(
                    kv.pool().ref_count(block as u32).unwrap(),
                    count,
                    "seed {seed}"
                );
            }
            assert_eq!(
                kv.pool().num_free(),
                counts.iter().filter(|&&c| c == 0).count()
            );
        }
        for seq in live.into_keys() {
            kv.free(seq).unwrap();
        }
        assert_eq!(kv.pool().num_free(), BLOCKS, "seed {seed}: blocks leaked");
        if seed % 4 != 0 {
            assert!(hits > 0, "seed {seed}: the workload never hit the cache");
        }
    }
}
