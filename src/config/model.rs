//! The validated fleet: every value typed, every reference checked, defaults filled in.
//!
//! Nothing here holds a secret: power credentials are [`SecretRef`]s, resolved only at use time.

use super::size::SizeSpec;
use crate::model::{MacAddr, MachineName, PowerOffMode, Status};
use ipnet::IpNet;
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

/// Everything the fleet files declare, merged across files.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Fleet {
    pub controller: ControllerSettings,
    /// Sorted by name.
    pub subnets: Vec<Subnet>,
    pub images: BTreeMap<String, Image>,
    pub storage_templates: BTreeMap<String, StorageTemplate>,
    pub network_templates: BTreeMap<String, NetworkTemplate>,
    pub profiles: BTreeMap<String, Profile>,
    /// Sorted by name.
    pub machines: Vec<MachineSpec>,
    pub policy: Policy,
    /// The operator's own commissioning and test scripts, by name.
    pub scripts: BTreeMap<String, Script>,
    /// Every file read, in load order.
    pub sources: Vec<PathBuf>,
    /// SHA-256 (hex) over every source text in load order, each preceded by its length as a
    /// little-endian u64 (so that moving text between files changes the digest).
    pub digest: String,
}

impl Fleet {
    pub fn machine(&self, name: &str) -> Option<&MachineSpec> {
        self.machines
            .binary_search_by(|machine| machine.name.as_str().cmp(name))
            .ok()
            .map(|at| &self.machines[at])
    }

    pub fn subnet(&self, name: &str) -> Option<&Subnet> {
        self.subnets
            .binary_search_by(|subnet| subnet.name.as_str().cmp(name))
            .ok()
            .map(|at| &self.subnets[at])
    }
}

/// `[controller]`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ControllerSettings {
    /// The operator API (HTTPS).
    pub listen: SocketAddr,
    /// The boot HTTP server: iPXE scripts, kernels, images and the machine API (plain HTTP:
    /// firmware cannot do TLS).
    pub boot_listen: SocketAddr,
    /// The operator's certificate for the API; `None`: one the controller makes on first start.
    pub tls: Option<OperatorCertificate>,
    /// `sqlite://...` or `postgres://...`; `None` means a SQLite file in `state_dir`.
    pub database: Option<String>,
    pub state_dir: PathBuf,
    pub tftp_listen: SocketAddr,
    /// The URL booting machines use to reach this controller; `None`: derived from `boot_listen`.
    pub http_boot_url: Option<String>,
    /// Where the iPXE first-stage loaders (undionly.kpxe, ipxe.efi...) are.
    pub loader_dir: PathBuf,
    /// DHCP is served only on those of these interfaces that exist on the host.
    pub dhcp_interfaces: Vec<String>,
    /// The image (kernel + initrd) booted for enlistment, commissioning, testing and rescue.
    pub ephemeral_image: Option<String>,
}

/// `[controller] tls_cert` and `tls_key`: PEM files (the certificate chain, then its key).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OperatorCertificate {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Default for ControllerSettings {
    fn default() -> Self {
        ControllerSettings {
            listen: SocketAddr::from(([127, 0, 0, 1], 5240)),
            boot_listen: SocketAddr::from(([0, 0, 0, 0], 5248)),
            tls: None,
            database: None,
            state_dir: PathBuf::from(".fleet"),
            tftp_listen: SocketAddr::from(([0, 0, 0, 0], 69)),
            http_boot_url: None,
            loader_dir: PathBuf::from("/usr/lib/ipxe"),
            dhcp_interfaces: Vec::new(),
            ephemeral_image: None,
        }
    }
}

impl ControllerSettings {
    /// The database to open: the configured URL, else `sqlite://STATE_DIR/fleet.db?mode=rwc`.
    pub fn database_url(&self) -> String {
        match &self.database {
            Some(url) => url.clone(),
            None => format!(
                "sqlite://{}?mode=rwc",
                self.state_dir.join("fleet.db").display()
            ),
        }
    }
}

/// `[subnets.NAME]`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Subnet {
    pub name: String,
    pub cidr: IpNet,
    pub gateway: Option<IpAddr>,
    pub dns: Vec<IpAddr>,
    pub domain: Option<String>,
    /// The controller interface this subnet is served on, when it cannot be inferred.
    pub interface: Option<String>,
    /// Addresses handed to booting (enlisting, commissioning) machines.
    pub dynamic_range: Option<IpRange>,
    /// Never handed out by the controller.
    pub reserved: Vec<ReservedRange>,
    pub lease_seconds: u32,
    /// Answer PXE only, leaving address assignment to another DHCP server.
    pub proxy_dhcp: bool,
}

/// An inclusive range of addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct IpRange {
    pub start: IpAddr,
    pub end: IpAddr,
}

impl IpRange {
    pub fn contains(&self, address: IpAddr) -> bool {
        self.start <= address && address <= self.end
    }

    pub fn overlaps(&self, other: &IpRange) -> bool {
        self.start <= other.end && other.start <= self.end
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReservedRange {
    #[serde(flatten)]
    pub range: IpRange,
    pub comment: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Arch {
    #[default]
    Amd64,
    Arm64,
}

impl Arch {
    pub const NAMES: &'static [&'static str] = &["amd64", "arm64"];

    pub fn parse(text: &str) -> Option<Arch> {
        match text {
            "amd64" => Some(Arch::Amd64),
            "arm64" => Some(Arch::Arm64),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Arch::Amd64 => "amd64",
            Arch::Arm64 => "arm64",
        }
    }
}

/// `[images.NAME]`: a boot kernel and initrd and/or an OS image to write to disk.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Image {
    pub name: String,
    pub arch: Arch,
    pub os: Option<String>,
    pub release: Option<String>,
    pub kernel: Option<Artifact>,
    pub initrd: Option<Artifact>,
    /// The OS image written to disk on deployment.
    pub root: Option<RootImage>,
}

impl Image {
    /// Can boot the ephemeral environment (has a kernel and an initrd).
    pub fn is_bootable(&self) -> bool {
        self.kernel.is_some() && self.initrd.is_some()
    }

    /// Can be deployed (has an OS image).
    pub fn is_deployable(&self) -> bool {
        self.root.is_some()
    }
}

/// Where a file comes from. Relative paths are resolved against the declaring file's directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ArtifactLocation {
    Url(String),
    Path(PathBuf),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Artifact {
    pub location: ArtifactLocation,
    /// Lowercase hex; required for URLs (downloads are verified), optional for local paths.
    pub sha256: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RootImage {
    pub location: ArtifactLocation,
    pub sha256: Option<String>,
    pub format: ImageFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ImageFormat {
    Tgz,
    TarXz,
    Raw,
    RawGz,
    RawXz,
    Qcow2,
    Squashfs,
}

impl ImageFormat {
    pub const NAMES: &'static [&'static str] = &[
        "tgz", "tar-xz", "raw", "raw-gz", "raw-xz", "qcow2", "squashfs",
    ];

    pub fn parse(text: &str) -> Option<Self> {
        let all = [
            Self::Tgz,
            Self::TarXz,
            Self::Raw,
            Self::RawGz,
            Self::RawXz,
            Self::Qcow2,
            Self::Squashfs,
        ];
        Self::NAMES
            .iter()
            .position(|name| *name == text)
            .map(|at| all[at])
    }
}

/// `[storage_templates.NAME]`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StorageTemplate {
    pub name: String,
    #[serde(flatten)]
    pub layout: StorageLayout,
    /// Bytes; at least 512 MiB.
    pub efi_size: Option<u64>,
    /// Bytes; at least 512 MiB.
    pub boot_size: Option<u64>,
    /// At least 3 GiB when absolute.
    pub root_size: Option<SizeSpec>,
    /// e.g. `sda`, `/dev/disk/by-id/...`; `None`: the machine's boot disk.
    pub root_device: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "layout", rename_all = "snake_case")]
pub enum StorageLayout {
    Flat,
    Lvm {
        vg_name: String,
        lv_name: String,
        lv_size: Option<SizeSpec>,
    },
    Bcache {
        cache_device: Option<String>,
        cache_mode: BcacheMode,
    },
    Blank,
    /// A layout file the ephemeral environment applies as it is.
    Custom {
        file: PathBuf,
    },
}

impl StorageLayout {
    pub const NAMES: &'static [&'static str] = &["flat", "lvm", "bcache", "blank", "custom"];
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BcacheMode {
    Writeback,
    Writethrough,
    Writearound,
}

/// `[network_templates.NAME]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NetworkTemplate {
    pub name: String,
    pub interfaces: Vec<InterfaceSpec>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InterfaceSpec {
    pub name: String,
    #[serde(flatten)]
    pub kind: InterfaceKind,
    /// At least 552.
    pub mtu: Option<u32>,
    pub link: LinkMode,
    pub subnet: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum InterfaceKind {
    Physical,
    Bond {
        members: Vec<String>,
        bond_mode: BondMode,
        miimon: Option<u32>,
        lacp_rate: Option<LacpRate>,
        xmit_hash_policy: Option<String>,
    },
    Bridge {
        members: Vec<String>,
        stp: bool,
    },
    Vlan {
        parent: String,
        id: u16,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum BondMode {
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

impl BondMode {
    pub const NAMES: &'static [&'static str] = &[
        "balance-rr",
        "active-backup",
        "balance-xor",
        "broadcast",
        "802.3ad",
        "balance-tlb",
        "balance-alb",
    ];

    pub fn parse(text: &str) -> Option<Self> {
        let all = [
            Self::BalanceRr,
            Self::ActiveBackup,
            Self::BalanceXor,
            Self::Broadcast,
            Self::Ieee8023ad,
            Self::BalanceTlb,
            Self::BalanceAlb,
        ];
        Self::NAMES
            .iter()
            .position(|name| *name == text)
            .map(|at| all[at])
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LacpRate {
    Fast,
    Slow,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LinkMode {
    /// A static address allocated by the controller from the subnet.
    Auto,
    Dhcp,
    /// The address given on the machine (`interfaces = [{ name, subnet, ip }]`).
    Static,
    /// Link up, no address.
    LinkUp,
}

impl LinkMode {
    pub const NAMES: &'static [&'static str] = &["auto", "dhcp", "static", "link_up"];

    pub fn parse(text: &str) -> Option<Self> {
        let all = [Self::Auto, Self::Dhcp, Self::Static, Self::LinkUp];
        Self::NAMES
            .iter()
            .position(|name| *name == text)
            .map(|at| all[at])
    }
}

/// `[profiles.NAME]`: what machines of one kind share.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Profile {
    pub name: String,
    pub storage: Option<String>,
    pub network: Option<String>,
    pub image: Option<String>,
    pub arch: Option<Arch>,
    pub tags: Vec<String>,
    pub expect: Expectations,
}

/// The hardware a machine must show when commissioned; less fails commissioning.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Expectations {
    pub min_cpus: Option<u32>,
    pub min_memory_mib: Option<u64>,
    pub min_disks: Option<u32>,
    pub min_disk_size_bytes: Option<u64>,
}

impl Expectations {
    /// Each field of `self` where set, else the one of `fallback`.
    pub fn or(self, fallback: Expectations) -> Expectations {
        Expectations {
            min_cpus: self.min_cpus.or(fallback.min_cpus),
            min_memory_mib: self.min_memory_mib.or(fallback.min_memory_mib),
            min_disks: self.min_disks.or(fallback.min_disks),
            min_disk_size_bytes: self.min_disk_size_bytes.or(fallback.min_disk_size_bytes),
        }
    }
}

/// One `[[machine]]`, with its profile applied.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MachineSpec {
    pub name: MachineName,
    pub macs: Vec<MacAddr>,
    /// The MAC it netboots from: `pxe_mac`, else the first of `macs`.
    pub pxe_mac: Option<MacAddr>,
    pub arch: Arch,
    pub power: PowerSpec,
    pub profile: Option<String>,
    /// Storage template: the machine's own, else its profile's.
    pub storage: Option<String>,
    /// Network template: the machine's own, else its profile's.
    pub network: Option<String>,
    /// Image: the machine's, else its profile's, else the policy's `default_image`.
    pub image: Option<String>,
    pub state: DesiredState,
    /// Locked against every action but unlock (only with `state = "deployed"`).
    pub locked: bool,
    pub owner: Option<String>,
    pub clone_from: Option<CloneSpec>,
    /// Commission on add (default true).
    pub commission: bool,
    /// Added live: already running a workload; created straight in deployed, never netbooted.
    pub live: bool,
    /// The profile's tags and the machine's own, sorted, without duplicates.
    pub tags: Vec<String>,
    pub expect: Expectations,
    pub interfaces: Vec<MachineInterface>,
    pub comment: Option<String>,
}

/// A static address for one interface of one machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MachineInterface {
    pub name: String,
    pub subnet: String,
    pub ip: Option<IpAddr>,
    pub mac: Option<MacAddr>,
}

/// The status the fleet file asks a machine to be in: only resting statuses a plan can reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DesiredState {
    New,
    Ready,
    Allocated,
    Deployed,
    Broken,
    RescueMode,
    Retired,
}

impl DesiredState {
    pub const NAMES: &'static [&'static str] = &[
        "new",
        "ready",
        "allocated",
        "deployed",
        "broken",
        "rescue_mode",
        "retired",
    ];
    const ALL: [DesiredState; 7] = [
        Self::New,
        Self::Ready,
        Self::Allocated,
        Self::Deployed,
        Self::Broken,
        Self::RescueMode,
        Self::Retired,
    ];

    pub fn parse(text: &str) -> Option<Self> {
        Self::NAMES
            .iter()
            .position(|name| *name == text)
            .map(|at| Self::ALL[at])
    }

    pub fn status(self) -> Status {
        match self {
            Self::New => Status::New,
            Self::Ready => Status::Ready,
            Self::Allocated => Status::Allocated,
            Self::Deployed => Status::Deployed,
            Self::Broken => Status::Broken,
            Self::RescueMode => Status::RescueMode,
            Self::Retired => Status::Retired,
        }
    }

    pub fn as_str(self) -> &'static str {
        self.status().as_str()
    }

    /// Reaching it from `new` needs passed commissioning.
    pub fn needs_commissioning(self) -> bool {
        matches!(self, Self::Ready | Self::Allocated | Self::Deployed)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CloneSpec {
    pub source: MachineName,
    pub storage: bool,
    pub interfaces: bool,
}

/// How to reach a machine's power. Secrets are references.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum PowerSpec {
    /// No control: the operator is asked to act.
    Manual,
    Ipmi {
        address: String,
        user: Option<String>,
        password: Option<SecretRef>,
        driver: IpmiDriver,
        cipher_suite: Option<u8>,
        privilege: IpmiPrivilege,
        power_off_mode: PowerOffMode,
        boot_type: IpmiBootType,
    },
    Redfish {
        address: String,
        user: Option<String>,
        password: Option<SecretRef>,
        system_id: Option<String>,
        verify_tls: bool,
    },
    /// HTTP calls; credentials are a bearer `token` or `user` with `password`, never both.
    Webhook {
        on_url: String,
        off_url: String,
        /// Without it, a power cycle is a hard off, then an on.
        cycle_url: Option<String>,
        query_url: Option<String>,
        on_regex: Option<String>,
        off_regex: Option<String>,
        user: Option<String>,
        password: Option<SecretRef>,
        token: Option<SecretRef>,
        verify_tls: bool,
    },
    /// A local QEMU virtual machine, driven through its QMP socket; `command` (an argv) starts
    /// it when nothing listens on the socket.
    Qemu {
        qmp_socket: PathBuf,
        command: Option<Vec<String>>,
    },
}

impl PowerSpec {
    pub const TYPES: &'static [&'static str] = &["manual", "ipmi", "redfish", "webhook", "qemu"];

    pub fn type_name(&self) -> &'static str {
        match self {
            PowerSpec::Manual => "manual",
            PowerSpec::Ipmi { .. } => "ipmi",
            PowerSpec::Redfish { .. } => "redfish",
            PowerSpec::Webhook { .. } => "webhook",
            PowerSpec::Qemu { .. } => "qemu",
        }
    }

    /// Power parameters given as loose key/value pairs (the API, `fleet machine add
    /// --power-param KEY=VALUE`) in the form a fleet file's power table is stored in: the
    /// flags and numbers it types as such, and the optional parameters it leaves out given the
    /// values they mean then. So the plan and `fleet adopt` see what the fleet file would say.
    pub fn canonical_params(
        power_type: &str,
        params: &mut serde_json::Map<String, serde_json::Value>,
    ) -> Result<(), String> {
        use serde_json::Value;
        for key in ["verify_tls"] {
            if let Some(Value::String(text)) = params.get(key) {
                let flag = match text.as_str() {
                    "true" | "yes" => true,
                    "false" | "no" => false,
                    other => {
                        return Err(format!(
                            "power parameter `{key}` must be true or false, not `{other}`"
                        ))
                    }
                };
                params.insert(key.to_string(), Value::Bool(flag));
            }
        }
        if let Some(Value::String(text)) = params.get("cipher_suite") {
            let suite: u8 = text.parse().map_err(|_| {
                format!("power parameter `cipher_suite` must be a whole number from 0 to 255, not `{text}`")
            })?;
            params.insert("cipher_suite".to_string(), Value::from(suite));
        }
        let defaults: Vec<(&str, Value)> = match power_type {
            "ipmi" => vec![
                ("driver", serde_json::json!(IpmiDriver::default())),
                ("privilege", serde_json::json!(IpmiPrivilege::default())),
                ("power_off_mode", serde_json::json!(PowerOffMode::default())),
                ("boot_type", serde_json::json!(IpmiBootType::default())),
            ],
            "redfish" | "webhook" => vec![("verify_tls", Value::Bool(true))],
            _ => Vec::new(),
        };
        for (key, value) in defaults {
            params.entry(key.to_string()).or_insert(value);
        }
        Ok(())
    }

    /// The BMC address, which identifies a machine until it first boots.
    pub fn bmc_address(&self) -> Option<&str> {
        match self {
            PowerSpec::Ipmi { address, .. } | PowerSpec::Redfish { address, .. } => Some(address),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IpmiDriver {
    Lan,
    /// Spelled as the fleet file spells it, so that `fleet adopt` writes what `validate` reads.
    #[default]
    #[serde(rename = "lan_2_0")]
    Lan20,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IpmiPrivilege {
    User,
    Operator,
    #[default]
    Admin,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IpmiBootType {
    #[default]
    Auto,
    Legacy,
    Efi,
}

/// Where a secret is kept. Serialized as the reference (`{"env":"BMC_PASS"}`), never the value.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SecretRef {
    Env(String),
    File(PathBuf),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error("the environment variable `{0}` holding a secret is not set")]
    EnvMissing(String),
    #[error("the environment variable `{0}` holding a secret is not valid UTF-8")]
    EnvNotUnicode(String),
    #[error("cannot read the secret file `{path}`: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("the secret file `{0}` is empty")]
    FileEmpty(PathBuf),
}

impl SecretRef {
    /// Reads a reference as the API and the store carry it: `{"env": "NAME"}` or
    /// `{"file": "PATH"}`, nothing else (an inline value is not a reference).
    pub fn from_json(value: &serde_json::Value) -> Option<SecretRef> {
        let object = value.as_object()?;
        if object.len() != 1 {
            return None;
        }
        match (object.get("env"), object.get("file")) {
            (Some(serde_json::Value::String(name)), None) => Some(SecretRef::Env(name.clone())),
            (None, Some(serde_json::Value::String(path))) => {
                Some(SecretRef::File(PathBuf::from(path)))
            }
            _ => None,
        }
    }

    /// Reads the secret now. A file's trailing newline is not part of the secret. Errors name
    /// the reference, never the value.
    pub fn resolve(&self) -> Result<String, SecretError> {
        match self {
            SecretRef::Env(name) => match std::env::var(name) {
                Ok(value) => Ok(value),
                Err(std::env::VarError::NotPresent) => Err(SecretError::EnvMissing(name.clone())),
                Err(std::env::VarError::NotUnicode(_)) => {
                    Err(SecretError::EnvNotUnicode(name.clone()))
                }
            },
            SecretRef::File(path) => {
                let text = std::fs::read_to_string(path).map_err(|error| SecretError::File {
                    path: path.clone(),
                    reason: error.kind().to_string(),
                })?;
                let secret = text.trim_end_matches(['\n', '\r']);
                if secret.is_empty() {
                    return Err(SecretError::FileEmpty(path.clone()));
                }
                Ok(secret.to_string())
            }
        }
    }
}

impl std::fmt::Display for SecretRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SecretRef::Env(name) => write!(f, "env:{name}"),
            SecretRef::File(path) => write!(f, "file:{}", path.display()),
        }
    }
}

/// `[policy]`: how the plan and the executor behave.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Policy {
    pub timeouts: Timeouts,
    /// Machines worked on at once by one apply.
    pub parallelism: u32,
    pub enlisted: EnlistedPolicy,
    pub protected: Protected,
    /// `None`: no limit. `Some(0)`: no destructive step at all.
    pub max_destructive_per_apply: Option<u32>,
    pub default_image: Option<String>,
    pub power_poll_seconds: u32,
    /// MACs the DHCP server never answers (another system's machines on a shared segment).
    /// Sorted, without duplicates; none of them is a declared machine's.
    pub ignore_macs: Vec<MacAddr>,
    /// `[policy.rate_limits]`: requests without a credential, per source address.
    pub rate_limits: RateLimits,
    /// `[policy.events]`: how long the history is kept, and how often anonymous traffic is
    /// summarised.
    pub events: EventPolicy,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            timeouts: Timeouts::default(),
            parallelism: 10,
            enlisted: EnlistedPolicy::Leave,
            protected: Protected::default(),
            max_destructive_per_apply: None,
            default_image: None,
            power_poll_seconds: 60,
            ignore_macs: Vec::new(),
            rate_limits: RateLimits::default(),
            events: EventPolicy::default(),
        }
    }
}

/// `[policy.rate_limits]`: token buckets per source address for the requests that carry no
/// credential (boot scripts and files, `/metadata/v1/known`, the runner scripts...), and a
/// stricter one for `/metadata/v1/enlist`. A bucket holds `*_burst` requests and refills at
/// `*_per_minute`; an address with an empty bucket is answered 429 with `Retry-After`.
/// The defaults let a whole rack boot and enlist at once (each machine is its own address and
/// makes about ten anonymous requests per boot, one of them an enlistment).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct RateLimits {
    pub anonymous_burst: u32,
    pub anonymous_per_minute: u32,
    pub enlist_burst: u32,
    pub enlist_per_minute: u32,
    /// Addresses remembered at once; beyond, new addresses share one bucket (so a flood from
    /// many addresses cannot grow the controller's memory).
    pub tracked_addresses: u32,
}

impl Default for RateLimits {
    fn default() -> Self {
        RateLimits {
            anonymous_burst: 200,
            anonymous_per_minute: 1200,
            enlist_burst: 10,
            enlist_per_minute: 10,
            tracked_addresses: 65_536,
        }
    }
}

impl RateLimits {
    pub const KEYS: &'static [&'static str] = &[
        "anonymous_burst",
        "anonymous_per_minute",
        "enlist_burst",
        "enlist_per_minute",
        "tracked_addresses",
    ];
}

/// `[policy.events]`: the retention of the event history and the summaries of anonymous
/// traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct EventPolicy {
    /// Events older than this many days are deleted (oldest first).
    pub max_age_days: u32,
    /// Beyond this many events the oldest are deleted.
    pub max_count: u64,
    /// How often the controller prunes (it also prunes at start).
    pub prune_every_seconds: u32,
    /// Anonymous requests (boot scripts for unknown MACs, refused and throttled requests,
    /// TFTP) and a known machine's boot fetches write at most one event per kind (and machine)
    /// in this time: the first at once, the rest as one summary at the end.
    pub summary_seconds: u32,
}

impl Default for EventPolicy {
    fn default() -> Self {
        EventPolicy {
            max_age_days: 90,
            max_count: 1_000_000,
            prune_every_seconds: 600,
            summary_seconds: 60,
        }
    }
}

impl EventPolicy {
    pub const KEYS: &'static [&'static str] = &[
        "max_age_days",
        "max_count",
        "prune_every_seconds",
        "summary_seconds",
    ];
}

/// An operator's own commissioning or test script (`[scripts.NAME]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Script {
    pub kind: ScriptKind,
    pub timeout_seconds: u32,
    /// Touches the disks: never run on a deployed machine.
    pub destructive: bool,
    pub path: PathBuf,
    /// The file's text, read when the fleet file was loaded.
    #[serde(skip)]
    pub text: String,
}

/// When a script runs: while commissioning (its findings are stored), as a test after it, or
/// to erase disks on release (built in only: fleet files cannot declare one). Spelled as the
/// machine API's `script NAME KIND TIMEOUT` line spells it.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum ScriptKind {
    Commissioning,
    Testing,
    Erase,
}

impl ScriptKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ScriptKind::Commissioning => "commissioning",
            ScriptKind::Testing => "testing",
            ScriptKind::Erase => "erase",
        }
    }

    pub fn parse(text: &str) -> Option<ScriptKind> {
        [
            ScriptKind::Commissioning,
            ScriptKind::Testing,
            ScriptKind::Erase,
        ]
        .into_iter()
        .find(|kind| kind.as_str() == text)
    }
}

impl std::fmt::Display for ScriptKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// In seconds (the fleet file gives whole minutes, or a duration such as `"90s"`). Defaults from
/// the life-cycle reference; `disk_erasing` and `heartbeat` are ours.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Timeouts {
    pub commissioning: u32,
    pub testing: u32,
    pub rescue: u32,
    pub deploying: u32,
    pub releasing: u32,
    pub exiting_rescue: u32,
    /// A secure or full erase of large disks takes hours; quick erase far less.
    pub disk_erasing: u32,
    /// A machine powered on for a step that has not called the controller this long after the
    /// power command fails with "did not boot within N minutes".
    pub boot: u32,
    /// A machine that has called and then falls silent this long fails with "not heard from
    /// for N minutes".
    pub heartbeat: u32,
}

impl Default for Timeouts {
    fn default() -> Self {
        const MINUTE: u32 = 60;
        Timeouts {
            commissioning: 30 * MINUTE,
            testing: 30 * MINUTE,
            rescue: 30 * MINUTE,
            deploying: 60 * MINUTE,
            releasing: 5 * MINUTE,
            exiting_rescue: 5 * MINUTE,
            disk_erasing: 240 * MINUTE,
            boot: 10 * MINUTE,
            heartbeat: 10 * MINUTE,
        }
    }
}

impl Timeouts {
    pub const KEYS: &'static [&'static str] = &[
        "commissioning",
        "testing",
        "rescue",
        "deploying",
        "releasing",
        "exiting_rescue",
        "disk_erasing",
        "boot",
        "heartbeat",
    ];

    /// The limit for an in-progress status, in seconds.
    pub fn limit_seconds(&self, status: Status) -> Option<u32> {
        match status {
            Status::Commissioning => Some(self.commissioning),
            Status::Testing => Some(self.testing),
            Status::EnteringRescueMode => Some(self.rescue),
            Status::Deploying => Some(self.deploying),
            Status::Releasing => Some(self.releasing),
            Status::ExitingRescueMode => Some(self.exiting_rescue),
            Status::DiskErasing => Some(self.disk_erasing),
            _ => None,
        }
    }

    /// The limits the watch applies to a machine in `status`.
    pub fn watch_limits(&self, status: Status) -> crate::model::WatchLimits {
        crate::model::WatchLimits {
            status: self.limit_seconds(status),
            boot: self.boot,
            heartbeat: self.heartbeat,
        }
    }

    /// The limit for an in-progress status in whole minutes, rounded up (what saved plans
    /// record as `timeout_minutes`).
    pub fn for_status(&self, status: Status) -> Option<u32> {
        self.limit_seconds(status)
            .map(|seconds| seconds.div_ceil(60))
    }

    pub fn field_mut(&mut self, key: &str) -> Option<&mut u32> {
        let field = match key {
            "commissioning" => &mut self.commissioning,
            "testing" => &mut self.testing,
            "rescue" => &mut self.rescue,
            "deploying" => &mut self.deploying,
            "releasing" => &mut self.releasing,
            "exiting_rescue" => &mut self.exiting_rescue,
            "disk_erasing" => &mut self.disk_erasing,
            "boot" => &mut self.boot,
            "heartbeat" => &mut self.heartbeat,
            _ => return None,
        };
        Some(field)
    }
}

/// What happens to machines that enlisted on their own.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EnlistedPolicy {
    /// They stay new until a person or the fleet file says otherwise (MAAS's behaviour).
    #[default]
    Leave,
    Commission,
}

/// Machines never given a destructive step (erase, deploy over, release with erase...).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Protected {
    pub machines: Vec<MachineName>,
    pub tags: Vec<String>,
}

impl Protected {
    pub fn covers(&self, machine: &MachineSpec) -> bool {
        self.machines.contains(&machine.name)
            || machine.tags.iter().any(|tag| self.tags.contains(tag))
    }
}
