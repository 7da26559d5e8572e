//! KV-cache memory: the paged block pool (and, next, the prefix cache over it).

mod block_pool;

pub use block_pool::{BlockHash, BlockId, BlockPool};
