//! The service layer: what the controller does to one machine at a time, between the pure core
//! (`model`, `config`, `plan`) and its callers (`apply`, `api`), on top of `store` and `power`.
//!
//! - `actions`: one life-cycle action on one machine (decide, commit, power, follow up), the
//!   settlements of in-progress statuses, and the one way power commands are sent
//!   (`carry_out_power`, in the machine's power queue).
//! - `machine_api`: what booted machines ask (enlist, instructions, results, heartbeats, the
//!   signal); its `rules` are pure.
//! - `monitor`: the watch's clocks over machines at work; `power_poll`: power states read back;
//!   `power_outbox`: power decisions a dead controller left unsent, carried out by the leader.
//! - `token`: the operator token.
//! - `clone`: a machine's storage and/or interfaces cloned onto others (`fleet clone`).
//! - `event_retention`: the event history pruned by age and count (`[policy.events]`).
//!
//! Nothing here starts a server or binds a socket: `controller` wires these services up.

pub mod actions;
pub mod clone;
pub mod event_retention;
pub mod failpoint;
pub mod machine_api;
pub mod monitor;
pub mod power_outbox;
pub mod power_poll;
pub mod token;
