//! [`KvCacheManager`]: every sequence's block table over one [`BlockPool`], with prefix reuse
//! at admission and copy-on-write for shared partial blocks.
//!
//! A sequence's KV lives in `ceil(tokens / block_size)` blocks listed in its table; attention
//! reads them through the table (paged attention), so the blocks need not be contiguous and
//! a full block can be shared by every sequence with the same prefix. Sharing is safe because
//! KV is append-only: a full block is never written again. The one block that is written is
//! the last, partial one; when it is shared (after [`fork`](KvCacheManager::fork), parallel
//! sampling with n > 1), the first writer gets a private copy ([`BlockCopy`], which the model
//! runner performs before the step's forward pass).
//!
//! Prefix caching follows vLLM's automatic prefix caching: a full block is registered under
//! its chained hash ([`prefix_hash`](super::prefix_hash)) once its KV has been computed
//! ([`commit`](KvCacheManager::commit), after the step, so no backend can read KV that a
//! batch is still writing); a new sequence's [`probe`](KvCacheManager::probe) finds the
//! longest run of cached leading blocks, and [`admit`](KvCacheManager::admit) takes references
//! to them instead of recomputing. Freed blocks keep their contents in the pool's LRU queue
//! until their memory is needed, so a preempted sequence usually recomputes from the cache.

use std::collections::HashMap;

use super::prefix_hash::{PrefixKeys, extend_chain};
use super::{BlockHash, BlockId, BlockPool};
use crate::{Error, Result};

/// A sequence's id, chosen by the caller (the scheduler uses request ids).
pub type SeqId = u64;

/// A copy the model runner must make before the step's forward pass: block `src`'s KV slots
/// into block `dst` (every layer), because `dst` replaces the shared `src` in one sequence's
/// table (copy-on-write).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockCopy {
    /// The shared block, still referenced by the other sequences.
    pub src: BlockId,
    /// The sequence's private copy.
    pub dst: BlockId,
}

/// What the cache holds for a new sequence's tokens: the result of
/// [`KvCacheManager::probe`], consumed by [`KvCacheManager::admit`]. It takes no references, so
/// a probe that is not followed by an admission costs nothing but the hashing.
#[derive(Debug, Clone)]
pub struct PrefixProbe {
    keys: PrefixKeys,
    /// The chain over every full block of the probed tokens.
    hashes: Vec<BlockHash>,
    /// The cached blocks holding the leading `hits.len()` of those.
    hits: Vec<BlockId>,
    block_size: usize,
    tokens: usize,
}

impl PrefixProbe {
    /// Leading tokens whose KV is cached: a multiple of the block size, and always less than
    /// the probed length (the last token is computed to get logits).
    pub fn hit_tokens(&self) -> usize {
        self.hits.len() * self.block_size
    }

    /// Tokens probed.
    pub fn tokens(&self) -> usize {
        self.tokens
    }
}

/// Prefix-cache counters since the manager was created, over admissions (probes that were
/// not admitted are not counted).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PrefixCacheStats {
    /// Tokens of admitted sequences that were looked up.
    pub queried_tokens: u64,
    /// Of those, tokens served from the cache.
    pub hit_tokens: u64,
}

impl PrefixCacheStats {
    /// `hit_tokens / queried_tokens`, 0 before any query.
    pub fn hit_rate(&self) -> f64 {
        if self.queried_tokens == 0 {
            0.0
        } else {
            self.hit_tokens as f64 / self.queried_tokens as f64
        }
    }
}

#[derive(Debug, Clone)]
struct BlockTable {
    blocks: Vec<BlockId>,
    /// Token slots reserved: computed, or scheduled in the current step.
    num_tokens: usize,
    keys: PrefixKeys,
    /// Chain hashes of the full blocks known so far.
    hashes: Vec<BlockHash>,
    /// Leading blocks already registered in the pool's cache.
    committed: usize,
}

/// Block tables of every running sequence over one [`BlockPool`].
///
/// Every operation either succeeds or leaves the manager unchanged; capacity shortfalls are
/// `Ok(false)`/`Ok(None)` (the scheduler's signal to wait or preempt), misuse is an `Err`.
#[derive(Debug, Clone)]
pub struct KvCacheManager {
    pool: BlockPool,
    tables: HashMap<SeqId, BlockTable>,
    prefix_caching: bool,
    stats: PrefixCacheStats,
}

impl KvCacheManager {
    /// A manager over `num_blocks` blocks of `block_size` tokens; `prefix_caching` turns
    /// cache registration and lookups on.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] as for [`BlockPool::new`].
    pub fn new(num_blocks: usize, block_size: usize, prefix_caching: bool) -> Result<Self> {
        Ok(KvCacheManager {
            pool: BlockPool::new(num_blocks, block_size)?,
            tables: HashMap::new(),
            prefix_caching,
            stats: PrefixCacheStats::default(),
        })
    }

    /// The pool (read-only: blocks change hands through the manager).
    pub fn pool(&self) -> &BlockPool {
        &self.pool
    }

    /// Token slots per block.
    pub fn block_size(&self) -> usize {
        self.pool.block_size()
    }

    /// Blocks needed to hold `tokens` tokens.
    pub fn blocks_for(&self, tokens: usize) -> usize {
        tokens.div_ceil(self.block_size())
    }

    /// Prefix-cache counters.
    pub fn prefix_stats(&self) -> PrefixCacheStats {
        self.stats
    }

    /// A sequence's block table (block `i` holds token slots `i*S..(i+1)*S`), `None` for a
    /// sequence without blocks.
    pub fn block_table(&self, seq: SeqId) -> Option<&[BlockId]> {
        self.tables.get(&seq).map(|table| table.blocks.as_slice())
    }

    /// Token slots a sequence has reserved (0 without blocks).
    pub fn num_tokens(&self, seq: SeqId) -> usize {
        self.tables.get(&seq).map_or(0, |table| table.num_tokens)
    }

    /// Sequences holding blocks.
    pub fn num_sequences(&self) -> usize {
        self.tables.len()
    }

    /// Looks up a new sequence's `tokens` (under `keys`) in the prefix cache, changing
    /// nothing. Hashes every full block (O(tokens)); without prefix caching, nothing.
    pub fn probe(&self, tokens: &[u32], keys: &PrefixKeys) -> PrefixProbe {
        let block_size = self.block_size();
        let mut hashes = Vec::new();
        if self.prefix_caching {
            extend_chain(&mut hashes, keys, tokens, block_size);
        }
        // At least one token must be computed: its logits are what the step is for.
        let reusable = (tokens.len().saturating_sub(1) / block_size).min(hashes.len());
        let hits = hashes[..reusable]
            .iter()
            .map_while(|&hash| self.pool.peek(hash))
            .collect();
        PrefixProbe {
            keys: keys.clone(),
            hashes,
            hits,
            block_size,
            tokens: tokens.len(),
        }
    }

    /// Blocks [`admit`](Self::admit) would take from the free queue to give a new sequence
    /// `num_tokens` slots after `probe`: its new blocks plus its hits that nobody references.
    pub fn blocks_to_admit(&self, probe: &PrefixProbe, num_tokens: usize) -> usize {
        let revived = probe
            .hits
            .iter()
            .filter(|&&block| self.pool.ref_count(block).is_ok_and(|count| count == 0))
            .count();
        self.blocks_for(num_tokens).saturating_sub(probe.hits.len()) + revived
    }

    /// Gives the new sequence `seq` a table for `num_tokens` slots (its cached prefix plus the
    /// tokens scheduled now), reusing `probe`'s hits, if that leaves at least `keep_free`
    /// blocks free. `Ok(false)` when it does not fit; nothing changes then.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidSequence`] when `seq` already has blocks, when `num_tokens` does not
    /// go past the cached prefix or past the probed tokens, or when the probe is stale (the
    /// pool changed since it was taken).
    pub fn admit(
        &mut self,
        seq: SeqId,
        probe: PrefixProbe,
        num_tokens: usize,
        keep_free: usize,
    ) -> Result<bool> {
        if self.tables.contains_key(&seq) {
            return Err(invalid(
                seq,
                "already has KV blocks; it was admitted before",
            ));
        }
        if num_tokens <= probe.hit_tokens() || num_tokens > probe.tokens {
            return Err(invalid(
                seq,
                &format!(
                    "cannot admit {num_tokens} tokens: the cached prefix is {} and the probe \
                     saw {} tokens",
                    probe.hit_tokens(),
                    probe.tokens
                ),
            ));
        }
        let stale = probe
            .hits
            .iter()
            .zip(&probe.hashes)
            .any(|(&block, &hash)| self.pool.peek(hash) != Some(block));
        if stale {
            return Err(invalid(seq, "the prefix probe is stale; probe again"));
        }
        if self.blocks_to_admit(&probe, num_tokens) + keep_free > self.pool.num_free() {
            return Ok(false);
        }
        let mut blocks = Vec::with_capacity(self.blocks_for(probe.tokens));
        for &hash in &probe.hashes[..probe.hits.len()] {
            blocks.push(self.pool.lookup(hash).expect("checked: the hit is cached"));
        }
        while blocks.len() < self.blocks_for(num_tokens) {
            blocks.push(self.pool.allocate().expect("checked: enough free blocks"));
        }
        self.stats.queried_tokens += probe.tokens as u64;
        self.stats.hit_tokens += probe.hit_tokens() as u64;
        let committed = probe.hits.len();
        self.tables.insert(
            seq,
            BlockTable {
                blocks,
                num_tokens,
                keys: probe.keys,
                hashes: probe.hashes,
                committed,
            },
        );
        Ok(true)
    }

    /// Blocks [`allocate_slots`](Self::allocate_slots) would take to grow `seq` to
    /// `num_tokens` slots, counting a copy-on-write of its shared last block.
    pub fn blocks_to_grow(&self, seq: SeqId, num_tokens: usize) -> usize {
        let Some(table) = self.tables.get(&seq) else {
            return self.blocks_for(num_tokens);
        };
        let cow = self.needs_copy(table, num_tokens);
        self.blocks_for(num_tokens)
            .saturating_sub(table.blocks.len())
            + usize::from(cow)
    }

    /// Grows `seq`'s reservation to `num_tokens` slots. Returns the copies to make first
    /// (at most one, when its shared partial last block is about to be written), or `None`
    /// when the free blocks do not suffice; nothing changes then.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidSequence`] for a sequence without blocks, or `num_tokens` below its
    /// reservation (shrink with [`truncate`](Self::truncate)).
    pub fn allocate_slots(
        &mut self,
        seq: SeqId,
        num_tokens: usize,
    ) -> Result<Option<Vec<BlockCopy>>> {
        let Some(table) = self.tables.get(&seq) else {
            return Err(invalid(seq, "has no KV blocks; admit it first"));
        };
        if num_tokens < table.num_tokens {
            return Err(invalid(
                seq,
                &format!(
                    "cannot grow to {num_tokens} slots: it already holds {}",
                    table.num_tokens
                ),
            ));
        }
        if self.blocks_to_grow(seq, num_tokens) > self.pool.num_free() {
            return Ok(None);
        }
        let cow = self.needs_copy(table, num_tokens);
        let wanted = self.blocks_for(num_tokens);
        let table = self.tables.get_mut(&seq).expect("checked above");
        let mut copies = Vec::new();
        let last = table.num_tokens / self.pool.block_size();
        if cow {
            let src = table.blocks[last];
            let dst = self.pool.allocate().expect("checked: enough free blocks");
            self.pool
                .free(src)
                .expect("src is referenced by this table");
            table.blocks[last] = dst;
            copies.push(BlockCopy { src, dst });
        } else if !table.num_tokens.is_multiple_of(self.pool.block_size())
            && num_tokens > table.num_tokens
        {
            // Written in place: if it was once full and cached (the sequence was truncated
            // since), it must stop answering for its old contents.
            self.pool.uncache(table.blocks[last])?;
        }
        while table.blocks.len() < wanted {
            table
                .blocks
                .push(self.pool.allocate().expect("checked: enough free blocks"));
        }
        table.num_tokens = num_tokens;
        Ok(Some(copies))
    }

    /// Registers `seq`'s newly full blocks in the prefix cache, given its tokens whose KV is
    /// now computed (`tokens.len()` at most its reservation; the tokens must extend the ones
    /// committed before). A no-op without prefix caching.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidSequence`] for a sequence without blocks, or more tokens than slots.
    pub fn commit(&mut self, seq: SeqId, tokens: &[u32]) -> Result<()> {
        let block_size = self.pool.block_size();
        let Some(table) = self.tables.get_mut(&seq) else {
            return Err(invalid(seq, "has no KV blocks to commit"));
        };
        if tokens.len() > table.num_tokens {
            return Err(invalid(
                seq,
                &format!(
                    "cannot commit {} tokens into {} reserved slots",
                    tokens.len(),
                    table.num_tokens
                ),
            ));
        }
        if !self.prefix_caching {
            return Ok(());
        }
        extend_chain(&mut table.hashes, &table.keys, tokens, block_size);
        let full = tokens.len() / block_size;
        for index in table.committed..full {
            self.pool.cache(table.blocks[index], table.hashes[index])?;
        }
        table.committed = table.committed.max(full);
        Ok(())
    }

    /// Shrinks `seq`'s reservation to `num_tokens` slots (rejected speculative tokens),
    /// freeing the blocks no longer needed.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidSequence`] for a sequence without blocks, or a size above its
    /// reservation.
    pub fn truncate(&mut self, seq: SeqId, num_tokens: usize) -> Result<()> {
        let wanted = self.blocks_for(num_tokens);
        let block_size = self.pool.block_size();
        let Some(table) = self.tables.get_mut(&seq) else {
            return Err(invalid(seq, "has no KV blocks to truncate"));
        };
        if num_tokens > table.num_tokens {
            return Err(invalid(
                seq,
                &format!("cannot truncate {} slots to {num_tokens}", table.num_tokens),
            ));
        }
        while table.blocks.len() > wanted {
            let block = table.blocks.pop().expect("longer than wanted");
            self.pool.free(block)?;
        }
        table.hashes.truncate(num_tokens / block_size);
        table.committed = table.committed.min(table.hashes.len());
        table.num_tokens = num_tokens;
        Ok(())
    }

    /// Gives `child` the same blocks as `parent` (one more reference each): parallel
    /// sampling. Their shared partial block is copied on the first write.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidSequence`] when `parent` has no blocks or `child` has some.
    pub fn fork(&mut self, parent: SeqId, child: SeqId) -> Result<()> {
        if self.tables.contains_key(&child) {
            return Err(invalid(child, "already has KV blocks; cannot fork into it"));
        }
        let Some(table) = self.tables.get(&parent) else {
            return Err(invalid(parent, "has no KV blocks to fork"));
        };
        let table = table.clone();
        for &block in &table.blocks {
            self.pool.share(block)?;
        }
        self.tables.insert(child, table);
        Ok(())
    }

    /// Drops `seq`'s blocks (finished, aborted or preempted). The tail goes into the free
    /// queue first, so under memory pressure a sequence's last blocks are evicted before its
    /// prefix, which other requests are likelier to share.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidSequence`] for a sequence without blocks.
    pub fn free(&mut self, seq: SeqId) -> Result<()> {
        let Some(table) = self.tables.remove(&seq) else {
            return Err(invalid(seq, "has no KV blocks to free"));
        };
        for &block in table.blocks.iter().rev() {
            self.pool.free(block)?;
        }
        Ok(())
    }

    fn needs_copy(&self, table: &BlockTable, num_tokens: usize) -> bool {
        let start = table.num_tokens;
        !start.is_multiple_of(self.pool.block_size())
            && num_tokens > start
            && self
                .pool
                .ref_count(table.blocks[start / self.pool.block_size()])
                .is_ok_and(|count| count > 1)
    }
}

fn invalid(seq: SeqId, reason: &str) -> Error {
    Error::InvalidSequence {
        seq,
        reason: format!("sequence {seq} {reason}").into(),
    }
}
