//! Starting DHCP in the controller: one socket per boot interface that exists on the host, all
//! sharing one lease table. An absent interface (or one without an IPv4 address) is reported and
//! skipped; the rest of the controller runs either way. `[controller] dhcp_listen` adds one
//! socket bound to an address and port on no interface, for relayed requests: on a port above
//! 1023 it needs no root (the simulator and `fleet demo` use it on loopback).

use crate::boot::dhcp::{bind_dhcp_socket, interface_ipv4, serve, DhcpConfig, DhcpLeases};
use crate::config::Fleet;
use crate::metrics::Metrics;
use crate::store::Store;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use tokio::sync::watch;

/// Starts DHCP on each of `interfaces` that exists, and on the fleet file's `dhcp_listen`
/// address when it gives one; returns the lease table to close at the end (it writes what is
/// still queued), or `None` when DHCP runs nowhere. `controller_id` is written into the leases
/// this controller grants (other controllers on the database read them).
pub async fn start_dhcp(
    controller_id: &str,
    fleet: Option<&Fleet>,
    interfaces: &[String],
    store: &Store,
    metrics: &Arc<Metrics>,
    stopped: watch::Receiver<()>,
) -> Option<Arc<DhcpLeases>> {
    let mut present = Vec::new();
    for interface in interfaces {
        match interface_ipv4(interface) {
            Some(address) => present.push((interface.clone(), address)),
            None => eprintln!(
                "  dhcp    {interface}: interface absent or without an IPv4 address on this host; no DHCP on it (the rest runs)"
            ),
        }
    }
    let fleet = fleet?;
    let listen = fleet.controller.dhcp_listen;
    if present.is_empty() && listen.is_none() {
        return None;
    }
    let config = match DhcpConfig::from_fleet(fleet) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("  dhcp    not started: {error}");
            return None;
        }
    };
    let leases = match DhcpLeases::load_as(store.clone(), &config, controller_id).await {
        Ok(leases) => leases,
        Err(error) => {
            eprintln!("  dhcp    not started: cannot load the leases: {error}");
            return None;
        }
    };
    // Every socket shares the lease table and the counters.
    let shared = (&leases, metrics);
    for (interface, address) in present {
        start_on_interface(&config, shared, &interface, address, stopped.clone());
    }
    if let Some(SocketAddr::V4(address)) = listen {
        start_relayed_only(&config, shared, address, stopped);
    }
    Some(leases)
}

/// The `dhcp_listen` socket: bound to `address` on no interface, answering relayed requests.
fn start_relayed_only(
    config: &DhcpConfig,
    shared: Shared<'_>,
    address: SocketAddrV4,
    stopped: watch::Receiver<()>,
) {
    let bound = bind_dhcp_socket(None, address)
        .map_err(|error| error.to_string())
        .and_then(|socket| {
            tokio::net::UdpSocket::from_std(socket).map_err(|error| error.to_string())
        });
    let socket = match bound {
        Ok(socket) => socket,
        Err(error) => {
            eprintln!("  dhcp    cannot listen on {address}: {error} (the rest runs)");
            return;
        }
    };
    let shown = socket
        .local_addr()
        .map_or_else(|_| address.to_string(), |bound| bound.to_string());
    eprintln!("  dhcp    {shown}: serving relayed requests (giaddr set)");
    spawn_server(
        socket,
        config.relayed_only(*address.ip()),
        shared,
        shown,
        stopped,
    );
}

/// The lease table and the counters every DHCP socket of the controller shares.
type Shared<'a> = (&'a Arc<DhcpLeases>, &'a Arc<Metrics>);

fn spawn_server(
    socket: tokio::net::UdpSocket,
    config: DhcpConfig,
    (leases, metrics): Shared<'_>,
    name: String,
    mut stopped: watch::Receiver<()>,
) {
    let (leases, metrics) = (leases.clone(), metrics.clone());
    tokio::spawn(async move {
        let shutdown = async move {
            let _ = stopped.changed().await;
        };
        if let Err(error) = serve(socket, config, leases, metrics, shutdown).await {
            eprintln!("  dhcp    {name}: stopped: {error}");
        }
    });
}

fn start_on_interface(
    config: &DhcpConfig,
    shared: Shared<'_>,
    interface: &str,
    address: Ipv4Addr,
    stopped: watch::Receiver<()>,
) {
    let bound = bind_dhcp_socket(
        Some(interface),
        SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 67),
    )
    .map_err(|error| error.to_string())
    .and_then(|socket| tokio::net::UdpSocket::from_std(socket).map_err(|error| error.to_string()));
    let socket = match bound {
        Ok(socket) => socket,
        Err(error) => {
            eprintln!("  dhcp    {interface}: cannot listen on port 67: {error} (the rest runs)");
            return;
        }
    };
    eprintln!("  dhcp    {interface} ({address}): serving");
    let config = config.on_interface(interface, address);
    spawn_server(socket, config, shared, interface.to_string(), stopped);
}
