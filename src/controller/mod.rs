//! The controller: `fleet serve`, wiring only. It opens the store, binds the sockets and starts
//! every service with its socket and a shutdown signal: the operator API (TLS, `tls.rs` for its
//! certificate) and the boot routes (plain HTTP) on two listeners, TFTP,
//! DHCP, the timeout watch and the power poll (`services`), and the reconcile loop; of several
//! controllers on one database only the elected leader runs the duties that decide on their own
//! (`leader.rs`).

mod dhcp;
pub mod heartbeat;
pub mod leader;
pub mod secret_key;
mod serve;
pub mod tls;

pub use crate::store::redact_url;
pub use serve::{
    default_database, serve, ServeError, ServeOptions, API_FINGERPRINT_FILE, API_URL_FILE,
    BOOT_URL_FILE,
};
