//! What the DHCP server answers with, built from the fleet file: the subnets it serves, the fixed
//! addresses of declared machines, the MACs it ignores and the network-boot settings; and
//! [`HeldFixed`], the addresses machines hold in the store (applied plans) as fixed addresses,
//! read again while the server runs.

use crate::config::{Fleet, Subnet};
use crate::model::MacAddr;
use crate::store::HeldAddressMacs;
use ipnet::{IpNet, Ipv4Net};
use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr};

/// How long an offered address stays set aside for the client that was offered it.
pub const DEFAULT_OFFER_HOLD_SECONDS: u32 = 30;
/// How long an address a client declined (found in use) is kept out of the pool.
pub const DEFAULT_DECLINE_HOLD_SECONDS: u32 = 600;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DhcpConfigError {
    #[error("subnet `{subnet}`: DHCP serves IPv4 only, and {cidr} is not IPv4")]
    NotIpv4 { subnet: String, cidr: String },
    #[error("subnet `{subnet}`: the dynamic range {start}-{end} is not IPv4 or not inside {cidr}")]
    BadRange {
        subnet: String,
        start: IpAddr,
        end: IpAddr,
        cidr: Ipv4Net,
    },
}

/// The whole DHCP configuration, for every subnet; [`DhcpConfig::on_interface`] says which
/// interface (and so which directly attached subnets) one server socket answers for.
#[derive(Debug, Clone, PartialEq)]
pub struct DhcpConfig {
    pub subnets: Vec<DhcpSubnet>,
    /// Declared machines' fixed addresses, by MAC.
    pub fixed: HashMap<MacAddr, FixedAddress>,
    /// Every fixed address, so that the dynamic pool never hands one out.
    pub fixed_ips: HashSet<Ipv4Addr>,
    /// The MACs of declared machines, for lease events on the machine.
    pub known_machines: HashMap<MacAddr, String>,
    /// Never answered.
    pub ignored_macs: HashSet<MacAddr>,
    /// The MAC the fleet file gives a machine's interface (`interfaces = [{ name, mac }]`), by
    /// (machine, interface): which MAC a held address of that interface goes to.
    pub interface_macs: HashMap<(String, String), MacAddr>,
    pub boot: BootSettings,
    /// The interface the socket serves; `None` answers relayed requests only.
    pub interface: Option<ServedInterface>,
    /// The server identifier of a socket bound to no interface (`[controller] dhcp_listen`):
    /// the address it listens on.
    pub listen_address: Option<Ipv4Addr>,
    pub offer_hold_seconds: u32,
    pub decline_hold_seconds: u32,
}

/// One subnet as DHCP sees it (IPv4 only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DhcpSubnet {
    pub name: String,
    pub network: Ipv4Net,
    pub gateway: Option<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
    pub domain: Option<String>,
    /// Served on this interface (else: on the interface whose address lies in `network`).
    pub interface: Option<String>,
    /// The dynamic range, inclusive; `None`: fixed addresses only.
    pub pool: Option<(Ipv4Addr, Ipv4Addr)>,
    /// Inclusive ranges never handed out.
    pub reserved: Vec<(Ipv4Addr, Ipv4Addr)>,
    pub lease_seconds: u32,
    /// Boot options only; another DHCP server gives the addresses.
    pub proxy: bool,
}

impl DhcpSubnet {
    /// A subnet with defaults, for tests and the benchmark server.
    pub fn new(name: &str, network: Ipv4Net) -> DhcpSubnet {
        DhcpSubnet {
            name: name.to_string(),
            network,
            gateway: None,
            dns: Vec::new(),
            domain: None,
            interface: None,
            pool: None,
            reserved: Vec::new(),
            lease_seconds: 3600,
            proxy: false,
        }
    }

    pub fn is_reserved(&self, ip: Ipv4Addr) -> bool {
        self.reserved
            .iter()
            .any(|(start, end)| *start <= ip && ip <= *end)
    }
}

/// The addresses machines hold in the store, as fixed addresses: one per MAC and subnet, and
/// never handed out by the dynamic pool. Built by [`DhcpConfig::held_fixed`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeldFixed {
    by_mac: HashMap<(MacAddr, usize), Ipv4Addr>,
    ips: HashSet<Ipv4Addr>,
    machines: HashMap<MacAddr, String>,
}

impl HeldFixed {
    /// The address `mac` holds on subnet `subnet` (an index into [`DhcpConfig::subnets`]).
    pub fn address(&self, mac: MacAddr, subnet: usize) -> Option<Ipv4Addr> {
        self.by_mac.get(&(mac, subnet)).copied()
    }

    /// Whether some machine holds `ip`.
    pub fn holds(&self, ip: Ipv4Addr) -> bool {
        self.ips.contains(&ip)
    }

    /// The machine whose MAC `mac` is, if it holds an address.
    pub fn machine(&self, mac: MacAddr) -> Option<&str> {
        self.machines.get(&mac).map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.by_mac.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_mac.is_empty()
    }

    /// Every held address is kept out of the pool, even one no MAC could be found for.
    fn insert(&mut self, mac: MacAddr, subnet: usize, ip: Ipv4Addr, machine: &str) {
        self.ips.insert(ip);
        if let std::collections::hash_map::Entry::Vacant(entry) = self.by_mac.entry((mac, subnet)) {
            entry.insert(ip);
            self.machines.insert(mac, machine.to_string());
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FixedAddress {
    pub ip: Ipv4Addr,
    /// Index into [`DhcpConfig::subnets`].
    pub subnet: usize,
    pub machine: String,
}

/// The interface a server socket is bound to, and the server's address on it (the server
/// identifier and the default next-server).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServedInterface {
    pub name: String,
    pub address: Ipv4Addr,
}

/// What network-booting clients are told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootSettings {
    /// `http://host:port` of the boot HTTP server; `None`: `http://<server address>:<http_port>`.
    pub http_base_url: Option<String>,
    pub http_port: u16,
    /// The TFTP server (siaddr, option 66); `None`: the server's own address.
    pub next_server: Option<Ipv4Addr>,
    /// Option 93 = 0 (BIOS x86).
    pub bios_loader: String,
    /// Option 93 = 7 or 9 (UEFI x64).
    pub uefi_x64_loader: String,
    /// Option 93 = 11 (UEFI arm64).
    pub uefi_arm64_loader: String,
    /// Where UEFI HTTP boot clients (option 93 = 16/19) fetch the EFI loaders, under the base URL.
    pub http_loader_path: String,
}

impl Default for BootSettings {
    fn default() -> Self {
        BootSettings {
            http_base_url: None,
            http_port: 5248,
            next_server: None,
            bios_loader: "undionly.kpxe".to_string(),
            uefi_x64_loader: "ipxe.efi".to_string(),
            uefi_arm64_loader: "ipxe-arm64.efi".to_string(),
            http_loader_path: "/boot/loaders".to_string(),
        }
    }
}

impl BootSettings {
    /// The boot HTTP server as a client on `server_address` reaches it, without a trailing `/`.
    pub fn http_base(&self, server_address: Ipv4Addr) -> String {
        match &self.http_base_url {
            Some(url) => url.trim_end_matches('/').to_string(),
            None => format!("http://{server_address}:{}", self.http_port),
        }
    }
}

impl DhcpConfig {
    /// An empty configuration (no subnet: answers nothing) to build on.
    pub fn new(boot: BootSettings) -> DhcpConfig {
        DhcpConfig {
            subnets: Vec::new(),
            fixed: HashMap::new(),
            fixed_ips: HashSet::new(),
            known_machines: HashMap::new(),
            ignored_macs: HashSet::new(),
            interface_macs: HashMap::new(),
            boot,
            interface: None,
            listen_address: None,
            offer_hold_seconds: DEFAULT_OFFER_HOLD_SECONDS,
            decline_hold_seconds: DEFAULT_DECLINE_HOLD_SECONDS,
        }
    }

    /// The fleet file's subnets (IPv4 ones; an IPv6 subnet is an error only if it has a range),
    /// its machines' fixed addresses, boot settings from `[controller]` and the MACs
    /// `[policy] ignore_macs` says never to answer.
    pub fn from_fleet(fleet: &Fleet) -> Result<DhcpConfig, DhcpConfigError> {
        let boot = BootSettings {
            http_base_url: fleet.controller.http_boot_url.clone(),
            http_port: fleet.controller.boot_listen.port(),
            ..BootSettings::default()
        };
        let mut config = DhcpConfig::new(boot);
        for subnet in &fleet.subnets {
            if let Some(dhcp_subnet) = dhcp_subnet(subnet)? {
                config.subnets.push(dhcp_subnet);
            }
        }
        for machine in &fleet.machines {
            for mac in machine.macs.iter().chain(machine.pxe_mac.iter()) {
                config.known_machines.insert(*mac, machine.name.to_string());
            }
            add_fixed_addresses(&mut config, machine);
            for interface in &machine.interfaces {
                if let Some(mac) = interface.mac {
                    let key = (machine.name.to_string(), interface.name.clone());
                    config.interface_macs.insert(key, mac);
                }
            }
        }
        Ok(config.with_ignored_macs(fleet.policy.ignore_macs.iter().copied()))
    }

    /// The same configuration for a socket bound to `interface`, whose address is `address`.
    pub fn on_interface(&self, interface: &str, address: Ipv4Addr) -> DhcpConfig {
        DhcpConfig {
            interface: Some(ServedInterface {
                name: interface.to_string(),
                address,
            }),
            ..self.clone()
        }
    }

    /// The same configuration for a socket bound to `address` on no interface: it answers
    /// relayed requests only, with `address` as its server identifier.
    pub fn relayed_only(&self, address: Ipv4Addr) -> DhcpConfig {
        DhcpConfig {
            interface: None,
            listen_address: Some(address),
            ..self.clone()
        }
    }

    pub fn with_ignored_macs(mut self, macs: impl IntoIterator<Item = MacAddr>) -> DhcpConfig {
        self.ignored_macs.extend(macs);
        self
    }

    /// Adds a fixed address (the subnet must already be in the configuration).
    pub fn add_fixed(&mut self, mac: MacAddr, ip: Ipv4Addr, machine: &str) -> bool {
        let Some(subnet) = self.subnet_containing(ip) else {
            return false;
        };
        self.fixed.insert(
            mac,
            FixedAddress {
                ip,
                subnet,
                machine: machine.to_string(),
            },
        );
        self.fixed_ips.insert(ip);
        self.known_machines.insert(mac, machine.to_string());
        true
    }

    /// The first subnet whose network holds `ip`.
    pub fn subnet_containing(&self, ip: Ipv4Addr) -> Option<usize> {
        self.subnets
            .iter()
            .position(|subnet| subnet.network.contains(&ip))
    }

    /// The subnet a request belongs to: by the relay's address, else the interface's subnet.
    pub fn subnet_for(&self, relay: Option<Ipv4Addr>) -> Option<usize> {
        if let Some(relay) = relay {
            return self.subnet_containing(relay);
        }
        let interface = self.interface.as_ref()?;
        self.subnets
            .iter()
            .position(|subnet| match &subnet.interface {
                Some(name) => *name == interface.name,
                None => subnet.network.contains(&interface.address),
            })
    }

    /// The addresses machines hold in the store as fixed addresses of their MACs: an interface's
    /// address goes to the MAC the fleet file gives that interface, else to the machine's
    /// interface of that name (commissioning's record), else — for one interface per machine and
    /// subnet — to the MAC the machine netboots from. IPv6 addresses and subnets this
    /// configuration does not serve are left out; a MAC gets one address per subnet.
    pub fn held_fixed(&self, held: &[HeldAddressMacs]) -> HeldFixed {
        let mut fixed = HeldFixed::default();
        let mut by_boot_mac = Vec::new();
        for address in held {
            let Some((subnet, ip)) = self.held_subnet(address) else {
                continue;
            };
            let key = (address.machine.clone(), address.interface.clone());
            match self
                .interface_macs
                .get(&key)
                .copied()
                .or(address.interface_mac)
            {
                Some(mac) => fixed.insert(mac, subnet, ip, &address.machine),
                None => by_boot_mac.push((address, subnet, ip)),
            }
        }
        // Named interfaces first, so that the boot MAC never takes a subnet from the interface
        // that really has it.
        for (address, subnet, ip) in by_boot_mac {
            match address.boot_mac {
                Some(mac) => fixed.insert(mac, subnet, ip, &address.machine),
                None => {
                    fixed.ips.insert(ip);
                }
            }
        }
        fixed
    }

    /// The index of the served subnet a held address belongs to, and the address (IPv4 only).
    fn held_subnet(&self, address: &HeldAddressMacs) -> Option<(usize, Ipv4Addr)> {
        let IpAddr::V4(ip) = address.ip else {
            return None;
        };
        let subnet = self
            .subnets
            .iter()
            .position(|subnet| subnet.name == address.subnet && subnet.network.contains(&ip))?;
        Some((subnet, ip))
    }

    /// The server identifier: our address on the served interface, else the address a socket
    /// on no interface listens on.
    pub fn server_address(&self) -> Ipv4Addr {
        self.interface
            .as_ref()
            .map(|interface| interface.address)
            .or(self.listen_address)
            .unwrap_or(Ipv4Addr::UNSPECIFIED)
    }
}

fn dhcp_subnet(subnet: &Subnet) -> Result<Option<DhcpSubnet>, DhcpConfigError> {
    let network = match subnet.cidr {
        IpNet::V4(network) => network,
        IpNet::V6(_) if subnet.dynamic_range.is_none() => return Ok(None),
        IpNet::V6(cidr) => {
            return Err(DhcpConfigError::NotIpv4 {
                subnet: subnet.name.clone(),
                cidr: cidr.to_string(),
            })
        }
    };
    let pool = match subnet.dynamic_range {
        None => None,
        Some(range) => match (range.start, range.end) {
            (IpAddr::V4(start), IpAddr::V4(end))
                if network.contains(&start) && network.contains(&end) && start <= end =>
            {
                Some((start, end))
            }
            _ => {
                return Err(DhcpConfigError::BadRange {
                    subnet: subnet.name.clone(),
                    start: range.start,
                    end: range.end,
                    cidr: network,
                })
            }
        },
    };
    let reserved = subnet
        .reserved
        .iter()
        .filter_map(
            |reserved| match (reserved.range.start, reserved.range.end) {
                (IpAddr::V4(start), IpAddr::V4(end)) => Some((start, end)),
                _ => None,
            },
        )
        .collect();
    Ok(Some(DhcpSubnet {
        name: subnet.name.clone(),
        network,
        gateway: ipv4(subnet.gateway),
        dns: subnet
            .dns
            .iter()
            .filter_map(|dns| ipv4(Some(*dns)))
            .collect(),
        domain: subnet.domain.clone(),
        interface: subnet.interface.clone(),
        pool,
        reserved,
        lease_seconds: subnet.lease_seconds,
        proxy: subnet.proxy_dhcp,
    }))
}

fn ipv4(address: Option<IpAddr>) -> Option<Ipv4Addr> {
    match address {
        Some(IpAddr::V4(address)) => Some(address),
        _ => None,
    }
}

/// A static interface gives its MAC a fixed address: the interface's own `mac`, else (for the
/// machine's first addressed interface only) the MAC the machine netboots from.
fn add_fixed_addresses(config: &mut DhcpConfig, machine: &crate::config::MachineSpec) {
    let mut netboot_mac_used = false;
    for interface in &machine.interfaces {
        let Some(IpAddr::V4(ip)) = interface.ip else {
            continue;
        };
        let mac = match interface.mac {
            Some(mac) => Some(mac),
            None if !netboot_mac_used => {
                netboot_mac_used = true;
                machine.pxe_mac.or_else(|| machine.macs.first().copied())
            }
            None => None,
        };
        if let Some(mac) = mac {
            if !config.fixed.contains_key(&mac) {
                config.add_fixed(mac, ip, machine.name.as_str());
            }
        }
    }
}
