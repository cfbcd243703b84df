//! Static addresses: which address each machine interface gets (pure, deterministic).
//!
//! A machine interface asks for an address when its network template says `link = "auto"` or
//! `"static"` on a subnet, or when the machine lists it in `interfaces = [{ name, subnet, ip }]`.
//! - `static` (an explicit `ip`): checked — inside the subnet, outside its dynamic and reserved
//!   ranges, not its gateway, network or broadcast address, and not held by another machine.
//! - `auto`: an address the machine already holds on that subnet for that interface keeps it
//!   (once applied, an address sticks to its machine and never moves); otherwise the lowest free
//!   address of the subnet, outside the dynamic and reserved ranges and the gateway, among the
//!   addresses nobody holds or asks for — handed out in machine-name order, then interface order,
//!   so the same fleet and the same held addresses always give the same answer.
//!
//! The controller's own addresses, as its `[controller]` settings name them (`listen`,
//! `boot_listen`, `tftp_listen`, the host of `http_boot_url`), are never a machine's: `auto`
//! skips them and `static` is refused, as MAAS does for its rack controllers' addresses.
//!
//! "Held" addresses are what the store recorded when earlier plans were applied: they stay taken
//! whatever is later added to or removed from the fleet file, until the machine holding them is
//! deleted. A subnet with no free address left is a problem for the machine that asked, not a
//! panic and not a silent skip.

use crate::config::{Fleet, LinkMode, MachineSpec, Subnet};
use crate::model::MachineName;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

/// An address the store says a machine holds (from an applied plan).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldAddress {
    pub machine: String,
    pub interface: String,
    pub subnet: String,
    pub ip: IpAddr,
}

/// Where an allocated address came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AddressOrigin {
    /// Written in the fleet file (`ip = ...`).
    Static,
    /// Held from an earlier apply: it does not move.
    Held,
    /// Newly chosen by this plan: the lowest free address.
    Allocated,
}

/// One interface's address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocation {
    pub machine: MachineName,
    pub interface: String,
    pub subnet: String,
    pub ip: IpAddr,
    pub origin: AddressOrigin,
}

/// Why a machine interface got no address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AddressProblem {
    pub machine: MachineName,
    pub interface: String,
    pub subnet: String,
    pub message: String,
}

/// Every allocation of a fleet, in machine-name then interface order, and every problem.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Addresses {
    pub allocations: Vec<Allocation>,
    pub problems: Vec<AddressProblem>,
}

impl Addresses {
    /// The addresses of one machine.
    pub fn of_machine<'a>(&'a self, machine: &'a str) -> impl Iterator<Item = &'a Allocation> {
        self.allocations
            .iter()
            .filter(move |allocation| allocation.machine.as_str() == machine)
    }
}

/// What one machine interface asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Request<'f> {
    machine: &'f MachineName,
    interface: &'f str,
    subnet: &'f str,
    wanted: Wanted,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wanted {
    Auto,
    Static(IpAddr),
    /// The template says `link = "static"` and the machine gives no `ip` for it.
    StaticWithoutAddress,
}

/// The addresses of every machine interface that asks for one.
pub fn allocate(fleet: &Fleet, held: &[HeldAddress]) -> Addresses {
    allocate_with(fleet, held, &[])
}

/// [`allocate`], with some machines planned from another spec than the fleet file's
/// (`replaced`, sorted by name: clone destinations on their source's network template), so
/// only those few are copied, not the fleet.
pub fn allocate_with(fleet: &Fleet, held: &[HeldAddress], replaced: &[MachineSpec]) -> Addresses {
    let subnets: BTreeMap<&str, &Subnet> = fleet
        .subnets
        .iter()
        .map(|subnet| (subnet.name.as_str(), subnet))
        .collect();
    let mut requests: Vec<Request> = fleet
        .machines
        .iter()
        .flat_map(|machine| {
            let planned = replaced
                .binary_search_by(|spec| spec.name.cmp(&machine.name))
                .map_or(machine, |at| &replaced[at]);
            requests_of(fleet, planned)
        })
        .collect();
    requests.sort_by(|a, b| (a.machine, a.interface).cmp(&(b.machine, b.interface)));
    let mut allocator = Allocator::new(held);
    allocator.controller = controller_addresses(fleet);
    allocator.run(&requests, &subnets)
}

/// The addresses the fleet file gives the controller itself, each with the setting that names
/// it; unspecified (0.0.0.0, ::) and loopback addresses are nobody's on a subnet.
pub fn controller_addresses(fleet: &Fleet) -> Vec<(IpAddr, &'static str)> {
    let settings = &fleet.controller;
    let url_host = settings
        .http_boot_url
        .as_deref()
        .and_then(|text| url::Url::parse(text).ok())
        .and_then(|url| match url.host() {
            Some(url::Host::Ipv4(ip)) => Some(IpAddr::V4(ip)),
            Some(url::Host::Ipv6(ip)) => Some(IpAddr::V6(ip)),
            _ => None,
        });
    let named = [
        (Some(settings.listen.ip()), "listen"),
        (Some(settings.boot_listen.ip()), "boot_listen"),
        (Some(settings.tftp_listen.ip()), "tftp_listen"),
        (url_host, "http_boot_url"),
    ];
    let mut addresses: Vec<(IpAddr, &'static str)> = Vec::new();
    for (ip, setting) in named {
        let Some(ip) = ip else { continue };
        if ip.is_unspecified() || ip.is_loopback() || addresses.iter().any(|(seen, _)| *seen == ip)
        {
            continue;
        }
        addresses.push((ip, setting));
    }
    addresses
}

/// A machine's interfaces that need an address: its template's `auto`/`static` interfaces with
/// a subnet, with the machine's own `interfaces` entries taking precedence by name.
fn requests_of<'f>(fleet: &'f Fleet, machine: &'f MachineSpec) -> Vec<Request<'f>> {
    let mut by_name: BTreeMap<&str, Request> = BTreeMap::new();
    let template = machine
        .network
        .as_deref()
        .and_then(|name| fleet.network_templates.get(name));
    for interface in template.map(|t| t.interfaces.as_slice()).unwrap_or(&[]) {
        let (Some(subnet), wanted) = (&interface.subnet, interface.link) else {
            continue;
        };
        let wanted = match wanted {
            LinkMode::Auto => Wanted::Auto,
            LinkMode::Static => Wanted::StaticWithoutAddress,
            LinkMode::Dhcp | LinkMode::LinkUp => continue,
        };
        by_name.insert(
            &interface.name,
            Request {
                machine: &machine.name,
                interface: &interface.name,
                subnet,
                wanted,
            },
        );
    }
    for interface in &machine.interfaces {
        let wanted = interface.ip.map_or(Wanted::Auto, Wanted::Static);
        by_name.insert(
            &interface.name,
            Request {
                machine: &machine.name,
                interface: &interface.name,
                subnet: &interface.subnet,
                wanted,
            },
        );
    }
    by_name.into_values().collect()
}

/// The allocation pass: who holds what, and the lowest free address per subnet so far. Names
/// are borrowed from the fleet and the held addresses (two strings copied per address of
/// 100,000 machines were a tenth of the pass).
struct Allocator<'h> {
    /// What each (machine, interface, subnet) holds: looked up once per auto interface, so a
    /// map, not a scan (100,000 machines).
    held: BTreeMap<(&'h str, &'h str, &'h str), IpAddr>,
    /// Every address taken on a subnet: held, static, or allocated in this pass.
    taken: BTreeMap<&'h str, BTreeMap<IpAddr, Holder<'h>>>,
    /// Where to resume looking on a subnet: every address below it is taken or excluded. The
    /// taken set only grows during a pass, so the lowest free address never goes down.
    cursor: BTreeMap<&'h str, u128>,
    /// The controller's own addresses and the settings that name them ([`controller_addresses`]).
    controller: Vec<(IpAddr, &'static str)>,
}

impl<'h> Allocator<'h> {
    fn new(held: &'h [HeldAddress]) -> Self {
        let mut taken: BTreeMap<&str, BTreeMap<IpAddr, Holder>> = BTreeMap::new();
        for address in held {
            taken.entry(address.subnet.as_str()).or_default().insert(
                address.ip,
                Holder {
                    machine: address.machine.as_str(),
                    interface: address.interface.as_str(),
                },
            );
        }
        Allocator {
            held: held
                .iter()
                .map(|address| {
                    let key = (
                        address.machine.as_str(),
                        address.interface.as_str(),
                        address.subnet.as_str(),
                    );
                    (key, address.ip)
                })
                .collect(),
            taken,
            cursor: BTreeMap::new(),
            controller: Vec::new(),
        }
    }

    /// The `[controller]` setting that names `ip` as the controller's own address, if one does.
    fn controller_setting(&self, ip: IpAddr) -> Option<&'static str> {
        self.controller
            .iter()
            .find(|(own, _)| *own == ip)
            .map(|(_, setting)| *setting)
    }

    fn run(mut self, requests: &[Request<'h>], subnets: &BTreeMap<&str, &'h Subnet>) -> Addresses {
        let mut addresses = Addresses::default();
        let mut auto = Vec::new();
        // Static addresses first: they are the operator's word and auto must not take them.
        for request in requests {
            let Some(subnet) = subnets.get(request.subnet) else {
                addresses.problems.push(problem(request, "no such subnet"));
                continue;
            };
            match request.wanted {
                Wanted::Static(ip) => match self.claim_static(request, subnet, ip) {
                    Ok(()) => {
                        addresses
                            .allocations
                            .push(allocation(request, ip, AddressOrigin::Static))
                    }
                    Err(message) => addresses.problems.push(problem(request, &message)),
                },
                Wanted::Auto => auto.push((request, *subnet)),
                Wanted::StaticWithoutAddress => addresses.problems.push(problem(
                    request,
                    "its network template says `link = \"static\"` but the machine gives no `ip` \
                     for it in `interfaces`: give one, or use `link = \"auto\"`",
                )),
            }
        }
        // Then what machines already hold, so a newcomer never takes a held address.
        let mut fresh = Vec::new();
        for (request, subnet) in auto {
            match self.held_by(request) {
                Some(ip) => {
                    addresses
                        .allocations
                        .push(allocation(request, ip, AddressOrigin::Held))
                }
                None => fresh.push((request, subnet)),
            }
        }
        for (request, subnet) in fresh {
            match self.lowest_free(request, subnet) {
                Some(ip) => addresses.allocations.push(allocation(request, ip, AddressOrigin::Allocated)),
                None => addresses.problems.push(problem(
                    request,
                    &format!(
                        "subnet `{}` ({}) has no free address left outside its dynamic and reserved ranges",
                        subnet.name, subnet.cidr
                    ),
                )),
            }
        }
        addresses
            .allocations
            .sort_by(|a, b| (&a.machine, &a.interface).cmp(&(&b.machine, &b.interface)));
        addresses
    }

    fn claim_static(
        &mut self,
        request: &Request<'h>,
        subnet: &'h Subnet,
        ip: IpAddr,
    ) -> Result<(), String> {
        if let Some(why) = excluded(subnet, ip) {
            return Err(format!("address {ip} {why}"));
        }
        if let Some(setting) = self.controller_setting(ip) {
            return Err(format!(
                "address {ip} is the controller's own (`[controller] {setting}`)"
            ));
        }
        let taken = self.taken.entry(subnet.name.as_str()).or_default();
        let claimant = Holder::of(request);
        match taken.get(&ip) {
            Some(holder) if *holder != claimant => Err(format!(
                "address {ip} is already held by machine {} (interface {})",
                holder.machine, holder.interface
            )),
            _ => {
                taken.insert(ip, claimant);
                Ok(())
            }
        }
    }

    fn held_by(&self, request: &Request) -> Option<IpAddr> {
        self.held
            .get(&(request.machine.as_str(), request.interface, request.subnet))
            .copied()
    }

    fn lowest_free(&mut self, request: &Request<'h>, subnet: &'h Subnet) -> Option<IpAddr> {
        let (first, last) = usable_span(subnet);
        let start = self
            .cursor
            .get(subnet.name.as_str())
            .copied()
            .unwrap_or(first)
            .max(first);
        let taken = self.taken.entry(subnet.name.as_str()).or_default();
        let mut candidate = start;
        while candidate <= last {
            let ip = from_number(subnet, candidate);
            let controllers = self.controller.iter().any(|(own, _)| *own == ip);
            if !taken.contains_key(&ip) && !controllers && excluded(subnet, ip).is_none() {
                taken.insert(ip, Holder::of(request));
                self.cursor.insert(subnet.name.as_str(), candidate + 1);
                return Some(ip);
            }
            candidate = skip_past_range(subnet, ip).map_or(candidate + 1, |end| end + 1);
        }
        self.cursor.insert(subnet.name.as_str(), candidate);
        None
    }
}

/// Who holds an address: one interface of one machine.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Holder<'h> {
    machine: &'h str,
    interface: &'h str,
}

impl<'h> Holder<'h> {
    fn of(request: &Request<'h>) -> Holder<'h> {
        Holder {
            machine: request.machine.as_str(),
            interface: request.interface,
        }
    }
}

/// Why an address can never be a machine's static address on `subnet`, if it cannot.
pub fn excluded(subnet: &Subnet, ip: IpAddr) -> Option<String> {
    if !subnet.cidr.contains(&ip) {
        return Some(format!(
            "is outside subnet `{}` ({})",
            subnet.name, subnet.cidr
        ));
    }
    let (first, last) = usable_span(subnet);
    let number = to_number(ip);
    if number < first || number > last {
        return Some(format!(
            "is the network or broadcast address of subnet `{}`",
            subnet.name
        ));
    }
    if subnet.gateway == Some(ip) {
        return Some(format!("is the gateway of subnet `{}`", subnet.name));
    }
    if subnet.dynamic_range.is_some_and(|range| range.contains(ip)) {
        return Some(format!(
            "is inside the dynamic range of subnet `{}`",
            subnet.name
        ));
    }
    if subnet
        .reserved
        .iter()
        .any(|reserved| reserved.range.contains(ip))
    {
        return Some(format!(
            "is inside a reserved range of subnet `{}`",
            subnet.name
        ));
    }
    None
}

/// The end of the dynamic or reserved range `ip` starts or sits in, so a scan jumps over a
/// whole range at once instead of visiting each of its addresses.
fn skip_past_range(subnet: &Subnet, ip: IpAddr) -> Option<u128> {
    subnet
        .dynamic_range
        .iter()
        .chain(subnet.reserved.iter().map(|reserved| &reserved.range))
        .filter(|range| range.contains(ip))
        .map(|range| to_number(range.end))
        .max()
}

/// The first and last address a host may have: IPv4 leaves out the network and broadcast
/// addresses (except on /31 and /32); IPv6 leaves out the subnet-router anycast address.
fn usable_span(subnet: &Subnet) -> (u128, u128) {
    let network = to_number(subnet.cidr.network());
    let last = to_number(subnet.cidr.broadcast());
    match subnet.cidr {
        ipnet::IpNet::V4(net) if net.prefix_len() >= 31 => (network, last),
        ipnet::IpNet::V4(_) => (network + 1, last - 1),
        ipnet::IpNet::V6(net) if net.prefix_len() == 128 => (network, last),
        ipnet::IpNet::V6(_) => (network + 1, last),
    }
}

fn to_number(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

fn from_number(subnet: &Subnet, number: u128) -> IpAddr {
    match subnet.cidr {
        // The number came from this IPv4 subnet's span, so it fits in 32 bits.
        ipnet::IpNet::V4(_) => IpAddr::V4(std::net::Ipv4Addr::from(number as u32)),
        ipnet::IpNet::V6(_) => IpAddr::V6(std::net::Ipv6Addr::from(number)),
    }
}

fn allocation(request: &Request, ip: IpAddr, origin: AddressOrigin) -> Allocation {
    Allocation {
        machine: request.machine.clone(),
        interface: request.interface.to_string(),
        subnet: request.subnet.to_string(),
        ip,
        origin,
    }
}

fn problem(request: &Request, message: &str) -> AddressProblem {
    AddressProblem {
        machine: request.machine.clone(),
        interface: request.interface.to_string(),
        subnet: request.subnet.to_string(),
        message: message.to_string(),
    }
}

/// Two allocations never share an address on a subnet (used by tests and by apply's check).
pub fn duplicates(addresses: &Addresses) -> Vec<(IpAddr, Vec<String>)> {
    let mut owners: BTreeMap<(&str, IpAddr), BTreeSet<String>> = BTreeMap::new();
    for allocation in &addresses.allocations {
        owners
            .entry((allocation.subnet.as_str(), allocation.ip))
            .or_default()
            .insert(format!("{}/{}", allocation.machine, allocation.interface));
    }
    owners
        .into_iter()
        .filter(|(_, holders)| holders.len() > 1)
        .map(|((_, ip), holders)| (ip, holders.into_iter().collect()))
        .collect()
}

#[cfg(test)]
mod tests;
