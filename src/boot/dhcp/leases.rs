//! The in-memory lease table and address allocation. Pure: every method takes the time as an
//! argument, nothing here touches the store (the server writes changes behind, see `persist`).
//!
//! One binding per MAC (clients are identified by their hardware address, as MAAS does); an IP
//! belongs to at most one MAC. An expired binding keeps its address for the same MAC until
//! another client needs it, so a machine that comes back gets its old address.

use super::config::{DhcpConfig, DhcpSubnet, HeldFixed};
use crate::model::records::Lease;
use crate::model::MacAddr;
use std::collections::HashMap;
use std::net::Ipv4Addr;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BindingState {
    /// Offered, not yet requested: held for the client until `expires_at`.
    Offered,
    /// Acknowledged: the client uses it until `expires_at`.
    Bound,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    pub mac: MacAddr,
    pub ip: Ipv4Addr,
    /// Index into [`DhcpConfig::subnets`].
    pub subnet: usize,
    pub state: BindingState,
    /// Unix ms.
    pub expires_at: i64,
    pub hostname: Option<String>,
}

impl Binding {
    pub fn is_live(&self, now_ms: i64) -> bool {
        self.expires_at > now_ms
    }
}

/// Where the next search for a free address starts, per subnet, and when a full search last
/// found nothing (so that a flood of requests on a full pool costs one scan, not one per packet).
#[derive(Debug, Clone, Default)]
struct PoolCursor {
    next: u32,
    exhausted_until: i64,
}

/// How long a pool found full is not searched again.
const EXHAUSTED_RECHECK_MS: i64 = 1_000;

#[derive(Debug, Default)]
pub struct LeaseTable {
    by_mac: HashMap<MacAddr, Binding>,
    by_ip: HashMap<Ipv4Addr, MacAddr>,
    /// Declined addresses and the time (Unix ms) until which they stay out of use.
    declined: HashMap<Ipv4Addr, i64>,
    cursors: HashMap<usize, PoolCursor>,
    /// Where the first search of each pool starts, as an offset into it (0: at its start).
    cursor_seed: u32,
}

impl LeaseTable {
    pub fn new() -> LeaseTable {
        LeaseTable::default()
    }

    /// Takes back the leases kept in the store (at start). Leases of subnets no longer
    /// configured are skipped; returns how many were taken.
    pub fn restore(&mut self, leases: &[Lease], config: &DhcpConfig) -> usize {
        let mut restored = 0;
        for lease in leases {
            let Some(subnet) = config
                .subnets
                .iter()
                .position(|subnet| subnet.name == lease.subnet)
            else {
                continue;
            };
            self.put(Binding {
                mac: lease.mac,
                ip: lease.ip,
                subnet,
                state: BindingState::Bound,
                expires_at: lease.expires_at,
                hostname: lease.hostname.clone(),
            });
            restored += 1;
        }
        restored
    }

    /// Makes each pool's first search start `seed` addresses into it (modulo its size), so
    /// that controllers sharing a pool seldom pick the same addresses at once.
    pub fn seed_cursors(&mut self, seed: u32) {
        self.cursor_seed = seed;
    }

    /// Takes in a lease another controller stored (read from the database, which decided it):
    /// it wins over what the table holds, unless it has expired or the table holds a lease for
    /// the same MAC lasting as long or longer (a newer one of ours, perhaps not yet written).
    /// Returns whether it was taken.
    pub fn learn(&mut self, lease: &Lease, config: &DhcpConfig, now_ms: i64) -> bool {
        if lease.expires_at <= now_ms {
            return false;
        }
        let Some(subnet) = config
            .subnets
            .iter()
            .position(|subnet| subnet.name == lease.subnet)
        else {
            return false;
        };
        let newer_here = self.by_mac.get(&lease.mac).is_some_and(|binding| {
            binding.state == BindingState::Bound && binding.expires_at >= lease.expires_at
        });
        if newer_here {
            return false;
        }
        self.put(Binding {
            mac: lease.mac,
            ip: lease.ip,
            subnet,
            state: BindingState::Bound,
            expires_at: lease.expires_at,
            hostname: lease.hostname.clone(),
        });
        true
    }

    /// Forgets `mac`'s binding if it is still to `ip` (the database refused that lease), and
    /// moves the search of its pool `jump` addresses on (modulo the pool's size): the search has
    /// run into addresses another controller hands out, which this table learns only a moment
    /// later, and following that controller's search would collide again and again.
    pub fn forget_refused(&mut self, mac: MacAddr, ip: Ipv4Addr, jump: u32) {
        let Some(binding) = self.by_mac.get(&mac).filter(|binding| binding.ip == ip) else {
            return;
        };
        if let Some(cursor) = self.cursors.get_mut(&binding.subnet) {
            cursor.next = cursor.next.wrapping_add(jump);
        }
        self.remove(mac);
    }

    pub fn binding(&self, mac: MacAddr) -> Option<&Binding> {
        self.by_mac.get(&mac)
    }

    pub fn holder(&self, ip: Ipv4Addr) -> Option<&Binding> {
        self.by_ip.get(&ip).and_then(|mac| self.by_mac.get(mac))
    }

    pub fn len(&self) -> usize {
        self.by_mac.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_mac.is_empty()
    }

    /// Every binding (in no order).
    pub fn bindings(&self) -> impl Iterator<Item = &Binding> {
        self.by_mac.values()
    }

    /// Whether `mac` may have `ip` now: not declined, and free, expired, or already its own.
    pub fn is_available(&self, ip: Ipv4Addr, mac: MacAddr, now_ms: i64) -> bool {
        if self.declined.get(&ip).is_some_and(|until| *until > now_ms) {
            return false;
        }
        match self.holder(ip) {
            None => true,
            Some(binding) => binding.mac == mac || !binding.is_live(now_ms),
        }
    }

    /// An address of the subnet's dynamic range for `mac`: the one it has (or had), else the one
    /// it asks for, else the next free one. `None` when the pool is exhausted.
    pub fn choose_dynamic(
        &mut self,
        config: &DhcpConfig,
        held: Option<&HeldFixed>,
        subnet_index: usize,
        mac: MacAddr,
        requested: Option<Ipv4Addr>,
        now_ms: i64,
    ) -> Option<Ipv4Addr> {
        let subnet = config.subnets.get(subnet_index)?;
        let (start, end) = subnet.pool?;
        let usable = |table: &LeaseTable, ip: Ipv4Addr| {
            start <= ip
                && ip <= end
                && is_handed_out(config, held, subnet, ip)
                && table.is_available(ip, mac, now_ms)
        };
        if let Some(binding) = self.by_mac.get(&mac) {
            if binding.subnet == subnet_index && usable(self, binding.ip) {
                return Some(binding.ip);
            }
        }
        if let Some(requested) = requested.filter(|ip| usable(self, *ip)) {
            return Some(requested);
        }
        self.scan_pool(config, held, subnet_index, mac, now_ms)
    }

    /// Walks the range from the cursor once round, taking the first usable address.
    fn scan_pool(
        &mut self,
        config: &DhcpConfig,
        held: Option<&HeldFixed>,
        subnet_index: usize,
        mac: MacAddr,
        now_ms: i64,
    ) -> Option<Ipv4Addr> {
        let subnet = &config.subnets[subnet_index];
        let (start, end) = subnet.pool?;
        let (first, last) = (u32::from(start), u32::from(end));
        let size = u64::from(last - first) + 1;
        let seed = self.cursor_seed;
        let cursor = self
            .cursors
            .entry(subnet_index)
            .or_insert_with(|| PoolCursor {
                next: first + (u64::from(seed) % size) as u32,
                exhausted_until: 0,
            })
            .clone();
        if cursor.exhausted_until > now_ms {
            return None;
        }
        // A cursor moved past the end (`forget_refused`) wraps round.
        let mut candidate = first + ((cursor.next.wrapping_sub(first)) as u64 % size) as u32;
        for _ in 0..size {
            let ip = Ipv4Addr::from(candidate);
            let next = if candidate >= last {
                first
            } else {
                candidate + 1
            };
            if is_handed_out(config, held, subnet, ip) && self.is_available(ip, mac, now_ms) {
                self.cursors.entry(subnet_index).or_default().next = next;
                return Some(ip);
            }
            candidate = next;
        }
        self.cursors
            .entry(subnet_index)
            .or_default()
            .exhausted_until = now_ms + EXHAUSTED_RECHECK_MS;
        None
    }

    /// Sets `ip` aside for `mac` until `until`, unless `mac` already holds it bound for longer.
    pub fn hold_offer(&mut self, subnet: usize, mac: MacAddr, ip: Ipv4Addr, until: i64) {
        if let Some(binding) = self.by_mac.get(&mac) {
            if binding.ip == ip
                && binding.state == BindingState::Bound
                && binding.expires_at >= until
            {
                return;
            }
        }
        let hostname = self
            .by_mac
            .get(&mac)
            .and_then(|binding| binding.hostname.clone());
        self.put(Binding {
            mac,
            ip,
            subnet,
            state: BindingState::Offered,
            expires_at: until,
            hostname,
        });
    }

    /// Binds `ip` to `mac` until `until`, taking it from an expired holder if need be.
    pub fn bind(
        &mut self,
        subnet: usize,
        mac: MacAddr,
        ip: Ipv4Addr,
        until: i64,
        hostname: Option<String>,
    ) -> Binding {
        let binding = Binding {
            mac,
            ip,
            subnet,
            state: BindingState::Bound,
            expires_at: until,
            hostname,
        };
        self.put(binding.clone());
        binding
    }

    /// Forgets `mac`'s binding (release, or a client that took another server's offer).
    pub fn remove(&mut self, mac: MacAddr) -> Option<Binding> {
        let binding = self.by_mac.remove(&mac)?;
        if self.by_ip.get(&binding.ip) == Some(&mac) {
            self.by_ip.remove(&binding.ip);
        }
        Some(binding)
    }

    /// Keeps `ip` out of use until `until` (a client found it in use).
    pub fn decline(&mut self, ip: Ipv4Addr, until: i64) {
        if let Some(mac) = self.by_ip.get(&ip).copied() {
            self.remove(mac);
        }
        self.declined.insert(ip, until);
    }

    /// Inserts `binding`, dropping `mac`'s previous binding and the previous holder of the IP.
    fn put(&mut self, binding: Binding) {
        if let Some(previous) = self.by_mac.get(&binding.mac) {
            if previous.ip != binding.ip && self.by_ip.get(&previous.ip) == Some(&binding.mac) {
                self.by_ip.remove(&previous.ip);
            }
        }
        if let Some(other) = self.by_ip.insert(binding.ip, binding.mac) {
            if other != binding.mac {
                self.by_mac.remove(&other);
            }
        }
        self.by_mac.insert(binding.mac, binding);
    }
}

/// Whether the dynamic pool may hand out `ip` at all: not the network or broadcast address, not
/// reserved, not the gateway, not a declared machine's fixed address, not an address a machine
/// holds in the store.
fn is_handed_out(
    config: &DhcpConfig,
    held: Option<&HeldFixed>,
    subnet: &DhcpSubnet,
    ip: Ipv4Addr,
) -> bool {
    let network = subnet.network;
    let is_edge =
        network.prefix_len() < 31 && (ip == network.network() || ip == network.broadcast());
    !is_edge
        && subnet.gateway != Some(ip)
        && !subnet.is_reserved(ip)
        && !config.fixed_ips.contains(&ip)
        && !held.is_some_and(|held| held.holds(ip))
        && config.interface.as_ref().map(|interface| interface.address) != Some(ip)
}
