//! Ferry's core: the glossary's types and the pure decision logic built on them.
//!
//! Nothing here does I/O, reads a clock, sleeps or spawns: callers pass `now` in and act on
//! the decisions that come out. That is what lets the job model and the policies be tested by
//! transcripts and seeded simulation.

pub mod conditions;
pub mod destination;
pub mod job;
pub mod path_text;
pub mod policy;
pub mod resource;
pub mod retry;

pub use conditions::{Conditions, LocalTime, Network, Now, Power, Thermal, Weekday};
pub use destination::{Destination, DestinationError, Method, UrlBase};
pub use job::{
    Action, Attempt, ContentHash, ErrorCode, ExtensionPolicy, Job, JobState, JobWrite, NewJob,
    Outcome, Receipt, Rejection, TransactionError, TransferEvent, TransitionError, TxItem, TxView,
    apply_event, plan_cancel_all, plan_transaction,
};
pub use policy::{Decision, Policy, PolicyOverrides, WaitReason, decide, next_change_hint};
pub use resource::{Gps, ResourceMetadata, ResourceType};
