//! [`BlockPool`]: fixed-size KV blocks with reference counts and an LRU free queue that keeps
//! freed blocks' contents reusable until their memory is needed.
//!
//! The design is vLLM V1's block pool: every block not referenced by a running sequence sits in
//! one free queue, oldest-freed first. Allocation takes the head (the least recently used), so
//! a block freed with cached contents (a full block with a prefix hash) survives as long as
//! possible; a prefix-cache hit takes a block out of the middle of the queue. The queue is a
//! doubly linked list over block indices, so every operation is O(1) and allocation-free.

use std::collections::HashMap;

use crate::{Error, Result};

/// A block's index in its pool: `0..num_blocks`.
pub type BlockId = u32;

/// The content hash of a full block (prefix-cache key), computed by the caller.
pub type BlockHash = u128;

/// No link: the end of the free queue.
const NIL: u32 = u32::MAX;

/// A pool of `num_blocks` KV blocks of `block_size` token slots each.
///
/// Invariants (checked by the property tests): every block is either referenced (count > 0)
/// or in the free queue, never both; a referenced block is never handed out; a block's hash,
/// if any, maps back to it until the block is reallocated.
#[derive(Debug, Clone)]
pub struct BlockPool {
    block_size: usize,
    ref_counts: Vec<u32>,
    /// Free-queue links, `NIL` at the ends and for blocks not in the queue.
    prev: Vec<u32>,
    next: Vec<u32>,
    head: u32,
    tail: u32,
    free: usize,
    /// Hash of each block's contents, for blocks registered in the prefix cache.
    hashes: Vec<Option<BlockHash>>,
    cached: HashMap<BlockHash, BlockId>,
}

impl BlockPool {
    /// A pool of `num_blocks` free blocks, queued in index order.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] for zero blocks, a zero block size, or more blocks than a
    /// [`BlockId`] can name.
    pub fn new(num_blocks: usize, block_size: usize) -> Result<Self> {
        if num_blocks == 0 || block_size == 0 || num_blocks >= NIL as usize {
            return Err(Error::InvalidConfig {
                reason: format!(
                    "a block pool needs 1 to {} blocks of at least 1 token, got {num_blocks} of {block_size}",
                    NIL - 1
                )
                .into(),
            });
        }
        let last = num_blocks as u32 - 1;
        Ok(BlockPool {
            block_size,
            ref_counts: vec![0; num_blocks],
            prev: (0..=last)
                .map(|i| if i == 0 { NIL } else { i - 1 })
                .collect(),
            next: (0..=last)
                .map(|i| if i == last { NIL } else { i + 1 })
                .collect(),
            head: 0,
            tail: last,
            free: num_blocks,
            hashes: vec![None; num_blocks],
            cached: HashMap::new(),
        })
    }

    /// Token slots per block.
    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// Blocks in the pool.
    pub fn num_blocks(&self) -> usize {
        self.ref_counts.len()
    }

    /// Blocks not referenced by anyone (including cached ones, which are reusable).
    pub fn num_free(&self) -> usize {
        self.free
    }

    /// Share of blocks referenced, in `[0, 1]`.
    pub fn usage(&self) -> f64 {
        1.0 - self.free as f64 / self.num_blocks() as f64
    }

    /// A block's reference count.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidBlock`] for an id outside the pool.
    pub fn ref_count(&self, block: BlockId) -> Result<u32> {
        self.check(block)?;
        Ok(self.ref_counts[block as usize])
    }

    /// Takes the least recently freed block, with a reference count of 1. If it held cached
    /// contents, they are evicted (its hash no longer finds it).
    ///
    /// # Errors
    ///
    /// [`Error::OutOfBlocks`] when every block is referenced; the pool is unchanged.
    pub fn allocate(&mut self) -> Result<BlockId> {
        let block = self.head;
        if block == NIL {
            return Err(Error::OutOfBlocks {
                blocks: self.num_blocks(),
            });
        }
        self.unlink(block);
        if let Some(hash) = self.hashes[block as usize].take() {
            self.cached.remove(&hash);
        }
        self.ref_counts[block as usize] = 1;
        Ok(block)
    }

    /// Adds a reference to a referenced block (a sequence sharing a prefix).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidBlock`] for an id outside the pool or a block nobody references (take
    /// free blocks with [`allocate`](Self::allocate) or [`lookup`](Self::lookup)).
    pub fn share(&mut self, block: BlockId) -> Result<()> {
        self.check(block)?;
        if self.ref_counts[block as usize] == 0 {
            return Err(self.invalid(block, "is free; only referenced blocks can be shared"));
        }
        self.ref_counts[block as usize] += 1;
        Ok(())
    }

    /// Drops a reference. At zero the block joins the tail of the free queue (most recently
    /// used), keeping its cached contents until it is reallocated.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidBlock`] for an id outside the pool or a block already free (a double
    /// free); the pool is unchanged.
    pub fn free(&mut self, block: BlockId) -> Result<()> {
        self.check(block)?;
        let count = &mut self.ref_counts[block as usize];
        match *count {
            0 => Err(self.invalid(block, "is already free (double free)")),
            1 => {
                *count = 0;
                self.push_tail(block);
                Ok(())
            }
            _ => {
                *count -= 1;
                Ok(())
            }
        }
    }

    /// Records that a referenced, full block holds the contents `hash` names, so later
    /// [`lookup`](Self::lookup)s find it. A hash already cached elsewhere keeps its first
    /// block (the duplicate is simply not registered).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidBlock`] for an id outside the pool or a free block.
    pub fn cache(&mut self, block: BlockId, hash: BlockHash) -> Result<()> {
        self.check(block)?;
        if self.ref_counts[block as usize] == 0 {
            return Err(self.invalid(block, "is free; only referenced blocks can be cached"));
        }
        if self.hashes[block as usize].is_none() && !self.cached.contains_key(&hash) {
            self.hashes[block as usize] = Some(hash);
            self.cached.insert(hash, block);
        }
        Ok(())
    }

    /// The cached block holding `hash`, with a reference added (taken out of the free queue
    /// if nobody referenced it); `None` on a miss.
    pub fn lookup(&mut self, hash: BlockHash) -> Option<BlockId> {
        let block = *self.cached.get(&hash)?;
        if self.ref_counts[block as usize] == 0 {
            self.unlink(block);
        }
        self.ref_counts[block as usize] += 1;
        Some(block)
    }

    /// Forgets a block's cached contents, if any: its owner is about to overwrite part of it
    /// (a truncated sequence writing new tokens into a once-full block).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidBlock`] for an id outside the pool.
    pub fn uncache(&mut self, block: BlockId) -> Result<()> {
        self.check(block)?;
        if let Some(hash) = self.hashes[block as usize].take() {
            self.cached.remove(&hash);
        }
        Ok(())
    }

    /// The cached block holding `hash`, without taking a reference: a probe that changes
    /// nothing (admission asks before it knows whether the request fits).
    pub fn peek(&self, hash: BlockHash) -> Option<BlockId> {
        self.cached.get(&hash).copied()
    }

    /// Cached blocks (referenced or not).
    pub fn num_cached(&self) -> usize {
        self.cached.len()
    }

    fn check(&self, block: BlockId) -> Result<()> {
        if (block as usize) < self.num_blocks() {
            Ok(())
        } else {
            Err(self.invalid(block, "is outside the pool"))
        }
    }

    fn invalid(&self, block: BlockId, what: &str) -> Error {
        Error::InvalidBlock {
            block,
            reason: format!("block {block} of {} {what}", self.num_blocks()).into(),
        }
    }

    fn unlink(&mut self, block: BlockId) {
        let (prev, next) = (self.prev[block as usize], self.next[block as usize]);
        if prev == NIL {
            self.head = next;
        } else {
            self.next[prev as usize] = next;
        }
        if next == NIL {
            self.tail = prev;
        } else {
            self.prev[next as usize] = prev;
        }
        self.prev[block as usize] = NIL;
        self.next[block as usize] = NIL;
        self.free -= 1;
    }

    fn push_tail(&mut self, block: BlockId) {
        self.prev[block as usize] = self.tail;
        self.next[block as usize] = NIL;
        if self.tail == NIL {
            self.head = block;
        } else {
            self.next[self.tail as usize] = block;
        }
        self.tail = block;
        self.free += 1;
    }

    /// The free queue, head first (tests).
    #[cfg(test)]
    fn queue(&self) -> Vec<BlockId> {
        let mut out = Vec::new();
        let mut at = self.head;
        while at != NIL {
            out.push(at);
            at = self.next[at as usize];
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mlinfra_test_utils::rng::SplitMix64;

    #[test]
    fn allocation_takes_the_least_recently_freed_block() {
        let mut pool = BlockPool::new(3, 16).unwrap();
        let (a, b, c) = (
            pool.allocate().unwrap(),
            pool.allocate().unwrap(),
            pool.allocate().unwrap(),
        );
        assert_eq!((a, b, c), (0, 1, 2));
        assert!(matches!(
            pool.allocate(),
            Err(Error::OutOfBlocks { blocks: 3 })
        ));
        pool.free(b).unwrap();
        pool.free(a).unwrap();
        assert_eq!(pool.queue(), [1, 0]);
        assert_eq!(pool.allocate().unwrap(), 1);
    }

    #[test]
    fn a_cached_block_survives_until_reallocated_and_a_hit_revives_it() {
        let mut pool = BlockPool::new(2, 16).unwrap();
        let a = pool.allocate().unwrap();
        pool.cache(a, 42).unwrap();
        pool.free(a).unwrap();
        assert_eq!(pool.num_free(), 2);
        assert_eq!(pool.lookup(42), Some(a), "freed but cached: a hit");
        assert_eq!(pool.ref_count(a).unwrap(), 1);
        assert_eq!(pool.num_free(), 1);
        pool.free(a).unwrap();
        // Block 1 was freed longer ago (never used), so it goes first; then block 0 is evicted.
        assert_eq!(pool.allocate().unwrap(), 1);
        assert_eq!(pool.allocate().unwrap(), 0);
        assert_eq!(pool.lookup(42), None, "evicted on reallocation");
    }

    #[test]
    fn misuse_is_a_typed_error_and_changes_nothing() {
        let mut pool = BlockPool::new(2, 16).unwrap();
        let a = pool.allocate().unwrap();
        pool.free(a).unwrap();
        let before = pool.queue();
        let error = pool.free(a).unwrap_err();
        assert!(error.to_string().contains("double free"), "{error}");
        assert!(pool.share(a).unwrap_err().to_string().contains("is free"));
        assert!(pool.cache(a, 1).is_err());
        assert!(
            pool.free(7)
                .unwrap_err()
                .to_string()
                .contains("outside the pool")
        );
        assert_eq!(pool.queue(), before);
        assert!(BlockPool::new(0, 16).is_err());
        assert!(BlockPool::new(4, 0).is_err());
    }

    /// Random sequences of every operation against a naive model of the pool (a reference
    /// count per block and a list as the free queue): the same results, and the invariants
    /// after every operation. 200 seeds × 400 operations.
    #[test]
    fn random_workloads_match_a_naive_model_and_keep_the_invariants() {
        for seed in 0..200 {
            let mut rng = SplitMix64::new(seed);
            let blocks = 1 + (rng.next_u64() % 12) as usize;
            let mut pool = BlockPool::new(blocks, 4).unwrap();
            let mut counts = vec![0u32; blocks];
            let mut queue: Vec<BlockId> = (0..blocks as u32).collect();
            let mut hash_of: Vec<Option<BlockHash>> = vec![None; blocks];
            for _ in 0..400 {
                let block = (rng.next_u64() % (blocks as u64 + 1)) as BlockId;
                let hash = u128::from(rng.next_u64() % 6);
                match rng.next_u64() % 5 {
                    0 => match pool.allocate() {
                        Ok(got) => {
                            assert_eq!(got, queue.remove(0), "seed {seed}: LRU order");
                            assert_eq!(
                                counts[got as usize], 0,
                                "seed {seed}: handed out while referenced"
                            );
                            counts[got as usize] = 1;
                            hash_of[got as usize] = None;
                        }
                        Err(_) => assert!(queue.is_empty(), "seed {seed}"),
                    },
                    1 => {
                        let ok = pool.free(block).is_ok();
                        let expect = (block as usize) < blocks && counts[block as usize] > 0;
                        assert_eq!(ok, expect, "seed {seed}: free({block})");
                        if ok {
                            counts[block as usize] -= 1;
                            if counts[block as usize] == 0 {
                                queue.push(block);
                            }
                        }
                    }
                    2 => {
                        let ok = pool.share(block).is_ok();
                        assert_eq!(ok, (block as usize) < blocks && counts[block as usize] > 0);
                        if ok {
                            counts[block as usize] += 1;
                        }
                    }
                    3 => {
                        let ok = pool.cache(block, hash).is_ok();
                        assert_eq!(ok, (block as usize) < blocks && counts[block as usize] > 0);
                        let taken = hash_of.contains(&Some(hash));
                        if ok && hash_of[block as usize].is_none() && !taken {
                            hash_of[block as usize] = Some(hash);
                        }
                    }
                    _ => {
                        let want = hash_of.iter().position(|h| *h == Some(hash));
                        let got = pool.lookup(hash);
                        assert_eq!(got.map(|b| b as usize), want, "seed {seed}: lookup({hash})");
                        if let Some(b) = got {
                            if counts[b as usize] == 0 {
                                queue.retain(|&q| q != b);
                            }
                            counts[b as usize] += 1;
                        }
                    }
                }
                // Invariants: the queue holds exactly the unreferenced blocks, in model order.
                assert_eq!(pool.queue(), queue, "seed {seed}");
                assert_eq!(pool.num_free(), queue.len());
                for (b, &count) in counts.iter().enumerate() {
                    assert_eq!(pool.ref_count(b as BlockId).unwrap(), count, "seed {seed}");
                }
                assert_eq!(pool.num_cached(), hash_of.iter().flatten().count());
            }
        }
    }
}
