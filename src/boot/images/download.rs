//! One download of a URL into a `.partial` file, resumed from the file's length with a Range
//! request, its SHA-256 computed while the bytes arrive (the bytes already there are read again
//! first, so the digest is always of the whole file).

use reqwest::header::{CONTENT_RANGE, RANGE};
use reqwest::StatusCode;
use sha2::{Digest, Sha256};
use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long a download may receive nothing before the attempt is given up (and resumed).
const SILENCE_LIMIT: Duration = Duration::from_secs(60);

#[derive(Debug)]
pub enum DownloadError {
    /// Worth another attempt (resumed): a cut connection, a timeout, a 5xx.
    Retry(String),
    /// Not worth another attempt: a 404, a partial file that cannot be written.
    Fatal(String),
}

/// The client downloads use: rustls, a connect timeout, no overall timeout (images are big).
pub fn client() -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(30))
        .build()
        .map_err(|error| format!("cannot build the download client: {error}"))
}

/// Downloads `url` into `partial` (continuing what is there), with `headers` added to the
/// request (a peer's proof), calling `progress(done, total)` as bytes arrive; returns the
/// SHA-256 and size of the whole file once the server has sent it.
pub async fn fetch_once(
    client: &reqwest::Client,
    url: &str,
    headers: reqwest::header::HeaderMap,
    partial: &Path,
    progress: &mut (dyn FnMut(u64, Option<u64>) + Send),
) -> Result<(String, u64), DownloadError> {
    let fatal = |what: &str, error: std::io::Error| {
        DownloadError::Fatal(format!("{what} {}: {error}", partial.display()))
    };
    let (mut hasher, mut done) = hash_existing(partial)
        .await
        .map_err(|error| fatal("cannot read", error))?;
    let mut request = client.get(url).headers(headers);
    if done > 0 {
        request = request.header(RANGE, format!("bytes={done}-"));
    }
    let mut response = request
        .send()
        .await
        .map_err(|error| DownloadError::Retry(format!("GET {url}: {error}")))?;
    let status = response.status();
    let total = if status == StatusCode::PARTIAL_CONTENT && done > 0 {
        match content_range(response.headers()) {
            Some((start, total)) if start == done => total,
            _ => {
                truncate(partial)
                    .await
                    .map_err(|e| fatal("cannot empty", e))?;
                return Err(DownloadError::Retry(format!(
                    "{url} answered the resumed request with another range; starting again"
                )));
            }
        }
    } else if status == StatusCode::RANGE_NOT_SATISFIABLE && done > 0 {
        // Everything is there already.
        return Ok((hex::encode(hasher.finalize()), done));
    } else if status.is_success() {
        // A whole answer (the server ignores Range, or there was nothing yet).
        truncate(partial)
            .await
            .map_err(|e| fatal("cannot empty", e))?;
        (hasher, done) = (Sha256::new(), 0);
        response.content_length()
    } else if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
        return Err(DownloadError::Retry(format!("GET {url}: HTTP {status}")));
    } else {
        // The answer's first line says why (a peer's refusal names the key, the clock...).
        let why = response.text().await.unwrap_or_default();
        let why: String = why
            .lines()
            .next()
            .unwrap_or_default()
            .chars()
            .take(300)
            .collect();
        let why = why.trim();
        let why = if why.is_empty() {
            String::new()
        } else {
            format!(": {why}")
        };
        return Err(DownloadError::Fatal(format!(
            "GET {url}: HTTP {status}{why}"
        )));
    };
    let mut file = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(partial)
        .await
        .map_err(|error| fatal("cannot write", error))?;
    progress(done, total);
    let outcome = loop {
        match tokio::time::timeout(SILENCE_LIMIT, response.chunk()).await {
            Ok(Ok(Some(chunk))) => {
                if let Err(error) = file.write_all(&chunk).await {
                    break Err(fatal("cannot write", error));
                }
                hasher.update(&chunk);
                done += chunk.len() as u64;
                progress(done, total);
            }
            Ok(Ok(None)) => break Ok(()),
            Ok(Err(error)) => {
                break Err(DownloadError::Retry(format!(
                    "GET {url}: cut after {done} bytes: {error}"
                )))
            }
            Err(_) => {
                break Err(DownloadError::Retry(format!(
                    "GET {url}: nothing received for {} s after {done} bytes",
                    SILENCE_LIMIT.as_secs()
                )))
            }
        }
    };
    // What arrived is kept (flushed) for the next attempt, whatever happened.
    file.flush().await.map_err(|e| fatal("cannot write", e))?;
    file.sync_data()
        .await
        .map_err(|e| fatal("cannot write", e))?;
    outcome?;
    if let Some(total) = total.filter(|total| done < *total) {
        return Err(DownloadError::Retry(format!(
            "GET {url}: cut after {done} of {total} bytes"
        )));
    }
    Ok((hex::encode(hasher.finalize()), done))
}

async fn hash_existing(partial: &Path) -> std::io::Result<(Sha256, u64)> {
    let mut hasher = Sha256::new();
    let mut file = match tokio::fs::File::open(partial).await {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok((hasher, 0)),
        Err(error) => return Err(error),
    };
    let mut buffer = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let count = file.read(&mut buffer).await?;
        if count == 0 {
            return Ok((hasher, size));
        }
        hasher.update(&buffer[..count]);
        size += count as u64;
    }
}

async fn truncate(partial: &Path) -> std::io::Result<()> {
    tokio::fs::write(partial, b"").await
}

/// `Content-Range: bytes START-END/TOTAL` → (START, TOTAL if known).
fn content_range(headers: &reqwest::header::HeaderMap) -> Option<(u64, Option<u64>)> {
    let text = headers.get(CONTENT_RANGE)?.to_str().ok()?;
    let (range, total) = text.strip_prefix("bytes ")?.split_once('/')?;
    let start = range.split_once('-')?.0.trim().parse().ok()?;
    Some((start, total.trim().parse().ok()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn content_ranges_read() {
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(
            reqwest::header::CONTENT_RANGE,
            "bytes 100-199/200".parse().unwrap(),
        );
        assert_eq!(super::content_range(&headers), Some((100, Some(200))));
        headers.insert(
            reqwest::header::CONTENT_RANGE,
            "bytes 5-9/*".parse().unwrap(),
        );
        assert_eq!(super::content_range(&headers), Some((5, None)));
    }
}
