//! Continuous batching: which requests compute which tokens in each step.

mod request;
mod scheduler;

pub use request::{FinishReason, NewRequest, Request, RequestId, RequestStatus};
pub use scheduler::{
    Policy, ScheduledRequest, Scheduler, SchedulerConfig, SchedulerOutput, SchedulerStats,
    StepBatch, StepSeq,
};
