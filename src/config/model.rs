//! The validated fleet: every value typed, every reference checked, defaults filled in.
//!
//! Nothing here holds a secret: power credentials are [`SecretRef`]s, resolved only at use time.
//!
//! The same types give `fleet schema` (`JsonSchema`): where a value is kept in another shape
//! than it is written (sizes in bytes, durations in seconds, defaults filled in), a
//! `#[schemars(...)]` attribute on the field says how it is written; doc comments become the
//! descriptions, so write them for the operator.

use super::duration::{defaults_as_written, WrittenDuration};
use super::size::{AbsoluteSize, SizeSpec};
use crate::model::{MacAddr, MachineName, PowerOffMode, Status};
use ipnet::IpNet;
use schemars::{JsonSchema, Schema};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

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

/// `[controller]`: where the controller listens, keeps its state, and serves boot files.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[schemars(default, deny_unknown_fields)]
pub struct ControllerSettings {
    /// Address and port of the operator API (HTTPS).
    pub listen: SocketAddr,
    /// Address and port of the boot HTTP server: iPXE scripts, kernels, images and the machine
    /// API (plain HTTP: firmware cannot do TLS).
    pub boot_listen: SocketAddr,
    /// The operator's certificate for the API (`tls_cert` and `tls_key`, both or neither);
    /// without them, one the controller makes on its first start.
    #[schemars(flatten)]
    pub tls: Option<OperatorCertificate>,
    /// `sqlite://PATH` or `postgres://USER@HOST/DB`; without it, a SQLite file in `state_dir`.
    pub database: Option<String>,
    /// Relative to the file that declares it.
    pub state_dir: PathBuf,
    /// The file with the key the secrets kept in the store (reported BMC passwords) are
    /// encrypted with: 32 bytes, 64 hex digits or base64; the same on every controller of one
    /// database. Relative to the file that declares it. Or give the key in `FLEET_SECRET_KEY`
    /// (not both); without either, `state_dir`'s `secret.key`, made on the first start.
    pub secret_key_file: Option<PathBuf>,
    pub tftp_listen: SocketAddr,
    /// The http:// URL booting machines reach this controller at; without it, derived from
    /// `boot_listen`.
    pub http_boot_url: Option<String>,
    /// Where the iPXE first-stage loaders (undionly.kpxe, ipxe.efi...) are.
    pub loader_dir: PathBuf,
    /// DHCP is served only on those of these interfaces that exist on the host.
    pub dhcp_interfaces: Vec<String>,
    /// An IPv4 address and port DHCP also listens on, bound to no interface, for relayed
    /// requests only (giaddr set; the reply goes to the relay at the port it sent from). With a
    /// port above 1023 (e.g. "127.0.0.1:6767") it needs no root: `fleet sim` and `fleet demo`
    /// talk to it as a relay on loopback.
    pub dhcp_listen: Option<SocketAddr>,
    /// The image (kernel + initrd) booted for enlistment, commissioning, testing and rescue.
    pub ephemeral_image: Option<String>,
}

/// `[controller] tls_cert` and `tls_key`: PEM files (the certificate chain, then its key).
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct OperatorCertificate {
    /// The API's certificate chain (PEM), relative to the file that declares it.
    #[schemars(rename = "tls_cert")]
    pub cert: PathBuf,
    /// Its private key (PEM).
    #[schemars(rename = "tls_key")]
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
            secret_key_file: None,
            tftp_listen: SocketAddr::from(([0, 0, 0, 0], 69)),
            http_boot_url: None,
            loader_dir: PathBuf::from("/usr/lib/ipxe"),
            dhcp_interfaces: Vec::new(),
            dhcp_listen: None,
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

/// `[subnets.NAME]`: a network machines boot on and take static addresses from.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct Subnet {
    /// The table's name.
    #[schemars(skip)]
    pub name: String,
    /// The network address and prefix length, such as "10.0.0.0/24" (no host bits).
    #[schemars(schema_with = "Subnet::cidr_schema")]
    pub cidr: IpNet,
    /// Inside the subnet.
    pub gateway: Option<IpAddr>,
    #[schemars(default)]
    pub dns: Vec<IpAddr>,
    pub domain: Option<String>,
    /// The controller interface this subnet is served on, when it cannot be inferred.
    pub interface: Option<String>,
    /// Addresses handed to booting (enlisting, commissioning) machines.
    pub dynamic_range: Option<IpRange>,
    /// Never handed out by the controller.
    #[schemars(default)]
    pub reserved: Vec<ReservedRange>,
    /// The DHCP lease, in seconds.
    #[schemars(default = "Subnet::default_lease_seconds", range(min = 60))]
    pub lease_seconds: u32,
    /// Answer PXE only, leaving address assignment to another DHCP server.
    #[schemars(default)]
    pub proxy_dhcp: bool,
}

impl Subnet {
    /// One hour, long enough for a commissioning run.
    pub fn default_lease_seconds() -> u32 {
        3600
    }

    /// A CIDR as written. Not ipnet's own schema (feature `schemars1`): its IPv6 pattern also
    /// matches IPv4 networks, so its `oneOf` of the two refuses every IPv4 CIDR.
    fn cidr_schema(_: &mut schemars::SchemaGenerator) -> Schema {
        schemars::json_schema!({
            "type": "string",
            "pattern": r"^[0-9A-Fa-f:.]+/[0-9]{1,3}$"
        })
    }
}

/// An inclusive range of addresses, inside the subnet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
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

#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct ReservedRange {
    #[serde(flatten)]
    pub range: IpRange,
    pub comment: Option<String>,
}

#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, JsonSchema,
)]
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
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct Image {
    /// The table's name.
    #[schemars(skip)]
    pub name: String,
    #[schemars(default)]
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

/// Where a file comes from: written as `url` or `path`, one of them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ArtifactLocation {
    /// An http:// or https:// URL, downloaded and checked against `sha256`.
    Url(String),
    /// A local file, relative to the file that declares it.
    Path(PathBuf),
}

/// A kernel or an initrd: `url` (with `sha256`) or `path`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct Artifact {
    #[schemars(flatten)]
    pub location: ArtifactLocation,
    /// 64 hex digits (kept lowercase); required with `url` (downloads are verified).
    #[schemars(pattern(r"^[0-9A-Fa-f]{64}$"))]
    pub sha256: Option<String>,
}

/// The OS image written to disk on deployment: `url` (with `sha256`) or `path`, and `format`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct RootImage {
    #[schemars(flatten)]
    pub location: ArtifactLocation,
    /// 64 hex digits (kept lowercase); required with `url` (downloads are verified).
    #[schemars(pattern(r"^[0-9A-Fa-f]{64}$"))]
    pub sha256: Option<String>,
    pub format: ImageFormat,
}

/// How a root image is written: a root filesystem tarball laid onto the machine's storage
/// template (`tgz`, `tar-xz`, `tar-zst`), or a whole-disk image written to the disk the template's
/// `root_device` picks, with the template's layout `blank` (`raw`, `raw-gz`, `raw-xz`, `raw-zst`,
/// `qcow2`; the controller converts qcow2 to raw when it caches it). `squashfs` is not a format
/// (an error with a hint): a squashfs holds a root filesystem but is neither a tarball nor a disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ImageFormat {
    Tgz,
    TarXz,
    TarZst,
    Raw,
    RawGz,
    RawXz,
    RawZst,
    Qcow2,
}

impl ImageFormat {
    pub const ALL: [ImageFormat; 8] = [
        Self::Tgz,
        Self::TarXz,
        Self::TarZst,
        Self::Raw,
        Self::RawGz,
        Self::RawXz,
        Self::RawZst,
        Self::Qcow2,
    ];
    pub const NAMES: &'static [&'static str] = &[
        "tgz", "tar-xz", "tar-zst", "raw", "raw-gz", "raw-xz", "raw-zst", "qcow2",
    ];

    pub fn parse(text: &str) -> Option<Self> {
        Self::NAMES
            .iter()
            .position(|name| *name == text)
            .map(|at| Self::ALL[at])
    }

    pub fn as_str(self) -> &'static str {
        let at = Self::ALL.iter().position(|format| *format == self);
        at.map_or("raw", |at| Self::NAMES[at])
    }

    /// A whole-disk image (raw, compressed or qcow2), as opposed to a root tarball.
    pub fn is_whole_disk(self) -> bool {
        !matches!(self, Self::Tgz | Self::TarXz | Self::TarZst)
    }

    /// The format machines receive: qcow2 is converted to raw by the controller's cache.
    pub fn served(self) -> Self {
        match self {
            Self::Qcow2 => Self::Raw,
            other => other,
        }
    }

    /// The Debian tool (and its arguments) that decompresses the image to stdout; `None` for
    /// `raw` (nothing to undo) and `qcow2` (converted with `qemu-img convert` instead).
    pub fn decompressor(self) -> Option<[&'static str; 2]> {
        match self {
            Self::Tgz | Self::RawGz => Some(["gzip", "-dc"]),
            Self::TarXz | Self::RawXz => Some(["xz", "-dc"]),
            Self::TarZst | Self::RawZst => Some(["zstd", "-dc"]),
            Self::Raw | Self::Qcow2 => None,
        }
    }
}

/// `[storage_templates.NAME]`: how the disks of a deployed machine are laid out.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct StorageTemplate {
    /// The table's name.
    #[schemars(skip)]
    pub name: String,
    #[serde(flatten)]
    pub layout: StorageLayout,
    /// The EFI system partition on UEFI machines: at least 512 MiB (kept in bytes; default 512 MiB).
    #[schemars(with = "Option<AbsoluteSize>")]
    pub efi_size: Option<u64>,
    /// A separate /boot partition, at least 512 MiB (kept in bytes); without it, no /boot partition.
    #[schemars(with = "Option<AbsoluteSize>")]
    pub boot_size: Option<u64>,
    /// The root filesystem (flat), physical volume (lvm) or backing partition (bcache): a
    /// percentage of the space left on the disk after the EFI and boot partitions, or at least
    /// 3 GiB. Without it, the rest of the disk.
    pub root_size: Option<SizeSpec>,
    /// The disk that takes the boot and root partitions: a kernel name (`"sda"`), a by-id path
    /// (`"/dev/disk/by-id/..."`) or a selector table (`{ serial = "..." }`,
    /// `{ rotational = false, min_size = "400GB", pick = "smallest" }`). Without it, the
    /// machine's first disk. With layout `blank`: the disk a whole-disk image is written to.
    #[schemars(with = "Option<WrittenDiskSelector>")]
    pub root_device: Option<DiskSelector>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(tag = "layout", rename_all = "snake_case")]
pub enum StorageLayout {
    Flat,
    Lvm {
        #[schemars(default = "StorageLayout::default_vg_name")]
        vg_name: String,
        #[schemars(default = "StorageLayout::default_lv_name")]
        lv_name: String,
        /// The root logical volume: a share of the volume group, or at least 3 GiB.
        lv_size: Option<SizeSpec>,
    },
    Bcache {
        /// The fast disk that caches the root disk (a name, by-id path or selector table).
        /// Without it, the smallest solid-state disk other than the boot disk; with none, the
        /// machine gets the flat layout (as MAAS does).
        #[schemars(with = "Option<WrittenDiskSelector>")]
        cache_device: Option<DiskSelector>,
        #[schemars(default)]
        cache_mode: BcacheMode,
        /// The cache partition: at least 4 MiB, or a percentage of the cache disk. Without
        /// it, the whole cache disk.
        cache_size: Option<SizeSpec>,
        /// The whole cache disk is the cache, with no partition table.
        #[schemars(default)]
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        cache_no_part: bool,
    },
    /// No partitions: the disks are left empty, or a whole-disk image is written to the disk
    /// `root_device` picks.
    Blank,
    /// Partitions, filesystems, RAID arrays and LVM written out in the template.
    Custom {
        /// The disks, in the order they are chosen: each takes one disk of the machine that its
        /// `select` matches among the disks not taken yet.
        disks: Vec<CustomDisk>,
        /// md RAID arrays over partitions or whole disks.
        #[schemars(default)]
        #[serde(skip_serializing_if = "Vec::is_empty")]
        raids: Vec<CustomRaid>,
        /// LVM volume groups over partitions, arrays or whole disks.
        #[schemars(default)]
        #[serde(skip_serializing_if = "Vec::is_empty")]
        volume_groups: Vec<CustomVolumeGroup>,
    },
}

impl StorageLayout {
    pub const NAMES: &'static [&'static str] = &["flat", "lvm", "bcache", "blank", "custom"];

    pub fn default_vg_name() -> String {
        "vgroot".to_string()
    }

    pub fn default_lv_name() -> String {
        "lvroot".to_string()
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum BcacheMode {
    Writeback,
    #[default]
    Writethrough,
    Writearound,
}

impl BcacheMode {
    pub fn as_str(self) -> &'static str {
        match self {
            BcacheMode::Writeback => "writeback",
            BcacheMode::Writethrough => "writethrough",
            BcacheMode::Writearound => "writearound",
        }
    }
}

/// Which of a machine's commissioned disks a template means. Every key given must match; among
/// the disks that match, `pick` chooses one. Kernel names (`sda`) may change between boots;
/// serials and by-id paths do not.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct DiskSelector {
    /// The kernel name in the commissioning environment: `sda`, `nvme0n1`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    /// `/dev/disk/by-id/...`
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id_path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// `nvme`, `ata`, `scsi`, `virtio`, `usb`, `mmc`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bus: Option<String>,
    /// false: a solid-state disk; true: a spinning one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rotational: Option<bool>,
    /// At least this large (kept in bytes).
    #[schemars(with = "Option<AbsoluteSize>")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_size: Option<u64>,
    /// At most this large (kept in bytes).
    #[schemars(with = "Option<AbsoluteSize>")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_size: Option<u64>,
    /// The position in the machine's disk list, from 0 (the order commissioning reported).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index: Option<u32>,
    /// Among the disks that match: the first (default), the smallest or the largest.
    #[schemars(default)]
    pub pick: DiskPick,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DiskPick {
    #[default]
    First,
    Smallest,
    Largest,
}

/// How a disk selector is written: a kernel name or by-id path, or a table.
#[derive(JsonSchema)]
#[schemars(untagged)]
#[allow(dead_code)]
enum WrittenDiskSelector {
    NameOrIdPath(String),
    Table(DiskSelector),
}

/// One disk of a custom layout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct CustomDisk {
    /// How the layout refers to this disk (raid or volume group members).
    pub id: String,
    /// Which disk of the machine: a name, by-id path or selector table. Without it, the first
    /// disk not taken by an earlier entry.
    #[schemars(with = "Option<WrittenDiskSelector>")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub select: Option<DiskSelector>,
    /// The boot disk: it takes the EFI partition (UEFI) or boot loader. Default: the first disk.
    #[schemars(default)]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub boot: bool,
    /// In order from the start of the disk; the last may leave out `size` to take the rest.
    /// No partitions: the disk is used whole (a filesystem, a raid or volume group member).
    #[schemars(default)]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub partitions: Vec<CustomPartition>,
    #[serde(flatten)]
    pub filesystem: FilesystemSpec,
}

/// One partition of a custom layout's disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct CustomPartition {
    /// Needed only to make it a raid or volume group member.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// An absolute size (rounded down to 4 MiB) or a percentage of the disk's space left after
    /// the partitions fleet makes itself (EFI, BIOS boot). Without it, the rest of the disk.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<SizeSpec>,
    #[serde(flatten)]
    pub filesystem: FilesystemSpec,
}

/// A filesystem on a partition, whole disk, array or logical volume (all optional: without
/// `fstype`, none).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, JsonSchema)]
pub struct FilesystemSpec {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fstype: Option<FsType>,
    /// At most 16 characters (ext*), 12 (xfs), 11 (vfat).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// An absolute path; none for swap.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mount: Option<String>,
    /// Mount options, as in fstab: `"noatime,discard"`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mount_options: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum FsType {
    Ext4,
    Ext3,
    Ext2,
    Xfs,
    Btrfs,
    Vfat,
    Swap,
}

impl FsType {
    pub const NAMES: &'static [&'static str] =
        &["ext4", "ext3", "ext2", "xfs", "btrfs", "vfat", "swap"];
    const ALL: [FsType; 7] = [
        FsType::Ext4,
        FsType::Ext3,
        FsType::Ext2,
        FsType::Xfs,
        FsType::Btrfs,
        FsType::Vfat,
        FsType::Swap,
    ];

    pub fn parse(text: &str) -> Option<FsType> {
        let at = Self::NAMES.iter().position(|name| *name == text)?;
        Some(Self::ALL[at])
    }

    pub fn as_str(self) -> &'static str {
        Self::NAMES[Self::ALL.iter().position(|kind| *kind == self).unwrap_or(0)]
    }

    /// The longest label `mkfs` accepts.
    pub fn max_label(self) -> usize {
        match self {
            FsType::Ext4 | FsType::Ext3 | FsType::Ext2 | FsType::Swap => 16,
            FsType::Xfs => 12,
            FsType::Vfat => 11,
            FsType::Btrfs => 255,
        }
    }
}

/// An md RAID array of a custom layout (`/dev/md/ID`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct CustomRaid {
    /// The array's name, such as `md0`; members elsewhere refer to it by this.
    pub id: String,
    /// 0, 1, 5, 6 or 10; at least 2 members (0, 1), 3 (5, 10), 4 (6), as MAAS requires.
    pub level: u8,
    /// Partition or disk ids.
    pub members: Vec<String>,
    /// Hot spares (not for level 0).
    #[schemars(default)]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub spares: Vec<String>,
    #[serde(flatten)]
    pub filesystem: FilesystemSpec,
}

/// An LVM volume group of a custom layout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct CustomVolumeGroup {
    /// The volume group's name.
    pub id: String,
    /// Partition, disk or raid ids: the physical volumes.
    pub members: Vec<String>,
    #[schemars(default)]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub logical_volumes: Vec<CustomLogicalVolume>,
}

/// A logical volume: `{ name = "root", size = "40GiB", fstype = "ext4", mount = "/" }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct CustomLogicalVolume {
    pub name: String,
    /// An absolute size or a percentage of the volume group; without it, what the others
    /// leave (one per volume group).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<SizeSpec>,
    #[serde(flatten)]
    pub filesystem: FilesystemSpec,
}

/// `[network_templates.NAME]`: a machine's interfaces and how each links.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct NetworkTemplate {
    /// The table's name.
    #[schemars(skip)]
    pub name: String,
    pub interfaces: Vec<InterfaceSpec>,
}

/// One interface of a network template.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct InterfaceSpec {
    pub name: String,
    #[serde(flatten)]
    pub kind: InterfaceKind,
    #[schemars(range(min = 552, max = 65535))]
    pub mtu: Option<u32>,
    /// Default "auto" with a subnet, else "link_up".
    #[schemars(with = "Option<LinkMode>")]
    pub link: LinkMode,
    /// The subnet `auto` and `static` take the address from.
    pub subnet: Option<String>,
}

/// Written as `type` with the keys of that type; `type` may be left out for "physical".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
#[schemars(transform = InterfaceKind::physical_is_the_default)]
pub enum InterfaceKind {
    Physical,
    Bond {
        /// Physical interfaces of the same template, each in one bond or bridge at most.
        members: Vec<String>,
        /// Default "balance-rr", as MAAS.
        #[schemars(default)]
        bond_mode: BondMode,
        /// Link monitoring interval in milliseconds (0: off).
        #[schemars(default = "InterfaceKind::default_miimon")]
        miimon: u32,
        /// Milliseconds to wait before enabling a member whose link came back (a multiple of
        /// `miimon`).
        #[schemars(default)]
        updelay: u32,
        /// Milliseconds to wait before disabling a member whose link went down (a multiple of
        /// `miimon`).
        #[schemars(default)]
        downdelay: u32,
        /// 802.3ad only; default "fast" there, as MAAS.
        lacp_rate: Option<LacpRate>,
        /// balance-xor, 802.3ad and balance-tlb only; default "layer2" there.
        #[schemars(extend("enum" = InterfaceKind::XMIT_HASH_POLICIES))]
        xmit_hash_policy: Option<String>,
        /// Gratuitous ARPs sent after a failover, 0 to 255: active-backup only; default 1 there.
        #[schemars(range(min = 0, max = 255))]
        num_grat_arp: Option<u8>,
    },
    Bridge {
        /// Physical, bond or VLAN interfaces of the same template.
        members: Vec<String>,
        /// Spanning tree protocol; default off, as MAAS.
        #[schemars(default)]
        stp: bool,
        /// Seconds in the listening and learning states, 0 to 30 (2 to 30 with `stp`).
        #[schemars(
            default = "InterfaceKind::default_forward_delay",
            range(min = 0, max = 30)
        )]
        forward_delay: u32,
    },
    Vlan {
        /// The interface it rides on.
        parent: String,
        #[schemars(range(min = 1, max = 4094))]
        id: u16,
    },
}

impl InterfaceKind {
    pub const XMIT_HASH_POLICIES: &'static [&'static str] =
        &["layer2", "layer2+3", "layer3+4", "encap2+3", "encap3+4"];

    /// MAAS's default link monitoring interval (milliseconds).
    pub fn default_miimon() -> u32 {
        100
    }

    /// MAAS's (and the kernel's) default bridge forward delay (seconds).
    pub fn default_forward_delay() -> u32 {
        15
    }

    /// The schema's physical variant without `type` required (the reader's default).
    fn physical_is_the_default(schema: &mut Schema) {
        let variants = schema.get_mut("oneOf").and_then(|v| v.as_array_mut());
        for variant in variants.into_iter().flatten() {
            if variant["properties"]["type"]["const"] == "physical" {
                if let Some(object) = variant.as_object_mut() {
                    object.remove("required");
                }
            }
        }
    }
}

/// Default balance-rr, as MAAS (`BOND_MODE_CHOICES[0]` in maasserver/enum.py).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum BondMode {
    #[default]
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

    /// The name as written (and as netplan and the kernel spell it).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BalanceRr => "balance-rr",
            Self::ActiveBackup => "active-backup",
            Self::BalanceXor => "balance-xor",
            Self::Broadcast => "broadcast",
            Self::Ieee8023ad => "802.3ad",
            Self::BalanceTlb => "balance-tlb",
            Self::BalanceAlb => "balance-alb",
        }
    }

    /// The kernel uses `xmit_hash_policy` in these modes only (bonding.rst).
    pub fn hashes_transmits(self) -> bool {
        matches!(self, Self::BalanceXor | Self::Ieee8023ad | Self::BalanceTlb)
    }

    /// MAAS renders `num_grat_arp` for active-backup only (its bug #1730991).
    pub fn sends_gratuitous_arps(self) -> bool {
        self == Self::ActiveBackup
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LacpRate {
    Fast,
    Slow,
}

impl LacpRate {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Fast => "fast",
            Self::Slow => "slow",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
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

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Dhcp => "dhcp",
            Self::Static => "static",
            Self::LinkUp => "link_up",
        }
    }

    /// Auto and static links carry an address (and so may carry the default gateway).
    pub fn takes_address(self) -> bool {
        matches!(self, Self::Auto | Self::Static)
    }

    pub fn parse(text: &str) -> Option<Self> {
        let all = [Self::Auto, Self::Dhcp, Self::Static, Self::LinkUp];
        Self::NAMES
            .iter()
            .position(|name| *name == text)
            .map(|at| all[at])
    }
}

/// `[profiles.NAME]`: what machines of one kind share. In a loaded [`Fleet`], each profile holds
/// its effective values: its own, else those of the profile it extends, and so on up the chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct Profile {
    /// The table's name.
    #[schemars(skip)]
    pub name: String,
    /// Another profile, whose values this one takes where it gives none (that one may extend a
    /// third, and so on; no cycle).
    pub extends: Option<String>,
    /// A storage template.
    pub storage: Option<String>,
    /// A network template.
    pub network: Option<String>,
    pub image: Option<String>,
    pub arch: Option<Arch>,
    /// Lowercase letters, digits, `-`, `_` and `.`.
    #[schemars(default, inner(pattern(r"^[a-z0-9._-]+$")))]
    pub tags: Vec<String>,
    #[schemars(default)]
    pub expect: Expectations,
    #[serde(flatten)]
    pub deploy: Arc<DeploySettings>,
}

impl Profile {
    /// This profile over the one it extends: each value its own where given, else `parent`'s
    /// (tags and SSH keys add up, each key of `expect` and `vendor_data` is taken on its own).
    pub fn over(&self, parent: &Profile) -> Profile {
        let mut tags = parent.tags.clone();
        tags.extend(self.tags.iter().cloned());
        tags.sort();
        tags.dedup();
        Profile {
            name: self.name.clone(),
            extends: self.extends.clone(),
            storage: self.storage.clone().or_else(|| parent.storage.clone()),
            network: self.network.clone().or_else(|| parent.network.clone()),
            image: self.image.clone().or_else(|| parent.image.clone()),
            arch: self.arch.or(parent.arch),
            tags,
            expect: self.expect.or(parent.expect),
            deploy: Arc::new(self.deploy.over(&parent.deploy)),
        }
    }
}

/// What deploying needs beyond the layout and the network: kernel parameters, SSH keys, user
/// data and vendor data. Written on a profile or a machine; the nearer layer wins (the machine,
/// then its profile, then the profile that one extends...), except SSH keys, which add up.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, JsonSchema)]
pub struct DeploySettings {
    /// Kernel parameters of the installed OS: one string (`"console=ttyS0,115200 quiet"`) or a
    /// list. The nearest layer's replace the others' (`[]` clears them).
    #[schemars(with = "Option<KernelParamsAsWritten>")]
    pub kernel_params: Option<Vec<String>>,
    /// Kernel parameters of the ephemeral environment (enlistment, commissioning, testing,
    /// rescue), after the controller's own (a serial console: `"console=ttyS1,115200"`). The
    /// nearest layer's replace the others'; `fleet.*`, `BOOTIF=` and `initrd=` are the
    /// controller's.
    #[schemars(with = "Option<KernelParamsAsWritten>")]
    pub ephemeral_kernel_params: Option<Vec<String>>,
    /// SSH public keys authorized on the deployed machine, `TYPE BASE64 [COMMENT]` as in an
    /// `authorized_keys` file (no options). Every layer's keys add up.
    #[schemars(default)]
    pub ssh_keys: Vec<String>,
    /// cloud-init user data (`#cloud-config`, a `#!` script, ...): the text, or
    /// `{ file = "PATH" }` relative to this fleet file (read when the file is loaded).
    pub user_data: Option<UserData>,
    /// Settings handed to the deployed OS beside the user data: proxies, NTP, DNS search. Each
    /// key is taken from the nearest layer that gives it.
    #[schemars(default)]
    pub vendor_data: VendorData,
}

impl DeploySettings {
    /// Nothing given.
    pub fn is_empty(&self) -> bool {
        *self == DeploySettings::default()
    }

    /// `self` over `fallback`: see [`DeploySettings`] for how each value combines.
    pub fn over(&self, fallback: &DeploySettings) -> DeploySettings {
        let mut ssh_keys = fallback.ssh_keys.clone();
        for key in &self.ssh_keys {
            if !ssh_keys.contains(key) {
                ssh_keys.push(key.clone());
            }
        }
        DeploySettings {
            kernel_params: (self.kernel_params.clone()).or_else(|| fallback.kernel_params.clone()),
            ephemeral_kernel_params: (self.ephemeral_kernel_params.clone())
                .or_else(|| fallback.ephemeral_kernel_params.clone()),
            ssh_keys,
            user_data: self
                .user_data
                .clone()
                .or_else(|| fallback.user_data.clone()),
            vendor_data: self.vendor_data.clone().or(&fallback.vendor_data),
        }
    }

    /// The installed OS's kernel parameters as one command-line fragment.
    pub fn kernel_command_line(&self) -> String {
        self.kernel_params.as_deref().unwrap_or_default().join(" ")
    }

    /// The ephemeral environment's extra kernel parameters, as one command-line fragment.
    pub fn ephemeral_command_line(&self) -> String {
        (self.ephemeral_kernel_params.as_deref())
            .unwrap_or_default()
            .join(" ")
    }
}

/// For the schema: kernel parameters are written as one string or a list of strings.
#[derive(JsonSchema)]
#[schemars(untagged)]
#[allow(dead_code)]
enum KernelParamsAsWritten {
    One(String),
    Many(Vec<String>),
}

/// cloud-init user data: written inline, or read from a file when the fleet file is loaded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UserData {
    pub text: String,
    /// The file it was read from, if it was not written inline.
    pub file: Option<PathBuf>,
}

/// Written as the text itself or as `{ file = "PATH" }`.
impl JsonSchema for UserData {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "UserData".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> Schema {
        schemars::json_schema!({
            "description": "cloud-init user data: the text (beginning `#cloud-config`, `#!`...), or a file relative to this fleet file.",
            "anyOf": [
                { "type": "string", "pattern": "^(#cloud-config|#!|#include|#cloud-boothook|#part-handler|## template: jinja|Content-Type:)" },
                {
                    "type": "object",
                    "properties": { "file": { "type": "string" } },
                    "required": ["file"],
                    "additionalProperties": false
                }
            ]
        })
    }
}

/// `vendor_data = { http_proxy, apt_proxy, ntp_servers, dns_search }`: what the deployed OS is
/// configured with beside the user data.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct VendorData {
    /// An http:// or https:// proxy for the deployed OS (`http_proxy`, `https_proxy`).
    pub http_proxy: Option<String>,
    /// The proxy apt uses; default: `http_proxy`.
    pub apt_proxy: Option<String>,
    /// Host names or addresses; the nearest layer's list replaces the others'.
    pub ntp_servers: Option<Vec<String>>,
    /// DNS search domains; the nearest layer's list replaces the others'.
    pub dns_search: Option<Vec<String>>,
}

impl VendorData {
    /// Each key of `self` where given, else `fallback`'s.
    pub fn or(self, fallback: &VendorData) -> VendorData {
        VendorData {
            http_proxy: self.http_proxy.or_else(|| fallback.http_proxy.clone()),
            apt_proxy: self.apt_proxy.or_else(|| fallback.apt_proxy.clone()),
            ntp_servers: self.ntp_servers.or_else(|| fallback.ntp_servers.clone()),
            dns_search: self.dns_search.or_else(|| fallback.dns_search.clone()),
        }
    }
}

/// The hardware a machine must show when commissioned; less fails commissioning.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct Expectations {
    #[schemars(range(min = 1))]
    pub min_cpus: Option<u32>,
    #[schemars(rename = "min_memory", with = "Option<AbsoluteSize>")]
    pub min_memory_mib: Option<u64>,
    #[schemars(range(min = 1))]
    pub min_disks: Option<u32>,
    #[schemars(rename = "min_disk_size", with = "Option<AbsoluteSize>")]
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
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct MachineSpec {
    pub name: MachineName,
    #[schemars(default)]
    pub macs: Vec<MacAddr>,
    /// The MAC it netboots from: `pxe_mac`, else the first of `macs`.
    pub pxe_mac: Option<MacAddr>,
    /// The machine's, else its profile's, else amd64.
    #[schemars(with = "Option<Arch>")]
    pub arch: Arch,
    /// How to reach the machine's power; default manual.
    #[schemars(with = "Option<PowerSpec>")]
    pub power: PowerSpec,
    pub profile: Option<String>,
    /// Storage template: the machine's own, else its profile's.
    pub storage: Option<String>,
    /// Network template: the machine's own, else its profile's.
    pub network: Option<String>,
    /// Image: the machine's, else its profile's, else the policy's `default_image`.
    pub image: Option<String>,
    /// Default ready (new with `commission = false`, deployed when added live).
    #[schemars(with = "Option<DesiredState>")]
    pub state: DesiredState,
    /// Locked against every action but unlock (only with `state = "deployed"`).
    #[schemars(default)]
    pub locked: bool,
    pub owner: Option<String>,
    pub clone_from: Option<CloneSpec>,
    /// Commission on add.
    #[schemars(default = "yes")]
    pub commission: bool,
    /// Added live: already running a workload; created straight in deployed, never netbooted.
    #[schemars(rename = "deployed", default)]
    pub live: bool,
    /// The profile's tags and the machine's own, sorted, without duplicates. Lowercase
    /// letters, digits, `-`, `_` and `.`.
    #[schemars(default, inner(pattern(r"^[a-z0-9._-]+$")))]
    pub tags: Vec<String>,
    /// Each given key replaces the profile's.
    #[schemars(default)]
    pub expect: Expectations,
    /// Static addresses, one per interface.
    #[schemars(default)]
    pub interfaces: Vec<MachineInterface>,
    pub comment: Option<String>,
    /// Kernel parameters, SSH keys, user and vendor data: the machine's own over its profile's
    /// (see [`DeploySettings`]; `fleet explain` shows where each came from). Shared with the
    /// profile when the machine gives none of them.
    #[serde(flatten)]
    pub deploy: Arc<DeploySettings>,
}

/// For `#[schemars(default = "yes")]`: a flag that is on unless the file says otherwise.
fn yes() -> bool {
    true
}

/// A static address for one interface of one machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct MachineInterface {
    pub name: String,
    pub subnet: String,
    pub ip: Option<IpAddr>,
    pub mac: Option<MacAddr>,
}

/// The status the fleet file asks a machine to be in: only resting statuses a plan can reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, JsonSchema)]
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

/// Written as a machine name alone (both storage and interfaces) or as a table that chooses.
impl JsonSchema for CloneSpec {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "CloneSpec".into()
    }

    fn json_schema(generator: &mut schemars::SchemaGenerator) -> Schema {
        let name = generator.subschema_for::<MachineName>();
        schemars::json_schema!({
            "description": "Copy another machine's storage and/or interfaces: its name alone copies both.",
            "anyOf": [
                name,
                {
                    "type": "object",
                    "properties": {
                        "source": name,
                        "storage": { "type": "boolean", "default": false },
                        "interfaces": { "type": "boolean", "default": false }
                    },
                    "required": ["source"],
                    "additionalProperties": false
                }
            ]
        })
    }
}

/// How to reach a machine's power. Secrets are references.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
#[schemars(deny_unknown_fields)]
pub enum PowerSpec {
    /// No control: the operator is asked to act.
    Manual,
    Ipmi {
        /// The BMC's host name or address.
        address: String,
        user: Option<String>,
        password: Option<SecretRef>,
        #[schemars(default)]
        driver: IpmiDriver,
        /// IPMI 2.0 cipher suites are 0 to 17.
        #[schemars(range(max = 17))]
        cipher_suite: Option<u8>,
        #[schemars(default)]
        privilege: IpmiPrivilege,
        #[schemars(default)]
        power_off_mode: PowerOffMode,
        #[schemars(default)]
        boot_type: IpmiBootType,
    },
    Redfish {
        /// The BMC's host name or address.
        address: String,
        user: Option<String>,
        password: Option<SecretRef>,
        system_id: Option<String>,
        #[schemars(default = "yes")]
        verify_tls: bool,
    },
    /// HTTP calls; credentials are a bearer `token` or `user` with `password`, never both.
    Webhook {
        /// POSTed to power on.
        on_url: String,
        /// POSTed to power off.
        off_url: String,
        /// POSTed to power cycle; without it, a power cycle is a hard off, then an on.
        cycle_url: Option<String>,
        /// Read for the power state, matched by `on_regex` and `off_regex`.
        query_url: Option<String>,
        on_regex: Option<String>,
        off_regex: Option<String>,
        /// HTTP basic authentication, with `password`.
        user: Option<String>,
        password: Option<SecretRef>,
        /// A bearer token.
        token: Option<SecretRef>,
        #[schemars(default = "yes")]
        verify_tls: bool,
    },
    /// A local QEMU virtual machine, driven through its QMP socket; `command` (an argv) starts
    /// it when nothing listens on the socket.
    Qemu {
        qmp_socket: PathBuf,
        /// The argv that starts the VM (fleet adds `-qmp` and `-no-shutdown` when missing).
        #[schemars(length(min = 1))]
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

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum IpmiDriver {
    Lan,
    /// Spelled as the fleet file spells it, so that `fleet adopt` writes what `validate` reads.
    #[default]
    #[serde(rename = "lan_2_0")]
    Lan20,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum IpmiPrivilege {
    User,
    Operator,
    #[default]
    Admin,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum IpmiBootType {
    #[default]
    Auto,
    Legacy,
    Efi,
}

/// Where a secret is kept: `{ env = "NAME" }` or `{ file = "PATH" }`, never the secret itself.
/// Serialized as the reference (`{"env":"BMC_PASS"}`), never the value.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SecretRef {
    /// An environment variable of the controller.
    Env(#[schemars(pattern(r"^[A-Za-z_][A-Za-z0-9_]*$"))] String),
    /// A file the controller reads (a trailing newline is dropped), relative to the fleet file.
    File(PathBuf),
    /// A secret the controllers keep for this machine in their shared store, encrypted with
    /// their secret key: `bmc-password`, the BMC password the machine reported at enlistment.
    Store(#[schemars(pattern(r"^bmc-password$"))] String),
}

/// The purpose of the BMC password an enlisting machine reports, kept in the store
/// (`{"store": "bmc-password"}`).
pub const STORED_BMC_PASSWORD: &str = "bmc-password";

/// The purposes a `{ store = ... }` reference may name.
pub const STORED_PURPOSES: &[&str] = &[STORED_BMC_PASSWORD];

/// A secret's value, read or about to be written. Its `Debug` never shows it; only
/// [`SecretValue::expose`] does, where the secret is used.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretValue(String);

impl SecretValue {
    pub fn new(value: impl Into<String>) -> SecretValue {
        SecretValue(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for SecretValue {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("SecretValue(..)")
    }
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
    #[error(
        "the secret `{0}` is kept in the store: only a controller with the secret key reads it"
    )]
    InStore(String),
}

impl SecretRef {
    /// Reads a reference as the API and the store carry it: `{"env": "NAME"}`,
    /// `{"file": "PATH"}` or `{"store": "bmc-password"}`, nothing else (an inline value is not a
    /// reference).
    pub fn from_json(value: &serde_json::Value) -> Option<SecretRef> {
        let object = value.as_object()?;
        if object.len() != 1 {
            return None;
        }
        let (key, serde_json::Value::String(text)) = object.iter().next()? else {
            return None;
        };
        match key.as_str() {
            "env" => Some(SecretRef::Env(text.clone())),
            "file" => Some(SecretRef::File(PathBuf::from(text))),
            "store" if STORED_PURPOSES.contains(&text.as_str()) => {
                Some(SecretRef::Store(text.clone()))
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
            // Read by the services with the store's key before a power call (`power::StoredSecrets`).
            SecretRef::Store(purpose) => Err(SecretError::InStore(purpose.clone())),
        }
    }
}

impl std::fmt::Display for SecretRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SecretRef::Env(name) => write!(f, "env:{name}"),
            SecretRef::File(path) => write!(f, "file:{}", path.display()),
            SecretRef::Store(purpose) => write!(f, "store:{purpose}"),
        }
    }
}

/// `[policy]`: how the plan and the executor behave.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
#[schemars(default, deny_unknown_fields)]
pub struct Policy {
    pub timeouts: Timeouts,
    /// Machines worked on at once by one apply.
    #[schemars(range(min = 1))]
    pub parallelism: u32,
    pub enlisted: EnlistedPolicy,
    pub protected: Protected,
    /// Without it, no limit; 0: no destructive step at all.
    pub max_destructive_per_apply: Option<u32>,
    /// The image of machines that name none, nor their profile.
    pub default_image: Option<String>,
    /// Seconds between power queries; 0 never.
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
#[schemars(default, deny_unknown_fields)]
pub struct RateLimits {
    #[schemars(range(min = 1))]
    pub anonymous_burst: u32,
    #[schemars(range(min = 1))]
    pub anonymous_per_minute: u32,
    #[schemars(range(min = 1))]
    pub enlist_burst: u32,
    #[schemars(range(min = 1))]
    pub enlist_per_minute: u32,
    /// Addresses remembered at once; beyond, new addresses share one bucket (so a flood from
    /// many addresses cannot grow the controller's memory).
    #[schemars(range(min = 16))]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
#[schemars(default, deny_unknown_fields)]
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

/// An operator's own commissioning or test script (`[scripts.NAME]`), run after the built-in
/// ones.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
#[schemars(deny_unknown_fields, transform = defaults_as_written)]
pub struct Script {
    pub kind: ScriptKind,
    #[schemars(
        rename = "timeout",
        with = "WrittenDuration",
        default = "Script::default_timeout_seconds"
    )]
    pub timeout_seconds: u32,
    /// Touches the disks: never run on a deployed machine.
    #[schemars(default)]
    pub destructive: bool,
    /// The script (POSIX sh, run under busybox), relative to this file.
    #[schemars(rename = "file")]
    pub path: PathBuf,
    /// The file's text, read when the fleet file was loaded.
    #[serde(skip)]
    pub text: String,
}

impl Script {
    /// A script's limit when the file gives none: 10 minutes.
    pub fn default_timeout_seconds() -> u32 {
        10 * 60
    }
}

/// When a script runs: while commissioning (its findings are stored), as a test after it, or
/// to erase disks on release (built in only: fleet files cannot declare one). Spelled as the
/// machine API's `script NAME KIND TIMEOUT` line spells it.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    serde::Deserialize,
    JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum ScriptKind {
    Commissioning,
    Testing,
    #[schemars(skip)]
    Erase,
    // The built-in `fleet-rescue` (SSH access in rescue mode), never the operator's (a doc
    // comment here would change the JSON Schema of `kind`).
    #[schemars(skip)]
    Rescue,
    // The built-in `fleet-deploy` of a deploying run (never an operator's script).
    #[schemars(skip)]
    Deploy,
}

impl ScriptKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ScriptKind::Commissioning => "commissioning",
            ScriptKind::Testing => "testing",
            ScriptKind::Erase => "erase",
            ScriptKind::Rescue => "rescue",
            ScriptKind::Deploy => "deploy",
        }
    }

    pub fn parse(text: &str) -> Option<ScriptKind> {
        [
            ScriptKind::Commissioning,
            ScriptKind::Testing,
            ScriptKind::Erase,
            ScriptKind::Rescue,
            ScriptKind::Deploy,
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
#[schemars(default, deny_unknown_fields, transform = defaults_as_written)]
#[schemars(
    description = "`[policy.timeouts]`: how long each in-progress status may last, and \
    how long a machine at work may be silent, before it fails."
)]
pub struct Timeouts {
    #[schemars(with = "WrittenDuration")]
    pub commissioning: u32,
    #[schemars(with = "WrittenDuration")]
    pub testing: u32,
    #[schemars(with = "WrittenDuration")]
    pub rescue: u32,
    #[schemars(with = "WrittenDuration")]
    pub deploying: u32,
    #[schemars(with = "WrittenDuration")]
    pub releasing: u32,
    #[schemars(with = "WrittenDuration")]
    pub exiting_rescue: u32,
    /// A secure or full erase of large disks takes hours; quick erase far less.
    #[schemars(with = "WrittenDuration")]
    pub disk_erasing: u32,
    /// A machine powered on for a step that has not called the controller this long after the
    /// power command fails with "did not boot within N minutes".
    #[schemars(with = "WrittenDuration")]
    pub boot: u32,
    /// A machine that has called and then falls silent this long fails with "not heard from
    /// for N minutes".
    #[schemars(with = "WrittenDuration")]
    pub heartbeat: u32,
    /// A deployment whose installer signalled done, but whose installed system has not called
    /// back this long after, fails with "the installed system did not call back within N".
    #[schemars(with = "WrittenDuration")]
    pub callback: u32,
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
            callback: 30 * MINUTE,
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
        "callback",
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
            callback: self.callback,
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
            "callback" => &mut self.callback,
            _ => return None,
        };
        Some(field)
    }
}

/// What happens to machines that enlisted on their own.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum EnlistedPolicy {
    /// They stay new until a person or the fleet file says otherwise (MAAS's behaviour).
    #[default]
    Leave,
    Commission,
}

/// Machines never given a destructive step (erase, deploy over, release with erase...).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, JsonSchema)]
#[schemars(default, deny_unknown_fields)]
pub struct Protected {
    pub machines: Vec<MachineName>,
    /// Every machine with one of these tags.
    pub tags: Vec<String>,
}

impl Protected {
    pub fn covers(&self, machine: &MachineSpec) -> bool {
        self.machines.contains(&machine.name)
            || machine.tags.iter().any(|tag| self.tags.contains(tag))
    }
}
