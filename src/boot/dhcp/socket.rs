//! Binding a DHCP server socket to one interface: port 67 on 0.0.0.0 (broadcasts arrive there),
//! SO_BINDTODEVICE so that it hears and answers only that interface, SO_BROADCAST to answer
//! clients that have no address yet. Needs root (or CAP_NET_BIND_SERVICE + CAP_NET_RAW).

use super::DhcpError;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::FromRawFd;

/// A bigger receive buffer absorbs bursts (a rack powering on at once).
const RECEIVE_BUFFER_BYTES: libc::c_int = 4 << 20;

/// A non-blocking UDP socket bound to `address`, limited to `interface` when given. Turn it into
/// a tokio socket with `tokio::net::UdpSocket::from_std`.
pub fn bind_dhcp_socket(
    interface: Option<&str>,
    address: SocketAddrV4,
) -> Result<std::net::UdpSocket, DhcpError> {
    let failed = |what: &'static str| DhcpError::Socket {
        what,
        interface: interface.unwrap_or("any").to_string(),
        source: std::io::Error::last_os_error(),
    };
    // SAFETY: plain socket(2); the descriptor is owned by the UdpSocket made from it below.
    let descriptor = unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if descriptor < 0 {
        return Err(failed("socket"));
    }
    // SAFETY: `descriptor` is a fresh socket that nothing else owns.
    let socket = unsafe { std::net::UdpSocket::from_raw_fd(descriptor) };
    set_option(descriptor, libc::SO_REUSEADDR, 1).map_err(|_| failed("SO_REUSEADDR"))?;
    set_option(descriptor, libc::SO_BROADCAST, 1).map_err(|_| failed("SO_BROADCAST"))?;
    // Best effort: the kernel caps it at net.core.rmem_max.
    let _ = set_option(descriptor, libc::SO_RCVBUF, RECEIVE_BUFFER_BYTES);
    if let Some(interface) = interface {
        bind_to_device(descriptor, interface).map_err(|_| failed("SO_BINDTODEVICE"))?;
    }
    let socket_address = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: address.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*address.ip()).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: a valid sockaddr_in and its size.
    let bound = unsafe {
        libc::bind(
            descriptor,
            (&socket_address as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if bound != 0 {
        return Err(failed("bind"));
    }
    Ok(socket)
}

fn set_option(descriptor: libc::c_int, option: libc::c_int, value: libc::c_int) -> Result<(), ()> {
    // SAFETY: an int option with its size.
    let result = unsafe {
        libc::setsockopt(
            descriptor,
            libc::SOL_SOCKET,
            option,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if result == 0 {
        Ok(())
    } else {
        Err(())
    }
}

fn bind_to_device(descriptor: libc::c_int, interface: &str) -> Result<(), ()> {
    // SAFETY: the name's bytes and length; the kernel copies at most IFNAMSIZ.
    let result = unsafe {
        libc::setsockopt(
            descriptor,
            libc::SOL_SOCKET,
            libc::SO_BINDTODEVICE,
            interface.as_ptr().cast(),
            interface.len() as libc::socklen_t,
        )
    };
    if result == 0 {
        Ok(())
    } else {
        Err(())
    }
}

/// The first IPv4 address of `interface` (the server identifier on it), if it has one.
pub fn interface_ipv4(interface: &str) -> Option<Ipv4Addr> {
    let mut addresses: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills the list, freed below with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut addresses) } != 0 {
        return None;
    }
    let mut found = None;
    let mut cursor = addresses;
    while !cursor.is_null() {
        // SAFETY: a node of the list getifaddrs returned, alive until freeifaddrs.
        let entry = unsafe { &*cursor };
        cursor = entry.ifa_next;
        if entry.ifa_addr.is_null() || entry.ifa_name.is_null() {
            continue;
        }
        // SAFETY: a NUL-terminated name from the kernel.
        let name = unsafe { std::ffi::CStr::from_ptr(entry.ifa_name) };
        // SAFETY: ifa_addr is non-null and points at a sockaddr.
        let family = unsafe { (*entry.ifa_addr).sa_family };
        if name.to_bytes() == interface.as_bytes() && i32::from(family) == libc::AF_INET {
            // SAFETY: an AF_INET sockaddr is a sockaddr_in.
            let address = unsafe { &*(entry.ifa_addr as *const libc::sockaddr_in) };
            found = Some(Ipv4Addr::from(u32::from_be(address.sin_addr.s_addr)));
            break;
        }
    }
    // SAFETY: the list from getifaddrs, freed once.
    unsafe { libc::freeifaddrs(addresses) };
    found
}
