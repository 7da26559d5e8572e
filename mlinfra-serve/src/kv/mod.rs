//! KV-cache memory: the paged block pool, prefix-cache keys, and per-sequence block tables.

mod block_pool;
mod manager;
pub mod prefix_hash;

pub use block_pool::{BlockHash, BlockId, BlockPool};
pub use manager::{BlockCopy, KvCacheManager, PrefixCacheStats, PrefixProbe, SeqId};
pub use prefix_hash::PrefixKeys;
