//! Starting DHCP in the controller: one socket per boot interface that exists on the host, all
//! sharing one lease table. An absent interface (or one without an IPv4 address) is reported and
//! skipped; the rest of the controller runs either way.

use crate::boot::dhcp::{bind_dhcp_socket, interface_ipv4, serve, DhcpConfig, DhcpLeases};
use crate::config::Fleet;
use crate::metrics::Metrics;
use crate::store::Store;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;
use tokio::sync::watch;

/// Starts DHCP on each of `interfaces` that exists; returns the lease table to close at the end
/// (it writes what is still queued), or `None` when DHCP runs nowhere.
pub async fn start_dhcp(
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
    if present.is_empty() {
        return None;
    }
    let config = match DhcpConfig::from_fleet(fleet) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("  dhcp    not started: {error}");
            return None;
        }
    };
    let leases = match DhcpLeases::load(store.clone(), &config).await {
        Ok(leases) => leases,
        Err(error) => {
            eprintln!("  dhcp    not started: cannot load the leases: {error}");
            return None;
        }
    };
    for (interface, address) in present {
        start_on_interface(
            &config,
            &leases,
            metrics,
            &interface,
            address,
            stopped.clone(),
        );
    }
    Some(leases)
}

fn start_on_interface(
    config: &DhcpConfig,
    leases: &Arc<DhcpLeases>,
    metrics: &Arc<Metrics>,
    interface: &str,
    address: Ipv4Addr,
    mut stopped: watch::Receiver<()>,
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
    let (leases, metrics) = (leases.clone(), metrics.clone());
    let name = interface.to_string();
    tokio::spawn(async move {
        let shutdown = async move {
            let _ = stopped.changed().await;
        };
        if let Err(error) = serve(socket, config, leases, metrics, shutdown).await {
            eprintln!("  dhcp    {name}: stopped: {error}");
        }
    });
}
