//! The rescue script's two ends (pure): the text a machine downloads (the script with the
//! machine's SSH keys after its first line) and what its results say about reaching the machine.

use std::net::IpAddr;

/// The built-in script a rescue run runs: SSH access with the machine's keys.
pub const RESCUE_SCRIPT: &str = "fleet-rescue";

/// The rescue script as served to `machine`: its first line, then the machine's name and SSH
/// keys as shell assignments (single-quoted; the fleet file allows no control character in a
/// key, and a `'` is closed, escaped and reopened), then the rest of the script.
pub fn rescue_script_text(script: &str, machine: &str, ssh_keys: &[String]) -> String {
    let (first, rest) = match script.split_once('\n') {
        Some((first, rest)) if first.starts_with("#!") => (format!("{first}\n"), rest),
        _ => (String::new(), script),
    };
    let one_a_line: Vec<String> = ssh_keys
        .iter()
        .map(|key| key.replace(['\n', '\r'], " "))
        .collect();
    format!(
        "{first}# the SSH keys of {machine} in the fleet file (its own and its profiles')\n\
         rescue_machine={}\nrescue_keys={}\n{rest}",
        shell_quote(machine),
        shell_quote(&one_a_line.join("\n"))
    )
}

/// `text` as one single-quoted shell word.
fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// How to reach a machine in rescue mode, read from its rescue script's results (what the
/// machine says; only well-formed values are kept).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RescueAccess {
    /// An SSH server runs (false: the machine had no keys, see `note`).
    pub ssh: bool,
    pub user: String,
    pub port: u16,
    /// IPv4 first.
    pub addresses: Vec<IpAddr>,
    /// `SHA256:...`, as `ssh` shows it on first contact.
    pub host_key: Option<String>,
    /// Why there is no SSH server, when there is none.
    pub note: Option<String>,
}

impl RescueAccess {
    /// From a passed rescue script's results JSON; `None` when it holds no `ssh` flag.
    pub fn from_results(results: &serde_json::Value) -> Option<RescueAccess> {
        let ssh = results.get("ssh")?.as_bool()?;
        let text = |key: &str| results.get(key).and_then(|value| value.as_str());
        let user = text("user")
            .filter(|user| is_user_name(user))
            .unwrap_or("root");
        let port = results
            .get("port")
            .and_then(|port| port.as_u64())
            .and_then(|port| u16::try_from(port).ok())
            .filter(|port| *port > 0)
            .unwrap_or(22);
        let mut addresses: Vec<IpAddr> = (results.get("addresses"))
            .and_then(|list| list.as_array())
            .map(|list| {
                let parsed = list.iter().filter_map(|a| a.as_str()?.parse().ok());
                parsed.collect()
            })
            .unwrap_or_default();
        addresses.sort_by_key(|address: &IpAddr| address.is_ipv6());
        let host_key = text("host_key")
            .filter(|key| {
                key.len() <= 200 && key.chars().all(|c| c.is_ascii_graphic()) && key.contains(':')
            })
            .map(str::to_string);
        let note = text("reason").map(|reason| {
            let printable = reason.chars().filter(|c| !c.is_control());
            printable.take(300).collect()
        });
        Some(RescueAccess {
            ssh,
            user: user.to_string(),
            port,
            addresses,
            host_key,
            note,
        })
    }

    /// `ssh root@10.99.0.57` (with `-p` off port 22) to the first address; `None` without a
    /// server or an address.
    pub fn command(&self) -> Option<String> {
        let address = self.addresses.first().filter(|_| self.ssh)?;
        let port = match self.port {
            22 => String::new(),
            port => format!("-p {port} "),
        };
        Some(format!("ssh {port}{}@{address}", self.user))
    }

    /// One line for people: `ssh root@10.99.0.57 (host key SHA256:...)`, or why there is none.
    pub fn describe(&self) -> String {
        match (self.command(), &self.note) {
            (Some(command), _) => match &self.host_key {
                Some(key) => format!("{command} (host key {key})"),
                None => command,
            },
            (None, Some(note)) => format!("no SSH server: {note}"),
            (None, None) if self.ssh => {
                "an SSH server runs, but the machine reported no address".into()
            }
            (None, None) => "no SSH server".into(),
        }
    }
}

/// A login name as `ssh` takes it before the `@`.
fn is_user_name(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 32
        && (text.chars()).all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rescue_script_is_served_with_the_keys_after_its_first_line() {
        let keys = vec![
            "ssh-ed25519 AAAAC3Nza op@example".to_string(),
            "ssh-rsa AAAAB3Nza it's bob".to_string(),
        ];
        assert_eq!(
            rescue_script_text("#!/bin/sh\necho $rescue_keys\n", "web-1", &keys),
            "#!/bin/sh\n# the SSH keys of web-1 in the fleet file (its own and its profiles')\n\
             rescue_machine='web-1'\n\
             rescue_keys='ssh-ed25519 AAAAC3Nza op@example\nssh-rsa AAAAB3Nza it'\\''s bob'\n\
             echo $rescue_keys\n"
        );
        assert_eq!(
            rescue_script_text("echo hi\n", "db", &[]),
            "# the SSH keys of db in the fleet file (its own and its profiles')\n\
             rescue_machine='db'\nrescue_keys=''\necho hi\n"
        );
    }

    #[test]
    fn rescue_access_is_read_from_the_results_and_keeps_only_sane_values() {
        let results = serde_json::json!({
            "ssh": true, "user": "root", "port": 22,
            "addresses": ["fd00::57", "10.99.0.57", "not an address"],
            "host_key": "SHA256:N9T0TPWETlZ6xWVt0HeMbvuv6+P+J+CYdX+vTLPfnJM",
            "host_key_type": "ssh-ed25519", "authorized_keys": 1
        });
        let access = RescueAccess::from_results(&results).unwrap();
        assert_eq!(
            access.addresses,
            [
                "10.99.0.57".parse::<std::net::IpAddr>().unwrap(),
                "fd00::57".parse().unwrap()
            ]
        );
        assert_eq!(
            access.describe(),
            "ssh root@10.99.0.57 (host key SHA256:N9T0TPWETlZ6xWVt0HeMbvuv6+P+J+CYdX+vTLPfnJM)"
        );
        let other_port = serde_json::json!({"ssh": true, "port": 2222, "addresses": ["10.0.0.9"],
            "host_key": "SHA256:x y\nz"});
        let access = RescueAccess::from_results(&other_port).unwrap();
        assert_eq!(
            access.command().as_deref(),
            Some("ssh -p 2222 root@10.0.0.9")
        );
        assert_eq!(access.host_key, None, "a host key with spaces is not kept");
        let none = serde_json::json!({"ssh": false, "addresses": ["10.0.0.9"],
            "reason": "no SSH keys for db in the fleet file: no SSH server started"});
        let access = RescueAccess::from_results(&none).unwrap();
        assert_eq!(access.command(), None);
        assert_eq!(
            access.describe(),
            "no SSH server: no SSH keys for db in the fleet file: no SSH server started"
        );
        assert_eq!(RescueAccess::from_results(&serde_json::json!({})), None);
        assert_eq!(RescueAccess::from_results(&serde_json::json!([1])), None);
    }
}
