//! The TFTP server for first-stage boot loaders: read-only, RFC 1350 with options blksize
//! (RFC 2348), tsize and timeout (RFC 2349) and windowsize (RFC 7440).
//!
//! Why our own implementation on tokio rather than the async-tftp crate: async-tftp (0.4.2,
//! maintained, takes a bound socket, has windowsize) ignores a client's ERROR packet during a
//! transfer and keeps retransmitting (up to 100 times the timeout by default), runs on its own
//! async-io executor beside tokio, and tells its handler only when a transfer starts, never how
//! it ended. This module keeps the same shape (a bound socket, a root directory) so that either
//! could be put behind it.
//!
//! Invariants: nothing is ever written; a request resolves only to a regular file whose real
//! path is under the root's real path (or to a generated file); parsing never panics on any
//! datagram; a client's ERROR ends its transfer at once; each transfer runs on its own socket.

mod blocks;
pub mod controller;
mod files;
mod options;
pub mod packet;
mod transfer;

pub use files::{
    loader_files, publish_loader_directory, relative_path, GeneratedFiles, RefusedPath,
};
pub use options::{negotiate, Limits, Negotiated, DEFAULT_BLOCK_SIZE, LARGEST_BLOCK_SIZE};
pub use transfer::{TransferCounters, TransferOutcome};

use packet::ErrorCode;
use std::collections::HashSet;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;
use tokio::task::JoinSet;

/// What the server serves and how.
#[derive(Debug, Clone)]
pub struct TftpConfig {
    /// The boot-loader directory (e.g. Debian's `ipxe` package: /usr/lib/ipxe).
    pub root: PathBuf,
    pub generated: GeneratedFiles,
    pub limits: Limits,
    /// Retransmissions of one window before the transfer is given up.
    pub max_retries: u32,
    /// Transfers accepted at once; requests beyond get a "busy" error.
    pub max_transfers: usize,
    /// Transfers sending at once, each on a thread of its own; accepted ones beyond wait for a
    /// thread (a rack powering on asks for its loaders together: 500 threads at once held
    /// 200 MiB in a 1,000-machine bench).
    pub max_threads: usize,
}

impl TftpConfig {
    pub fn new(root: PathBuf) -> TftpConfig {
        TftpConfig {
            root,
            generated: GeneratedFiles::default(),
            limits: Limits::default(),
            max_retries: 5,
            max_transfers: 512,
            max_threads: 64,
        }
    }
}

/// What one request came to, for events and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransferReport {
    pub peer: SocketAddr,
    /// The file name as the client asked for it.
    pub path: String,
    pub outcome: TransferOutcome,
    /// The file's size, when it was found.
    pub size: Option<u64>,
    pub block_size: usize,
    pub window_size: u16,
    pub counters: TransferCounters,
    pub elapsed: Duration,
}

/// Called once per request when it ends (completed, refused, failed).
pub type TransferObserver = Arc<dyn Fn(TransferReport) + Send + Sync>;

/// Serves `root` read-only on the bound `socket` until `shutdown` completes.
pub async fn serve(
    socket: UdpSocket,
    root: PathBuf,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    serve_with(socket, TftpConfig::new(root), None, shutdown).await
}

/// Serves with full settings, telling `observer` about every request.
pub async fn serve_with(
    socket: UdpSocket,
    config: TftpConfig,
    observer: Option<TransferObserver>,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    let server = Server {
        socket,
        threads: Arc::new(tokio::sync::Semaphore::new(config.max_threads.max(1))),
        config: Arc::new(config),
        observer,
    };
    server.run(shutdown).await
}

struct Server {
    socket: UdpSocket,
    /// One permit per transfer thread (`TftpConfig::max_threads`).
    threads: Arc<tokio::sync::Semaphore>,
    config: Arc<TftpConfig>,
    observer: Option<TransferObserver>,
}

impl Server {
    async fn run(&self, shutdown: impl Future<Output = ()> + Send) -> std::io::Result<()> {
        tokio::pin!(shutdown);
        // Room for any UDP datagram: an oversized one is read whole and then refused.
        let mut buffer = vec![0u8; 65536];
        let mut transfers: JoinSet<SocketAddr> = JoinSet::new();
        let mut peers_in_transfer: HashSet<SocketAddr> = HashSet::new();
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                Some(finished) = transfers.join_next(), if !transfers.is_empty() => {
                    if let Ok(peer) = finished {
                        peers_in_transfer.remove(&peer);
                    }
                }
                received = self.socket.recv_from(&mut buffer) => match received {
                    Ok((length, peer)) => {
                        self.handle_datagram(&buffer[..length], peer, &mut transfers, &mut peers_in_transfer).await;
                    }
                    // Transient (e.g. an ICMP error from an earlier reply): keep serving.
                    Err(error) => {
                        tracing::debug!("tftp: receive error: {error}");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                },
            }
        }
        transfers.shutdown().await;
        Ok(())
    }

    async fn handle_datagram(
        &self,
        datagram: &[u8],
        peer: SocketAddr,
        transfers: &mut JoinSet<SocketAddr>,
        peers_in_transfer: &mut HashSet<SocketAddr>,
    ) {
        let request = match packet::parse_request(datagram) {
            Ok(request) => request,
            Err(reason) => {
                // Answer only what claims to be a request; anything else is dropped silently.
                if packet::looks_like_request(datagram) {
                    self.reply_error(peer, ErrorCode::IllegalOperation, reason)
                        .await;
                }
                return;
            }
        };
        if request.write {
            self.reply_error(peer, ErrorCode::AccessViolation, "this server is read-only")
                .await;
            self.report_refusal(peer, &request.filename, "write request refused");
            return;
        }
        // A retransmitted request from a client already being served: the transfer answers it.
        if peers_in_transfer.contains(&peer) {
            return;
        }
        if transfers.len() >= self.config.max_transfers {
            self.reply_error(peer, ErrorCode::NotDefined, "server busy, try again")
                .await;
            return;
        }
        peers_in_transfer.insert(peer);
        let config = Arc::clone(&self.config);
        let threads = Arc::clone(&self.threads);
        let observer = self.observer.clone();
        let local = self.socket.local_addr().ok();
        transfers.spawn(async move {
            let report = serve_request(config, threads, local, peer, request).await;
            log_report(&report);
            if let Some(observer) = observer {
                observer(report);
            }
            peer
        });
    }

    async fn reply_error(&self, peer: SocketAddr, code: ErrorCode, message: &str) {
        let _ = self
            .socket
            .send_to(&packet::encode_error(code, message), peer)
            .await;
    }

    fn report_refusal(&self, peer: SocketAddr, path: &str, reason: &str) {
        let report = TransferReport {
            peer,
            path: path.to_string(),
            outcome: TransferOutcome::Refused(reason.to_string()),
            size: None,
            block_size: DEFAULT_BLOCK_SIZE,
            window_size: 1,
            counters: TransferCounters::default(),
            elapsed: Duration::ZERO,
        };
        log_report(&report);
        if let Some(observer) = &self.observer {
            observer(report);
        }
    }
}

/// Runs one read request on a new socket (the transfer's own port).
async fn serve_request(
    config: Arc<TftpConfig>,
    threads: Arc<tokio::sync::Semaphore>,
    local: Option<SocketAddr>,
    peer: SocketAddr,
    request: packet::Request,
) -> TransferReport {
    let started = Instant::now();
    let mut report = TransferReport {
        peer,
        path: request.filename.clone(),
        outcome: TransferOutcome::Completed,
        size: None,
        block_size: DEFAULT_BLOCK_SIZE,
        window_size: 1,
        counters: TransferCounters::default(),
        elapsed: Duration::ZERO,
    };
    let socket = match transfer_socket(local, peer) {
        Ok(socket) => socket,
        Err(error) => {
            report.outcome =
                TransferOutcome::Failed(format!("cannot open a transfer socket: {error}"));
            return report;
        }
    };
    let source = match files::resolve(&config.root, &config.generated, &request.filename).await {
        Ok(source) => source,
        Err(refusal) => {
            let code = match refusal {
                RefusedPath::NotFound | RefusedPath::NotAFile => ErrorCode::FileNotFound,
                _ => ErrorCode::AccessViolation,
            };
            let _ = socket.send(&packet::encode_error(code, &refusal.to_string()));
            report.outcome = TransferOutcome::Refused(refusal.to_string());
            return report;
        }
    };
    let size = source.size();
    // Netascii (RFC 1350) sends the file converted, whose length is not known before reading
    // it: tsize is left unanswered then, as tftpd-hpa does.
    let netascii = request.mode == "netascii";
    let requested: Vec<(String, String)> = request
        .options
        .iter()
        .filter(|(name, _)| !(netascii && name == "tsize"))
        .cloned()
        .collect();
    let negotiated = options::negotiate(&requested, size, &config.limits);
    report.size = Some(size);
    report.block_size = negotiated.block_size;
    report.window_size = negotiated.window_size;
    let plan = transfer::TransferPlan {
        negotiated,
        max_retries: config.max_retries,
        netascii,
    };
    let (outcome, counters) = send_on_own_thread(threads, socket, source, plan).await;
    report.outcome = outcome;
    report.counters = counters;
    report.elapsed = started.elapsed();
    report
}

/// Runs the transfer on a thread of its own (see `transfer` for why) and waits for it without
/// blocking the runtime. When this future is dropped (the server shuts down), the thread is
/// told to stop and ends within `transfer::STOP_CHECK_INTERVAL`.
async fn send_on_own_thread(
    threads: Arc<tokio::sync::Semaphore>,
    socket: std::net::UdpSocket,
    source: files::Source,
    plan: transfer::TransferPlan,
) -> (TransferOutcome, TransferCounters) {
    let Ok(permit) = threads.acquire_owned().await else {
        let failed = TransferOutcome::Failed("the server is shutting down".into());
        return (failed, TransferCounters::default());
    };
    let stop = Arc::new(AtomicBool::new(false));
    let _stop_when_dropped = StopOnDrop(Arc::clone(&stop));
    let (finished, outcome) = tokio::sync::oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name("tftp-transfer".into())
        // The transfer keeps its buffers on the heap; hundreds may run at once.
        .stack_size(256 * 1024)
        .spawn(move || {
            let mut counters = TransferCounters::default();
            let outcome = match transfer::prepare_socket(&socket, plan.negotiated.timeout) {
                Ok(()) => transfer::send_file(&socket, source, &plan, &stop, &mut counters),
                Err(error) => TransferOutcome::Failed(format!("cannot set the socket up: {error}")),
            };
            let _ = finished.send((outcome, counters));
            drop(permit);
        });
    if let Err(error) = spawned {
        let failed = TransferOutcome::Failed(format!("cannot start a transfer thread: {error}"));
        return (failed, TransferCounters::default());
    }
    outcome.await.unwrap_or_else(|_| {
        let failed = TransferOutcome::Failed("the transfer thread ended without a word".into());
        (failed, TransferCounters::default())
    })
}

struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// A socket on a fresh port of the server's address, connected to the client.
/// A blocking socket: the transfer's thread waits in `recv` (see `transfer`).
fn transfer_socket(
    local: Option<SocketAddr>,
    peer: SocketAddr,
) -> std::io::Result<std::net::UdpSocket> {
    let mut address = local.unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
    address.set_port(0);
    let socket = std::net::UdpSocket::bind(address)?;
    socket.connect(peer)?;
    Ok(socket)
}

fn log_report(report: &TransferReport) {
    match &report.outcome {
        TransferOutcome::Completed => tracing::info!(
            peer = %report.peer, path = %report.path, bytes = report.counters.bytes,
            block_size = report.block_size, window_size = report.window_size,
            "tftp: sent in {:?}", report.elapsed
        ),
        outcome => tracing::info!(peer = %report.peer, path = %report.path, "tftp: {outcome:?}"),
    }
}
