//! `power = { type = "...", ... }` of a machine. Secrets are references, never inline values.

use super::controller::checked_http_url;
use super::resolve_path;
use crate::config::diagnostics::{Problem, Problems};
use crate::config::model::{IpmiBootType, IpmiDriver, IpmiPrivilege, PowerSpec, SecretRef};
use crate::config::read::{check_choice, TableReader};
use crate::config::syntax::Value;
use crate::model::PowerOffMode;
use std::path::Path;

pub const IPMI_KEYS: &[&str] = &[
    "type",
    "address",
    "user",
    "password",
    "driver",
    "cipher_suite",
    "privilege",
    "power_off_mode",
    "boot_type",
];
pub const REDFISH_KEYS: &[&str] = &[
    "type",
    "address",
    "user",
    "password",
    "system_id",
    "verify_tls",
];
pub const WEBHOOK_KEYS: &[&str] = &[
    "type",
    "on_url",
    "off_url",
    "cycle_url",
    "query_url",
    "on_regex",
    "off_regex",
    "user",
    "password",
    "token",
    "verify_tls",
];
pub const QEMU_KEYS: &[&str] = &["type", "qmp_socket", "command"];
pub const SECRET_KEYS: &[&str] = &["env", "file", "store"];

pub fn read(
    machine: &TableReader<'_, '_>,
    base_dir: &Path,
    problems: &mut Problems,
) -> Option<PowerSpec> {
    let Some(table) = machine.table("power", "`power`", problems) else {
        return Some(PowerSpec::Manual);
    };
    let kind = table.required_string("type", problems)?;
    if !check_choice("power type", &kind, PowerSpec::TYPES, problems) {
        return None;
    }
    match kind.value {
        "ipmi" => ipmi(&table, base_dir, problems),
        "redfish" => redfish(&table, base_dir, problems),
        "webhook" => webhook(&table, base_dir, problems),
        "qemu" => {
            table.check_keys(QEMU_KEYS, problems);
            let command = qemu_command(&table, problems);
            let socket = table.required_string("qmp_socket", problems)?;
            Some(PowerSpec::Qemu {
                qmp_socket: resolve_path(base_dir, socket.value),
                command,
            })
        }
        _ => {
            table.check_keys(&["type"], problems);
            Some(PowerSpec::Manual)
        }
    }
}

fn ipmi(
    table: &TableReader<'_, '_>,
    base_dir: &Path,
    problems: &mut Problems,
) -> Option<PowerSpec> {
    table.check_keys(IPMI_KEYS, problems);
    let driver = table
        .choice("driver", &["lan", "lan_2_0"], problems)
        .map(|d| {
            if d.value == "lan" {
                IpmiDriver::Lan
            } else {
                IpmiDriver::Lan20
            }
        });
    let privilege = table
        .choice("privilege", &["user", "operator", "admin"], problems)
        .map(|p| match p.value {
            "user" => IpmiPrivilege::User,
            "operator" => IpmiPrivilege::Operator,
            _ => IpmiPrivilege::Admin,
        });
    let off_mode = table
        .choice("power_off_mode", &["soft", "hard"], problems)
        .map(|m| {
            if m.value == "soft" {
                PowerOffMode::Soft
            } else {
                PowerOffMode::Hard
            }
        });
    let boot_type = table
        .choice("boot_type", &["auto", "legacy", "efi"], problems)
        .map(|b| match b.value {
            "legacy" => IpmiBootType::Legacy,
            "efi" => IpmiBootType::Efi,
            _ => IpmiBootType::Auto,
        });
    Some(PowerSpec::Ipmi {
        user: table.owned_string("user", problems),
        password: secret(table, "password", base_dir, problems),
        driver: driver.unwrap_or_default(),
        // IPMI 2.0 defines cipher suites 0 to 17.
        cipher_suite: table
            .integer("cipher_suite", 0, 17, problems)
            .map(|suite| suite.value as u8),
        privilege: privilege.unwrap_or_default(),
        power_off_mode: off_mode.unwrap_or_default(),
        boot_type: boot_type.unwrap_or_default(),
        address: bmc_address(table, problems)?,
    })
}

fn redfish(
    table: &TableReader<'_, '_>,
    base_dir: &Path,
    problems: &mut Problems,
) -> Option<PowerSpec> {
    table.check_keys(REDFISH_KEYS, problems);
    Some(PowerSpec::Redfish {
        user: table.owned_string("user", problems),
        password: secret(table, "password", base_dir, problems),
        system_id: table.owned_string("system_id", problems),
        verify_tls: table.boolean("verify_tls", problems).or_true(),
        address: bmc_address(table, problems)?,
    })
}

fn webhook(
    table: &TableReader<'_, '_>,
    base_dir: &Path,
    problems: &mut Problems,
) -> Option<PowerSpec> {
    table.check_keys(WEBHOOK_KEYS, problems);
    let url = |key: &str, problems: &mut Problems| {
        let url = table.string(key, problems)?;
        checked_http_url(&url, key, problems).then(|| url.value.to_string())
    };
    let query_url = url("query_url", problems);
    let on_regex = table.owned_string("on_regex", problems);
    let off_regex = table.owned_string("off_regex", problems);
    if query_url.is_none() && (on_regex.is_some() || off_regex.is_some()) {
        let span = table
            .key_span("on_regex")
            .or(table.key_span("off_regex"))
            .unwrap_or(table.span);
        problems.error(
            span,
            "the regexes read the answer of `query_url`, which is missing",
        );
    }
    let cycle_url = url("cycle_url", problems);
    let user = table.owned_string("user", problems);
    let password = secret(table, "password", base_dir, problems);
    let token = secret(table, "token", base_dir, problems);
    webhook_credentials(table, problems);
    let verify_tls = table.boolean("verify_tls", problems).or_true();
    let on_url = table
        .required("on_url", problems)
        .and(url("on_url", problems));
    let off_url = table
        .required("off_url", problems)
        .and(url("off_url", problems));
    Some(PowerSpec::Webhook {
        on_url: on_url?,
        off_url: off_url?,
        cycle_url,
        query_url,
        on_regex,
        off_regex,
        user,
        password,
        token,
        verify_tls,
    })
}

/// A webhook authenticates with a bearer `token` or with `user` and `password` (HTTP basic
/// authentication), not both; `user` and `password` go together.
fn webhook_credentials(table: &TableReader<'_, '_>, problems: &mut Problems) {
    let basic = "HTTP basic authentication needs both";
    match (
        table.key_span("token"),
        table.key_span("user"),
        table.key_span("password"),
    ) {
        (Some(token), user, password) if user.is_some() || password.is_some() => {
            problems.push(
                Problem::new(
                    token,
                    "give either `token` or `user` and `password`, not both",
                )
                .help("a bearer token: token = { env = \"NAME\" }; basic authentication: user = \"NAME\" and password = { env = \"NAME\" }"),
            );
        }
        (None, Some(user), None) => {
            problems.error(
                user,
                format!("`user` is set but `password` is not; {basic}"),
            );
        }
        (None, None, Some(password)) => {
            problems.error(
                password,
                format!("`password` is set but `user` is not; {basic}"),
            );
        }
        _ => {}
    }
}

/// `command = ["qemu-system-x86_64", ...]`: the argv that starts the VM, a non-empty list.
fn qemu_command(table: &TableReader<'_, '_>, problems: &mut Problems) -> Option<Vec<String>> {
    let item = table.item("command")?;
    if !matches!(item.value, Value::Array(_)) {
        problems.error(
            item.span,
            format!(
                "`command` must be a list of strings (the argv that starts the VM), found {}",
                item.value.type_name()
            ),
        );
        return None;
    }
    let argv: Vec<String> = table
        .string_list("command", problems)
        .into_iter()
        .map(|arg| arg.value.to_string())
        .collect();
    if argv.is_empty() {
        problems.error(
            item.span,
            "`command` is empty: give the argv that starts the VM, e.g. [\"qemu-system-x86_64\", \"-m\", \"512\"]",
        );
        return None;
    }
    Some(argv)
}

fn bmc_address(table: &TableReader<'_, '_>, problems: &mut Problems) -> Option<String> {
    let address = table.required_string("address", problems)?;
    if address.value.is_empty() || address.value.contains(char::is_whitespace) {
        problems.error(
            address.span,
            format!("`{}` is not a BMC address", address.value),
        );
        return None;
    }
    Some(address.value.to_ascii_lowercase())
}

/// `{ env = "NAME" }` or `{ file = "/path" }`. An inline string is refused: fleet files live in
/// git, and a password in git is a leaked password. The message never repeats the value.
pub fn secret(
    table: &TableReader<'_, '_>,
    key: &str,
    base_dir: &Path,
    problems: &mut Problems,
) -> Option<SecretRef> {
    let item = table.item(key)?;
    let context = format!("`{key}`");
    let reference = match &item.value {
        Value::Table(_) => TableReader::from_item(&item, &context, problems)?,
        Value::String(_) => {
            let problem = Problem::new(
                item.span,
                format!("`{key}` is written inline; secrets must be references"),
            );
            let webhook = matches!(
                table.item("type").map(|item| item.value),
                Some(Value::String("webhook"))
            );
            let (example, example_file) = match (key, webhook) {
                ("token", _) => ("WEBHOOK_TOKEN", "webhook-token"),
                (_, true) => ("WEBHOOK_PASSWORD", "webhook-password"),
                _ => ("BMC_PASSWORD", "bmc-password"),
            };
            problems.push(problem.help(format!(
                "keep the secret out of the file: {key} = {{ env = \"{example}\" }} or {key} = {{ file = \"/etc/fleet/secrets/{example_file}\" }}"
            )));
            return None;
        }
        other => {
            problems.error(
                item.span,
                format!(
                    "`{key}` must be {{ env = \"NAME\" }} or {{ file = \"PATH\" }}, found {}",
                    other.type_name()
                ),
            );
            return None;
        }
    };
    reference.check_keys(SECRET_KEYS, problems);
    if let Some(purpose) = reference.string("store", problems) {
        // What the controller keeps for the machine (an enlisted BMC's password), as `fleet
        // adopt` writes it.
        if reference.string("env", problems).is_some()
            || reference.string("file", problems).is_some()
        {
            problems.error(purpose.span, "give one of `env`, `file` or `store`");
            return None;
        }
        if !crate::config::model::STORED_PURPOSES.contains(&purpose.value) {
            problems.error(
                purpose.span,
                format!(
                    "`store = \"{}\"` is not a secret the controller keeps; it keeps {}",
                    purpose.value,
                    crate::config::model::STORED_PURPOSES.join(", ")
                ),
            );
            return None;
        }
        return Some(SecretRef::Store(purpose.value.to_string()));
    }
    match (
        reference.string("env", problems),
        reference.string("file", problems),
    ) {
        (Some(name), None) if is_env_name(name.value) => {
            Some(SecretRef::Env(name.value.to_string()))
        }
        (Some(name), None) => {
            problems.error(
                name.span,
                format!(
                    "`{}` is not an environment variable name (letters, digits and `_`)",
                    name.value
                ),
            );
            None
        }
        (None, Some(path)) => Some(SecretRef::File(resolve_path(base_dir, path.value))),
        (Some(_), Some(path)) => {
            problems.error(path.span, "give either `env` or `file`, not both");
            None
        }
        (None, None) => {
            problems.error(item.span, format!("`{key}` needs `env` or `file`"));
            None
        }
    }
}

fn is_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

trait DefaultTrue {
    fn or_true(self) -> bool;
}

impl DefaultTrue for Option<crate::config::read::Spanned<bool>> {
    fn or_true(self) -> bool {
        self.is_none_or(|flag| flag.value)
    }
}
