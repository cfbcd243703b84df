//! The controller: `fleet serve`, wiring only. It opens the store, binds the sockets and starts
//! every service with its socket and a shutdown signal: the HTTP API and boot routes, TFTP,
//! DHCP, the timeout watch and the power poll (`services`), and the reconcile loop.

mod dhcp;
mod serve;

pub use crate::store::redact_url;
pub use serve::{default_database, serve, ServeError, ServeOptions, API_URL_FILE};
