//! DPO (placeholder while building)
