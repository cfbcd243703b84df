//! The operator API's certificate: the operator's own (`[controller] tls_cert`/`tls_key`), or a
//! self-signed one the controller makes on first start in `<state_dir>/tls/` and keeps, so
//! clients that pinned it keep trusting it across restarts. Clients pin the end-entity
//! certificate by its SHA-256 fingerprint ([`certificate_fingerprint`]).

use crate::config::OperatorCertificate;
use crate::store::private::write_private_file;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The directory of the state directory that holds the certificate fleet made.
pub const TLS_DIR: &str = "tls";
pub const CERT_FILE: &str = "cert.pem";
pub const KEY_FILE: &str = "key.pem";

/// The certificate the API serves, ready for rustls.
#[derive(Debug)]
pub struct ApiCertificate {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    /// `SHA256:` and the hex digest of the end-entity certificate.
    pub fingerprint: String,
    /// Where it came from, for the start-up report.
    pub origin: CertificateOrigin,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertificateOrigin {
    /// Made by this controller just now, in this file.
    Made(PathBuf),
    /// Made by this controller on an earlier start.
    Kept(PathBuf),
    /// The operator's `tls_cert`.
    Operator(PathBuf),
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read the API's TLS {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        source: rustls::pki_types::pem::Error,
    },
    #[error("the API's TLS certificate file {0} holds no certificate (PEM `CERTIFICATE` blocks expected)")]
    NoCertificate(PathBuf),
    #[error("cannot write the API's certificate into {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot make the API's self-signed certificate: {0}")]
    Make(#[from] rcgen::Error),
    #[error("the API's certificate and key do not make a TLS configuration ({cert}): {source}; is tls_key the key of tls_cert?")]
    Config { cert: String, source: rustls::Error },
}

/// `SHA256:` and the lowercase hex SHA-256 of a certificate's DER bytes.
pub fn certificate_fingerprint(der: &[u8]) -> String {
    format!("SHA256:{}", hex::encode(Sha256::digest(der)))
}

/// The operator's certificate when given, else the one in `<state_dir>/tls/` (made there now if
/// there is none; its names are the listen address, loopback and this host's name).
pub fn api_certificate(
    operator: Option<&OperatorCertificate>,
    state_dir: &Path,
    listen: SocketAddr,
) -> Result<ApiCertificate, TlsError> {
    if let Some(operator) = operator {
        return load(
            &operator.cert,
            &operator.key,
            CertificateOrigin::Operator(operator.cert.clone()),
        );
    }
    let directory = state_dir.join(TLS_DIR);
    let (cert, key) = (directory.join(CERT_FILE), directory.join(KEY_FILE));
    if cert.exists() && key.exists() {
        return load(&cert, &key, CertificateOrigin::Kept(cert.clone()));
    }
    make_self_signed(&directory, listen)?;
    load(&cert, &key, CertificateOrigin::Made(cert.clone()))
}

/// The rustls server configuration for `certificate` (ring, as everywhere in fleet; HTTP/2 and
/// HTTP/1.1 offered).
pub fn server_config(certificate: &ApiCertificate) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let origin = match &certificate.origin {
        CertificateOrigin::Made(path)
        | CertificateOrigin::Kept(path)
        | CertificateOrigin::Operator(path) => path.display().to_string(),
    };
    let config_error = |source| TlsError::Config {
        cert: origin.clone(),
        source,
    };
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(config_error)?
        .with_no_client_auth()
        .with_single_cert(certificate.chain.clone(), certificate.key.clone_key())
        .map_err(config_error)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn load(cert: &Path, key: &Path, origin: CertificateOrigin) -> Result<ApiCertificate, TlsError> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certificates| certificates.collect::<Result<Vec<_>, _>>())
        .map_err(|source| TlsError::Read {
            what: "certificate",
            path: cert.to_path_buf(),
            source,
        })?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|source| TlsError::Read {
        what: "private key",
        path: key.to_path_buf(),
        source,
    })?;
    let end_entity = chain
        .first()
        .ok_or_else(|| TlsError::NoCertificate(cert.to_path_buf()))?;
    Ok(ApiCertificate {
        fingerprint: certificate_fingerprint(end_entity),
        chain,
        key,
        origin,
    })
}

/// Writes a new self-signed certificate and its key (0600) into `directory` (0700).
fn make_self_signed(directory: &Path, listen: SocketAddr) -> Result<(), TlsError> {
    let write_error = |path: &Path| {
        let path = path.to_path_buf();
        move |source| TlsError::Write { path, source }
    };
    crate::store::private::create_private_directory(directory)
        .and_then(|()| crate::store::private::restrict_directory(directory))
        .map_err(write_error(directory))?;
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(subject_names(listen))?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "fleet controller");
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(3650);
    let certificate = params.self_signed(&key)?;
    // The key first: a certificate without its key would be taken for a complete pair.
    let key_path = directory.join(KEY_FILE);
    write_private_file(&key_path, key.serialize_pem().as_bytes())
        .map_err(write_error(&key_path))?;
    let cert_path = directory.join(CERT_FILE);
    write_private_file(&cert_path, certificate.pem().as_bytes())
        .map_err(write_error(&cert_path))?;
    Ok(())
}

/// The names the certificate is made for: loopback, the listen address (when it is one a
/// client can dial) and this host's name. Clients pin the certificate, so the names matter
/// only to other clients (curl, a browser) given the certificate as their authority.
fn subject_names(listen: SocketAddr) -> Vec<String> {
    let mut names = vec![
        "localhost".to_string(),
        IpAddr::V4(Ipv4Addr::LOCALHOST).to_string(),
        IpAddr::V6(Ipv6Addr::LOCALHOST).to_string(),
    ];
    let address = listen.ip().to_string();
    if !listen.ip().is_unspecified() && !names.contains(&address) {
        names.push(address);
    }
    let host = nix::unistd::gethostname()
        .ok()
        .and_then(|name| name.into_string().ok())
        .filter(|name| !name.is_empty() && name != "localhost");
    names.extend(host);
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_certificate_is_made_once_and_kept() {
        let state = tempfile::tempdir().unwrap();
        let listen: SocketAddr = "127.0.0.1:5240".parse().unwrap();
        let first = api_certificate(None, state.path(), listen).unwrap();
        assert!(matches!(first.origin, CertificateOrigin::Made(_)));
        assert!(first.fingerprint.starts_with("SHA256:") && first.fingerprint.len() == 7 + 64);
        let again = api_certificate(None, state.path(), listen).unwrap();
        assert!(matches!(again.origin, CertificateOrigin::Kept(_)));
        assert_eq!(first.fingerprint, again.fingerprint);
        server_config(&again).expect("a usable pair");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
            let directory = state.path().join(TLS_DIR);
            assert_eq!(mode(&directory), 0o700);
            assert_eq!(mode(&directory.join(KEY_FILE)), 0o600);
        }
    }

    #[test]
    fn the_names_cover_loopback_and_a_specific_listen_address() {
        let names = subject_names("10.0.0.2:5240".parse().unwrap());
        for name in ["localhost", "127.0.0.1", "::1", "10.0.0.2"] {
            assert!(names.contains(&name.to_string()), "{names:?}");
        }
        let names = subject_names("0.0.0.0:5240".parse().unwrap());
        assert!(!names.contains(&"0.0.0.0".to_string()), "{names:?}");
    }

    #[test]
    fn a_missing_operator_certificate_is_reported_with_its_path() {
        let directory = tempfile::tempdir().unwrap();
        let operator = OperatorCertificate {
            cert: directory.path().join("missing.pem"),
            key: directory.path().join("missing.key"),
        };
        let error = api_certificate(
            Some(&operator),
            directory.path(),
            "127.0.0.1:0".parse().unwrap(),
        )
        .unwrap_err()
        .to_string();
        assert!(error.contains("missing.pem"), "{error}");
    }
}
