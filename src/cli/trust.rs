//! Which certificate the CLI accepts from the controller: the one it pins by the SHA-256
//! fingerprint of the end-entity certificate, from (first that applies)
//! 1. `--tls-fingerprint` / `FLEET_TLS_FINGERPRINT`;
//! 2. the state directory's `api-fingerprint`, when the controller of that directory is the
//!    one called (no `--server`, or the `--server` its `api-url` names);
//! 3. `known_controllers` (`$XDG_CONFIG_HOME/fleet/`, else `~/.config/fleet/`): `HOST:PORT
//!    SHA256:...` lines; a controller not listed there is trusted on first use and added.
//!
//! Names and certificate authorities play no part (the controller's own certificate is
//! self-signed); the handshake's signature is still verified, so only the holder of the pinned
//! certificate's key passes.

use anyhow::{bail, Context};
use fleet::controller::tls::certificate_fingerprint;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Where the pinned fingerprint came from, and so how to accept a new certificate on purpose.
#[derive(Debug, Clone)]
pub enum PinSource {
    Given,
    StateDir(PathBuf),
    /// `known_controllers`; `None`: there is no file to keep it in (no home directory).
    Known(Option<PathBuf>),
}

/// What the CLI expects of the controller at `host_port`.
#[derive(Debug, Clone)]
pub struct Pin {
    pub host_port: String,
    /// `None`: the first use of this controller.
    pub fingerprint: Option<String>,
    pub source: PinSource,
}

impl Pin {
    /// The pin for `server` (an `https://` URL), by the rules of this module.
    pub fn find(
        server: &str,
        given: Option<&str>,
        state_dir: &Path,
        state_dir_url: Option<&str>,
    ) -> anyhow::Result<Pin> {
        let host_port = host_port(server)?;
        if let Some(given) = given {
            let fingerprint = normalise_fingerprint(given).with_context(|| {
                format!("--tls-fingerprint / FLEET_TLS_FINGERPRINT `{given}` is not a certificate fingerprint")
            })?;
            return Ok(Pin {
                host_port,
                fingerprint: Some(fingerprint),
                source: PinSource::Given,
            });
        }
        let same_controller = state_dir_url.is_none_or(|url| same_url(url, server));
        let state_file = state_dir.join(fleet::controller::API_FINGERPRINT_FILE);
        if same_controller {
            if let Some(fingerprint) =
                first_line(&state_file).and_then(|line| normalise_fingerprint(&line).ok())
            {
                let source = PinSource::StateDir(state_file);
                return Ok(Pin {
                    host_port,
                    fingerprint: Some(fingerprint),
                    source,
                });
            }
        }
        let file = known_controllers_file();
        let fingerprint = file
            .as_deref()
            .and_then(|file| known_fingerprint(file, &host_port));
        Ok(Pin {
            host_port,
            fingerprint,
            source: PinSource::Known(file),
        })
    }

    /// After the first successful call to a controller trusted on first use: tells the person
    /// and remembers the certificate.
    pub fn trust_first_use(&self, fingerprint: &str) -> anyhow::Result<()> {
        let PinSource::Known(file) = &self.source else {
            return Ok(());
        };
        let Some(file) = file else {
            eprintln!(
                "trusting {}'s certificate {fingerprint} (first use; not remembered: no $HOME or $XDG_CONFIG_HOME)",
                self.host_port
            );
            return Ok(());
        };
        remember(file, &self.host_port, fingerprint)?;
        eprintln!(
            "trusting {}'s certificate {fingerprint} (first use; remembered in {})",
            self.host_port,
            file.display()
        );
        Ok(())
    }

    /// Why a controller presenting `presented` where `pinned` was expected is refused, and how
    /// to accept it on purpose.
    pub fn refusal(&self, presented: &str, pinned: &str) -> String {
        let (whence, accept) = match &self.source {
            PinSource::Given => (
                "by --tls-fingerprint / FLEET_TLS_FINGERPRINT".to_string(),
                format!("set FLEET_TLS_FINGERPRINT={presented}"),
            ),
            PinSource::StateDir(file) => (
                format!("by the state directory's {}", file.display()),
                format!(
                    "the controller rewrites that file at each start: is --server the controller of this state directory? \
                     Otherwise give --state-dir of the right one, or set FLEET_TLS_FINGERPRINT={presented}"
                ),
            ),
            PinSource::Known(file) => {
                let file = file.as_deref().map_or_else(|| "known_controllers".into(), |f| f.display().to_string());
                (
                    format!("in {file} (trusted on first use)"),
                    format!(
                        "if the controller's certificate was replaced on purpose, delete the line `{} {pinned}` from {file} \
                         (the next call trusts the new one), or set FLEET_TLS_FINGERPRINT={presented}",
                        self.host_port
                    ),
                )
            }
        };
        format!(
            "refusing the controller at {}: it presented the certificate {presented}, but {pinned} is pinned {whence}. \
             It is another controller, or its certificate changed, or something is in between; {accept}",
            self.host_port
        )
    }
}

/// The certificate verifier for reqwest: accepts the pinned certificate only (on first use, the
/// first one presented, and then only that one for the rest of the run), and remembers what the
/// controller presented.
#[derive(Debug)]
pub struct PinnedVerifier {
    pinned: Mutex<Option<String>>,
    presented: Mutex<Option<String>>,
    provider: Arc<CryptoProvider>,
}

impl PinnedVerifier {
    pub fn new(pin: &Pin, provider: Arc<CryptoProvider>) -> PinnedVerifier {
        PinnedVerifier {
            pinned: Mutex::new(pin.fingerprint.clone()),
            presented: Mutex::new(None),
            provider,
        }
    }

    /// The fingerprint of the last certificate the controller presented.
    pub fn presented(&self) -> Option<String> {
        lock(&self.presented).clone()
    }

    /// The fingerprint accepted: the pin, or the one trusted on first use in this run.
    pub fn pinned(&self) -> Option<String> {
        lock(&self.pinned).clone()
    }
}

fn lock(value: &Mutex<Option<String>>) -> std::sync::MutexGuard<'_, Option<String>> {
    value
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let fingerprint = certificate_fingerprint(end_entity);
        *lock(&self.presented) = Some(fingerprint.clone());
        let mut pinned = lock(&self.pinned);
        match pinned.as_deref() {
            Some(expected) if expected != fingerprint => Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            )),
            Some(_) => Ok(ServerCertVerified::assertion()),
            None => {
                *pinned = Some(fingerprint);
                Ok(ServerCertVerified::assertion())
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The rustls client configuration that accepts what `verifier` accepts (ring, HTTP/1.1).
pub fn client_config(
    verifier: Arc<PinnedVerifier>,
    provider: Arc<CryptoProvider>,
) -> anyhow::Result<rustls::ClientConfig> {
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("the TLS client's protocol versions")?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// `SHA256:` and 64 lowercase hex digits, from that or `sha256:AB:CD:...` or bare hex.
pub fn normalise_fingerprint(text: &str) -> anyhow::Result<String> {
    let text = text.trim();
    let digits = match text.get(..7) {
        Some(prefix) if prefix.eq_ignore_ascii_case("sha256:") => &text[7..],
        _ => text,
    };
    let hex: String = digits
        .chars()
        .filter(|c| *c != ':')
        .collect::<String>()
        .to_ascii_lowercase();
    if hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        bail!("expected SHA256: and 64 hex digits (as `fleet serve` prints at start)");
    }
    Ok(format!("SHA256:{hex}"))
}

/// `HOST:PORT` of an `https://` URL (IPv6 hosts in brackets).
pub fn host_port(server: &str) -> anyhow::Result<String> {
    let url =
        url::Url::parse(server).with_context(|| format!("--server `{server}` is not a URL"))?;
    if url.scheme() == "http" {
        bail!(
            "--server `{server}`: the operator API is served over TLS only: use https://{}",
            server.trim_start_matches("http://")
        );
    }
    if url.scheme() != "https" {
        bail!("--server `{server}` must be an https:// URL");
    }
    let host = url
        .host_str()
        .with_context(|| format!("--server `{server}` names no host"))?;
    Ok(format!("{host}:{}", url.port().unwrap_or(443)))
}

fn same_url(left: &str, right: &str) -> bool {
    left.trim_end_matches('/') == right.trim_end_matches('/')
}

fn first_line(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines()
        .next()
        .map(|line| line.trim().to_string())
        .filter(|line| !line.is_empty())
}

/// `$XDG_CONFIG_HOME/fleet/known_controllers`, else `$HOME/.config/fleet/known_controllers`.
fn known_controllers_file() -> Option<PathBuf> {
    let absolute = |variable: &str| {
        std::env::var_os(variable)
            .map(PathBuf::from)
            .filter(|path| path.is_absolute())
    };
    let config = absolute("XDG_CONFIG_HOME")
        .or_else(|| absolute("HOME").map(|home| home.join(".config")))?;
    Some(config.join("fleet").join("known_controllers"))
}

fn known_fingerprint(file: &Path, host_port: &str) -> Option<String> {
    let text = std::fs::read_to_string(file).ok()?;
    text.lines()
        .map(str::trim)
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.split_once(char::is_whitespace))
        .find(|(host, _)| *host == host_port)
        .and_then(|(_, fingerprint)| normalise_fingerprint(fingerprint).ok())
}

/// Adds `HOST:PORT SHA256:...` to `file` (its directory made 0700 when missing).
fn remember(file: &Path, host_port: &str, fingerprint: &str) -> anyhow::Result<()> {
    if let Some(directory) = file.parent() {
        fleet::store::private::create_private_directory(directory)
            .with_context(|| format!("creating {}", directory.display()))?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.create(true).append(true);
    let mut known = options
        .open(file)
        .with_context(|| format!("opening {}", file.display()))?;
    std::io::Write::write_all(
        &mut known,
        format!("{host_port} {fingerprint}\n").as_bytes(),
    )
    .with_context(|| format!("writing {}", file.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

    #[test]
    fn fingerprints_are_read_in_the_usual_spellings() {
        let expected = format!("SHA256:{HEX}");
        assert_eq!(normalise_fingerprint(&expected).unwrap(), expected);
        assert_eq!(
            normalise_fingerprint(&HEX.to_uppercase()).unwrap(),
            expected
        );
        let colons: Vec<String> = HEX
            .as_bytes()
            .chunks(2)
            .map(|pair| String::from_utf8_lossy(pair).to_uppercase())
            .collect();
        assert_eq!(
            normalise_fingerprint(&format!("sha256:{}", colons.join(":"))).unwrap(),
            expected
        );
        assert!(normalise_fingerprint("SHA256:abc").is_err());
    }

    #[test]
    fn plain_http_is_refused_with_the_https_url() {
        let error = host_port("http://10.0.0.2:5240").unwrap_err().to_string();
        assert!(error.contains("https://10.0.0.2:5240"), "{error}");
        assert_eq!(host_port("https://[::1]:5240/").unwrap(), "[::1]:5240");
        assert_eq!(host_port("https://ctl.example").unwrap(), "ctl.example:443");
    }

    #[test]
    fn known_controllers_are_found_by_host_and_port() {
        let directory = tempfile::tempdir().unwrap();
        let file = directory.path().join("fleet").join("known_controllers");
        remember(&file, "10.0.0.2:5240", &format!("SHA256:{HEX}")).unwrap();
        assert_eq!(
            known_fingerprint(&file, "10.0.0.2:5240"),
            Some(format!("SHA256:{HEX}"))
        );
        assert_eq!(known_fingerprint(&file, "10.0.0.2:5241"), None);
    }
}
