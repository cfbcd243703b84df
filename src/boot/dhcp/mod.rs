//! fleet's DHCPv4 server: addresses for booting machines from each subnet's dynamic range, fixed
//! addresses for declared machines, and network booting (PXE ROMs get a first-stage iPXE loader
//! over TFTP, UEFI HTTP boot gets its URL, iPXE gets the HTTP URL of its boot script). dhcproto
//! reads and writes the packets; the protocol is ours.
//!
//! - `config`: [`DhcpConfig`] from the fleet file ([`DhcpConfig::from_fleet`]).
//! - `handler`: the protocol as a pure function (request + lease table + config → reply, store
//!   change, event).
//! - `leases`: the in-memory lease table and address allocation.
//! - `options`: client kinds and boot answers; the subnet's options.
//! - `service`: [`DhcpLeases`], the table shared by a controller's sockets, loaded from the store
//!   and written behind to it; lease events, rate-limited.
//! - `persist`: the write-behind writer (batched transactions).
//! - `server`: [`serve`], the socket loop; `socket`: [`bind_dhcp_socket`].
//!
//! Starting DHCP for a fleet: see `controller::dhcp::start_dhcp` (one socket per boot interface
//! that exists, bound with [`bind_dhcp_socket`], all sharing one [`DhcpLeases`]).

pub mod config;
pub mod handler;
pub mod leases;
pub mod options;
mod persist;
mod server;
mod service;
mod socket;

pub use config::{
    BootSettings, DhcpConfig, DhcpConfigError, DhcpSubnet, HeldFixed, ServedInterface,
};
pub use handler::{LeaseEvent, LeaseEventKind, Outcome, Reply, StoreChange};
pub use persist::Settled;
pub use server::serve;
pub use service::{DhcpLeases, EVENT_INTERVAL_MS};
pub use socket::{bind_dhcp_socket, interface_ipv4};

#[derive(Debug, thiserror::Error)]
pub enum DhcpError {
    #[error("cannot set up the DHCP socket on interface {interface} ({what}): {source}")]
    Socket {
        what: &'static str,
        interface: String,
        source: std::io::Error,
    },
    #[error("the DHCP socket failed: {0}")]
    Receive(std::io::Error),
    #[error("DHCP lease store: {0}")]
    Store(#[from] crate::store::StoreError),
    #[error("DHCP lease store: {0}")]
    Database(#[from] sqlx::Error),
}
