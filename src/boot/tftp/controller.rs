//! TFTP inside `fleet serve`: bound on the fleet file's `tftp_listen`, serving the loader
//! directory, every request recorded as a `transfer` event on the machine that holds the
//! client's address (found through the DHCP leases).

use super::{
    publish_loader_directory, serve_with, TftpConfig, TransferObserver, TransferOutcome,
    TransferReport,
};
use crate::store::{NewEvent, Store};
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum TftpStartError {
    #[error(
        "cannot bind TFTP on {address}: {source} (port 69 needs root, or another TFTP server runs)"
    )]
    Bind {
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot read the loader directory {path}: {source} (install Debian's `ipxe` package or set loader_dir)")]
    LoaderDirectory {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Binds and starts the server in the background; returns the bound address and how many
/// loaders were published. The server stops when `shutdown` completes.
pub async fn start(
    listen: SocketAddr,
    loader_dir: PathBuf,
    store: Store,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(SocketAddr, usize), TftpStartError> {
    let config = TftpConfig::new(loader_dir.clone());
    let published = publish_loader_directory(&loader_dir, &config.generated).map_err(|source| {
        TftpStartError::LoaderDirectory {
            path: loader_dir.clone(),
            source,
        }
    })?;
    let socket = tokio::net::UdpSocket::bind(listen)
        .await
        .map_err(|source| TftpStartError::Bind {
            address: listen,
            source,
        })?;
    let address = socket.local_addr().unwrap_or(listen);
    let (reports, mut received) = tokio::sync::mpsc::unbounded_channel::<TransferReport>();
    let observer: TransferObserver = Arc::new(move |report| {
        let _ = reports.send(report);
    });
    tokio::spawn(async move {
        if let Err(error) = serve_with(socket, config, Some(observer), shutdown).await {
            eprintln!("  tftp    stopped: {error}");
        }
    });
    // Events are written off the transfer path, in order.
    tokio::spawn(async move {
        while let Some(report) = received.recv().await {
            record_transfer(&store, &report).await;
        }
    });
    Ok((address, published))
}

async fn record_transfer(store: &Store, report: &TransferReport) {
    let machine = machine_at(store, report.peer.ip()).await;
    let (reason, outcome) = match &report.outcome {
        TransferOutcome::Completed => (
            format!("TFTP sent {}", report.path),
            "completed".to_string(),
        ),
        other => (
            format!("TFTP {} not sent: {other:?}", report.path),
            format!("{other:?}"),
        ),
    };
    let event = NewEvent {
        machine,
        kind: "transfer".to_string(),
        actor: "boot".to_string(),
        action: None,
        from_status: None,
        to_status: None,
        reason: Some(reason),
        detail: serde_json::json!({
            "protocol": "tftp",
            "peer": report.peer.to_string(),
            "path": report.path,
            "outcome": outcome,
            "bytes": report.counters.bytes,
            "size": report.size,
            "block_size": report.block_size,
            "window_size": report.window_size,
            "retransmissions": report.counters.retransmissions,
            "milliseconds": report.elapsed.as_millis() as u64,
        }),
    };
    if let Err(error) = store.append_event(&event).await {
        tracing::warn!("cannot record a TFTP transfer event: {error}");
    }
}

/// The machine holding a DHCP lease on `ip`, if any.
async fn machine_at(store: &Store, ip: IpAddr) -> Option<String> {
    let ipv4 = match ip {
        IpAddr::V4(ipv4) => ipv4,
        IpAddr::V6(ipv6) => ipv6.to_ipv4_mapped()?,
    };
    let lease = store.lease_by_ip(ipv4).await.ok()??;
    if let Some(machine) = lease.machine {
        return Some(machine);
    }
    let machine = store.machine_by_mac(lease.mac).await.ok()??;
    Some(machine.name.as_str().to_string())
}
