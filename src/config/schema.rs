//! JSON Schema of the fleet file (`fleet schema`), for editors (e.g. taplo, Even Better TOML).
//!
//! These types describe the file as written (sizes as strings, secrets as references) and exist
//! only for the schema; validation is done by `sections` and `check`, which report every error
//! with its position. A test keeps the two in step (every key the readers accept is here).

#![allow(dead_code)]

use schemars::JsonSchema;
use std::collections::BTreeMap;

pub fn json_schema() -> serde_json::Value {
    let schema = schemars::schema_for!(FleetFile);
    serde_json::to_value(schema).unwrap_or(serde_json::Value::Null)
}

/// A fleet file. Several files make one fleet (see `include`).
#[derive(JsonSchema)]
#[serde(deny_unknown_fields)]
struct FleetFile {
    /// Files, directories (every *.toml, sorted) or `*` patterns, relative to this file.
    include: Option<OneOrMany>,
    controller: Option<Controller>,
    subnets: Option<BTreeMap<String, Subnet>>,
    images: Option<BTreeMap<String, Image>>,
    storage_templates: Option<BTreeMap<String, StorageTemplate>>,
    network_templates: Option<BTreeMap<String, NetworkTemplate>>,
    profiles: Option<BTreeMap<String, Profile>>,
    /// One `[[machine]]` table per machine.
    machine: Option<Vec<Machine>>,
    policy: Option<Policy>,
    /// The operator's own commissioning and test scripts, by name.
    scripts: Option<BTreeMap<String, Script>>,
}

/// A commissioning or test script of the operator's, run after the built-in ones.
#[derive(JsonSchema)]
#[serde(deny_unknown_fields)]
struct Script {
    /// The script (POSIX sh, runs under busybox), relative to this file.
    file: String,
    kind: ScriptKind,
    /// Default 10 minutes.
    timeout: Option<Duration>,
    /// Touches the disks (never run on a deployed machine).
    destructive: Option<bool>,
}

#[derive(JsonSchema)]
#[serde(rename_all = "snake_case")]
enum ScriptKind {
    Commissioning,
    Testing,
}

#[derive(JsonSchema)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

/// "512MiB", "3GiB", "1TB", "20%" (where allowed) or a number of bytes.
#[derive(JsonSchema)]
#[serde(untagged)]
enum Size {
    Text(String),
    Bytes(u64),
}

#[derive(JsonSchema)]
#[serde(deny_unknown_fields)]
struct Controller {
    /// Address and port of the operator API, served over HTTPS (default "127.0.0.1:5240").
    listen: Option<String>,
    /// Address and port of the boot HTTP server: iPXE scripts, kernels, the machine API; plain
    /// HTTP (default "0.0.0.0:5248").
    boot_listen: Option<String>,
    /// PEM file with the API's certificate chain (with tls_key); default: a self-signed
    /// certificate the controller makes in state_dir/tls on first start.
    tls_cert: Option<String>,
    /// PEM file with the private key of tls_cert.
    tls_key: Option<String>,
    /// sqlite://PATH or postgres://...; default: a SQLite file in state_dir.
    database: Option<String>,
    /// Default ".fleet".
    state_dir: Option<String>,
    /// Default "0.0.0.0:69".
    tftp_listen: Option<String>,
    /// The URL booting machines reach the controller at.
    http_boot_url: Option<String>,
    /// Default "/usr/lib/ipxe".
    loader_dir: Option<String>,
    /// DHCP runs only on those of these interfaces that exist.
    dhcp_interfaces: Option<Vec<String>>,
    /// Image with kernel + initrd for enlistment, commissioning, testing and rescue.
    ephemeral_image: Option<String>,
}

#[derive(JsonSchema)]
#[serde(deny_unknown_fields)]
struct Range {
    start: String,
    end: String,
}

#[derive(JsonSchema)]
#[serde(deny_unknown_fields)]
struct ReservedRange {
    start: String,
    end: String,
    comment: Option<String>,
}

#[derive(JsonSchema)]
#[serde(deny_unknown_fields)]
struct Subnet {
    /// e.g. "10.0.0.0/24".
    cidr: String,
    gateway: Option<String>,
    dns: Option<Vec<String>>,
    domain: Option<String>,
    interface: Option<String>,
    /// Addresses for booting machines.
    dynamic_range: Option<Range>,
    reserved: Option<Vec<ReservedRange>>,
    /// Default 3600, at least 60.
    lease_seconds: Option<u32>,
    proxy_dhcp: Option<bool>,
}

#[derive(JsonSchema)]
#[serde(rename_all = "snake_case")]
enum Arch {
    Amd64,
    Arm64,
}

/// `url` (with `sha256`) or `path`.
#[derive(JsonSchema)]
#[serde(deny_unknown_fields)]
struct Artifact {
    url: Option<String>,
    path: Option<String>,
    /// 64 hex digits.
    sha256: Option<String>,
}

#[derive(JsonSchema)]
#[serde(deny_unknown_fields)]
struct RootImage {
    url: Option<String>,
    path: Option<String>,
    sha256: Option<String>,
    format: ImageFormat,
}

#[derive(JsonSchema)]
#[serde(rename_all = "kebab-case")]
enum ImageFormat {
    Tgz,
    TarXz,
    Raw,
    RawGz,
    RawXz,
    Qcow2,
    Squashfs,
}

#[derive(JsonSchema)]
#[serde(deny_unknown_fields)]
struct Image {
    arch: Option<Arch>,
    os: Option<String>,
    release: Option<String>,
    kernel: Option<Artifact>,
    initrd: Option<Artifact>,
    /// The OS image written to disk on deployment.
    root: Option<RootImage>,
}

#[derive(JsonSchema)]
#[serde(rename_all = "snake_case")]
enum Layout {
    Flat,
    Lvm,
    Bcache,
    Blank,
    Custom,
}

#[derive(JsonSchema)]
#[serde(rename_all = "snake_case")]
enum CacheMode {
    Writeback,
    Writethrough,
    Writearound,
}

/// Minimums: EFI 512MiB, boot 512MiB, root 3GiB.
#[derive(JsonSchema)]
#[serde(deny_unknown_fields)]
struct StorageTemplate {
    layout: Layout,
    efi_size: Option<Size>,
    boot_size: Option<Size>,
    root_size: Option<Size>,
    root_device: Option<String>,
    /// lvm only (default "vgroot").
    vg_name: Option<String>,
    /// lvm only (default "lvroot").
    lv_name: Option<String>,
    /// lvm only.
    lv_size: Option<Size>,
    /// bcache only.
    cache_device: Option<String>,
    /// bcache only.
    cache_mode: Option<CacheMode>,
    /// custom only: the layout file.
    file: Option<String>,
}

#[derive(JsonSchema)]
#[serde(deny_unknown_fields)]
struct NetworkTemplate {
    interfaces: Vec<Interface>,
}

#[derive(JsonSchema)]
#[serde(rename_all = "snake_case")]
enum InterfaceType {
    Physical,
    Bond,
    Bridge,
    Vlan,
}

#[derive(JsonSchema)]
#[serde(rename_all = "snake_case")]
enum LinkMode {
    Auto,
    Dhcp,
    Static,
    LinkUp,
}

#[derive(JsonSchema)]
enum BondMode {
    #[serde(rename = "balance-rr")]
    BalanceRr,
    #[serde(rename = "active-backup")]
    ActiveBackup,
    #[serde(rename = "balance-xor")]
    BalanceXor,
    #[serde(rename = "broadcast")]
    Broadcast,
    #[serde(rename = "802.3ad")]
    Ieee8023ad,
    #[serde(rename = "balance-tlb")]
    BalanceTlb,
    #[serde(rename = "balance-alb")]
    BalanceAlb,
}

#[derive(JsonSchema)]
#[serde(rename_all = "snake_case")]
enum LacpRate {
    Fast,
    Slow,
}

#[derive(JsonSchema)]
#[serde(deny_unknown_fields)]
struct Interface {
    name: String,
    /// Default "physical".
    #[serde(rename = "type")]
    kind: Option<InterfaceType>,
    /// At least 552.
    mtu: Option<u32>,
    /// Default "auto" with a subnet, else "link_up".
    link: Option<LinkMode>,
    subnet: Option<String>,
    /// bond and bridge.
    members: Option<Vec<String>>,
    bond_mode: Option<BondMode>,
    miimon: Option<u32>,
    /// 802.3ad only.
    lacp_rate: Option<LacpRate>,
    /// layer2, layer2+3, layer3+4, encap2+3, encap3+4.
    xmit_hash_policy: Option<String>,
    stp: Option<bool>,
    /// vlan: the interface it rides on.
    parent: Option<String>,
    /// vlan: 1 to 4094.
    id: Option<u16>,
}

#[derive(JsonSchema)]
#[serde(deny_unknown_fields)]
struct Expect {
    min_cpus: Option<u32>,
    min_memory: Option<Size>,
    min_disks: Option<u32>,
    min_disk_size: Option<Size>,
}

#[derive(JsonSchema)]
#[serde(deny_unknown_fields)]
struct Profile {
    storage: Option<String>,
    network: Option<String>,
    image: Option<String>,
    arch: Option<Arch>,
    tags: Option<Vec<String>>,
    expect: Option<Expect>,
}

/// A reference to a secret; inline secrets are refused.
#[derive(JsonSchema)]
#[serde(untagged)]
enum Secret {
    Env {
        /// Environment variable read by the controller.
        env: String,
    },
    File {
        /// File read by the controller (trailing newline dropped).
        file: String,
    },
}

#[derive(JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
enum Power {
    Manual,
    Ipmi {
        address: String,
        user: Option<String>,
        password: Option<Secret>,
        /// lan or lan_2_0 (default).
        driver: Option<String>,
        /// 0 to 17.
        cipher_suite: Option<u8>,
        /// user, operator or admin (default).
        privilege: Option<String>,
        /// soft or hard (default).
        power_off_mode: Option<String>,
        /// auto (default), legacy or efi.
        boot_type: Option<String>,
    },
    Redfish {
        address: String,
        user: Option<String>,
        password: Option<Secret>,
        system_id: Option<String>,
        /// Default true.
        verify_tls: Option<bool>,
    },
    /// Credentials: a bearer `token`, or `user` with `password` (HTTP basic authentication),
    /// not both.
    Webhook {
        on_url: String,
        off_url: String,
        /// POSTed to power cycle; without it a cycle is a hard off, then an on.
        cycle_url: Option<String>,
        query_url: Option<String>,
        on_regex: Option<String>,
        off_regex: Option<String>,
        /// HTTP basic authentication, with `password`.
        user: Option<String>,
        password: Option<Secret>,
        /// A bearer token.
        token: Option<Secret>,
        verify_tls: Option<bool>,
    },
    Qemu {
        qmp_socket: String,
        /// The argv that starts the VM when nothing listens on the socket (fleet adds `-qmp`
        /// and `-no-shutdown` when missing).
        command: Option<Vec<String>>,
    },
}

#[derive(JsonSchema)]
#[serde(rename_all = "snake_case")]
enum State {
    New,
    Ready,
    Allocated,
    Deployed,
    Broken,
    RescueMode,
    Retired,
}

#[derive(JsonSchema)]
#[serde(deny_unknown_fields)]
struct CloneFrom {
    source: String,
    storage: Option<bool>,
    interfaces: Option<bool>,
}

/// A machine name alone clones both storage and interfaces.
#[derive(JsonSchema)]
#[serde(untagged)]
enum CloneSource {
    Name(String),
    Table(CloneFrom),
}

#[derive(JsonSchema)]
#[serde(deny_unknown_fields)]
struct StaticAddress {
    name: String,
    subnet: String,
    ip: Option<String>,
    mac: Option<String>,
}

#[derive(JsonSchema)]
#[serde(deny_unknown_fields)]
struct Machine {
    /// A DNS label: lowercase letters, digits and `-`.
    name: String,
    macs: Option<Vec<String>>,
    pxe_mac: Option<String>,
    arch: Option<Arch>,
    power: Option<Power>,
    profile: Option<String>,
    storage: Option<String>,
    network: Option<String>,
    image: Option<String>,
    /// Default: ready (new with commission = false, deployed when added live).
    state: Option<State>,
    /// Only with state = "deployed".
    locked: Option<bool>,
    owner: Option<String>,
    clone_from: Option<CloneSource>,
    /// Commission when added (default true).
    commission: Option<bool>,
    /// Added live: already running a workload.
    deployed: Option<bool>,
    tags: Option<Vec<String>>,
    expect: Option<Expect>,
    interfaces: Option<Vec<StaticAddress>>,
    comment: Option<String>,
}

/// Each whole minutes, or a duration such as "90s", "5m", "1h30m"; at least 1 second.
#[derive(JsonSchema)]
#[serde(deny_unknown_fields)]
struct Timeouts {
    commissioning: Option<Duration>,
    testing: Option<Duration>,
    rescue: Option<Duration>,
    deploying: Option<Duration>,
    releasing: Option<Duration>,
    exiting_rescue: Option<Duration>,
    disk_erasing: Option<Duration>,
    /// From the power command to the machine's first call (default 10 minutes).
    boot: Option<Duration>,
    /// Silence after the machine's first call (default 10 minutes).
    heartbeat: Option<Duration>,
}

/// Whole minutes, or a string with units s, m and h.
#[derive(JsonSchema)]
#[serde(untagged)]
enum Duration {
    Minutes(u32),
    Text(String),
}

#[derive(JsonSchema)]
#[serde(deny_unknown_fields)]
struct Protected {
    machines: Option<Vec<String>>,
    tags: Option<Vec<String>>,
}

#[derive(JsonSchema)]
#[serde(rename_all = "snake_case")]
enum Enlisted {
    Leave,
    Commission,
}

#[derive(JsonSchema)]
#[serde(deny_unknown_fields)]
struct Policy {
    timeouts: Option<Timeouts>,
    /// Default 10.
    parallelism: Option<u32>,
    enlisted: Option<Enlisted>,
    protected: Option<Protected>,
    max_destructive_per_apply: Option<u32>,
    default_image: Option<String>,
    /// Seconds between power queries; default 60, 0 never.
    power_poll_seconds: Option<u32>,
    /// MACs the DHCP server never answers; none may be a declared machine's.
    ignore_macs: Option<Vec<String>>,
    rate_limits: Option<RateLimits>,
    events: Option<EventPolicy>,
}

/// Requests without a credential, per source address: a bucket of `*_burst` requests refilled
/// at `*_per_minute`; 429 with Retry-After when empty. Each at least 1.
#[derive(JsonSchema)]
#[serde(deny_unknown_fields)]
struct RateLimits {
    /// Default 200.
    anonymous_burst: Option<u32>,
    /// Default 1200.
    anonymous_per_minute: Option<u32>,
    /// Default 10.
    enlist_burst: Option<u32>,
    /// Default 10.
    enlist_per_minute: Option<u32>,
    /// Addresses remembered at once (default 65536); beyond, new ones share one bucket.
    tracked_addresses: Option<u32>,
}

/// The event history's retention (oldest deleted first) and the summaries of anonymous traffic.
#[derive(JsonSchema)]
#[serde(deny_unknown_fields)]
struct EventPolicy {
    /// Default 90.
    max_age_days: Option<u32>,
    /// Default 1000000.
    max_count: Option<u64>,
    /// Default 600.
    prune_every_seconds: Option<u32>,
    /// At most one event per kind (and machine) in this time; default 60.
    summary_seconds: Option<u32>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::sections;

    fn keys_of(schema: &serde_json::Value, definition: &str) -> Vec<String> {
        let properties = &schema["definitions"][definition]["properties"];
        properties
            .as_object()
            .map(|map| map.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Every key a section reader accepts is in the schema, and the other way round.
    #[test]
    fn the_schema_matches_the_readers() {
        let schema = json_schema();
        let mut top: Vec<String> = schema["properties"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        top.sort();
        let mut expected: Vec<String> = sections::TOP_LEVEL_KEYS
            .iter()
            .map(|key| key.to_string())
            .collect();
        expected.sort();
        assert_eq!(top, expected);
        for (definition, keys) in sections::KEY_LISTS {
            let mut found = keys_of(&schema, definition);
            found.sort();
            let mut expected: Vec<String> = keys.iter().map(|key| key.to_string()).collect();
            expected.sort();
            assert_eq!(found, expected, "{definition}");
        }
    }
}
