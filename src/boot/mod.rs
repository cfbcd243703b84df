//! The boot services: DHCP (PXE/iPXE aware), TFTP for first-stage loaders, and the HTTP boot
//! endpoints (iPXE scripts, kernels, initrds, images). Each server takes an already-bound socket
//! and a shutdown future, so tests bind port 0 (or bind inside a network namespace).

pub mod dhcp;
pub mod http;
pub mod images;
pub mod ipxe;
pub mod summary;
pub mod tftp;
pub mod throttle;
