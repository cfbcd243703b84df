//! Binding a DHCP server socket to one interface: port 67 on 0.0.0.0 (broadcasts arrive there),
//! SO_BINDTODEVICE so that it hears and answers only that interface, SO_BROADCAST to answer
//! clients that have no address yet. Needs root (or CAP_NET_BIND_SERVICE + CAP_NET_RAW).
//! socket2 makes the socket and sets the options; nix reads the interface's addresses.

use super::DhcpError;
use socket2::{Domain, Protocol, Socket, Type};
use std::net::{Ipv4Addr, SocketAddrV4};

/// A bigger receive buffer absorbs bursts (a rack powering on at once).
const RECEIVE_BUFFER_BYTES: usize = 4 << 20;

/// A non-blocking UDP socket bound to `address`, limited to `interface` when given. Turn it into
/// a tokio socket with `tokio::net::UdpSocket::from_std`.
pub fn bind_dhcp_socket(
    interface: Option<&str>,
    address: SocketAddrV4,
) -> Result<std::net::UdpSocket, DhcpError> {
    let failed = |what: &'static str| {
        move |source| DhcpError::Socket {
            what,
            interface: interface.unwrap_or("any").to_string(),
            source,
        }
    };
    // socket2 opens it with SOCK_CLOEXEC.
    let socket = Socket::new(Domain::IPV4, Type::DGRAM.nonblocking(), Some(Protocol::UDP))
        .map_err(failed("socket"))?;
    socket
        .set_reuse_address(true)
        .map_err(failed("SO_REUSEADDR"))?;
    socket.set_broadcast(true).map_err(failed("SO_BROADCAST"))?;
    // Best effort: the kernel caps it at net.core.rmem_max.
    let _ = socket.set_recv_buffer_size(RECEIVE_BUFFER_BYTES);
    if let Some(interface) = interface {
        socket
            .bind_device(Some(interface.as_bytes()))
            .map_err(failed("SO_BINDTODEVICE"))?;
    }
    socket.bind(&address.into()).map_err(failed("bind"))?;
    Ok(socket.into())
}

/// The first IPv4 address of `interface` (the server identifier on it), if it has one.
pub fn interface_ipv4(interface: &str) -> Option<Ipv4Addr> {
    nix::ifaddrs::getifaddrs()
        .ok()?
        .filter(|entry| entry.interface_name == interface)
        .find_map(|entry| Some(entry.address?.as_sockaddr_in()?.ip()))
}
