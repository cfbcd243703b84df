//! Network booting: which kind of client asks (plain, PXE ROM, UEFI HTTP boot, iPXE), and what it
//! is told to load. Also the subnet's ordinary options (mask, router, DNS, domain, lease times).

use super::config::{BootSettings, DhcpSubnet};
use crate::model::MacAddr;
use dhcproto::v4::{DhcpOption, DhcpOptions, Message, OptionCode, UnknownOption};
use std::net::Ipv4Addr;

/// iPXE's encapsulated options (option 175) and its `no-pxedhcp` setting (175.176): with it set,
/// iPXE does not wait ~3 s for proxy-DHCP offers.
pub const IPXE_ENCAPSULATED: u8 = 175;
pub const IPXE_NO_PXEDHCP: u8 = 176;

/// RFC 4578 option 93 values we boot.
pub const ARCH_BIOS_X86: u16 = 0;
pub const ARCH_UEFI_BC: u16 = 7;
pub const ARCH_UEFI_X64: u16 = 9;
pub const ARCH_UEFI_ARM64: u16 = 11;
pub const ARCH_UEFI_X64_HTTP: u16 = 16;
pub const ARCH_UEFI_ARM64_HTTP: u16 = 19;

/// Who is asking, as far as booting goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientKind {
    /// An ordinary DHCP client (an OS, the ephemeral environment): an address only.
    Plain,
    /// A firmware PXE ROM (option 60 `PXEClient`), with its option 93 architecture.
    Pxe { arch: Option<u16> },
    /// UEFI HTTP boot (option 60 `HTTPClient`).
    HttpBoot { arch: Option<u16> },
    /// iPXE itself (user class `iPXE`, or option 175 present).
    Ipxe,
}

/// What a booting client is told to load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootAnswer {
    /// Nothing to boot (a plain client, or an architecture we have no loader for).
    None,
    /// A first-stage loader over TFTP from `next_server`.
    Tftp { file: String, next_server: Ipv4Addr },
    /// A UEFI HTTP boot client: the loader's URL.
    HttpBoot { url: String },
    /// iPXE: the HTTP URL of this machine's boot script.
    IpxeScript { url: String },
}

pub fn classify(request: &Message) -> ClientKind {
    let options = request.opts();
    let user_class_is_ipxe = matches!(
        options.get(OptionCode::UserClass),
        Some(DhcpOption::UserClass(class)) if contains(class, b"iPXE")
    );
    if user_class_is_ipxe
        || options
            .get(OptionCode::Unknown(IPXE_ENCAPSULATED))
            .is_some()
    {
        return ClientKind::Ipxe;
    }
    let arch = architecture(options);
    match options.get(OptionCode::ClassIdentifier) {
        Some(DhcpOption::ClassIdentifier(class)) if class.starts_with(b"PXEClient") => {
            ClientKind::Pxe { arch }
        }
        Some(DhcpOption::ClassIdentifier(class)) if class.starts_with(b"HTTPClient") => {
            ClientKind::HttpBoot { arch }
        }
        _ => ClientKind::Plain,
    }
}

fn architecture(options: &DhcpOptions) -> Option<u16> {
    match options.get(OptionCode::ClientSystemArchitecture) {
        Some(DhcpOption::ClientSystemArchitecture(arch)) => Some(u16::from(*arch)),
        _ => None,
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

/// The boot answer for `kind` (the MAC names iPXE's script).
pub fn boot_answer(
    kind: ClientKind,
    mac: MacAddr,
    boot: &BootSettings,
    server_address: Ipv4Addr,
) -> BootAnswer {
    let next_server = boot.next_server.unwrap_or(server_address);
    let base = || boot.http_base(server_address);
    match kind {
        ClientKind::Plain => BootAnswer::None,
        ClientKind::Ipxe => BootAnswer::IpxeScript {
            url: format!("{}/boot/{mac}.ipxe", base()),
        },
        // A PXE ROM without option 93 is taken for a BIOS one (the oldest ROMs do not send it).
        ClientKind::Pxe { arch } => match tftp_loader(arch.unwrap_or(ARCH_BIOS_X86), boot) {
            Some(file) => BootAnswer::Tftp {
                file: file.to_string(),
                next_server,
            },
            None => BootAnswer::None,
        },
        ClientKind::HttpBoot { arch } => {
            let loader = match arch {
                Some(ARCH_UEFI_ARM64_HTTP) => &boot.uefi_arm64_loader,
                _ => &boot.uefi_x64_loader,
            };
            let path = boot.http_loader_path.trim_end_matches('/');
            BootAnswer::HttpBoot {
                url: format!("{}{path}/{loader}", base()),
            }
        }
    }
}

fn tftp_loader(arch: u16, boot: &BootSettings) -> Option<&str> {
    match arch {
        ARCH_BIOS_X86 => Some(&boot.bios_loader),
        ARCH_UEFI_BC | ARCH_UEFI_X64 => Some(&boot.uefi_x64_loader),
        ARCH_UEFI_ARM64 => Some(&boot.uefi_arm64_loader),
        _ => None,
    }
}

/// Puts the boot answer into a reply: siaddr, file name (field and option 67), option 66,
/// option 60 echoed as PXE requires, and 175.176 for iPXE.
pub fn add_boot_options(reply: &mut Message, kind: ClientKind, answer: &BootAnswer) {
    let options = reply.opts_mut();
    match answer {
        BootAnswer::None => {}
        BootAnswer::Tftp { file, next_server } => {
            options.insert(DhcpOption::ClassIdentifier(b"PXEClient".to_vec()));
            options.insert(DhcpOption::TFTPServerName(
                next_server.to_string().into_bytes(),
            ));
            options.insert(DhcpOption::BootfileName(file.clone().into_bytes()));
            // PXE discovery control = 8: boot the file named here, no boot-server discovery.
            options.insert(DhcpOption::VendorExtensions(vec![6, 1, 8, 255]));
            reply.set_siaddr(*next_server);
            set_file(reply, file);
        }
        BootAnswer::HttpBoot { url } => {
            options.insert(DhcpOption::ClassIdentifier(b"HTTPClient".to_vec()));
            options.insert(DhcpOption::BootfileName(url.clone().into_bytes()));
            set_file(reply, url);
        }
        BootAnswer::IpxeScript { url } => {
            options.insert(DhcpOption::BootfileName(url.clone().into_bytes()));
            set_file(reply, url);
        }
    }
    if kind == ClientKind::Ipxe {
        reply
            .opts_mut()
            .insert(DhcpOption::Unknown(UnknownOption::new(
                OptionCode::Unknown(IPXE_ENCAPSULATED),
                vec![IPXE_NO_PXEDHCP, 1, 1],
            )));
    }
}

/// The `file` header field holds 128 bytes with a terminating NUL; longer names go in option 67 only.
fn set_file(reply: &mut Message, file: &str) {
    if file.len() < 128 {
        reply.set_fname(file.as_bytes());
    }
}

/// The subnet's options for a reply that carries an address (or answers an INFORM).
pub fn add_subnet_options(reply: &mut Message, subnet: &DhcpSubnet, with_lease_times: bool) {
    let options = reply.opts_mut();
    options.insert(DhcpOption::SubnetMask(subnet.network.netmask()));
    if let Some(gateway) = subnet.gateway {
        options.insert(DhcpOption::Router(vec![gateway]));
    }
    if !subnet.dns.is_empty() {
        options.insert(DhcpOption::DomainNameServer(subnet.dns.clone()));
    }
    if let Some(domain) = &subnet.domain {
        options.insert(DhcpOption::DomainName(domain.clone()));
    }
    options.insert(DhcpOption::BroadcastAddr(subnet.network.broadcast()));
    if with_lease_times {
        let lease = subnet.lease_seconds;
        options.insert(DhcpOption::AddressLeaseTime(lease));
        options.insert(DhcpOption::Renewal(lease / 2));
        options.insert(DhcpOption::Rebinding(lease / 8 * 7));
    }
}
