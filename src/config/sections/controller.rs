//! `[controller]`: where the controller listens, keeps its state, and serves boot files.

use super::{reference, resolve_path, Reference};
use crate::config::diagnostics::{Problem, Problems};
use crate::config::model::{ControllerSettings, OperatorCertificate};
use crate::config::read::{Spanned, TableReader};
use crate::config::syntax::Span;
use std::net::SocketAddr;
use std::path::Path;

pub const KEYS: &[&str] = &[
    "listen",
    "boot_listen",
    "tls_cert",
    "tls_key",
    "database",
    "state_dir",
    "secret_key_file",
    "tftp_listen",
    "http_boot_url",
    "loader_dir",
    "dhcp_interfaces",
    "dhcp_listen",
    "ephemeral_image",
];

#[derive(Debug)]
pub struct ControllerDecl {
    pub span: Span,
    pub settings: ControllerSettings,
    pub ephemeral_image: Option<Reference>,
}

pub fn read(
    reader: TableReader<'_, '_>,
    base_dir: &Path,
    problems: &mut Problems,
) -> ControllerDecl {
    reader.check_keys(KEYS, problems);
    let defaults = ControllerSettings::default();
    let settings = ControllerSettings {
        listen: socket_address(&reader, "listen", problems).unwrap_or(defaults.listen),
        boot_listen: socket_address(&reader, "boot_listen", problems)
            .unwrap_or(defaults.boot_listen),
        tls: operator_certificate(&reader, base_dir, problems),
        database: database(&reader, problems),
        state_dir: reader
            .string("state_dir", problems)
            .map_or(defaults.state_dir, |dir| resolve_path(base_dir, dir.value)),
        secret_key_file: reader
            .string("secret_key_file", problems)
            .map(|file| resolve_path(base_dir, file.value)),
        tftp_listen: socket_address(&reader, "tftp_listen", problems)
            .unwrap_or(defaults.tftp_listen),
        http_boot_url: http_url(&reader, "http_boot_url", problems),
        loader_dir: reader
            .string("loader_dir", problems)
            .map_or(defaults.loader_dir, |dir| resolve_path(base_dir, dir.value)),
        dhcp_interfaces: reader
            .string_list("dhcp_interfaces", problems)
            .iter()
            .map(|name| name.value.to_string())
            .collect(),
        dhcp_listen: dhcp_listen(&reader, problems),
        ephemeral_image: None,
    };
    ControllerDecl {
        span: reader.span,
        settings,
        ephemeral_image: reference(&reader, "ephemeral_image", problems),
    }
}

/// `tls_cert` and `tls_key`: the operator's own certificate for the API, both or neither.
fn operator_certificate(
    reader: &TableReader<'_, '_>,
    base_dir: &Path,
    problems: &mut Problems,
) -> Option<OperatorCertificate> {
    let cert = reader.string("tls_cert", problems);
    let key = reader.string("tls_key", problems);
    match (cert, key) {
        (Some(cert), Some(key)) => Some(OperatorCertificate {
            cert: resolve_path(base_dir, cert.value),
            key: resolve_path(base_dir, key.value),
        }),
        (None, None) => None,
        (Some(given), None) | (None, Some(given)) => {
            let problem = Problem::new(
                given.span,
                "`tls_cert` and `tls_key` go together: the certificate (PEM, the chain) and its private key (PEM)",
            );
            problems.push(problem.help(
                "give both, or neither and the controller makes a self-signed certificate in its state directory",
            ));
            None
        }
    }
}

fn socket_address(
    reader: &TableReader<'_, '_>,
    key: &str,
    problems: &mut Problems,
) -> Option<SocketAddr> {
    let text = reader.string(key, problems)?;
    match text.value.parse() {
        Ok(address) => Some(address),
        Err(_) => {
            let problem = Problem::new(
                text.span,
                format!("`{}` is not an address and port", text.value),
            );
            problems.push(
                problem.help(
                    "write an IP address and a port, such as \"0.0.0.0:5240\" or \"[::]:5240\"",
                ),
            );
            None
        }
    }
}

/// `dhcp_listen`: an IPv4 address and port (DHCP is IPv4 only).
fn dhcp_listen(reader: &TableReader<'_, '_>, problems: &mut Problems) -> Option<SocketAddr> {
    let address = socket_address(reader, "dhcp_listen", problems)?;
    if address.is_ipv4() {
        return Some(address);
    }
    let span = reader.string("dhcp_listen", problems)?.span;
    let problem = Problem::new(
        span,
        "`dhcp_listen` must be an IPv4 address and port: DHCP is IPv4 only",
    );
    problems.push(problem.help("write e.g. \"127.0.0.1:6767\" (a relay sends its requests there)"));
    None
}

fn database(reader: &TableReader<'_, '_>, problems: &mut Problems) -> Option<String> {
    let url = reader.string("database", problems)?;
    let known = ["sqlite:", "postgres://", "postgresql://"];
    if known.iter().any(|scheme| url.value.starts_with(scheme)) {
        return Some(url.value.to_string());
    }
    let problem = Problem::new(
        url.span,
        format!("`{}` is not a database URL fleet can use", url.value),
    );
    problems.push(
        problem.help("use sqlite://PATH for one controller or postgres://USER@HOST/DB for several"),
    );
    None
}

/// A URL that must be http:// or https://.
pub fn http_url(
    reader: &TableReader<'_, '_>,
    key: &str,
    problems: &mut Problems,
) -> Option<String> {
    let url = reader.string(key, problems)?;
    checked_http_url(&url, key, problems).then(|| url.value.to_string())
}

pub fn checked_http_url(url: &Spanned<&str>, key: &str, problems: &mut Problems) -> bool {
    let rest = url
        .value
        .strip_prefix("http://")
        .or_else(|| url.value.strip_prefix("https://"));
    let authority = rest.map(|rest| rest.split('/').next().unwrap_or(rest));
    if authority.is_some_and(|authority| authority.contains('@')) {
        // Not repeated in the message: the part before `@` is a user and often a password.
        let problem = Problem::new(
            url.span,
            format!("`{key}` carries credentials (user@ or user:password@ before the host)"),
        );
        problems.push(problem.help(
            "secrets must be references: give `user = \"...\"` and `password = { env = \"WEBHOOK_PASSWORD\" }` (or a `token`) beside the URL",
        ));
        return false;
    }
    if rest.is_some_and(|rest| !rest.is_empty() && !rest.contains(char::is_whitespace)) {
        return true;
    }
    problems.error(
        url.span,
        format!(
            "`{key}` must be an http:// or https:// URL, found `{}`",
            url.value
        ),
    );
    false
}
