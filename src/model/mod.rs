//! The machine life-cycle: statuses, the transition whitelist, actions and their rules.
//!
//! Pure: no IO, no clock, no randomness. Everything the rules need is passed in.

pub mod action;
pub mod names;
pub mod records;
pub mod role;
pub mod status;
pub mod watch;
pub mod words;

pub use action::{
    decide, settle, Action, ActionOptions, ActionRequest, EraseMode, FollowUp, Lifecycle, Outcome,
    PowerCommand, PowerOffMode, PowerState, Refusal, Settlement, StatusChange,
};
pub use names::{BadMac, BadName, MacAddr, MachineName};
pub use role::{DeployProgress, Role};
pub use status::{InvalidTransition, Status, StatusKind, UnknownStatus};
pub use watch::{machine_works_in, ClockKind, RunningClock, WatchLimits, Watched};
pub use words::{describe_seconds, rfc3339};
