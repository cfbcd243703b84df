//! The controller: `fleet serve`. It owns the store, runs the HTTP API and (later) the boot
//! services and the reconcile loop.

pub mod actions;
mod dhcp;
pub mod machine_api;
pub mod monitor;
pub mod power_poll;
mod serve;
pub mod token;

pub use crate::store::redact_url;
pub use serve::{default_database, serve, ServeError, ServeOptions, API_URL_FILE};
