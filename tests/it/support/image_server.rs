//! The test operating system's images (`.ci/setup-test-images` builds them with
//! examples/test-images/build.sh), and a small HTTP server inside the boot network's namespace
//! that serves a directory of them, so that the controller downloads images by URL as it would
//! from a mirror. Every request's path is recorded.

use super::netns::NetNs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Where `.ci/setup-test-images` builds the images (rootfs.tgz, disk.raw.xz, manifest).
pub fn test_images() -> PathBuf {
    let directory = PathBuf::from(
        std::env::var("FLEET_TEST_IMAGES").unwrap_or("/var/cache/fleet-test-images".into()),
    );
    for file in ["rootfs.tgz", "disk.raw.xz", "manifest"] {
        assert!(
            directory.join(file).exists(),
            "{} is missing: run .ci/setup-test-images",
            directory.join(file).display()
        );
    }
    directory
}

/// The SHA-256 (64 hex digits) of a file.
pub fn sha256_of(path: &Path) -> String {
    use sha2::Digest;
    let mut file = std::fs::File::open(path).expect("the file to digest");
    let mut hasher = sha2::Sha256::new();
    std::io::copy(&mut file, &mut hasher).expect("the file read");
    hex::encode(hasher.finalize())
}

/// An HTTP server on `address` inside a namespace, serving the files of a directory.
pub struct ImageServer {
    /// `http://ADDRESS`.
    pub url: String,
    requests: Arc<Mutex<Vec<String>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl ImageServer {
    /// Must be called within a tokio runtime.
    pub fn start(namespace: &NetNs, address: &str, directory: &Path) -> ImageServer {
        let listener = namespace.run_in(|| {
            let listener = std::net::TcpListener::bind(address).expect("the image server binds");
            listener.set_nonblocking(true).unwrap();
            listener
        });
        let listener = tokio::net::TcpListener::from_std(listener).expect("a tokio listener");
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = requests.clone();
        let files = tower::ServiceBuilder::new()
            .map_request(move |request: axum::http::Request<axum::body::Body>| {
                seen.lock().unwrap().push(request.uri().path().to_string());
                request
            })
            .service(tower_http::services::ServeDir::new(directory));
        let router = axum::Router::new().fallback_service(files);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let _ = axum::serve(listener, router)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await;
        });
        ImageServer {
            url: format!("http://{address}"),
            requests,
            stop: Some(stop),
        }
    }

    /// The paths requested so far, in order.
    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for ImageServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// The head of one HTTP request on `socket` (request line and headers, to the blank line), read
/// byte by byte so nothing of a body is taken; `None` if the connection ends first.
pub async fn read_request_head(socket: &mut tokio::net::TcpStream) -> Option<String> {
    use tokio::io::AsyncReadExt;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match socket.read(&mut byte).await {
            Ok(1) => head.push(byte[0]),
            _ => return None,
        }
    }
    Some(String::from_utf8_lossy(&head).to_string())
}
