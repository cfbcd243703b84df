//! Root images by URL: the real controller downloads them once into its image cache (resumed
//! after a cut), checks the SHA-256 before serving, records the raw size and digest of a
//! compressed image, converts qcow2 to raw, serves with Range, refuses a file changed after its
//! check; `fleet images` lists them and `fleet images prune` removes what no image uses.
//!
//! The images come from a small HTTP/1.1 server written here on plain tokio sockets (so it can
//! close a response half-way on purpose, as a broken network does) on 127.0.0.1:0.

use crate::support::controller::{stdout, TestController};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;

/// Generous: the shared machine may be slow.
const LIMIT: Duration = Duration::from_secs(180);

#[derive(Default)]
struct Served {
    files: BTreeMap<String, Vec<u8>>,
    /// Paths whose next whole (non-Range) answer stops half-way.
    cut_once: BTreeSet<String>,
    /// Every request: (path, its Range header).
    requests: Vec<(String, Option<String>)>,
}

struct FileServer {
    runtime: tokio::runtime::Runtime,
    url: String,
    served: Arc<Mutex<Served>>,
}

impl FileServer {
    fn start() -> FileServer {
        let runtime = tokio::runtime::Runtime::new().expect("a runtime");
        let served = Arc::new(Mutex::new(Served::default()));
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bound");
        let url = format!("http://{}", listener.local_addr().expect("an address"));
        let state = served.clone();
        runtime.spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                tokio::spawn(answer(socket, state.clone()));
            }
        });
        FileServer {
            runtime,
            url,
            served,
        }
    }

    fn add(&self, path: &str, bytes: Vec<u8>) -> String {
        let mut served = self.served.lock().unwrap();
        served.files.insert(path.to_string(), bytes);
        format!("{}{path}", self.url)
    }

    fn cut_once(&self, path: &str) {
        self.served
            .lock()
            .unwrap()
            .cut_once
            .insert(path.to_string());
    }

    fn requests_for(&self, path: &str) -> Vec<Option<String>> {
        let served = self.served.lock().unwrap();
        let requests = served.requests.iter().filter(|(asked, _)| asked == path);
        requests.map(|(_, range)| range.clone()).collect()
    }
}

/// One request per connection: 200 (or, once, half of it and a closed socket), 206 for
/// `Range: bytes=N-` and `bytes=N-M`, 416 past the end, 404.
async fn answer(mut socket: tokio::net::TcpStream, served: Arc<Mutex<Served>>) {
    let Some(head) = crate::support::image_server::read_request_head(&mut socket).await else {
        return;
    };
    let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
    let range = head.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.eq_ignore_ascii_case("range")
            .then(|| value.trim().to_string())
    });
    let (file, cut) = {
        let mut served = served.lock().unwrap();
        served.requests.push((path.clone(), range.clone()));
        let cut = range.is_none() && served.cut_once.remove(&path);
        (served.files.get(&path).cloned(), cut)
    };
    let Some(file) = file else {
        let _ = socket
            .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            .await;
        return;
    };
    let total = file.len();
    let (status, start, end) = match range.as_deref().and_then(parse_range) {
        Some((start, _)) if start >= total => {
            let head = format!(
                "HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */{total}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
            let _ = socket.write_all(head.as_bytes()).await;
            return;
        }
        Some((start, end)) => (
            "206 Partial Content",
            start,
            end.unwrap_or(total - 1).min(total - 1),
        ),
        None => ("200 OK", 0, total.saturating_sub(1)),
    };
    let length = if total == 0 { 0 } else { end + 1 - start };
    let mut head = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {length}\r\nAccept-Ranges: bytes\r\nConnection: close\r\n"
    );
    if status.starts_with("206") {
        head.push_str(&format!("Content-Range: bytes {start}-{end}/{total}\r\n"));
    }
    head.push_str("\r\n");
    let _ = socket.write_all(head.as_bytes()).await;
    let body = &file[start..start + length];
    let body = if cut { &body[..body.len() / 2] } else { body };
    let _ = socket.write_all(body).await;
    let _ = socket.flush().await;
    // Dropped: closed, half-way through when cut.
}

fn parse_range(text: &str) -> Option<(usize, Option<usize>)> {
    let (start, end) = text.strip_prefix("bytes=")?.split_once('-')?;
    Some((start.parse().ok()?, end.parse().ok()))
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Bytes that do not compress to nothing (a simple generator), so a cut lands mid-stream.
fn disk_bytes(size: usize) -> Vec<u8> {
    let mut state = 0x2545_f491_u32;
    let mut bytes = Vec::with_capacity(size);
    for at in 0..size {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        // Half noise, half runs: compressible, but not to a few bytes.
        bytes.push(if (at / 4096) % 2 == 0 { state as u8 } else { 0 });
    }
    bytes
}

fn run(program: &str, arguments: &[&str]) {
    let output = std::process::Command::new(program)
        .args(arguments)
        .output()
        .unwrap_or_else(|error| panic!("{program} runs: {error}"));
    assert!(
        output.status.success(),
        "{program} {arguments:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn fleet_file(directory: &Path, images: &str) -> PathBuf {
    let path = directory.join("fleet.toml");
    let text = format!("[controller]\ntftp_listen = \"127.0.0.1:0\"\n\n{images}");
    std::fs::write(&path, text).expect("the fleet file");
    path
}

fn start(state: &Path, file: &Path) -> TestController {
    TestController::start_in(state, &["-f", file.to_str().expect("a path")])
}

/// `fleet images --json`'s row for IMAGE's root.
fn root_row(controller: &TestController, image: &str) -> serde_json::Value {
    let output = controller.fleet(&["images", "--json"]);
    let rows: Vec<serde_json::Value> = serde_json::from_str(&stdout(&output))
        .unwrap_or_else(|error| panic!("fleet images --json: {error}: {output:?}"));
    let row = rows
        .into_iter()
        .find(|row| row["image"] == image && row["file"] == "root");
    row.unwrap_or_else(|| panic!("no row for image {image}"))
}

/// Waits until IMAGE's root leaves downloading/checking; returns its row.
fn wait_settled(controller: &TestController, image: &str) -> serde_json::Value {
    let started = Instant::now();
    loop {
        let row = root_row(controller, image);
        let state = row["state"].as_str().unwrap_or_default().to_string();
        if state != "downloading" && state != "checking" {
            return row;
        }
        assert!(
            started.elapsed() < LIMIT,
            "image {image} still {state} after {LIMIT:?}: {row}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn get_root(
    server: &FileServer,
    controller: &TestController,
    image: &str,
    range: Option<&str>,
) -> (u16, Option<String>, Vec<u8>) {
    let url = format!("{}/boot/files/{image}/root", controller.url);
    server.runtime.block_on(async {
        let mut request = reqwest::Client::new().get(&url);
        if let Some(range) = range {
            request = request.header("Range", range);
        }
        let response = request.send().await.expect("the controller answers");
        let status = response.status().as_u16();
        let content_range = response
            .headers()
            .get("content-range")
            .map(|value| value.to_str().unwrap_or_default().to_string());
        let body = response.bytes().await.expect("a body").to_vec();
        (status, content_range, body)
    })
}

#[test]
fn a_url_image_is_downloaded_once_resumed_after_a_cut_checked_and_served_with_range() {
    let server = FileServer::start();
    let directory = tempfile::tempdir().expect("a directory");
    let raw = disk_bytes(3 << 20);
    let raw_path = directory.path().join("disk.img");
    std::fs::write(&raw_path, &raw).expect("written");
    run("xz", &["-k", "-T1", "-0", raw_path.to_str().unwrap()]);
    let compressed = std::fs::read(directory.path().join("disk.img.xz")).expect("xz wrote it");
    let url = server.add("/disk.img.xz", compressed.clone());
    server.cut_once("/disk.img.xz");
    let sha = sha256_hex(&compressed);
    let file = fleet_file(
        directory.path(),
        &format!("[images.disk]\nroot = {{ url = \"{url}\", sha256 = \"{sha}\", format = \"raw-xz\" }}\n"),
    );
    let state = directory.path().join("state");
    let mut controller = start(&state, &file);
    let row = wait_settled(&controller, "disk");
    assert_eq!(row["state"], "ready", "{row}");
    assert_eq!(row["size"], compressed.len() as u64);
    assert_eq!(row["sha256"], sha.as_str());
    assert_eq!(row["raw_size"], raw.len() as u64);
    assert_eq!(row["raw_sha256"], sha256_hex(&raw).as_str());
    assert_eq!(row["served_format"], "raw-xz");
    // The first answer was cut half-way; the second asked for the rest only.
    let requests = server.requests_for("/disk.img.xz");
    assert_eq!(requests.len(), 2, "{requests:?}");
    assert_eq!(requests[0], None);
    let resumed_at: usize = requests[1]
        .as_deref()
        .and_then(parse_range)
        .map(|(start, _)| start)
        .expect("the second request is a Range request");
    assert!(
        resumed_at > 0 && resumed_at < compressed.len(),
        "{requests:?}"
    );

    // Served with Range.
    let (status, content_range, body) =
        get_root(&server, &controller, "disk", Some("bytes=100-199"));
    assert_eq!(status, 206);
    assert_eq!(
        content_range.as_deref(),
        Some(format!("bytes 100-199/{}", compressed.len()).as_str())
    );
    assert_eq!(body, compressed[100..200]);
    let human = stdout(&controller.fleet(&["images"]));
    for part in ["disk", "root", "raw-xz", "ready", &sha[..12]] {
        assert!(human.contains(part), "fleet images lacks {part}:\n{human}");
    }

    // A second start uses the cache: nothing is fetched again.
    controller.kill();
    let mut controller = start(&state, &file);
    let row = wait_settled(&controller, "disk");
    assert_eq!(row["state"], "ready", "{row}");
    assert_eq!(server.requests_for("/disk.img.xz").len(), 2);

    // A cached file changed after its check is refused, and says so.
    let cached = PathBuf::from(row["served_path"].as_str().expect("a served path"));
    assert!(cached.starts_with(&state), "{cached:?}");
    let mut bytes = std::fs::read(&cached).expect("the cached file");
    bytes[0] ^= 0xff;
    std::fs::write(&cached, bytes).expect("rewritten");
    let (status, _, body) = get_root(&server, &controller, "disk", None);
    let message = String::from_utf8_lossy(&body);
    assert_eq!(status, 409, "{message}");
    assert!(message.contains("changed on disk"), "{message}");
    assert_eq!(root_row(&controller, "disk")["state"], "changed");
    // The next load checks it again: the changed file is removed and fetched once more.
    controller.kill();
    let controller = start(&state, &file);
    let row = wait_settled(&controller, "disk");
    assert_eq!(row["state"], "ready", "{row}");
    assert_eq!(server.requests_for("/disk.img.xz").len(), 3);
    let (status, _, body) = get_root(&server, &controller, "disk", None);
    assert_eq!((status, sha256_hex(&body)), (200, sha));
}

#[test]
fn a_wrong_digest_is_an_error_naming_both_and_the_image_is_not_served() {
    let server = FileServer::start();
    let directory = tempfile::tempdir().expect("a directory");
    let tarball = directory.path().join("root.tar");
    std::fs::write(&tarball, disk_bytes(100_000)).expect("written");
    run("gzip", &["-k", tarball.to_str().unwrap()]);
    let bytes = std::fs::read(directory.path().join("root.tar.gz")).expect("gzip wrote it");
    let url = server.add("/root.tgz", bytes.clone());
    let wrong = "ab".repeat(32);
    let file = fleet_file(
        directory.path(),
        &format!(
            "[images.bad]\nroot = {{ url = \"{url}\", sha256 = \"{wrong}\", format = \"tgz\" }}\n"
        ),
    );
    let state = directory.path().join("state");
    let controller =
        TestController::start_in(&state, &["--watch", "-f", file.to_str().expect("a path")]);
    let row = wait_settled(&controller, "bad");
    assert_eq!(row["state"], "failed", "{row}");
    let detail = row["detail"].as_str().unwrap_or_default();
    let actual = sha256_hex(&bytes);
    let size = format!("{} bytes", bytes.len());
    for part in ["image `bad`", &size, &actual, &wrong] {
        assert!(detail.contains(part), "{detail} lacks {part}");
    }
    let (status, _, body) = get_root(&server, &controller, "bad", None);
    assert_eq!(status, 404, "{}", String::from_utf8_lossy(&body));
    let leftovers: Vec<_> = std::fs::read_dir(state.join("images"))
        .expect("the cache")
        .filter_map(|entry| entry.ok())
        .filter(|entry| entry.path().is_file())
        .map(|entry| entry.file_name())
        .collect();
    assert!(leftovers.is_empty(), "the download was kept: {leftovers:?}");
    let output = controller.fleet(&["images"]);
    assert!(!output.status.success());
    assert!(stdout(&output).contains(&wrong), "{}", stdout(&output));

    // The digest corrected in the fleet file under --watch: downloaded again, and served.
    let corrected = format!(
        "[controller]\ntftp_listen = \"127.0.0.1:0\"\n\n[images.bad]\nroot = {{ url = \"{url}\", sha256 = \"{actual}\", format = \"tgz\" }}\n"
    );
    let temporary = directory.path().join("fleet.toml.new");
    std::fs::write(&temporary, corrected).expect("written");
    std::fs::rename(&temporary, &file).expect("saved");
    let started = Instant::now();
    while root_row(&controller, "bad")["state"] != "ready" {
        assert!(
            started.elapsed() < LIMIT,
            "{}",
            root_row(&controller, "bad")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let (status, _, body) = get_root(&server, &controller, "bad", None);
    assert_eq!((status, body.len()), (200, bytes.len()));
}

#[test]
fn a_qcow2_image_is_served_as_raw_and_prune_removes_what_no_image_uses() {
    let server = FileServer::start();
    let directory = tempfile::tempdir().expect("a directory");
    let raw = disk_bytes(2 << 20);
    let raw_path = directory.path().join("disk.raw");
    std::fs::write(&raw_path, &raw).expect("written");
    let qcow2_path = directory.path().join("disk.qcow2");
    run(
        "qemu-img",
        &[
            "convert",
            "-f",
            "raw",
            "-O",
            "qcow2",
            raw_path.to_str().unwrap(),
            qcow2_path.to_str().unwrap(),
        ],
    );
    let qcow2 = std::fs::read(&qcow2_path).expect("the qcow2");
    let url = server.add("/disk.qcow2", qcow2.clone());
    run("zstd", &["-q", "-k", raw_path.to_str().unwrap()]);
    let zst_path = directory.path().join("disk.raw.zst");
    let file = fleet_file(
        directory.path(),
        &format!(
            "[images.cloud]\nroot = {{ url = \"{url}\", sha256 = \"{}\", format = \"qcow2\" }}\n\n\
             [images.local]\nroot = {{ path = \"{}\", format = \"qcow2\" }}\n\n\
             [images.packed]\nroot = {{ path = \"{}\", format = \"raw-zst\" }}\n",
            sha256_hex(&qcow2),
            qcow2_path.display(),
            zst_path.display(),
        ),
    );
    let state = directory.path().join("state");
    let controller = start(&state, &file);
    let row = wait_settled(&controller, "cloud");
    assert_eq!(row["state"], "ready", "{row}");
    assert_eq!(row["format"], "qcow2");
    assert_eq!(row["served_format"], "raw");
    assert_eq!(row["size"], raw.len() as u64);
    assert_eq!(row["sha256"], sha256_hex(&raw).as_str());
    assert_eq!(row["raw_sha256"], sha256_hex(&raw).as_str());
    let (status, _, body) = get_root(&server, &controller, "cloud", None);
    assert_eq!(status, 200);
    assert!(body == raw, "the raw image served is not the one converted");
    // A local qcow2 is converted into the cache; a local raw-zst's raw digest is remembered.
    let local = root_row(&controller, "local");
    assert_eq!(local["state"], "ready", "{local}");
    assert_eq!(local["served_format"], "raw");
    assert_eq!(local["sha256"], sha256_hex(&raw).as_str());
    let converted = PathBuf::from(local["served_path"].as_str().expect("a served path"));
    assert!(converted.starts_with(state.join("images")), "{converted:?}");
    let packed = root_row(&controller, "packed");
    assert_eq!(packed["state"], "ready", "{packed}");
    assert_eq!(
        packed["sha256"],
        sha256_hex(&std::fs::read(&zst_path).unwrap()).as_str()
    );
    assert_eq!(packed["raw_size"], raw.len() as u64);
    assert_eq!(packed["raw_sha256"], sha256_hex(&raw).as_str());
    let remembered = state.join("images").join("checked");
    assert_eq!(std::fs::read_dir(&remembered).expect("checked/").count(), 1);

    // A file no image uses (an image dropped from the fleet file) is pruned; the rest stays.
    let unused = state
        .join("images")
        .join(format!("{}.tgz", "cd".repeat(32)));
    std::fs::write(&unused, vec![0u8; 5000]).expect("written");
    let dry = controller.fleet(&["images", "prune", "--dry-run"]);
    assert!(dry.status.success(), "{dry:?}");
    assert!(
        stdout(&dry).contains("would remove 1 file"),
        "{}",
        stdout(&dry)
    );
    assert!(unused.exists());
    let pruned = controller.fleet(&["images", "prune", "--json"]);
    assert!(pruned.status.success(), "{pruned:?}");
    let report: serde_json::Value = serde_json::from_str(&stdout(&pruned)).expect("JSON");
    assert_eq!(report["files"], 1, "{report}");
    assert_eq!(report["bytes"], 5000);
    assert!(!unused.exists());
    let served = PathBuf::from(row["served_path"].as_str().expect("a served path"));
    assert!(served.exists(), "prune removed the image in use");
    assert!(
        converted.exists(),
        "prune removed the local qcow2's conversion"
    );
    assert_eq!(std::fs::read_dir(&remembered).expect("checked/").count(), 1);
    let (status, _, _) = get_root(&server, &controller, "cloud", Some("bytes=0-9"));
    assert_eq!(status, 206);
}
