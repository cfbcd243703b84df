//! TFTP inside `fleet serve`: bound on the fleet file's `tftp_listen`, serving the loader
//! directory. Requests are `transfer` events on the machine that holds the client's address
//! (found through the DHCP leases), through the event summaries: anyone can send a TFTP
//! request, so at most one event per kind (sent, refused) and machine (or unknown client) is
//! written per interval, the rest counted into one summary ([`crate::boot::summary`]). The
//! reports wait for the writer in a bounded queue; when it is full (a flood faster than the
//! store), a report is counted as an unknown client's without looking its machine up.

use super::{
    publish_loader_directory, serve_with, TftpConfig, TransferObserver, TransferOutcome,
    TransferReport,
};
use crate::boot::summary::{append, EventSummaries, Occurrence};
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
/// loaders were published. Each transfer's acknowledged bytes are counted into `metrics` as it
/// ends. The server stops when `shutdown` completes.
pub async fn start(
    listen: SocketAddr,
    loader_dir: PathBuf,
    store: Store,
    summaries: EventSummaries,
    metrics: Arc<crate::metrics::Metrics>,
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
    let (reports, mut received) = tokio::sync::mpsc::channel::<TransferReport>(REPORTS_QUEUED);
    let overflow = (summaries.clone(), store.clone());
    let observer: TransferObserver = Arc::new(move |report| {
        metrics.tftp_sent(report.counters.bytes);
        if let Err(full) = reports.try_send(report) {
            let report = full.into_inner();
            let (summaries, store) = overflow.clone();
            if let Some(event) = summaries.note(occurrence(&report, None)) {
                tokio::spawn(async move { append(&store, &event).await });
            }
        }
    });
    tokio::spawn(async move {
        if let Err(error) = serve_with(socket, config, Some(observer), shutdown).await {
            eprintln!("  tftp    stopped: {error}");
        }
    });
    // Events are written off the transfer path, in order.
    tokio::spawn(async move {
        while let Some(report) = received.recv().await {
            let machine = machine_at(&store, report.peer.ip()).await;
            summaries.record(&store, occurrence(&report, machine)).await;
        }
    });
    Ok((address, published))
}

/// Reports waiting for the event writer; beyond, they are counted without a store lookup.
const REPORTS_QUEUED: usize = 1024;

/// A request's report as an occurrence for the summaries: its own event if it is the first of
/// its kind for `machine` (or for unknown clients) in the interval.
fn occurrence(report: &TransferReport, machine: Option<String>) -> Occurrence {
    let completed = report.outcome == TransferOutcome::Completed;
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
    let what = match (completed, machine.is_some()) {
        (true, true) => "TFTP files sent",
        (true, false) => "TFTP files sent to unknown clients",
        (false, true) => "TFTP requests refused or failed",
        (false, false) => "TFTP requests from unknown clients refused or failed",
    };
    let event = NewEvent {
        machine: machine.clone(),
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
    Occurrence {
        what,
        machine,
        variant: None,
        source: Some(report.peer.ip().to_canonical()),
        sample: Some(report.path.clone()),
        event,
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
    store.machine_name_by_mac(lease.mac).await.ok()?
}
