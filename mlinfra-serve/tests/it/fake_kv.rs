//! A stand-in for KV memory: each block slot holds the token whose KV it would hold, so a
//! test can read a sequence back through its block table and see whether paging, sharing,
//! copy-on-write and eviction kept every sequence's KV intact.

use mlinfra_serve::kv::{BlockCopy, BlockId};

pub struct FakeKv {
    slots: Vec<Vec<Option<u32>>>,
    block_size: usize,
}

impl FakeKv {
    pub fn new(num_blocks: usize, block_size: usize) -> Self {
        FakeKv {
            slots: vec![vec![None; block_size]; num_blocks],
            block_size,
        }
    }

    pub fn copy(&mut self, copies: &[BlockCopy]) {
        for copy in copies {
            self.slots[copy.dst as usize] = self.slots[copy.src as usize].clone();
        }
    }

    /// Writes `tokens[start..end]` into their slots.
    pub fn write(&mut self, table: &[BlockId], tokens: &[u32], start: usize, end: usize) {
        for (position, &token) in tokens.iter().enumerate().take(end).skip(start) {
            let block = table[position / self.block_size] as usize;
            self.slots[block][position % self.block_size] = Some(token);
        }
    }

    /// The first `len` tokens as the block table holds them.
    pub fn read(&self, table: &[BlockId], len: usize) -> Vec<Option<u32>> {
        (0..len)
            .map(|position| {
                self.slots[table[position / self.block_size] as usize][position % self.block_size]
            })
            .collect()
    }
}
