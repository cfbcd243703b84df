//! The deployment keys a profile or a machine may write: `kernel_params`,
//! `ephemeral_kernel_params`, `ssh_keys`, `user_data` and `vendor_data`. How the layers combine
//! is [`DeploySettings`]'s business; here each value is read and checked where it is written.

use super::resolve_path;
use crate::config::diagnostics::{Problem, Problems};
use crate::config::model::{DeploySettings, UserData, VendorData};
use crate::config::read::{with_suggestion, Spanned, TableReader};
use crate::config::syntax::{Item, Value};
use base64::Engine;
use std::net::IpAddr;
use std::path::Path;

pub const KEYS: &[&str] = &[
    "kernel_params",
    "ephemeral_kernel_params",
    "ssh_keys",
    "user_data",
    "vendor_data",
];
pub const VENDOR_KEYS: &[&str] = &["http_proxy", "apt_proxy", "ntp_servers", "dns_search"];
pub const USER_DATA_KEYS: &[&str] = &["file"];

/// What OpenSSH writes as a public key's type (and repeats inside the key's data).
const SSH_KEY_TYPES: &[&str] = &[
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
    "ssh-dss",
    "ssh-ed25519-cert-v01@openssh.com",
    "ssh-rsa-cert-v01@openssh.com",
    "ecdsa-sha2-nistp256-cert-v01@openssh.com",
    "ecdsa-sha2-nistp384-cert-v01@openssh.com",
    "ecdsa-sha2-nistp521-cert-v01@openssh.com",
];

/// How cloud-init recognises user data; it ignores anything else (with a warning in its log
/// that nobody reads), so anything else is refused here.
const USER_DATA_HEADS: &[&str] = &[
    "#cloud-config",
    "#!",
    "#include",
    "#cloud-boothook",
    "#part-handler",
    "## template: jinja",
    "Content-Type:",
];

/// Parameters the controller puts on the ephemeral environment's command line itself.
const CONTROLLER_PARAMS: &[&str] = &["fleet.", "BOOTIF=", "initrd="];
/// `fleet.test.*`: the deploy script's test hooks (`fleet.test.corrupt_at=`,
/// `fleet.test.dd_baseline=1`), which only an operator's parameters can set.
const TEST_HOOKS: &str = "fleet.test.";

pub fn read(
    reader: &TableReader<'_, '_>,
    base_dir: &Path,
    problems: &mut Problems,
) -> DeploySettings {
    // Most machines write none of these: five lookups, and nothing is allocated.
    if KEYS.iter().all(|key| reader.item(key).is_none()) {
        return DeploySettings::default();
    }
    DeploySettings {
        kernel_params: kernel_params(reader, "kernel_params", problems),
        ephemeral_kernel_params: kernel_params(reader, "ephemeral_kernel_params", problems),
        ssh_keys: ssh_keys(reader, problems),
        user_data: user_data(reader, base_dir, problems),
        vendor_data: vendor_data(reader, problems),
    }
}

// ---- kernel parameters ----

/// A string or a list of strings; `[]` (or `""`) is given, and clears what a profile gives.
fn kernel_params(
    reader: &TableReader<'_, '_>,
    key: &str,
    problems: &mut Problems,
) -> Option<Vec<String>> {
    reader.item(key)?;
    let mut params = Vec::new();
    for text in reader.string_list(key, problems) {
        if check_kernel_params(key, &text, problems) && !text.value.trim().is_empty() {
            params.push(text.value.trim().to_string());
        }
    }
    Some(params)
}

fn check_kernel_params(key: &str, text: &Spanned<&str>, problems: &mut Problems) -> bool {
    if text.value.chars().any(char::is_control) {
        let problem = Problem::new(
            text.span,
            format!("`{key}` holds a newline or another control character"),
        );
        problems.push(
            problem.help("a kernel command line is one line: separate parameters with spaces"),
        );
        return false;
    }
    if text.value.matches('"').count() % 2 == 1 {
        problems.error(
            text.span,
            format!("`{key}` has an unclosed `\"`: the kernel would read the rest of the line as one value"),
        );
        return false;
    }
    if key == "ephemeral_kernel_params" {
        let reserved = text.value.split_whitespace().find(|word| {
            !word.starts_with(TEST_HOOKS)
                && CONTROLLER_PARAMS
                    .iter()
                    .any(|prefix| word.starts_with(prefix))
        });
        if let Some(word) = reserved {
            let problem = Problem::new(
                text.span,
                format!(
                    "`{word}` is set by the controller on the ephemeral environment's command line"
                ),
            );
            problems.push(
                problem.help("fleet.* (but the test hooks fleet.test.*), BOOTIF= and initrd= are the controller's: leave them out"),
            );
            return false;
        }
    }
    true
}

// ---- SSH keys ----

fn ssh_keys(reader: &TableReader<'_, '_>, problems: &mut Problems) -> Vec<String> {
    let mut keys: Vec<String> = Vec::new();
    for text in reader.string_list("ssh_keys", problems) {
        match check_ssh_key(text.value.trim()) {
            Ok(()) => {
                let key = text.value.trim().to_string();
                if !keys.contains(&key) {
                    keys.push(key);
                }
            }
            Err(problem) => problems.push(problem.at(text.span)),
        }
    }
    keys
}

/// A problem found before its place is known.
struct Unplaced {
    message: String,
    help: Option<String>,
    written: Option<String>,
}

impl Unplaced {
    fn new(message: impl Into<String>) -> Self {
        Unplaced {
            message: message.into(),
            help: None,
            written: None,
        }
    }

    fn help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    fn at(self, span: crate::config::syntax::Span) -> Problem {
        let problem = Problem::new(span, self.message);
        match (self.written, self.help) {
            (Some(written), _) => with_suggestion(problem, &written, SSH_KEY_TYPES),
            (None, Some(help)) => problem.help(help),
            (None, None) => problem,
        }
    }
}

const KEY_EXAMPLE: &str = "write `TYPE BASE64 [COMMENT]`, such as `ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAA... alice@laptop` (the line of a .pub file)";

/// `TYPE BASE64 [COMMENT]`, whose base64 decodes to an SSH key blob of that same type (the
/// first thing in the blob is its type, as a length-prefixed string): a truncated or mangled
/// paste is caught here rather than on a machine nobody can log in to.
fn check_ssh_key(text: &str) -> Result<(), Unplaced> {
    if text.starts_with("-----BEGIN") {
        return Err(
            Unplaced::new("this is a private key, which must never leave its owner")
                .help("give the public key: the line of the matching .pub file"),
        );
    }
    if text.chars().any(char::is_control) {
        return Err(Unplaced::new(
            "an SSH key is one line: this one holds a newline or another control character",
        )
        .help("give each key as its own string in the list"));
    }
    let mut fields = text.split_whitespace();
    let (Some(kind), Some(data)) = (fields.next(), fields.next()) else {
        return Err(Unplaced::new("this is not an SSH public key").help(KEY_EXAMPLE));
    };
    if !SSH_KEY_TYPES.contains(&kind) {
        let mut problem = Unplaced::new(format!("`{kind}` is not an SSH key type"));
        if kind.contains(['=', ',', '"']) {
            problem = problem.help(
                "options before the key (from=, command=...) are not accepted: give the key alone",
            );
        } else {
            problem.written = Some(kind.to_string());
        }
        return Err(problem);
    }
    let blob = base64::engine::general_purpose::STANDARD
        .decode(data)
        .map_err(|error| {
            Unplaced::new(format!("the key's data is not valid base64 ({error})"))
                .help("the key was probably cut or changed when it was copied: copy it again from the .pub file")
        })?;
    match blob_type(&blob) {
        Some(inner) if inner == kind.as_bytes() => Ok(()),
        Some(inner) => Err(Unplaced::new(format!(
            "the key says `{kind}`, but its data is a `{}` key",
            String::from_utf8_lossy(inner)
        ))),
        None => Err(Unplaced::new("the key's data is too short to be a key")
            .help("the key was probably cut when it was copied: copy it again from the .pub file")),
    }
}

/// The type name at the start of an SSH key blob: a big-endian u32 length, then the name.
fn blob_type(blob: &[u8]) -> Option<&[u8]> {
    let length = u32::from_be_bytes(blob.get(..4)?.try_into().ok()?) as usize;
    let name = blob.get(4..4usize.checked_add(length)?)?;
    // A key has more than its name after it.
    (blob.len() > 4 + length).then_some(name)
}

// ---- user data ----

/// `user_data = "#cloud-config\n..."` or `user_data = { file = "cloud-init/gpu.yaml" }`.
fn user_data(
    reader: &TableReader<'_, '_>,
    base_dir: &Path,
    problems: &mut Problems,
) -> Option<UserData> {
    let item = reader.item("user_data")?;
    let (user_data, span) = match &item.value {
        Value::String(text) => (
            UserData {
                text: text.to_string(),
                file: None,
            },
            item.span,
        ),
        Value::Table(_) => user_data_file(&item, base_dir, problems)?,
        other => {
            let problem = Problem::new(
                item.span,
                format!(
                    "`user_data` must be text or {{ file = \"PATH\" }}, found {}",
                    other.type_name()
                ),
            );
            problems.push(problem);
            return None;
        }
    };
    check_user_data(&user_data, span, problems).then_some(user_data)
}

fn user_data_file(
    item: &Item<'_, '_>,
    base_dir: &Path,
    problems: &mut Problems,
) -> Option<(UserData, crate::config::syntax::Span)> {
    let table = TableReader::from_item(item, "`user_data`", problems)?;
    table.check_keys(USER_DATA_KEYS, problems);
    let file = table.required_string("file", problems)?;
    let path = resolve_path(base_dir, file.value);
    match std::fs::read_to_string(&path) {
        Ok(text) => Some((
            UserData {
                text,
                file: Some(path),
            },
            file.span,
        )),
        Err(error) => {
            problems.error(
                file.span,
                format!("cannot read the user data file {}: {error}", path.display()),
            );
            None
        }
    }
}

fn check_user_data(
    user_data: &UserData,
    span: crate::config::syntax::Span,
    problems: &mut Problems,
) -> bool {
    let first_line = user_data.text.lines().next().unwrap_or_default().trim_end();
    if USER_DATA_HEADS
        .iter()
        .any(|head| first_line.starts_with(head))
    {
        return true;
    }
    let whose = match &user_data.file {
        Some(path) => format!("the user data in {}", path.display()),
        None => "the user data".to_string(),
    };
    let message = if first_line.is_empty() {
        format!("{whose} begins with an empty line, and cloud-init would ignore it")
    } else {
        let shown: String = first_line.chars().take(40).collect();
        format!("{whose} begins with `{shown}`, and cloud-init would ignore it")
    };
    let problem = Problem::new(span, message);
    problems.push(problem.help(
        "begin it with `#cloud-config` (or `#!` for a script, `#include`, `#cloud-boothook`, or a MIME multipart)",
    ));
    false
}

// ---- vendor data ----

fn vendor_data(reader: &TableReader<'_, '_>, problems: &mut Problems) -> VendorData {
    let Some(table) = reader.table("vendor_data", "`vendor_data`", problems) else {
        return VendorData::default();
    };
    table.check_keys(VENDOR_KEYS, problems);
    VendorData {
        http_proxy: proxy(&table, "http_proxy", problems),
        apt_proxy: proxy(&table, "apt_proxy", problems),
        ntp_servers: host_list(&table, "ntp_servers", "an NTP server", problems),
        dns_search: host_list(&table, "dns_search", "a DNS search domain", problems),
    }
}

/// An http:// or https:// URL with a host and no credentials (the fleet file holds no secret).
fn proxy(table: &TableReader<'_, '_>, key: &str, problems: &mut Problems) -> Option<String> {
    let text = table.string(key, problems)?;
    let message = match url::Url::parse(text.value) {
        Ok(url) if !matches!(url.scheme(), "http" | "https") || url.host().is_none() => {
            format!(
                "`{key}` must be an http:// or https:// URL, found `{}`",
                text.value
            )
        }
        Ok(url) if !url.username().is_empty() || url.password().is_some() => {
            // Not repeated in the message: the part before `@` often holds a password.
            let problem = Problem::new(
                text.span,
                format!("`{key}` carries credentials (user@ or user:password@ before the host)"),
            );
            problems.push(problem.help(
                "the fleet file holds no secret: use a proxy that trusts the machines' addresses",
            ));
            return None;
        }
        Ok(_) => return Some(text.value.to_string()),
        Err(error) => format!("`{key}` is not a URL ({error}): `{}`", text.value),
    };
    let problem = Problem::new(text.span, message);
    problems.push(problem.help("such as \"http://proxy.example.net:3128\""));
    None
}

/// A list of host names or addresses (NTP servers) or of domain names (DNS search).
fn host_list(
    table: &TableReader<'_, '_>,
    key: &str,
    what: &str,
    problems: &mut Problems,
) -> Option<Vec<String>> {
    table.item(key)?;
    let mut hosts = Vec::new();
    for text in table.string_list(key, problems) {
        let is_address = text.value.parse::<IpAddr>().is_ok();
        if (is_address && key == "ntp_servers") || is_dns_name(text.value) {
            hosts.push(text.value.to_ascii_lowercase());
        } else {
            problems.error(
                text.span,
                format!(
                    "`{}` is not {what}: a DNS name{} is expected",
                    text.value,
                    if key == "ntp_servers" {
                        " or an IP address"
                    } else {
                        ""
                    }
                ),
            );
        }
    }
    Some(hosts)
}

/// Labels of letters, digits and `-` (not at either end), 63 characters at most, 253 in all;
/// the last not all digits (no top-level domain is, and so an IPv4 address is not a name).
fn is_dns_name(text: &str) -> bool {
    let label_ok = |label: &str| {
        (1..=63).contains(&label.len())
            && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    };
    let numeric = |label: &str| label.chars().all(|c| c.is_ascii_digit());
    text.len() <= 253
        && text.split('.').all(label_ok)
        && !text.rsplit('.').next().is_some_and(numeric)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ED25519: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAII9DtyWaBjAxCUHbUGp99CrMtd4FVh5wNYmepcWF3Kz8 alice@laptop";

    #[test]
    fn a_real_public_key_passes() {
        assert!(check_ssh_key(ED25519).is_ok());
        assert!(check_ssh_key(ED25519.trim_end_matches(" alice@laptop")).is_ok());
    }

    fn message(text: &str) -> String {
        match check_ssh_key(text) {
            Ok(()) => panic!("`{text}` should be refused"),
            Err(problem) => problem.message,
        }
    }

    #[test]
    fn broken_keys_say_what_is_wrong() {
        assert!(message("ssh-ed25519").contains("not an SSH public key"));
        assert!(message("ssh-ed2551 AAAA").contains("`ssh-ed2551` is not an SSH key type"));
        assert!(message("ssh-ed25519 AAAA!!!").contains("not valid base64"));
        // The data of an ed25519 key, labelled as RSA.
        let relabelled = ED25519.replace("ssh-ed25519 ", "ssh-rsa ");
        assert!(message(&relabelled).contains("but its data is a `ssh-ed25519` key"));
        // Cut short: the name is there, the key is not.
        assert!(message("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5").contains("too short"));
        assert!(message("-----BEGIN OPENSSH PRIVATE KEY-----").contains("private key"));
    }

    #[test]
    fn dns_names() {
        assert!(is_dns_name("ntp.example.net"));
        assert!(!is_dns_name("-bad.example"));
        assert!(!is_dns_name("two..dots"));
        assert!(!is_dns_name("under_score.example"));
        assert!(!is_dns_name("10.0.0.1"));
    }
}
