//! fleet's TFTP server against TFTP clients nobody here wrote (tftp-hpa, curl, atftp; installed
//! by .ci/setup-netboot), over loopback only, plus raw datagrams for what no client sends on
//! purpose (an ERROR mid-transfer, garbage).

use fleet::boot::tftp::{
    publish_loader_directory, serve_with, TftpConfig, TransferOutcome, TransferReport,
};
use rand::{Rng, SeedableRng};
use sha2::{Digest, Sha256};
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tempfile::TempDir;

const DEBIAN_LOADERS: &str = "/usr/lib/ipxe";

/// A TFTP server on 127.0.0.1 (random port) in a thread of its own; stopped when dropped.
struct TestTftp {
    address: SocketAddr,
    root: TempDir,
    reports: Arc<Mutex<Vec<TransferReport>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TestTftp {
    /// Serves a fresh directory holding a copy of iPXE's BIOS loader, a 1 MiB random file, a
    /// file exactly 4 blocks of 512 long, and a symbolic link that leads out of the root.
    fn start() -> TestTftp {
        let root = tempfile::tempdir().expect("a temporary root");
        std::fs::copy(loader("undionly.kpxe"), root.path().join("undionly.kpxe")).expect("copied");
        std::fs::write(root.path().join("random.bin"), random_bytes(1 << 20, 7)).expect("written");
        std::fs::write(root.path().join("exact.bin"), random_bytes(2048, 8)).expect("written");
        std::os::unix::fs::symlink("/etc/hostname", root.path().join("escape")).expect("symlink");
        let config = TftpConfig::new(root.path().to_path_buf());
        Self::start_with(root, config)
    }

    fn start_with(root: TempDir, config: TftpConfig) -> TestTftp {
        let reports: Arc<Mutex<Vec<TransferReport>>> = Arc::default();
        let observer_reports = Arc::clone(&reports);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (address_sender, address_receiver) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("a runtime");
            runtime.block_on(async move {
                let socket = tokio::net::UdpSocket::bind("127.0.0.1:0")
                    .await
                    .expect("bound");
                address_sender
                    .send(socket.local_addr().expect("an address"))
                    .expect("sent");
                let observer = Arc::new(move |report: TransferReport| {
                    observer_reports.lock().expect("reports").push(report);
                });
                let shutdown = async {
                    let _ = stopped.await;
                };
                serve_with(socket, config, Some(observer), shutdown)
                    .await
                    .expect("served");
            });
        });
        let address = address_receiver
            .recv_timeout(Duration::from_secs(10))
            .expect("the server starts");
        TestTftp {
            address,
            root,
            reports,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    fn host(&self) -> String {
        self.address.ip().to_string()
    }

    fn port(&self) -> String {
        self.address.port().to_string()
    }

    /// Waits until `count` requests have been reported (reports come when a transfer ends).
    fn wait_for_reports(&self, count: usize) -> Vec<TransferReport> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let reports = self.reports.lock().expect("reports").clone();
            if reports.len() >= count || Instant::now() > deadline {
                return reports;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for TestTftp {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn loader(name: &str) -> PathBuf {
    let path = Path::new(DEBIAN_LOADERS).join(name);
    assert!(
        path.exists(),
        "{} is missing: run .ci/setup-netboot (Debian's ipxe package)",
        path.display()
    );
    path
}

fn random_bytes(length: usize, seed: u64) -> Vec<u8> {
    let mut generator = rand::rngs::StdRng::seed_from_u64(seed);
    (0..length).map(|_| generator.gen()).collect()
}

fn sha256_of(path: &Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(path).unwrap_or_default()))
}

/// Runs a client, bounded in time (a stuck client fails the test instead of hanging it).
fn run_client(program: &str, arguments: &[&str]) -> Output {
    let mut command = Command::new("timeout");
    command
        .arg("30")
        .arg(program)
        .args(arguments)
        .stdin(Stdio::null());
    let output = command
        .output()
        .unwrap_or_else(|error| panic!("{program} runs: {error}"));
    assert_ne!(
        output.status.code(),
        Some(124),
        "{program} {arguments:?} timed out"
    );
    output
}

fn require(program: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .map(|output| output.status.success())
        .unwrap_or(false);
    assert!(found, "{program} is missing: run .ci/setup-netboot");
}

/// `tftp -m binary HOST PORT -c COMMAND...` (tftp-hpa takes the command as separate words).
fn tftp_hpa(server: &TestTftp, command: &str) -> Output {
    require("tftp");
    let (host, port) = (server.host(), server.port());
    let mut arguments = vec!["-m", "binary", host.as_str(), port.as_str(), "-c"];
    arguments.extend(command.split(' '));
    run_client("tftp", &arguments)
}

fn text_of(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[test]
fn tftp_hpa_fetches_a_loader_with_default_options() {
    let server = TestTftp::start();
    let out = tempfile::tempdir().expect("a directory");
    let target = out.path().join("undionly.kpxe");
    let output = tftp_hpa(&server, &format!("get undionly.kpxe {}", target.display()));
    assert!(output.status.success(), "tftp-hpa: {}", text_of(&output));
    assert_eq!(sha256_of(&target), sha256_of(&loader("undionly.kpxe")));
    let reports = server.wait_for_reports(1);
    assert_eq!(reports[0].outcome, TransferOutcome::Completed);
    assert_eq!(reports[0].block_size, 512, "tftp-hpa asks for no options");
    assert_eq!(
        reports[0].counters.bytes,
        std::fs::metadata(&target).expect("fetched").len()
    );
}

/// Transfers beyond `max_threads` wait for a thread instead of starting one each: with one
/// thread, four curl clients at once all get the whole file (a thread not handed back would
/// leave three of them without an answer).
#[test]
fn transfers_beyond_the_thread_limit_wait_their_turn_and_complete() {
    require("curl");
    let root = tempfile::tempdir().expect("a temporary root");
    std::fs::write(root.path().join("random.bin"), random_bytes(1 << 20, 9)).expect("written");
    let mut config = TftpConfig::new(root.path().to_path_buf());
    config.max_threads = 1;
    let server = TestTftp::start_with(root, config);
    let out = tempfile::tempdir().expect("a directory");
    let url = format!("tftp://{}/random.bin", server.address);
    let clients: Vec<_> = (0..4)
        .map(|index| {
            let target = out.path().join(format!("random-{index}.bin"));
            let child = Command::new("curl")
                .args(["--silent", "--show-error", "--tftp-blksize", "1468", "-o"])
                .arg(&target)
                .arg(&url)
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("curl starts (installed by .ci/setup-netboot)");
            (target, child)
        })
        .collect();
    let expected = sha256_of(&server.root.path().join("random.bin"));
    for (target, child) in clients {
        let output = child.wait_with_output().expect("curl ends");
        assert!(output.status.success(), "curl: {}", text_of(&output));
        assert_eq!(sha256_of(&target), expected, "{}", target.display());
    }
    let reports = server.wait_for_reports(4);
    assert_eq!(reports.len(), 4, "{reports:?}");
    assert!(
        reports
            .iter()
            .all(|report| report.outcome == TransferOutcome::Completed),
        "{reports:?}"
    );
}

#[test]
fn a_file_of_whole_blocks_ends_with_an_empty_block() {
    let server = TestTftp::start();
    let out = tempfile::tempdir().expect("a directory");
    let target = out.path().join("exact.bin");
    let output = tftp_hpa(&server, &format!("get exact.bin {}", target.display()));
    assert!(output.status.success(), "tftp-hpa: {}", text_of(&output));
    assert_eq!(
        sha256_of(&target),
        sha256_of(&server.root.path().join("exact.bin"))
    );
}

#[test]
fn curl_fetches_with_blksize_1468_and_tsize_is_answered() {
    require("curl");
    let server = TestTftp::start();
    let out = tempfile::tempdir().expect("a directory");
    let target = out.path().join("random.bin");
    let url = format!("tftp://{}/random.bin", server.address);
    let output = run_client(
        "curl",
        &[
            "--silent",
            "--show-error",
            "--verbose",
            "--tftp-blksize",
            "1468",
            "-o",
            &target.to_string_lossy(),
            &url,
        ],
    );
    assert!(output.status.success(), "curl: {}", text_of(&output));
    assert_eq!(
        sha256_of(&target),
        sha256_of(&server.root.path().join("random.bin"))
    );
    // curl asks for tsize 0 and prints what the OACK answered.
    let text = text_of(&output);
    assert!(
        text.contains("got option=(tsize) value=(1048576)"),
        "tsize not answered: {text}"
    );
    assert!(
        text.contains("got option=(blksize) value=(1468)"),
        "blksize not answered: {text}"
    );
    let reports = server.wait_for_reports(1);
    assert_eq!(
        (reports[0].block_size, reports[0].size),
        (1468, Some(1 << 20))
    );
}

#[test]
fn atftp_fetches_with_blksize_1468_and_with_a_window() {
    require("atftp");
    let server = TestTftp::start();
    let out = tempfile::tempdir().expect("a directory");
    let expected = sha256_of(&server.root.path().join("random.bin"));
    for (index, options) in [vec!["blksize 1468"], vec!["blksize 1468", "windowsize 16"]]
        .iter()
        .enumerate()
    {
        let target = out.path().join(format!("random-{index}.bin"));
        let target_text = target.to_string_lossy().to_string();
        let mut arguments = Vec::new();
        for option in options {
            arguments.extend(["--option", option]);
        }
        arguments.extend(["-g", "-r", "random.bin", "-l", &target_text]);
        let host = server.host();
        let port = server.port();
        arguments.extend([host.as_str(), port.as_str()]);
        let output = run_client("atftp", &arguments);
        assert!(
            output.status.success(),
            "atftp {options:?}: {}",
            text_of(&output)
        );
        assert_eq!(sha256_of(&target), expected, "atftp {options:?}");
    }
    let reports = server.wait_for_reports(2);
    let mut negotiated: Vec<_> = reports
        .iter()
        .map(|report| (report.block_size, report.window_size))
        .collect();
    negotiated.sort();
    assert_eq!(negotiated, vec![(1468, 1), (1468, 16)]);
    assert!(reports
        .iter()
        .all(|report| report.outcome == TransferOutcome::Completed));
}

#[test]
fn debian_loader_links_are_served_when_published() {
    // /usr/lib/ipxe/ipxe.efi is a link to /boot/ipxe.efi: refused as a link out of the root,
    // served once the loader directory is published at start-up.
    let root = tempfile::tempdir().expect("unused");
    let config = TftpConfig::new(PathBuf::from(DEBIAN_LOADERS));
    publish_loader_directory(Path::new(DEBIAN_LOADERS), &config.generated).expect("published");
    let server = TestTftp::start_with(root, config);
    let out = tempfile::tempdir().expect("a directory");
    let target = out.path().join("ipxe.efi");
    let output = tftp_hpa(&server, &format!("get ipxe.efi {}", target.display()));
    assert!(output.status.success(), "tftp-hpa: {}", text_of(&output));
    assert_eq!(sha256_of(&target), sha256_of(&loader("ipxe.efi")));
}

/// Some firmware asks for `/undionly.kpxe`: served from the root, as tftpd-hpa and dnsmasq do
/// (curl sends the URL's path after its first slash, so `//undionly.kpxe` asks for
/// `/undionly.kpxe`).
#[test]
fn a_leading_slash_names_the_root() {
    require("curl");
    let server = TestTftp::start();
    let out = tempfile::tempdir().expect("a directory");
    let target = out.path().join("undionly.kpxe");
    let url = format!("tftp://{}//undionly.kpxe", server.address);
    let output = run_client(
        "curl",
        &[
            "--silent",
            "--show-error",
            "-o",
            &target.to_string_lossy(),
            &url,
        ],
    );
    assert!(output.status.success(), "curl: {}", text_of(&output));
    assert_eq!(sha256_of(&target), sha256_of(&loader("undionly.kpxe")));
    let target = out.path().join("by-tftp-hpa.kpxe");
    let output = tftp_hpa(&server, &format!("get /undionly.kpxe {}", target.display()));
    assert!(output.status.success(), "tftp-hpa: {}", text_of(&output));
    assert_eq!(sha256_of(&target), sha256_of(&loader("undionly.kpxe")));
    let reports = server.wait_for_reports(2);
    for report in &reports {
        assert_eq!(report.path, "/undionly.kpxe");
        assert_eq!(report.outcome, TransferOutcome::Completed);
    }
}

/// Netascii (RFC 1350): LF goes out as CR LF and CR as CR NUL, so that tftp-hpa in ascii mode
/// turns the text back into the file's own bytes.
#[test]
fn netascii_mode_converts_line_ends() {
    require("tftp");
    let server = TestTftp::start();
    let text = b"#!ipxe\nchain http://x/boot.ipxe\r\nbare\rcarriage return\n".repeat(100);
    std::fs::write(server.root.path().join("boot.txt"), &text).expect("written");
    let out = tempfile::tempdir().expect("a directory");
    let target = out.path().join("boot.txt");
    let (host, port) = (server.host(), server.port());
    let output = run_client(
        "tftp",
        &[
            "-m",
            "ascii",
            host.as_str(),
            port.as_str(),
            "-c",
            "get",
            "boot.txt",
            &target.to_string_lossy(),
        ],
    );
    assert!(output.status.success(), "tftp-hpa: {}", text_of(&output));
    assert_eq!(
        String::from_utf8_lossy(&std::fs::read(&target).expect("fetched")),
        String::from_utf8_lossy(&text)
    );
    let reports = server.wait_for_reports(1);
    assert_eq!(reports[0].outcome, TransferOutcome::Completed);
    // Per 54-byte line: 3 LFs become CR LF, 2 CRs become CR NUL.
    assert_eq!(reports[0].counters.bytes, 100 * (54 + 5));
}

#[test]
fn paths_that_escape_the_root_are_refused() {
    let server = TestTftp::start();
    let out = tempfile::tempdir().expect("a directory");
    let cases = [
        ("../etc/hostname", "Error code 2"),
        ("undionly.kpxe/../../etc/hostname", "Error code 2"),
        // A leading slash names the root (as tftpd-hpa --secure and dnsmasq take it): there is
        // no etc/hostname under it, and climbing out from it is refused.
        ("/etc/hostname", "Error code 1"),
        ("/../etc/hostname", "Error code 2"),
        ("escape", "Error code 2"),
        ("/escape", "Error code 2"),
        ("missing.bin", "Error code 1"),
    ];
    for (index, (path, expected)) in cases.iter().enumerate() {
        let target = out.path().join(format!("out-{index}"));
        let output = tftp_hpa(&server, &format!("get {path} {}", target.display()));
        let text = text_of(&output);
        assert!(
            text.contains(expected),
            "{path}: expected {expected}, got {text}"
        );
        let fetched = std::fs::metadata(&target)
            .map(|metadata| metadata.len())
            .unwrap_or(0);
        assert_eq!(fetched, 0, "{path}: nothing may be sent");
    }
    let reports = server.wait_for_reports(cases.len());
    assert!(
        reports
            .iter()
            .all(|report| matches!(report.outcome, TransferOutcome::Refused(_))),
        "{reports:?}"
    );
}

#[test]
fn write_requests_are_refused() {
    let server = TestTftp::start();
    let local = tempfile::NamedTempFile::new().expect("a file");
    std::fs::write(local.path(), b"not wanted").expect("written");
    let output = tftp_hpa(
        &server,
        &format!("put {} uploaded.bin", local.path().display()),
    );
    let text = text_of(&output);
    assert!(
        text.contains("Error code 2") && text.contains("read-only"),
        "{text}"
    );
    assert!(!server.root.path().join("uploaded.bin").exists());
}

/// Asks for random.bin in plain lock-step from a raw socket and reads the first answer: the
/// socket, the transfer's address, the answer (in a buffer to read more into) and its length.
fn request_random_bin(server: &TestTftp) -> (UdpSocket, SocketAddr, [u8; 1024], usize) {
    let client = UdpSocket::bind("127.0.0.1:0").expect("bound");
    client
        .set_read_timeout(Some(Duration::from_secs(3)))
        .expect("timeout set");
    client
        .send_to(b"\x00\x01random.bin\x00octet\x00", server.address)
        .expect("sent");
    let mut buffer = [0u8; 1024];
    let (length, transfer) = client.recv_from(&mut buffer).expect("the first block");
    (client, transfer, buffer, length)
}

#[test]
fn a_client_error_ends_the_transfer_at_once() {
    let server = TestTftp::start();
    let (client, transfer, mut buffer, length) = request_random_bin(&server);
    assert_eq!(
        &buffer[..4],
        b"\x00\x03\x00\x01",
        "DATA block 1 ({length} bytes)"
    );
    client
        .send_to(b"\x00\x05\x00\x00giving up\x00", transfer)
        .expect("sent");
    // The server's retransmission timeout is 1 s: nothing may come in the next 2.5 s.
    client
        .set_read_timeout(Some(Duration::from_millis(2500)))
        .expect("timeout set");
    let heard = client.recv_from(&mut buffer);
    assert!(
        heard.is_err(),
        "the server kept sending after the client's ERROR: {:?}",
        &buffer[..4]
    );
    let reports = server.wait_for_reports(1);
    assert!(
        matches!(&reports[0].outcome, TransferOutcome::ClientError { message, .. } if message == "giving up"),
        "{reports:?}"
    );
}

/// Transfers run on threads of their own (blocking recv, as tftpd-hpa): a server that shuts
/// down must still end them, not leave them retransmitting to a silent client for 5 timeouts.
#[test]
fn a_transfer_stops_sending_when_the_server_shuts_down() {
    let mut server = TestTftp::start();
    let (client, _transfer, mut buffer, _) = request_random_bin(&server);
    // The client stays silent: the server would send block 1 again every second.
    let stopped_at = Instant::now();
    drop(server.stop.take());
    server
        .thread
        .take()
        .expect("running")
        .join()
        .expect("stopped");
    assert!(
        stopped_at.elapsed() < Duration::from_secs(1),
        "shutting down waited for the transfer: {:?}",
        stopped_at.elapsed()
    );
    // What comes now is the server's ERROR (telling the client to give up), then nothing.
    client
        .set_read_timeout(Some(Duration::from_millis(2500)))
        .expect("timeout set");
    let (length, _) = client.recv_from(&mut buffer).expect("the server's ERROR");
    assert_eq!(
        &buffer[..2],
        b"\x00\x05",
        "an ERROR, not {:?}",
        &buffer[..length]
    );
    assert!(
        String::from_utf8_lossy(&buffer[4..length]).contains("shutting down"),
        "{:?}",
        String::from_utf8_lossy(&buffer[4..length])
    );
    let heard = client.recv_from(&mut buffer);
    assert!(
        heard.is_err(),
        "a packet came after the server's ERROR: {:?}",
        &buffer[..4]
    );
}

#[test]
fn garbage_datagrams_do_no_harm() {
    let server = TestTftp::start();
    let sender = UdpSocket::bind("127.0.0.1:0").expect("bound");
    let mut generator = rand::rngs::StdRng::seed_from_u64(0x7f7f);
    let valid = b"\x00\x01random.bin\x00octet\x00blksize\x001468\x00".to_vec();
    let started = Instant::now();
    for round in 0..3000 {
        let datagram = match round % 4 {
            // Random bytes of any length up to the largest loopback datagram.
            0 => {
                let length = if generator.gen_bool(0.05) {
                    generator.gen_range(1400..65507)
                } else {
                    generator.gen_range(0..64)
                };
                (0..length).map(|_| generator.gen()).collect::<Vec<u8>>()
            }
            // A valid request cut short.
            1 => valid[..generator.gen_range(0..valid.len())].to_vec(),
            // A valid request with bytes flipped (opcode kept: exercises request parsing).
            2 => {
                let mut mutated = valid.clone();
                for _ in 0..3 {
                    let at = generator.gen_range(2..mutated.len());
                    mutated[at] = generator.gen();
                }
                mutated
            }
            // A request with an oversized, absurd option list.
            _ => {
                let mut oversized = b"\x00\x01x\x00octet\x00".to_vec();
                for _ in 0..generator.gen_range(1..2000) {
                    oversized.extend_from_slice(b"blksize\x0099999999999999999999\x00");
                }
                oversized.truncate(65000);
                oversized
            }
        };
        let _ = sender.send_to(&datagram, server.address);
    }
    assert!(started.elapsed() < Duration::from_secs(60));
    // Still serving, and correctly.
    let out = tempfile::tempdir().expect("a directory");
    let target = out.path().join("undionly.kpxe");
    let output = tftp_hpa(&server, &format!("get undionly.kpxe {}", target.display()));
    assert!(
        output.status.success(),
        "tftp-hpa after garbage: {}",
        text_of(&output)
    );
    assert_eq!(sha256_of(&target), sha256_of(&loader("undionly.kpxe")));
}
