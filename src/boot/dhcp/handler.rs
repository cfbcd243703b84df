//! The DHCP protocol (RFC 2131) as a pure function: a request, the lease table, the configuration
//! and the time in; a reply (with where to send it), a change for the store and an event out.
//! No IO, no clock: the server loop does those.

use super::config::{DhcpConfig, DhcpSubnet, HeldFixed};
use super::leases::{BindingState, LeaseTable};
use super::options::{add_boot_options, add_subnet_options, boot_answer, classify, ClientKind};
use crate::model::records::Lease;
use crate::model::MacAddr;
use dhcproto::v4::{DhcpOption, HType, Message, MessageType, Opcode, OptionCode};
use dhcproto::{Decodable, Decoder, Encodable, Encoder};
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4};

pub const SERVER_PORT: u16 = 67;
pub const CLIENT_PORT: u16 = 68;
/// BOOTP's minimum message size; some old PXE ROMs drop shorter replies.
pub const MINIMUM_REPLY_SIZE: usize = 300;
/// The fixed header (236 bytes) and the magic cookie.
const HEADER_AND_COOKIE: usize = 240;
const MAGIC_COOKIE: [u8; 4] = [99, 130, 83, 99];
/// Longer datagrams are not DHCP we answer (the server reads at most this much anyway).
pub const MAXIMUM_REQUEST_SIZE: usize = 4096;

/// What the handler decided.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Outcome {
    pub reply: Option<Reply>,
    pub store_change: Option<StoreChange>,
    pub event: Option<LeaseEvent>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub message: Message,
    pub destination: SocketAddrV4,
}

/// A change to write behind to the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreChange {
    Upsert(Lease),
    Delete(MacAddr),
}

impl StoreChange {
    pub fn mac(&self) -> MacAddr {
        match self {
            StoreChange::Upsert(lease) => lease.mac,
            StoreChange::Delete(mac) => *mac,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LeaseEventKind {
    Offer,
    Ack,
    Renew,
    Release,
    Decline,
    Nak,
    Exhausted,
}

impl LeaseEventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            LeaseEventKind::Offer => "offer",
            LeaseEventKind::Ack => "ack",
            LeaseEventKind::Renew => "renew",
            LeaseEventKind::Release => "release",
            LeaseEventKind::Decline => "decline",
            LeaseEventKind::Nak => "nak",
            LeaseEventKind::Exhausted => "pool_exhausted",
        }
    }
}

/// Something that happened to a lease; the server turns it into a store event (rate-limited).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseEvent {
    pub kind: LeaseEventKind,
    pub mac: MacAddr,
    /// The declared machine owning the MAC, if any.
    pub machine: Option<String>,
    pub ip: Option<Ipv4Addr>,
    pub subnet: String,
}

/// Decodes a datagram, or `None` for anything that is not a well-formed BOOTREQUEST of a DHCP
/// client with a 6-byte hardware address and a message type.
pub fn decode_request(datagram: &[u8]) -> Option<Message> {
    if datagram.len() < HEADER_AND_COOKIE || datagram.len() > MAXIMUM_REQUEST_SIZE {
        return None;
    }
    if datagram[236..240] != MAGIC_COOKIE || !options_are_sane(&datagram[HEADER_AND_COOKIE..]) {
        return None;
    }
    // dhcproto returns errors for malformed input, but a few of its decoders assert instead;
    // `options_are_sane` keeps those inputs out, and this keeps any we missed from killing the
    // server task.
    let decoded = std::panic::catch_unwind(|| Message::decode(&mut Decoder::new(datagram)));
    let message = decoded.ok()?.ok()?;
    let well_formed = message.opcode() == Opcode::BootRequest
        && message.htype() == HType::Eth
        && message.hlen() == 6
        && message.opts().msg_type().is_some();
    well_formed.then_some(message)
}

/// Walks the options (code, length, value) with bounds checks, and refuses the lengths that
/// dhcproto 0.14 asserts on rather than reporting (rapid commit, client FQDN, client network
/// interface, bulk leasequery). dhcproto first joins consecutive options of one code into one
/// (RFC 3396 long options), so the length checked is the whole run's: two option-94s of 3 bytes
/// each are read as one of 6, which it asserted on until this counted runs (found by
/// tests/it/fuzz.rs). Public so that the fuzz tests can check that dhcproto never panics on
/// options that pass it (the `catch_unwind` above is the second line, not the first).
pub fn options_are_sane(mut options: &[u8]) -> bool {
    const PAD: u8 = 0;
    const END: u8 = 255;
    let run_is_sane =
        |run: Option<(u8, usize)>| run.is_none_or(|(code, length)| length_is_sane(code, length));
    // The run being read: its code and the total length of its values.
    let mut run: Option<(u8, usize)> = None;
    while let Some((&code, rest)) = options.split_first() {
        match code {
            PAD => {
                if !run_is_sane(run.take()) {
                    return false;
                }
                options = rest;
            }
            END => break,
            _ => {
                let Some((&length, rest)) = rest.split_first() else {
                    return false;
                };
                let length = usize::from(length);
                if rest.len() < length {
                    return false;
                }
                run = match run {
                    Some((same, total)) if same == code => Some((code, total + length)),
                    finished => {
                        if !run_is_sane(finished) {
                            return false;
                        }
                        Some((code, length))
                    }
                };
                options = &rest[length..];
            }
        }
    }
    run_is_sane(run)
}

fn length_is_sane(code: u8, length: usize) -> bool {
    match code {
        80 => length == 0,
        81 => length >= 3,
        94 => length == 3,
        151 => length >= 1,
        152..=155 => length == 4,
        _ => true,
    }
}

/// Where a reply goes on the wire, given where its request came from. RFC 2131 sends a relay's
/// replies to the relay's port 67; a relay that sent from another port of its own address (one
/// running without root, as RFC 8357 allows relays to) gets them at that port instead.
pub fn wire_destination(reply: SocketAddrV4, source: std::net::SocketAddr) -> std::net::SocketAddr {
    match source {
        std::net::SocketAddr::V4(source)
            if reply.port() == SERVER_PORT
                && source.ip() == reply.ip()
                && source.port() != SERVER_PORT =>
        {
            source.into()
        }
        _ => reply.into(),
    }
}

/// Encodes a reply into `buffer` (cleared first), padded to [`MINIMUM_REPLY_SIZE`].
pub fn encode_reply(
    message: &Message,
    buffer: &mut Vec<u8>,
) -> Result<(), dhcproto::error::EncodeError> {
    buffer.clear();
    message.encode(&mut Encoder::new(buffer))?;
    if buffer.len() < MINIMUM_REPLY_SIZE {
        buffer.resize(MINIMUM_REPLY_SIZE, 0);
    }
    Ok(())
}

/// The client's MAC (the first six bytes of chaddr; `decode_request` checked hlen).
pub fn client_mac(request: &Message) -> Option<MacAddr> {
    let bytes: [u8; 6] = request.chaddr().get(..6)?.try_into().ok()?;
    Some(MacAddr(bytes))
}

/// Everything the handler reads besides the request.
pub struct Context<'a> {
    pub config: &'a DhcpConfig,
    pub now_ms: i64,
    /// Machines the store knows by MAC (added by hand or enlisted), beside the fleet file's.
    pub store_machines: Option<&'a HashMap<MacAddr, String>>,
    /// The addresses machines hold in the store (applied plans): fixed addresses of their MACs,
    /// ahead of the fleet file's, and never in the pool.
    pub held: Option<&'a HeldFixed>,
}

/// Answers one request. The lease table is updated in place.
pub fn handle(request: &Message, context: &Context<'_>, leases: &mut LeaseTable) -> Outcome {
    let Some(exchange) = Exchange::of(request, context) else {
        return Outcome::default();
    };
    if exchange.subnet.proxy {
        return exchange.proxy();
    }
    match request.opts().msg_type() {
        Some(MessageType::Discover) => exchange.discover(leases),
        Some(MessageType::Request) => exchange.request(leases),
        Some(MessageType::Release) => exchange.release(leases),
        Some(MessageType::Decline) => exchange.decline(leases),
        Some(MessageType::Inform) => exchange.inform(),
        _ => Outcome::default(),
    }
}

/// One request being answered.
struct Exchange<'a> {
    request: &'a Message,
    context: &'a Context<'a>,
    mac: MacAddr,
    subnet_index: usize,
    subnet: &'a DhcpSubnet,
    kind: ClientKind,
}

/// The NAK for a REQUEST whose ACK was decided but whose lease the store refused (another
/// controller's client holds the address): the client starts over.
pub fn refuse(request: &Message, context: &Context<'_>) -> Outcome {
    match Exchange::of(request, context) {
        Some(exchange) if !exchange.subnet.proxy => exchange.negative(),
        _ => Outcome::default(),
    }
}

impl<'a> Exchange<'a> {
    /// The exchange for `request`, or `None` when it gets no answer at all (no client MAC, an
    /// ignored MAC, no subnet served for it).
    fn of(request: &'a Message, context: &'a Context<'a>) -> Option<Exchange<'a>> {
        let config = context.config;
        let mac = client_mac(request)?;
        if config.ignored_macs.contains(&mac) {
            return None;
        }
        let relay = Some(request.giaddr()).filter(|giaddr| !giaddr.is_unspecified());
        let subnet_index = config.subnet_for(relay)?;
        Some(Exchange {
            request,
            context,
            mac,
            subnet_index,
            subnet: &config.subnets[subnet_index],
            kind: classify(request),
        })
    }
}

impl Exchange<'_> {
    fn config(&self) -> &DhcpConfig {
        self.context.config
    }

    fn now(&self) -> i64 {
        self.context.now_ms
    }

    fn machine(&self) -> Option<String> {
        let declared = self.config().known_machines.get(&self.mac);
        let stored = || {
            self.context
                .store_machines
                .and_then(|known| known.get(&self.mac))
        };
        let holding = || {
            self.context
                .held
                .and_then(|held| held.machine(self.mac))
                .map(str::to_string)
        };
        declared.or_else(stored).cloned().or_else(holding)
    }

    /// An event for a declared machine, or for pool exhaustion; `None` for anything else, so
    /// that the thousands of unknown clients of a flood cost no allocation here.
    fn event(&self, kind: LeaseEventKind, ip: Option<Ipv4Addr>) -> Option<LeaseEvent> {
        let machine = self.machine();
        if machine.is_none() && kind != LeaseEventKind::Exhausted {
            return None;
        }
        Some(LeaseEvent {
            kind,
            mac: self.mac,
            machine,
            ip,
            subnet: self.subnet.name.clone(),
        })
    }

    fn requested_ip(&self) -> Option<Ipv4Addr> {
        match self.request.opts().get(OptionCode::RequestedIpAddress) {
            Some(DhcpOption::RequestedIpAddress(ip)) => Some(*ip),
            _ => None,
        }
    }

    fn server_identifier(&self) -> Option<Ipv4Addr> {
        match self.request.opts().get(OptionCode::ServerIdentifier) {
            Some(DhcpOption::ServerIdentifier(ip)) => Some(*ip),
            _ => None,
        }
    }

    fn hostname(&self) -> Option<String> {
        match self.request.opts().get(OptionCode::Hostname) {
            Some(DhcpOption::Hostname(name)) if !name.is_empty() => Some(name.clone()),
            _ => None,
        }
    }

    /// The address the client's MAC holds in the store on this subnet, if it holds one.
    fn held_address(&self) -> Option<Ipv4Addr> {
        self.context
            .held
            .and_then(|held| held.address(self.mac, self.subnet_index))
    }

    /// The address `mac` should have here: the one it holds, else its fixed one, else one of the
    /// dynamic range.
    fn choose_address(
        &self,
        leases: &mut LeaseTable,
        requested: Option<Ipv4Addr>,
    ) -> Option<Ipv4Addr> {
        if let Some(held) = self.held_address() {
            return Some(held);
        }
        if let Some(fixed) = self.config().fixed.get(&self.mac) {
            return (fixed.subnet == self.subnet_index).then_some(fixed.ip);
        }
        leases.choose_dynamic(
            self.config(),
            self.context.held,
            self.subnet_index,
            self.mac,
            requested,
            self.now(),
        )
    }

    /// Whether `mac` may be given `ip` (an INIT-REBOOT, RENEWING or REBINDING request).
    fn may_have(&self, leases: &LeaseTable, ip: Ipv4Addr) -> bool {
        if let Some(held) = self.held_address() {
            return held == ip;
        }
        if let Some(fixed) = self.config().fixed.get(&self.mac) {
            return fixed.ip == ip && fixed.subnet == self.subnet_index;
        }
        if let Some(binding) = leases.binding(self.mac) {
            if binding.ip == ip && binding.subnet == self.subnet_index {
                // A dynamic lease on an address a machine has come to hold is not renewed.
                let held_now = self.context.held.is_some_and(|held| held.holds(ip));
                return !held_now && leases.is_available(ip, self.mac, self.now());
            }
        }
        // No record (a lost binding): grant it if the pool would.
        self.subnet
            .pool
            .is_some_and(|(start, end)| start <= ip && ip <= end)
            && !self.config().fixed_ips.contains(&ip)
            && !self.context.held.is_some_and(|held| held.holds(ip))
            && !self.subnet.is_reserved(ip)
            && leases.is_available(ip, self.mac, self.now())
    }

    fn discover(&self, leases: &mut LeaseTable) -> Outcome {
        let Some(ip) = self.choose_address(leases, self.requested_ip()) else {
            return Outcome {
                event: self.event(LeaseEventKind::Exhausted, None),
                ..Outcome::default()
            };
        };
        let hold = i64::from(self.config().offer_hold_seconds) * 1000;
        leases.hold_offer(self.subnet_index, self.mac, ip, self.now() + hold);
        let reply = self.address_reply(MessageType::Offer, ip);
        Outcome {
            reply: Some(reply),
            store_change: None,
            event: self.event(LeaseEventKind::Offer, Some(ip)),
        }
    }

    fn request(&self, leases: &mut LeaseTable) -> Outcome {
        let ciaddr = self.request.ciaddr();
        match (self.server_identifier(), self.requested_ip()) {
            // SELECTING: the client answers an offer (ours or another server's).
            (Some(server), requested) => {
                if server != self.config().server_address() {
                    if leases
                        .binding(self.mac)
                        .is_some_and(|binding| binding.state == BindingState::Offered)
                    {
                        leases.remove(self.mac);
                    }
                    return Outcome::default();
                }
                let offered = leases
                    .binding(self.mac)
                    .filter(|binding| binding.subnet == self.subnet_index)
                    .map(|binding| binding.ip);
                match requested.or(Some(ciaddr).filter(|ip| !ip.is_unspecified())) {
                    Some(ip) if offered == Some(ip) || self.may_have(leases, ip) => {
                        self.acknowledge(leases, ip, LeaseEventKind::Ack)
                    }
                    _ => self.negative(),
                }
            }
            // INIT-REBOOT: a client that remembers its address.
            (None, Some(requested)) if ciaddr.is_unspecified() => {
                if self.may_have(leases, requested) {
                    self.acknowledge(leases, requested, LeaseEventKind::Ack)
                } else {
                    self.negative()
                }
            }
            // RENEWING (unicast) or REBINDING (broadcast).
            (None, _) if !ciaddr.is_unspecified() => {
                if self.may_have(leases, ciaddr) {
                    self.acknowledge(leases, ciaddr, LeaseEventKind::Renew)
                } else {
                    self.negative()
                }
            }
            _ => Outcome::default(),
        }
    }

    fn acknowledge(&self, leases: &mut LeaseTable, ip: Ipv4Addr, kind: LeaseEventKind) -> Outcome {
        let until = self.now() + i64::from(self.subnet.lease_seconds) * 1000;
        let hostname = self.hostname().or_else(|| {
            leases
                .binding(self.mac)
                .and_then(|binding| binding.hostname.clone())
        });
        let binding = leases.bind(self.subnet_index, self.mac, ip, until, hostname);
        let lease = Lease {
            mac: self.mac,
            ip,
            subnet: self.subnet.name.clone(),
            hostname: binding.hostname,
            machine: self.machine(),
            expires_at: until,
        };
        Outcome {
            reply: Some(self.address_reply(MessageType::Ack, ip)),
            store_change: Some(StoreChange::Upsert(lease)),
            event: self.event(kind, Some(ip)),
        }
    }

    fn negative(&self) -> Outcome {
        let mut reply = self.reply_header(MessageType::Nak);
        reply.set_ciaddr(Ipv4Addr::UNSPECIFIED);
        if self.relay().is_some() {
            // RFC 2131 4.3.2: the relay broadcasts a NAK to the client.
            reply.set_flags(self.request.flags().set_broadcast());
        }
        Outcome {
            // A NAK is broadcast (or sent to the relay): the client may have no usable address.
            reply: Some(Reply {
                destination: self.nak_destination(),
                message: reply,
            }),
            store_change: None,
            event: self.event(LeaseEventKind::Nak, self.requested_ip()),
        }
    }

    fn release(&self, leases: &mut LeaseTable) -> Outcome {
        let ip = self.request.ciaddr();
        let holds_it = leases
            .binding(self.mac)
            .is_some_and(|binding| binding.ip == ip);
        if !holds_it
            || self
                .server_identifier()
                .is_some_and(|id| id != self.config().server_address())
        {
            return Outcome::default();
        }
        leases.remove(self.mac);
        Outcome {
            reply: None,
            store_change: Some(StoreChange::Delete(self.mac)),
            event: self.event(LeaseEventKind::Release, Some(ip)),
        }
    }

    fn decline(&self, leases: &mut LeaseTable) -> Outcome {
        let Some(ip) = self.requested_ip() else {
            return Outcome::default();
        };
        let holds_it = leases
            .binding(self.mac)
            .is_some_and(|binding| binding.ip == ip);
        if !holds_it
            || self
                .server_identifier()
                .is_some_and(|id| id != self.config().server_address())
        {
            return Outcome::default();
        }
        let hold = i64::from(self.config().decline_hold_seconds) * 1000;
        leases.decline(ip, self.now() + hold);
        Outcome {
            reply: None,
            store_change: Some(StoreChange::Delete(self.mac)),
            event: self.event(LeaseEventKind::Decline, Some(ip)),
        }
    }

    /// DHCPINFORM: options (and boot options) for a client that has its address already.
    fn inform(&self) -> Outcome {
        let mut reply = self.reply_header(MessageType::Ack);
        add_subnet_options(&mut reply, self.subnet, false);
        self.add_boot(&mut reply);
        self.reply_to_client_address(reply)
    }

    /// A reply to a client that may already have an address (INFORM, proxy DHCP on 4011): to
    /// the relay if one forwarded the request, else to the client's address, else broadcast.
    fn reply_to_client_address(&self, message: Message) -> Outcome {
        let ciaddr = self.request.ciaddr();
        let destination = match self.relay() {
            Some(relay) => SocketAddrV4::new(relay, SERVER_PORT),
            None if !ciaddr.is_unspecified() => SocketAddrV4::new(ciaddr, CLIENT_PORT),
            None => SocketAddrV4::new(Ipv4Addr::BROADCAST, CLIENT_PORT),
        };
        Outcome {
            reply: Some(Reply {
                message,
                destination,
            }),
            ..Outcome::default()
        }
    }

    /// Proxy DHCP: boot options for PXE ROMs and iPXE, no address; everyone else is left to the
    /// network's own DHCP server.
    fn proxy(&self) -> Outcome {
        if self.kind == ClientKind::Plain {
            return Outcome::default();
        }
        let message_type = match self.request.opts().msg_type() {
            Some(MessageType::Discover) => MessageType::Offer,
            Some(MessageType::Request) | Some(MessageType::Inform) => MessageType::Ack,
            _ => return Outcome::default(),
        };
        let mut reply = self.reply_header(message_type);
        reply.set_ciaddr(Ipv4Addr::UNSPECIFIED);
        self.add_boot(&mut reply);
        // A request to port 4011 comes from a client with an address: answered there.
        self.reply_to_client_address(reply)
    }

    fn relay(&self) -> Option<Ipv4Addr> {
        Some(self.request.giaddr()).filter(|giaddr| !giaddr.is_unspecified())
    }

    /// An OFFER or ACK carrying `ip`, with the subnet's and the boot options.
    fn address_reply(&self, message_type: MessageType, ip: Ipv4Addr) -> Reply {
        let mut reply = self.reply_header(message_type);
        reply.set_yiaddr(ip);
        add_subnet_options(&mut reply, self.subnet, true);
        self.add_boot(&mut reply);
        Reply {
            destination: self.destination(),
            message: reply,
        }
    }

    fn add_boot(&self, reply: &mut Message) {
        let answer = boot_answer(
            self.kind,
            self.mac,
            &self.config().boot,
            self.config().server_address(),
        );
        add_boot_options(reply, self.kind, &answer);
    }

    /// The common part of every reply: the client's xid, flags, chaddr and relay address, our
    /// server identifier, and the relay agent information echoed (RFC 3046).
    fn reply_header(&self, message_type: MessageType) -> Message {
        let request = self.request;
        let mut reply = Message::default();
        reply
            .set_opcode(Opcode::BootReply)
            .set_htype(HType::Eth)
            .set_xid(request.xid())
            .set_flags(request.flags())
            .set_giaddr(request.giaddr())
            .set_ciaddr(request.ciaddr())
            .set_chaddr(request.chaddr());
        reply.clear_fname();
        reply.clear_sname();
        let options = reply.opts_mut();
        options.clear();
        options.insert(DhcpOption::MessageType(message_type));
        options.insert(DhcpOption::ServerIdentifier(self.config().server_address()));
        if let Some(relay_information) = request.opts().get(OptionCode::RelayAgentInformation) {
            options.insert(relay_information.clone());
        }
        reply
    }

    /// RFC 2131 4.1: to the relay; else to a configured client at ciaddr; else broadcast (we do
    /// not unicast to an unconfigured client: that needs an ARP entry written by hand).
    fn destination(&self) -> SocketAddrV4 {
        let ciaddr = self.request.ciaddr();
        match self.relay() {
            Some(relay) => SocketAddrV4::new(relay, SERVER_PORT),
            None if !ciaddr.is_unspecified() => SocketAddrV4::new(ciaddr, CLIENT_PORT),
            None => SocketAddrV4::new(Ipv4Addr::BROADCAST, CLIENT_PORT),
        }
    }

    fn nak_destination(&self) -> SocketAddrV4 {
        match self.relay() {
            Some(relay) => SocketAddrV4::new(relay, SERVER_PORT),
            None => SocketAddrV4::new(Ipv4Addr::BROADCAST, CLIENT_PORT),
        }
    }
}
