//! Image files from another controller of the store (issue 16): two controllers on one
//! PostgreSQL database with the same fleet file, whose root image is a relative `path` that
//! exists only beside controller A's copy. Controller B, asked for it on the route a deploying
//! machine uses, fetches it from A (proving itself with the controllers' secret key), checks its
//! SHA-256, caches it and serves it; bytes of another digest from a peer are refused and nothing
//! is cached; with A stopped B says the file is cached nowhere it can reach, and gets it once A
//! is back; a URL image the URL no longer gives comes from the controller that downloaded it.

use crate::support::controller::{stdout, TestController};
use crate::support::db::{drop_postgres_store, empty_postgres_database};
use crate::support::image_server::read_request_head;
use fleet::boot::images::peers::{proof_header, PROOF_HEADER};
use fleet::store::{now_ms, ControllerRecord, SecretKey, Store};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;

/// Generous: the shared machine may be slow.
const LIMIT: Duration = Duration::from_secs(120);
/// The path a deploying machine fetches its root image from (its boot MAC named).
const MACHINE_PATH: &str = "/boot/by-mac/52:54:00:16:22:01/disk/root";

/// The directory of one test: the shared key, and per controller a copy of one fleet file.
struct Fixture {
    directory: tempfile::TempDir,
    key_file: PathBuf,
    image: Vec<u8>,
    sha256: String,
}

impl Fixture {
    /// The same fleet file beside each controller; the image only beside A's.
    fn new() -> Fixture {
        Fixture::with_root(|_| "path = \"images/disk.img\"".to_string())
    }

    /// The same fleet file beside each controller, the root's location written by `location`
    /// (given the image's SHA-256); the image file only beside A's.
    fn with_root(location: impl Fn(&str) -> String) -> Fixture {
        let directory = tempfile::tempdir().unwrap();
        let key_file = directory.path().join("fleet.key");
        std::fs::write(&key_file, format!("{}\n", hex::encode([0x22u8; 32]))).unwrap();
        let image = image_bytes(1 << 20);
        let sha256 = hex::encode(Sha256::digest(&image));
        for controller in ["a", "b"] {
            let home = directory.path().join(controller);
            std::fs::create_dir_all(home.join("images")).unwrap();
            let text = format!(
                "[controller]\ntftp_listen = \"127.0.0.1:0\"\n\n[images.disk]\n\
                 root = {{ {}, sha256 = \"{sha256}\", format = \"raw\" }}\n",
                location(&sha256)
            );
            std::fs::write(home.join("fleet.toml"), text).unwrap();
        }
        std::fs::write(directory.path().join("a/images/disk.img"), &image).unwrap();
        Fixture {
            directory,
            key_file,
            image,
            sha256,
        }
    }

    fn home(&self, controller: &str) -> PathBuf {
        self.directory.path().join(controller)
    }

    fn start(&self, controller: &str, database: &str) -> TestController {
        let home = self.home(controller);
        let fleet_file = home.join("fleet.toml");
        let key_file = self.key_file.to_str().unwrap();
        let arguments = [
            "--database",
            database,
            "--secret-key-file",
            key_file,
            "-f",
            fleet_file.to_str().unwrap(),
        ];
        TestController::start_in(&home.join("state"), &arguments)
    }

    fn key(&self) -> SecretKey {
        SecretKey::read_file(&self.key_file).unwrap()
    }
}

/// Incompressible-looking bytes from a simple generator.
fn image_bytes(size: usize) -> Vec<u8> {
    let mut state = 0x1622_a5e7_u32;
    let mut bytes = Vec::with_capacity(size);
    for _ in 0..size {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        bytes.push(state as u8);
    }
    bytes
}

/// `fleet images --json`'s row for the root of `disk`, through `controller` with `token`.
fn root_row(controller: &TestController, token: &str) -> serde_json::Value {
    let output = controller.fleet(&["--token", token, "images", "--json"]);
    let rows: Vec<serde_json::Value> = serde_json::from_str(&stdout(&output))
        .unwrap_or_else(|error| panic!("fleet images --json: {error}: {output:?}"));
    let row = rows
        .into_iter()
        .find(|row| row["image"] == "disk" && row["file"] == "root");
    row.unwrap_or_else(|| panic!("no row for disk's root"))
}

/// Polls the root's row until `done` holds for it.
fn wait_for_row(
    controller: &TestController,
    token: &str,
    what: &str,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let started = Instant::now();
    loop {
        let row = root_row(controller, token);
        if done(&row) {
            return row;
        }
        assert!(started.elapsed() < LIMIT, "not {what} in {LIMIT:?}: {row}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

async fn get(url: &str, headers: &[(&str, String)]) -> (u16, Vec<u8>) {
    let mut request = reqwest::Client::new().get(url);
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    let response = request.send().await.expect("the controller answers");
    let status = response.status().as_u16();
    (status, response.bytes().await.expect("a body").to_vec())
}

/// Asks `controller` for the root on the machine's route until it answers 200; the body.
async fn wait_for_bytes(controller: &TestController) -> Vec<u8> {
    let started = Instant::now();
    loop {
        let (status, body) = get(&format!("{}{MACHINE_PATH}", controller.url), &[]).await;
        if status == 200 {
            return body;
        }
        assert!(
            started.elapsed() < LIMIT,
            "no image in {LIMIT:?}: {status} {}",
            String::from_utf8_lossy(&body)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn controller_id(state_dir: &Path) -> String {
    std::fs::read_to_string(state_dir.join("controller-id"))
        .unwrap()
        .trim()
        .to_string()
}

/// The files of a controller's image cache (not its `checked/` directory).
fn cached_files(state_dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(state_dir.join("images")) else {
        return Vec::new();
    };
    let files = entries
        .filter_map(Result::ok)
        .filter(|e| e.path().is_file());
    let mut names: Vec<String> = files
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// B serves an image only A has, fetched from A and checked; B's cache keeps it (B restarted
/// with A gone still serves it). A gives files only to requests proven with the controllers'
/// key.
#[tokio::test(flavor = "multi_thread")]
async fn a_controller_serves_an_image_only_another_controller_has_fetched_from_it_and_checked() {
    let url = empty_postgres_database().await;
    let fixture = Fixture::new();
    let mut a = fixture.start("a", &url);
    let row = wait_for_row(&a, &a.token, "ready on A", |row| row["state"] == "ready");
    assert_eq!(row["sha256"], fixture.sha256.as_str(), "{row}");
    let mut b = fixture.start("b", &url);
    let b_state = fixture.home("b").join("state");

    let body = wait_for_bytes(&b).await;
    assert!(body == fixture.image, "B served other bytes");
    let row = wait_for_row(&b, &a.token, "ready on B", |row| row["state"] == "ready");
    let served = row["served_path"].as_str().unwrap_or_default();
    assert!(
        served.starts_with(b_state.join("images").to_str().unwrap()),
        "B serves its own cached copy: {row}"
    );
    assert_eq!(row["sha256"], fixture.sha256.as_str());
    let cached = std::fs::read(
        b_state
            .join("images")
            .join(format!("{}.raw", fixture.sha256)),
    );
    assert!(
        cached.unwrap() == fixture.image,
        "B's cache holds the image"
    );
    assert!(
        !fixture.home("b").join("images/disk.img").exists(),
        "B has no copy of its own beside its fleet file"
    );

    // A's peer route: no proof, a proof made with another key, a proof for another file.
    let peer_url = format!("{}/boot/peer/files/{}", a.url, fixture.sha256);
    let (status, body) = get(&peer_url, &[]).await;
    let text = String::from_utf8_lossy(&body).to_string();
    assert_eq!(status, 401, "{text}");
    assert!(text.contains("no x-fleet-peer header"), "{text}");
    let stranger = SecretKey::generate();
    let forged = proof_header(&stranger, &fixture.sha256, now_ms());
    let (status, body) = get(&peer_url, &[(PROOF_HEADER, forged)]).await;
    let text = String::from_utf8_lossy(&body).to_string();
    assert_eq!(status, 401, "{text}");
    assert!(text.contains(fixture.key().id()), "names A's key: {text}");
    let other_file = proof_header(&fixture.key(), &"0".repeat(64), now_ms());
    let (status, _) = get(&peer_url, &[(PROOF_HEADER, other_file)]).await;
    assert_eq!(status, 401, "a proof opens the file it names only");
    let old = now_ms() - 10 * 60 * 1000;
    let stale = proof_header(&fixture.key(), &fixture.sha256, old);
    let (status, body) = get(&peer_url, &[(PROOF_HEADER, stale)]).await;
    let text = String::from_utf8_lossy(&body).to_string();
    assert_eq!(status, 401, "{text}");
    assert!(text.contains("clocks"), "{text}");
    let proof = proof_header(&fixture.key(), &fixture.sha256, now_ms());
    let (status, body) = get(&peer_url, &[(PROOF_HEADER, proof)]).await;
    assert_eq!(status, 200);
    assert!(body == fixture.image, "A gives the file to a proven peer");

    // A gone, B restarted: served from B's cache, nothing asked.
    a.kill();
    b.kill();
    let b = fixture.start("b", &url);
    let row = wait_for_row(&b, &a.token, "ready on B again", |row| {
        row["state"] != "downloading" && row["state"] != "checking"
    });
    assert_eq!(row["state"], "ready", "from B's cache: {row}");
    assert!(wait_for_bytes(&b).await == fixture.image);
    drop(b);
    drop_postgres_store(Store::open(&url).await.unwrap()).await;
}

/// What the false peer saw: the head of every request.
type Heads = Arc<Mutex<Vec<String>>>;

/// A "controller" that answers every request with `bytes`.
async fn false_peer(bytes: Vec<u8>) -> (String, Heads) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let heads = Heads::default();
    let seen = heads.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let (bytes, seen) = (bytes.clone(), seen.clone());
            tokio::spawn(async move {
                let Some(head) = read_request_head(&mut socket).await else {
                    return;
                };
                seen.lock().unwrap().push(head);
                let answer = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    bytes.len()
                );
                let _ = socket.write_all(answer.as_bytes()).await;
                let _ = socket.write_all(&bytes).await;
            });
        }
    });
    (url, heads)
}

/// A live peer sending other bytes: refused with an error naming the peer and both digests,
/// nothing cached, nothing served.
#[tokio::test(flavor = "multi_thread")]
async fn bytes_of_another_digest_from_a_peer_are_refused_and_nothing_is_cached() {
    let url = empty_postgres_database().await;
    let fixture = Fixture::new();
    let mut wrong = fixture.image.clone();
    wrong[4096] ^= 1;
    let wrong_sha256 = hex::encode(Sha256::digest(&wrong));
    let (peer_url, heads) = false_peer(wrong).await;
    let store = Store::open(&url).await.unwrap();
    let now = now_ms();
    let record = ControllerRecord {
        id: "liar-1".into(),
        hostname: "liar".into(),
        api_url: "https://127.0.0.1:9".into(),
        boot_url: peer_url.clone(),
        networks: Vec::new(),
        version: env!("CARGO_PKG_VERSION").into(),
        started_at: now,
        heartbeat_at: now,
    };
    store.record_controller(&record).await.unwrap();
    let b = fixture.start("b", &url);
    let b_state = fixture.home("b").join("state");

    let row = wait_for_row(&b, &b.token, "failed", |row| row["state"] == "failed");
    let detail = row["detail"].as_str().unwrap_or_default().to_string();
    for part in [
        "is not on this controller",
        "controller `liar-1`",
        &peer_url,
        &format!("{} bytes", fixture.image.len()),
        &wrong_sha256,
        &fixture.sha256,
        "nothing cached",
    ] {
        assert!(detail.contains(part), "{detail} lacks {part}");
    }
    let (status, body) = get(&format!("{}{MACHINE_PATH}", b.url), &[]).await;
    let text = String::from_utf8_lossy(&body).to_string();
    assert_eq!(status, 404, "{text}");
    assert!(text.contains(&wrong_sha256), "{text}");
    assert_eq!(
        cached_files(&b_state),
        Vec::<String>::new(),
        "nothing cached"
    );
    let heads = heads.lock().unwrap().clone();
    let path = format!("GET /boot/peer/files/{} ", fixture.sha256);
    assert!(
        heads
            .iter()
            .any(|head| head.starts_with(&path) && head.contains(PROOF_HEADER)),
        "B asked by digest with its proof: {heads:?}"
    );
    drop(b);
    drop_postgres_store(store).await;
}

/// A, the only controller with the file, stopped: B says it asked A and could not reach it, and
/// nothing is served; A back, B asked again by a machine fetches it.
#[tokio::test(flavor = "multi_thread")]
async fn with_the_only_controller_that_has_an_image_stopped_another_says_it_is_reachable_nowhere() {
    let url = empty_postgres_database().await;
    let fixture = Fixture::new();
    let mut a = fixture.start("a", &url);
    wait_for_row(&a, &a.token, "ready on A", |row| row["state"] == "ready");
    let a_id = controller_id(&fixture.home("a").join("state"));
    a.kill();
    let b = fixture.start("b", &url);

    let row = wait_for_row(&b, &a.token, "failed", |row| row["state"] == "failed");
    let detail = row["detail"].as_str().unwrap_or_default().to_string();
    for part in [
        "is not on this controller",
        "no other controller gave it (asked 1)",
        &format!("controller `{a_id}`"),
        &a.url,
    ] {
        assert!(detail.contains(part), "{detail} lacks {part}");
    }
    let (status, body) = get(&format!("{}{MACHINE_PATH}", b.url), &[]).await;
    let text = String::from_utf8_lossy(&body).to_string();
    assert_eq!(status, 404, "{text}");
    assert!(text.contains(&a_id), "{text}");
    assert!(cached_files(&fixture.home("b").join("state")).is_empty());

    // A back: the next requests of a machine make B ask again, and it gets the file.
    let a = fixture.start("a", &url);
    assert!(wait_for_bytes(&b).await == fixture.image);
    drop((a, b));
    drop_postgres_store(Store::open(&url).await.unwrap()).await;
}

/// A web server for one file, answering 404 once `gone` is set.
async fn url_server(bytes: Vec<u8>) -> (String, Arc<AtomicBool>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/disk.img", listener.local_addr().unwrap());
    let gone = Arc::new(AtomicBool::new(false));
    let flag = gone.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let (bytes, flag) = (bytes.clone(), flag.clone());
            tokio::spawn(async move {
                if read_request_head(&mut socket).await.is_none() {
                    return;
                }
                let body: &[u8] = if flag.load(Ordering::SeqCst) {
                    b""
                } else {
                    &bytes
                };
                let status = if body.is_empty() {
                    "404 Not Found"
                } else {
                    "200 OK"
                };
                let answer = format!(
                    "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = socket.write_all(answer.as_bytes()).await;
                let _ = socket.write_all(body).await;
            });
        }
    });
    (url, gone)
}

/// A URL image whose URL no longer gives it (404) is fetched from the controller that
/// downloaded it while it did; B's manifest says where it came from.
#[tokio::test(flavor = "multi_thread")]
async fn a_url_image_its_url_no_longer_gives_is_fetched_from_a_controller_that_has_it() {
    let url = empty_postgres_database().await;
    let image = image_bytes(1 << 20);
    let (image_url, gone) = url_server(image.clone()).await;
    let fixture = Fixture::with_root(|_| format!("url = \"{image_url}\""));
    assert!(fixture.image == image);
    std::fs::remove_file(fixture.home("a").join("images/disk.img")).unwrap();
    let a = fixture.start("a", &url);
    let row = wait_for_row(&a, &a.token, "ready on A", |row| row["state"] == "ready");
    assert_eq!(row["url"], image_url.as_str(), "{row}");
    gone.store(true, Ordering::SeqCst);
    let b = fixture.start("b", &url);

    assert!(wait_for_bytes(&b).await == fixture.image);
    let b_cache = fixture.home("b").join("state/images");
    let manifest = std::fs::read_to_string(b_cache.join(format!("{}.raw.json", fixture.sha256)));
    let manifest: serde_json::Value = serde_json::from_str(&manifest.unwrap()).unwrap();
    let a_id = controller_id(&fixture.home("a").join("state"));
    let source = manifest["source"].as_str().unwrap_or_default();
    assert!(
        source.contains(&format!("controller `{a_id}`")),
        "B's copy came from A: {manifest}"
    );
    drop((a, b));
    drop_postgres_store(Store::open(&url).await.unwrap()).await;
}
