//! fleet's DHCP server: the protocol and PXE/iPXE decisions as tables against the pure handler,
//! a property test feeding it garbage, and real clients nobody here wrote (busybox udhcpc, ISC
//! dhclient) inside network namespaces the tests create and remove.

use crate::support::db::sqlite_store;
use crate::support::netns::{link, NetNs};
use dhcproto::v4::{
    relay, Architecture, DhcpOption, Flags, Message, MessageType, Opcode, OptionCode, UnknownOption,
};
use dhcproto::{Encodable, Encoder};
use fleet::boot::dhcp::handler::{decode_request, encode_reply, handle, Context};
use fleet::boot::dhcp::leases::LeaseTable;
use fleet::boot::dhcp::{
    bind_dhcp_socket, serve, DhcpConfig, DhcpLeases, DhcpSubnet, HeldFixed, LeaseEventKind,
    Outcome, StoreChange,
};
use fleet::model::MacAddr;
use fleet::store::{EventFilter, HeldAddressMacs, Store};
use proptest::prelude::*;
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

const SERVER: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
const NOW: i64 = 1_700_000_000_000;

fn mac(last: u8) -> MacAddr {
    MacAddr([0x52, 0x54, 0x00, 0x77, 0x00, last])
}

fn ip(text: &str) -> Ipv4Addr {
    text.parse().expect("an IPv4 address")
}

/// One subnet 10.77.0.0/24 on interface `test0` (our address .1), pool .100–.109, and a relayed
/// subnet 10.88.0.0/24 with pool .100–.109.
fn table_config() -> DhcpConfig {
    let mut local = DhcpSubnet::new("local", "10.77.0.0/24".parse().unwrap());
    local.gateway = Some(ip("10.77.0.254"));
    local.dns = vec![ip("10.77.0.53"), ip("10.77.0.54")];
    local.domain = Some("lab.example".into());
    local.pool = Some((ip("10.77.0.100"), ip("10.77.0.109")));
    local.lease_seconds = 600;
    let mut relayed = DhcpSubnet::new("relayed", "10.88.0.0/24".parse().unwrap());
    relayed.pool = Some((ip("10.88.0.100"), ip("10.88.0.109")));
    let mut config = DhcpConfig::new(Default::default());
    config.subnets = vec![local, relayed];
    // mac(1) is a declared machine's (lease events are recorded for those only).
    config.known_machines.insert(mac(1), "node-1".into());
    config.on_interface("test0", SERVER)
}

fn client_message(mac: MacAddr, message_type: MessageType) -> Message {
    let mut message = Message::default();
    message
        .set_opcode(Opcode::BootRequest)
        .set_xid(0x1234_5678)
        .set_chaddr(&mac.octets());
    message
        .opts_mut()
        .insert(DhcpOption::MessageType(message_type));
    message
}

/// A DISCOVER with option 60, option 93, user class (77) and option 175 as given.
fn pxe_discover(
    mac: MacAddr,
    class: Option<&str>,
    arch: Option<u16>,
    user_class: Option<&str>,
    with_175: bool,
) -> Message {
    let mut message = client_message(mac, MessageType::Discover);
    let options = message.opts_mut();
    if let Some(class) = class {
        options.insert(DhcpOption::ClassIdentifier(class.as_bytes().to_vec()));
    }
    if let Some(arch) = arch {
        options.insert(DhcpOption::ClientSystemArchitecture(Architecture::from(
            arch,
        )));
    }
    if let Some(user_class) = user_class {
        options.insert(DhcpOption::UserClass(user_class.as_bytes().to_vec()));
    }
    if with_175 {
        options.insert(DhcpOption::Unknown(UnknownOption::new(
            OptionCode::Unknown(175),
            vec![177, 5, 1, 0x10, 0xec, 0x81, 0x39],
        )));
    }
    message
}

fn answer(config: &DhcpConfig, table: &mut LeaseTable, request: &Message, now: i64) -> Outcome {
    answer_holding(config, None, table, request, now)
}

/// [`answer`] with the addresses machines hold in the store.
fn answer_holding(
    config: &DhcpConfig,
    held: Option<&HeldFixed>,
    table: &mut LeaseTable,
    request: &Message,
    now: i64,
) -> Outcome {
    // Every request goes through the wire format, as the server sees it.
    let mut bytes = Vec::new();
    request.encode(&mut Encoder::new(&mut bytes)).unwrap();
    let decoded = decode_request(&bytes).expect("a well-formed request decodes");
    handle(
        &decoded,
        &Context {
            config,
            now_ms: now,
            store_machines: None,
            held,
        },
        table,
    )
}

fn option_bytes(message: &Message, code: OptionCode) -> Option<Vec<u8>> {
    match message.opts().get(code)? {
        DhcpOption::ClassIdentifier(bytes)
        | DhcpOption::BootfileName(bytes)
        | DhcpOption::TFTPServerName(bytes) => Some(bytes.clone()),
        DhcpOption::Unknown(unknown) => Some(unknown.data().to_vec()),
        _ => None,
    }
}

fn text(bytes: Option<Vec<u8>>) -> Option<String> {
    bytes.map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
}

fn fname(message: &Message) -> Option<String> {
    message
        .fname()
        .map(|bytes| String::from_utf8_lossy(bytes).into_owned())
}

// ---------------------------------------------------------------------------------------------
// Network booting: which client gets which loader or URL.

/// (option 60, option 93, option 77, option 175 present) → (file, siaddr, echoed 60, 175.176 set).
type BootRow<'a> = (
    Option<&'a str>,
    Option<u16>,
    Option<&'a str>,
    bool,
    Option<&'a str>,
    Ipv4Addr,
    Option<&'a str>,
    bool,
);

#[test]
fn boot_answers_follow_option_60_93_77_and_175() {
    let script = "http://10.77.0.1:5248/boot/52:54:00:77:00:01.ipxe";
    #[rustfmt::skip]
    let table: &[BootRow] = &[
        (None, None, None, false, None, Ipv4Addr::UNSPECIFIED, None, false),
        (Some("PXEClient:Arch:00000:UNDI:002001"), Some(0), None, false, Some("undionly.kpxe"), SERVER, Some("PXEClient"), false),
        (Some("PXEClient"), None, None, false, Some("undionly.kpxe"), SERVER, Some("PXEClient"), false),
        (Some("PXEClient:Arch:00007:UNDI:003016"), Some(7), None, false, Some("ipxe.efi"), SERVER, Some("PXEClient"), false),
        (Some("PXEClient:Arch:00009:UNDI:003016"), Some(9), None, false, Some("ipxe.efi"), SERVER, Some("PXEClient"), false),
        (Some("PXEClient:Arch:00011:UNDI:003016"), Some(11), None, false, Some("ipxe-arm64.efi"), SERVER, Some("PXEClient"), false),
        (Some("PXEClient:Arch:00006:UNDI:003016"), Some(6), None, false, None, Ipv4Addr::UNSPECIFIED, None, false),
        (Some("HTTPClient:Arch:00016:UNDI:003001"), Some(16), None, false, Some("http://10.77.0.1:5248/boot/loaders/ipxe.efi"), Ipv4Addr::UNSPECIFIED, Some("HTTPClient"), false),
        (Some("PXEClient:Arch:00000:UNDI:002001"), Some(0), Some("iPXE"), true, Some(script), Ipv4Addr::UNSPECIFIED, None, true),
        (Some("PXEClient:Arch:00007:UNDI:003016"), Some(7), Some("iPXE"), false, Some(script), Ipv4Addr::UNSPECIFIED, None, true),
        (None, None, None, true, Some(script), Ipv4Addr::UNSPECIFIED, None, true),
    ];
    let config = table_config();
    for (row, (class, arch, user_class, with_175, file, siaddr, class_echo, no_pxedhcp)) in
        table.iter().enumerate()
    {
        let mut leases = LeaseTable::new();
        let request = pxe_discover(mac(1), *class, *arch, *user_class, *with_175);
        let reply = answer(&config, &mut leases, &request, NOW)
            .reply
            .unwrap_or_else(|| panic!("row {row}: an offer"));
        let offer = &reply.message;
        assert_eq!(
            offer.opts().msg_type(),
            Some(MessageType::Offer),
            "row {row}"
        );
        assert_eq!(
            text(option_bytes(offer, OptionCode::BootfileName)).as_deref(),
            *file,
            "row {row}: option 67"
        );
        assert_eq!(fname(offer).as_deref(), *file, "row {row}: file field");
        assert_eq!(offer.siaddr(), *siaddr, "row {row}: next-server");
        if *siaddr != Ipv4Addr::UNSPECIFIED {
            assert_eq!(
                text(option_bytes(offer, OptionCode::TFTPServerName)),
                Some(siaddr.to_string()),
                "row {row}: option 66"
            );
        }
        assert_eq!(
            text(option_bytes(offer, OptionCode::ClassIdentifier)).as_deref(),
            *class_echo,
            "row {row}: option 60"
        );
        let ipxe = option_bytes(offer, OptionCode::Unknown(175));
        assert_eq!(ipxe.is_some(), *no_pxedhcp, "row {row}: option 175");
        if *no_pxedhcp {
            assert_eq!(ipxe.unwrap(), vec![176, 1, 1], "row {row}: 175.176 = 1");
        }
    }
}

#[test]
fn loader_names_and_the_boot_url_are_settings() {
    let mut config = table_config();
    config.boot.bios_loader = "custom.kpxe".into();
    config.boot.http_base_url = Some("http://boot.lab.example:8080/".into());
    let mut leases = LeaseTable::new();
    let bios = answer(
        &config,
        &mut leases,
        &pxe_discover(mac(1), Some("PXEClient"), Some(0), None, false),
        NOW,
    );
    assert_eq!(
        fname(&bios.reply.unwrap().message).as_deref(),
        Some("custom.kpxe")
    );
    let ipxe = answer(
        &config,
        &mut leases,
        &pxe_discover(mac(2), None, None, Some("iPXE"), false),
        NOW,
    );
    assert_eq!(
        fname(&ipxe.reply.unwrap().message).as_deref(),
        Some("http://boot.lab.example:8080/boot/52:54:00:77:00:02.ipxe")
    );
}

// ---------------------------------------------------------------------------------------------
// The protocol.

#[test]
fn a_full_exchange_offers_acknowledges_renews_and_releases() {
    let config = table_config();
    let mut leases = LeaseTable::new();
    let client = mac(1);

    let offer = answer(
        &config,
        &mut leases,
        &client_message(client, MessageType::Discover),
        NOW,
    );
    let offer_reply = offer.reply.expect("an offer");
    let offered = offer_reply.message.yiaddr();
    assert_eq!(offered, ip("10.77.0.100"));
    assert_eq!(
        offer_reply.destination,
        SocketAddrV4::new(Ipv4Addr::BROADCAST, 68)
    );
    assert_eq!(
        offer.store_change, None,
        "an offer is not written to the store"
    );
    let options = offer_reply.message.opts();
    assert_eq!(
        options.get(OptionCode::SubnetMask),
        Some(&DhcpOption::SubnetMask(ip("255.255.255.0")))
    );
    assert_eq!(
        options.get(OptionCode::Router),
        Some(&DhcpOption::Router(vec![ip("10.77.0.254")]))
    );
    assert_eq!(
        options.get(OptionCode::DomainNameServer),
        Some(&DhcpOption::DomainNameServer(vec![
            ip("10.77.0.53"),
            ip("10.77.0.54")
        ]))
    );
    assert_eq!(
        options.get(OptionCode::DomainName),
        Some(&DhcpOption::DomainName("lab.example".into()))
    );
    assert_eq!(
        options.get(OptionCode::AddressLeaseTime),
        Some(&DhcpOption::AddressLeaseTime(600))
    );
    assert_eq!(
        options.get(OptionCode::ServerIdentifier),
        Some(&DhcpOption::ServerIdentifier(SERVER))
    );

    // Another client meanwhile gets another address: the offer is held.
    let other = answer(
        &config,
        &mut leases,
        &client_message(mac(2), MessageType::Discover),
        NOW,
    );
    assert_eq!(other.event, None, "no event for a MAC no machine has");
    assert_eq!(other.reply.unwrap().message.yiaddr(), ip("10.77.0.101"));

    let mut request = client_message(client, MessageType::Request);
    request
        .opts_mut()
        .insert(DhcpOption::ServerIdentifier(SERVER));
    request
        .opts_mut()
        .insert(DhcpOption::RequestedIpAddress(offered));
    request
        .opts_mut()
        .insert(DhcpOption::Hostname("node-1".into()));
    let ack = answer(&config, &mut leases, &request, NOW + 100);
    assert_eq!(
        ack.reply.as_ref().unwrap().message.opts().msg_type(),
        Some(MessageType::Ack)
    );
    assert_eq!(ack.reply.as_ref().unwrap().message.yiaddr(), offered);
    match &ack.store_change {
        Some(StoreChange::Upsert(lease)) => {
            assert_eq!(
                (lease.mac, lease.ip, lease.subnet.as_str()),
                (client, offered, "local")
            );
            assert_eq!(lease.hostname.as_deref(), Some("node-1"));
            assert_eq!(lease.expires_at, NOW + 100 + 600_000);
        }
        other => panic!("expected an upsert, got {other:?}"),
    }

    // RENEWING: unicast from ciaddr, answered at ciaddr:68.
    let mut renew = client_message(client, MessageType::Request);
    renew.set_ciaddr(offered);
    let renewed = answer(&config, &mut leases, &renew, NOW + 300_000);
    let renewed_reply = renewed.reply.unwrap();
    assert_eq!(
        renewed_reply.message.opts().msg_type(),
        Some(MessageType::Ack)
    );
    assert_eq!(renewed_reply.destination, SocketAddrV4::new(offered, 68));
    assert_eq!(renewed.event.unwrap().kind, LeaseEventKind::Renew);

    // A renewal of an address that is not the client's is refused.
    let mut wrong = client_message(client, MessageType::Request);
    wrong.set_ciaddr(ip("10.77.0.105"));
    wrong
        .opts_mut()
        .insert(DhcpOption::MessageType(MessageType::Request));
    let mut stolen = client_message(mac(3), MessageType::Request);
    stolen.set_ciaddr(offered);
    let refused = answer(&config, &mut leases, &stolen, NOW + 300_000);
    assert_eq!(
        refused.reply.unwrap().message.opts().msg_type(),
        Some(MessageType::Nak)
    );

    let mut release = client_message(client, MessageType::Release);
    release.set_ciaddr(offered);
    release
        .opts_mut()
        .insert(DhcpOption::ServerIdentifier(SERVER));
    let released = answer(&config, &mut leases, &release, NOW + 400_000);
    assert!(released.reply.is_none());
    assert_eq!(released.store_change, Some(StoreChange::Delete(client)));
    assert!(leases.binding(client).is_none());
}

#[test]
fn init_reboot_acknowledges_the_clients_address_and_refuses_a_foreign_one() {
    let config = table_config();
    let mut leases = LeaseTable::new();
    let mut reboot = client_message(mac(1), MessageType::Request);
    reboot
        .opts_mut()
        .insert(DhcpOption::RequestedIpAddress(ip("10.77.0.104")));
    let ack = answer(&config, &mut leases, &reboot, NOW).reply.unwrap();
    assert_eq!(ack.message.opts().msg_type(), Some(MessageType::Ack));
    assert_eq!(ack.message.yiaddr(), ip("10.77.0.104"));

    // Another subnet's address (the client moved): NAK, broadcast.
    let mut moved = client_message(mac(2), MessageType::Request);
    moved
        .opts_mut()
        .insert(DhcpOption::RequestedIpAddress(ip("192.168.1.20")));
    let nak = answer(&config, &mut leases, &moved, NOW).reply.unwrap();
    assert_eq!(nak.message.opts().msg_type(), Some(MessageType::Nak));
    assert_eq!(nak.destination, SocketAddrV4::new(Ipv4Addr::BROADCAST, 68));

    // An address held by someone else: NAK.
    let mut taken = client_message(mac(3), MessageType::Request);
    taken
        .opts_mut()
        .insert(DhcpOption::RequestedIpAddress(ip("10.77.0.104")));
    let nak = answer(&config, &mut leases, &taken, NOW).reply.unwrap();
    assert_eq!(nak.message.opts().msg_type(), Some(MessageType::Nak));
}

#[test]
fn a_request_for_another_servers_offer_is_silent_and_frees_ours() {
    let config = table_config();
    let mut leases = LeaseTable::new();
    let offered = answer(
        &config,
        &mut leases,
        &client_message(mac(1), MessageType::Discover),
        NOW,
    )
    .reply
    .unwrap()
    .message
    .yiaddr();
    let mut elsewhere = client_message(mac(1), MessageType::Request);
    elsewhere
        .opts_mut()
        .insert(DhcpOption::ServerIdentifier(ip("10.77.0.2")));
    elsewhere
        .opts_mut()
        .insert(DhcpOption::RequestedIpAddress(ip("10.77.0.200")));
    assert_eq!(
        answer(&config, &mut leases, &elsewhere, NOW),
        Outcome::default()
    );
    assert!(leases.holder(offered).is_none(), "our offer is withdrawn");
}

#[test]
fn a_declined_address_is_not_offered_again() {
    let config = table_config();
    let mut leases = LeaseTable::new();
    let mut reboot = client_message(mac(1), MessageType::Request);
    reboot
        .opts_mut()
        .insert(DhcpOption::RequestedIpAddress(ip("10.77.0.100")));
    answer(&config, &mut leases, &reboot, NOW).reply.unwrap();
    let mut decline = client_message(mac(1), MessageType::Decline);
    decline
        .opts_mut()
        .insert(DhcpOption::RequestedIpAddress(ip("10.77.0.100")));
    decline
        .opts_mut()
        .insert(DhcpOption::ServerIdentifier(SERVER));
    let declined = answer(&config, &mut leases, &decline, NOW + 1);
    assert!(declined.reply.is_none());
    assert_eq!(declined.event.unwrap().kind, LeaseEventKind::Decline);
    assert_eq!(declined.store_change, Some(StoreChange::Delete(mac(1))));
    let offer = answer(
        &config,
        &mut leases,
        &client_message(mac(1), MessageType::Discover),
        NOW + 2,
    );
    assert_ne!(offer.reply.unwrap().message.yiaddr(), ip("10.77.0.100"));
    // Once the decline hold is over, the address is usable again.
    assert!(leases.is_available(ip("10.77.0.100"), mac(9), NOW + 601_000 + 30_000));
}

#[test]
fn inform_gets_options_without_an_address() {
    let config = table_config();
    let mut leases = LeaseTable::new();
    let mut inform = client_message(mac(1), MessageType::Inform);
    inform.set_ciaddr(ip("10.77.0.20"));
    let reply = answer(&config, &mut leases, &inform, NOW).reply.unwrap();
    assert_eq!(reply.message.opts().msg_type(), Some(MessageType::Ack));
    assert_eq!(reply.message.yiaddr(), Ipv4Addr::UNSPECIFIED);
    assert!(reply
        .message
        .opts()
        .get(OptionCode::AddressLeaseTime)
        .is_none());
    assert!(reply.message.opts().get(OptionCode::Router).is_some());
    assert_eq!(reply.destination, SocketAddrV4::new(ip("10.77.0.20"), 68));
    assert!(leases.is_empty());
}

#[test]
fn relayed_requests_are_answered_to_the_relay_with_option_82_echoed() {
    let config = table_config();
    let mut leases = LeaseTable::new();
    let mut discover = client_message(mac(1), MessageType::Discover);
    discover.set_giaddr(ip("10.88.0.1")).set_hops(1);
    let mut agent = relay::RelayAgentInformation::default();
    agent.insert(relay::RelayInfo::AgentCircuitId(b"rack7-port12".to_vec()));
    agent.insert(relay::RelayInfo::AgentRemoteId(b"tor-7".to_vec()));
    discover
        .opts_mut()
        .insert(DhcpOption::RelayAgentInformation(agent.clone()));
    let reply = answer(&config, &mut leases, &discover, NOW).reply.unwrap();
    assert_eq!(reply.destination, SocketAddrV4::new(ip("10.88.0.1"), 67));
    assert_eq!(reply.message.giaddr(), ip("10.88.0.1"));
    assert_eq!(
        reply.message.yiaddr(),
        ip("10.88.0.100"),
        "the relay's subnet"
    );
    assert_eq!(
        reply.message.opts().get(OptionCode::RelayAgentInformation),
        Some(&DhcpOption::RelayAgentInformation(agent))
    );
    // Option 82 is the last option on the wire (RFC 3046).
    let mut bytes = Vec::new();
    encode_reply(&reply.message, &mut bytes).unwrap();
    let decoded = dhcproto::v4::Message::decode(&mut dhcproto::Decoder::new(&bytes)).unwrap();
    assert!(decoded
        .opts()
        .get(OptionCode::RelayAgentInformation)
        .is_some());

    // A relay on a network we do not serve gets nothing.
    let mut foreign = client_message(mac(2), MessageType::Discover);
    foreign.set_giaddr(ip("10.99.0.1"));
    assert_eq!(
        answer(&config, &mut leases, &foreign, NOW),
        Outcome::default()
    );
}

use dhcproto::Decodable;

#[test]
fn ignored_macs_and_unserved_interfaces_get_silence() {
    let config = table_config().with_ignored_macs([mac(66)]);
    let mut leases = LeaseTable::new();
    let ignored = answer(
        &config,
        &mut leases,
        &pxe_discover(mac(66), Some("PXEClient"), Some(0), None, false),
        NOW,
    );
    assert_eq!(ignored, Outcome::default());
    let elsewhere = table_config().on_interface("other0", ip("192.168.5.1"));
    let unserved = answer(
        &elsewhere,
        &mut leases,
        &client_message(mac(1), MessageType::Discover),
        NOW,
    );
    assert_eq!(unserved, Outcome::default());
    assert!(leases.is_empty());
}

#[test]
fn pool_exhaustion_gives_no_offer_and_an_event() {
    let mut config = table_config();
    config.subnets[0].pool = Some((ip("10.77.0.100"), ip("10.77.0.101")));
    let mut leases = LeaseTable::new();
    for last in 1..=2 {
        let offer = answer(
            &config,
            &mut leases,
            &client_message(mac(last), MessageType::Discover),
            NOW,
        );
        assert!(offer.reply.is_some());
    }
    let exhausted = answer(
        &config,
        &mut leases,
        &client_message(mac(3), MessageType::Discover),
        NOW,
    );
    assert!(exhausted.reply.is_none());
    let event = exhausted.event.expect("an event");
    assert_eq!(
        (event.kind, event.subnet.as_str()),
        (LeaseEventKind::Exhausted, "local")
    );
    // Offers not taken up expire; then the pool has room again.
    let later = NOW + 31_000 + 1_000;
    let offer = answer(
        &config,
        &mut leases,
        &client_message(mac(3), MessageType::Discover),
        later,
    );
    assert!(offer.reply.is_some());
}

#[test]
fn fixed_addresses_win_over_the_pool_and_are_never_handed_to_others() {
    let mut config = table_config();
    assert!(config.add_fixed(mac(10), ip("10.77.0.50"), "node-fixed"));
    // A fixed address inside the range is skipped by the pool.
    assert!(config.add_fixed(mac(11), ip("10.77.0.100"), "node-in-range"));
    let mut leases = LeaseTable::new();
    let fixed = answer(
        &config,
        &mut leases,
        &client_message(mac(10), MessageType::Discover),
        NOW,
    );
    assert_eq!(fixed.reply.unwrap().message.yiaddr(), ip("10.77.0.50"));
    assert_eq!(fixed.event.unwrap().machine.as_deref(), Some("node-fixed"));
    let dynamic = answer(
        &config,
        &mut leases,
        &client_message(mac(1), MessageType::Discover),
        NOW,
    );
    assert_eq!(dynamic.reply.unwrap().message.yiaddr(), ip("10.77.0.101"));
    let mut wants_fixed = client_message(mac(2), MessageType::Request);
    wants_fixed
        .opts_mut()
        .insert(DhcpOption::RequestedIpAddress(ip("10.77.0.50")));
    let refused = answer(&config, &mut leases, &wants_fixed, NOW)
        .reply
        .unwrap();
    assert_eq!(refused.message.opts().msg_type(), Some(MessageType::Nak));
}

fn held_address(
    machine: &str,
    interface: &str,
    subnet: &str,
    address: &str,
    interface_mac: Option<MacAddr>,
    boot_mac: Option<MacAddr>,
) -> HeldAddressMacs {
    HeldAddressMacs {
        machine: machine.into(),
        interface: interface.into(),
        subnet: subnet.into(),
        ip: address.parse().unwrap(),
        interface_mac,
        boot_mac,
    }
}

#[test]
fn held_addresses_go_to_their_interfaces_macs() {
    let mut config = table_config();
    config
        .interface_macs
        .insert(("m3".into(), "eth0".into()), mac(30));
    let held = config.held_fixed(&[
        // The commissioned interface of that name.
        held_address(
            "m1",
            "eth0",
            "local",
            "10.77.0.50",
            Some(mac(10)),
            Some(mac(11)),
        ),
        // No interface of that name: the boot MAC, once per subnet; the other is still taken.
        held_address("m2", "eth0", "local", "10.77.0.60", None, Some(mac(20))),
        held_address("m2", "eth1", "local", "10.77.0.61", None, Some(mac(20))),
        held_address("m2", "eth0", "relayed", "10.88.0.60", None, Some(mac(20))),
        // The fleet file's `mac` for the interface wins over the record's.
        held_address(
            "m3",
            "eth0",
            "local",
            "10.77.0.70",
            Some(mac(31)),
            Some(mac(31)),
        ),
        // Not served: IPv6, an unknown subnet, an address outside its subnet.
        held_address("m4", "eth0", "local", "fd00::5", Some(mac(40)), None),
        held_address("m4", "eth1", "elsewhere", "10.99.0.5", Some(mac(41)), None),
        held_address("m4", "eth2", "local", "10.88.0.9", Some(mac(42)), None),
    ]);
    assert_eq!(held.address(mac(10), 0), Some(ip("10.77.0.50")));
    assert_eq!(held.address(mac(11), 0), None);
    assert_eq!(held.address(mac(20), 0), Some(ip("10.77.0.60")));
    assert_eq!(held.address(mac(20), 1), Some(ip("10.88.0.60")));
    assert!(held.holds(ip("10.77.0.61")));
    assert_eq!(held.address(mac(30), 0), Some(ip("10.77.0.70")));
    assert_eq!(held.address(mac(31), 0), None);
    for last in 40..=42 {
        assert_eq!(held.address(mac(last), 0), None);
    }
    assert_eq!(held.len(), 4);
}

#[test]
fn held_addresses_are_offered_to_their_mac_and_never_from_the_pool() {
    let config = table_config();
    // 10.77.0.104 lies in the pool (.100-.109): a dynamic range moved after it was allocated.
    let held = config.held_fixed(&[held_address(
        "m1",
        "eth0",
        "local",
        "10.77.0.104",
        Some(mac(10)),
        None,
    )]);
    let mut leases = LeaseTable::new();
    let mut given = Vec::new();
    for last in 50..60 {
        let offer = answer_holding(
            &config,
            Some(&held),
            &mut leases,
            &client_message(mac(last), MessageType::Discover),
            NOW,
        );
        if let Some(reply) = offer.reply {
            given.push(reply.message.yiaddr());
        }
    }
    assert_eq!(given.len(), 9, "{given:?}");
    assert!(!given.contains(&ip("10.77.0.104")), "{given:?}");
    // A client that had it from the pool before it was held is not renewed on it.
    let mut renew = client_message(mac(3), MessageType::Request);
    renew.set_ciaddr(ip("10.77.0.104"));
    let mut before = LeaseTable::new();
    before.bind(0, mac(3), ip("10.77.0.104"), NOW + 600_000, None);
    let refused = answer_holding(&config, Some(&held), &mut before, &renew, NOW);
    assert_eq!(
        refused.reply.unwrap().message.opts().msg_type(),
        Some(MessageType::Nak)
    );
    let holder = answer_holding(
        &config,
        Some(&held),
        &mut leases,
        &client_message(mac(10), MessageType::Discover),
        NOW,
    );
    let offer = holder.reply.expect("an offer for the holder").message;
    assert_eq!(offer.yiaddr(), ip("10.77.0.104"));
    assert_eq!(holder.event.unwrap().machine.as_deref(), Some("m1"));
    // Another client asking for it by name is refused.
    let mut wants_held = client_message(mac(2), MessageType::Request);
    wants_held
        .opts_mut()
        .insert(DhcpOption::RequestedIpAddress(ip("10.77.0.104")));
    let refused = answer_holding(&config, Some(&held), &mut leases, &wants_held, NOW);
    assert_eq!(
        refused.reply.unwrap().message.opts().msg_type(),
        Some(MessageType::Nak)
    );
}

#[test]
fn proxy_dhcp_gives_boot_options_only_and_ignores_plain_clients() {
    let mut config = table_config();
    config.subnets[0].proxy = true;
    let mut leases = LeaseTable::new();
    let plain = answer(
        &config,
        &mut leases,
        &client_message(mac(1), MessageType::Discover),
        NOW,
    );
    assert_eq!(plain, Outcome::default());
    let pxe = answer(
        &config,
        &mut leases,
        &pxe_discover(mac(1), Some("PXEClient"), Some(7), None, false),
        NOW,
    );
    let offer = pxe.reply.unwrap().message;
    assert_eq!(offer.opts().msg_type(), Some(MessageType::Offer));
    assert_eq!(offer.yiaddr(), Ipv4Addr::UNSPECIFIED);
    assert_eq!(fname(&offer).as_deref(), Some("ipxe.efi"));
    assert!(offer.opts().get(OptionCode::AddressLeaseTime).is_none());
    // The PXE ROM's request to port 4011, from its address: an ACK there.
    let mut request = pxe_discover(mac(1), Some("PXEClient"), Some(7), None, false);
    request
        .opts_mut()
        .insert(DhcpOption::MessageType(MessageType::Request));
    request.set_ciaddr(ip("10.77.0.30"));
    let ack = answer(&config, &mut leases, &request, NOW).reply.unwrap();
    assert_eq!(ack.message.opts().msg_type(), Some(MessageType::Ack));
    assert_eq!(ack.destination, SocketAddrV4::new(ip("10.77.0.30"), 68));
    assert!(leases.is_empty(), "proxy DHCP leases nothing");
}

#[test]
fn replies_are_padded_to_300_bytes() {
    let config = table_config();
    let mut leases = LeaseTable::new();
    let mut request = client_message(mac(1), MessageType::Discover);
    request.set_flags(Flags::default().set_broadcast());
    let reply = answer(&config, &mut leases, &request, NOW).reply.unwrap();
    let mut bytes = Vec::new();
    encode_reply(&reply.message, &mut bytes).unwrap();
    assert!(bytes.len() >= 300, "{} bytes", bytes.len());
    assert!(reply.message.flags().broadcast());
}

#[test]
fn the_fleet_file_gives_subnets_fixed_addresses_and_boot_url() {
    let fleet = fleet::config::load_str("dhcp.toml", &fleet_toml("")).expect("a valid fleet file");
    let config = DhcpConfig::from_fleet(&fleet).unwrap();
    assert_eq!(config.subnets.len(), 1);
    let subnet = &config.subnets[0];
    assert_eq!(subnet.pool, Some((ip("10.77.0.100"), ip("10.77.0.149"))));
    assert_eq!(subnet.gateway, Some(ip("10.77.0.254")));
    assert_eq!(subnet.domain.as_deref(), Some("lab.example"));
    assert_eq!(subnet.lease_seconds, 600);
    let fixed = &config.fixed[&MacAddr::parse(DECLARED_MAC).unwrap()];
    assert_eq!(
        (fixed.ip, fixed.machine.as_str()),
        (ip("10.77.0.50"), "node-1")
    );
    // No http_boot_url: booting machines are sent to the boot listener's port.
    assert_eq!(config.boot.http_port, 5248);
}

/// `[policy] ignore_macs` reaches the handler through `DhcpConfig::from_fleet`: a PXE DISCOVER
/// from an ignored MAC gets no reply and no lease, while the same DISCOVER from another MAC is
/// offered an address.
#[test]
fn a_mac_the_fleet_files_policy_ignores_gets_no_reply() {
    let ignored = mac(66);
    let text = format!(
        "{}\n[policy]\nignore_macs = [\"{ignored}\"]\n",
        fleet_toml("")
    );
    let fleet = fleet::config::load_str("dhcp.toml", &text).expect("a valid fleet file");
    let config = DhcpConfig::from_fleet(&fleet)
        .unwrap()
        .on_interface("test0", SERVER);
    assert!(config.ignored_macs.contains(&ignored));
    let mut leases = LeaseTable::new();
    let silent = answer(
        &config,
        &mut leases,
        &pxe_discover(ignored, Some("PXEClient"), Some(0), None, false),
        NOW,
    );
    assert_eq!(silent, Outcome::default());
    assert!(leases.is_empty());
    let offered = answer(
        &config,
        &mut leases,
        &pxe_discover(mac(67), Some("PXEClient"), Some(0), None, false),
        NOW,
    );
    let offer = offered
        .reply
        .expect("an offer for a MAC not ignored")
        .message;
    assert_eq!(offer.opts().msg_type(), Some(MessageType::Offer));
}

// ---------------------------------------------------------------------------------------------
// The lease state behind the server: written behind to the store, loaded back at start.

/// The REQUEST that takes `offered` from this server (SELECTING).
fn request_for(client: MacAddr, offered: Ipv4Addr) -> Message {
    let mut request = client_message(client, MessageType::Request);
    request
        .opts_mut()
        .insert(DhcpOption::ServerIdentifier(SERVER));
    request
        .opts_mut()
        .insert(DhcpOption::RequestedIpAddress(offered));
    request
}

fn acknowledged(leases: &DhcpLeases, config: &DhcpConfig, client: MacAddr, now: i64) -> Ipv4Addr {
    let offer = leases.answer(&client_message(client, MessageType::Discover), config, now);
    let offered = offer.reply.expect("an offer").message.yiaddr();
    let ack = leases.answer(&request_for(client, offered), config, now);
    assert_eq!(
        ack.reply.unwrap().message.opts().msg_type(),
        Some(MessageType::Ack)
    );
    offered
}

// On both backends: the batch SQL differs (placeholders).
crate::both_backends!(
    leases_are_written_behind_in_batches_and_loaded_back_at_start,
    |store| { written_behind_and_loaded_back(store) }
);

async fn written_behind_and_loaded_back(store: Store) {
    let mut config = table_config();
    config.subnets[0].pool = Some((ip("10.77.0.10"), ip("10.77.0.250")));
    let leases = DhcpLeases::load(store.clone(), &config).await.unwrap();
    let now = fleet::store::now_ms();
    let mut given = HashMap::new();
    for index in 0..200u16 {
        let client = MacAddr([0x52, 0x54, 0x01, 0, (index >> 8) as u8, index as u8]);
        given.insert(client, acknowledged(&leases, &config, client, now));
    }
    // A release is written too.
    let released = MacAddr([0x52, 0x54, 0x01, 0, 0, 7]);
    let mut release = client_message(released, MessageType::Release);
    release.set_ciaddr(given[&released]);
    leases.answer(&release, &config, now);
    leases.close().await.unwrap();
    let stored = store.leases().await.unwrap();
    assert_eq!(stored.len(), 199);
    for lease in &stored {
        assert_eq!(given[&lease.mac], lease.ip);
    }

    // A restarted server knows every lease: the same MAC gets the same address back, and a new
    // MAC gets none of the leased ones.
    let restarted = DhcpLeases::load(store.clone(), &config).await.unwrap();
    let back = MacAddr([0x52, 0x54, 0x01, 0, 0, 42]);
    let offer = restarted.answer(
        &client_message(back, MessageType::Discover),
        &config,
        now + 1,
    );
    assert_eq!(offer.reply.unwrap().message.yiaddr(), given[&back]);
    let newcomer = restarted.answer(
        &client_message(mac(200), MessageType::Discover),
        &config,
        now + 1,
    );
    let newcomer_ip = newcomer.reply.unwrap().message.yiaddr();
    assert!(given
        .iter()
        .all(|(client, ip)| *ip != newcomer_ip || *client == released));
    restarted.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_exhaustion_is_one_event_per_interval_and_the_server_carries_on() {
    let (store, _directory) = sqlite_store().await;
    let mut config = table_config();
    config.subnets[0].pool = Some((ip("10.77.0.100"), ip("10.77.0.100")));
    let leases = DhcpLeases::load(store.clone(), &config).await.unwrap();
    let now = fleet::store::now_ms();
    acknowledged(&leases, &config, mac(1), now);
    for last in 2..50 {
        let outcome = leases.answer(
            &client_message(mac(last), MessageType::Discover),
            &config,
            now,
        );
        assert!(outcome.reply.is_none());
    }
    let later = now + fleet::boot::dhcp::EVENT_INTERVAL_MS;
    leases.answer(
        &client_message(mac(50), MessageType::Discover),
        &config,
        later,
    );
    leases.flush().await.unwrap();
    let events = store.events(&EventFilter::default()).await.unwrap();
    let exhausted: Vec<_> = events
        .iter()
        .filter(|event| event.action.as_deref() == Some("pool_exhausted"))
        .collect();
    assert_eq!(exhausted.len(), 2, "{events:#?}");
    assert_eq!(exhausted[0].kind, "lease");
    assert_eq!(exhausted[1].detail["unanswered"], 48);
    // Still answering: the leased client renews.
    let mut renew = client_message(mac(1), MessageType::Request);
    renew.set_ciaddr(ip("10.77.0.100"));
    let renewed = leases.answer(&renew, &config, later);
    assert_eq!(
        renewed.reply.unwrap().message.opts().msg_type(),
        Some(MessageType::Ack)
    );
    leases.close().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// Garbage in: dropped without harm.

fn valid_requests() -> Vec<Vec<u8>> {
    let mut relayed = pxe_discover(mac(1), Some("PXEClient"), Some(7), Some("iPXE"), true);
    relayed.set_giaddr(ip("10.88.0.1"));
    let mut request = client_message(mac(2), MessageType::Request);
    request
        .opts_mut()
        .insert(DhcpOption::ServerIdentifier(SERVER));
    request
        .opts_mut()
        .insert(DhcpOption::RequestedIpAddress(ip("10.77.0.100")));
    [
        relayed,
        request,
        client_message(mac(3), MessageType::Discover),
    ]
    .iter()
    .map(|message| {
        let mut bytes = Vec::new();
        message.encode(&mut Encoder::new(&mut bytes)).unwrap();
        bytes
    })
    .collect()
}

fn handle_bytes(bytes: &[u8], config: &DhcpConfig, leases: &mut LeaseTable) {
    if let Some(request) = decode_request(bytes) {
        let outcome = handle(
            &request,
            &Context {
                config,
                now_ms: NOW,
                store_machines: None,
                held: None,
            },
            leases,
        );
        if let Some(reply) = outcome.reply {
            let mut encoded = Vec::new();
            let _ = encode_reply(&reply.message, &mut encoded);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_are_dropped_without_harm(bytes in proptest::collection::vec(any::<u8>(), 0..1600)) {
        let config = table_config();
        let mut leases = LeaseTable::new();
        handle_bytes(&bytes, &config, &mut leases);
    }

    #[test]
    fn mutated_and_truncated_requests_are_dropped_without_harm(
        which in 0usize..3,
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..12),
        cut in any::<usize>(),
        extra in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let config = table_config();
        let mut leases = LeaseTable::new();
        let mut bytes = valid_requests().swap_remove(which);
        for (at, value) in flips {
            let length = bytes.len();
            bytes[at % length] = value;
        }
        bytes.extend_from_slice(&extra);
        let keep = cut % (bytes.len() + 1);
        handle_bytes(&bytes[..keep], &config, &mut leases);
        handle_bytes(&bytes, &config, &mut leases);
    }
}

#[test]
fn oversized_datagrams_are_refused() {
    let mut bytes = valid_requests().swap_remove(2);
    assert!(decode_request(&bytes).is_some());
    bytes.resize(fleet::boot::dhcp::handler::MAXIMUM_REQUEST_SIZE + 1, 0);
    assert!(decode_request(&bytes).is_none());
}

// ---------------------------------------------------------------------------------------------
// Real clients in network namespaces.

const DECLARED_MAC: &str = "52:54:00:aa:00:01";

fn fleet_toml(extra_subnet_keys: &str) -> String {
    format!(
        r#"
[subnets.lab]
cidr = "10.77.0.0/24"
gateway = "10.77.0.254"
dns = ["10.77.0.53", "10.77.0.54"]
domain = "lab.example"
lease_seconds = 600
dynamic_range = {{ start = "10.77.0.100", end = "10.77.0.149" }}
{extra_subnet_keys}

[[machine]]
name = "node-1"
macs = ["{DECLARED_MAC}"]
interfaces = [{{ name = "eth0", subnet = "lab", ip = "10.77.0.50" }}]
power = {{ type = "manual" }}
"#
    )
}

/// A server namespace running fleet's DHCP server on a veth whose other end is in a client
/// namespace; a SQLite store behind it. Everything is removed on drop.
struct Lab {
    // Field order: the server stops before the namespaces go.
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    leases: Arc<DhcpLeases>,
    store: Store,
    client: NetNs,
    _server: NetNs,
    client_interface: String,
    directory: tempfile::TempDir,
    store_directory: tempfile::TempDir,
}

impl Lab {
    async fn start(lease_seconds: u32, client_mac: Option<&str>) -> Lab {
        let server = NetNs::new("dhs");
        let client = NetNs::new("dhc");
        let (server_interface, client_interface) = link(&server, "10.77.0.1/24", &client, "");
        if let Some(client_mac) = client_mac {
            client.ip(&["link", "set", &client_interface, "down"]);
            client.ip(&["link", "set", &client_interface, "address", client_mac]);
            client.ip(&["link", "set", &client_interface, "up"]);
        }
        let fleet =
            fleet::config::load_str("dhcp.toml", &fleet_toml("")).expect("a valid fleet file");
        let mut config = DhcpConfig::from_fleet(&fleet)
            .unwrap()
            .on_interface(&server_interface, SERVER);
        // Shorter than a fleet file may say (60 s at least), so that a client renews in the test.
        config.subnets[0].lease_seconds = lease_seconds;
        let (store, store_directory) = sqlite_store().await;
        let leases = DhcpLeases::load(store.clone(), &config).await.unwrap();
        let interface = server_interface.clone();
        let socket = server
            .run_in(move || {
                bind_dhcp_socket(
                    Some(&interface),
                    SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 67),
                )
            })
            .expect("bind port 67 in the server namespace");
        let socket = tokio::net::UdpSocket::from_std(socket).unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let metrics = Arc::new(fleet::metrics::Metrics::new());
        tokio::spawn(serve(socket, config, leases.clone(), metrics, async move {
            let _ = stopped.await;
        }));
        Lab {
            stop: Some(stop),
            leases,
            store,
            client,
            _server: server,
            client_interface,
            directory: tempfile::tempdir().unwrap(),
            store_directory,
        }
    }

    fn path(&self, name: &str) -> String {
        self.directory.path().join(name).display().to_string()
    }

    /// A hook script for the client that records each call's environment in `<dir>/<event>.env`
    /// and configures the address (so that renewals go out unicast from it, as on a real host).
    fn write_script(&self, name: &str, body: &str) -> String {
        let path = self.path(name);
        std::fs::write(
            &path,
            format!("#!/bin/sh\nDIR={}\n{body}", self.directory.path().display()),
        )
        .unwrap();
        Command::new("chmod").args(["+x", &path]).status().unwrap();
        path
    }

    /// Waits (polling) for the store's lease of `mac` to satisfy `condition`.
    async fn wait_for_store_lease(
        &self,
        mac: MacAddr,
        condition: impl Fn(Option<&fleet::store::Lease>) -> bool,
    ) -> Option<fleet::store::Lease> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            self.leases.flush().await.unwrap();
            let lease = self.store.lease_by_mac(mac).await.unwrap();
            if condition(lease.as_ref()) {
                return lease;
            }
            assert!(
                Instant::now() < deadline,
                "the store's lease of {mac} never matched; it is {lease:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Another connection holding the store's write lock (`BEGIN IMMEDIATE`) until it is
    /// dropped or rolled back: the server's lease writes wait, then fail and retry.
    async fn lock_the_store(&self) -> sqlx::SqliteConnection {
        use sqlx::Connection;
        let path = self.store_directory.path().join("fleet.db");
        let mut connection =
            sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display()))
                .await
                .unwrap();
        sqlx::query("BEGIN IMMEDIATE")
            .execute(&mut connection)
            .await
            .unwrap();
        connection
    }

    fn client_mac(&self) -> MacAddr {
        let output = self
            .client
            .ip(&["-br", "link", "show", &self.client_interface]);
        let text = String::from_utf8_lossy(&output.stdout);
        let mac = text
            .split_whitespace()
            .nth(2)
            .expect("ip -br link prints the MAC");
        MacAddr::parse(mac).unwrap()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Polls until `path` exists (a client's hook ran), then reads it as `KEY=VALUE` lines.
async fn wait_for_env(path: &str, child: &mut Child) -> HashMap<String, String> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok(text) = std::fs::read_to_string(path) {
            if text.contains("\nEND\n") || text.ends_with("END\n") {
                return text
                    .lines()
                    .filter_map(|line| line.split_once('='))
                    .map(|(key, value)| (key.to_string(), value.trim_matches('\'').to_string()))
                    .collect();
            }
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("the client exited ({status}) before writing {path}");
        }
        assert!(Instant::now() < deadline, "no {path} within 15 s");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn signal(child: &Child, signal: &str) {
    let status = Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

const UDHCPC_SCRIPT: &str = r#"env > "$DIR/$1.env.tmp"; echo END >> "$DIR/$1.env.tmp"
case "$1" in
  bound|renew) ip addr flush dev "$interface"; ip addr add "$ip/$mask" dev "$interface" ;;
  deconfig) ip addr flush dev "$interface" ;;
esac
mv "$DIR/$1.env.tmp" "$DIR/$1.env"
"#;

fn udhcpc(lab: &Lab, script: &str) -> KillOnDrop {
    let child = lab
        .client
        .command("busybox")
        .args([
            "udhcpc",
            "-f",
            "-i",
            &lab.client_interface,
            "-s",
            script,
            "-t",
            "5",
            "-T",
            "1",
            "-A",
            "1",
        ])
        .args(["-x", "hostname:udhcpc-test", "-R"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("busybox runs (.ci/setup-dhcp installs busybox-static)");
    KillOnDrop(child)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udhcpc_gets_a_lease_with_the_subnets_options_renews_and_releases() {
    let lab = Lab::start(600, None).await;
    let script = lab.write_script("udhcpc.sh", UDHCPC_SCRIPT);
    let mut client = udhcpc(&lab, &script);
    let bound = wait_for_env(&lab.path("bound.env"), &mut client.0).await;
    assert_eq!(bound["ip"], "10.77.0.100");
    assert_eq!(bound["router"], "10.77.0.254");
    assert_eq!(
        bound["dns"].split_whitespace().collect::<Vec<_>>(),
        ["10.77.0.53", "10.77.0.54"]
    );
    assert_eq!(bound["domain"], "lab.example");
    assert_eq!(bound["lease"], "600");
    assert_eq!(bound["subnet"], "255.255.255.0");
    assert_eq!(bound["serverid"], "10.77.0.1");

    let mac = lab.client_mac();
    let first = lab
        .wait_for_store_lease(mac, |lease| lease.is_some())
        .await
        .unwrap();
    assert_eq!(
        (first.ip, first.subnet.as_str()),
        (ip("10.77.0.100"), "lab")
    );
    assert_eq!(first.hostname.as_deref(), Some("udhcpc-test"));

    // SIGUSR1: renew now (unicast from the bound address).
    tokio::time::sleep(Duration::from_millis(20)).await; // expires_at has millisecond resolution
    signal(&client.0, "-USR1");
    let renewed = wait_for_env(&lab.path("renew.env"), &mut client.0).await;
    assert_eq!(renewed["ip"], "10.77.0.100");
    lab.wait_for_store_lease(mac, |lease| {
        lease.is_some_and(|lease| lease.expires_at > first.expires_at)
    })
    .await;

    // SIGUSR2: release.
    signal(&client.0, "-USR2");
    lab.wait_for_store_lease(mac, |lease| lease.is_none()).await;
    assert!(lab.leases.with_table(|table| table.binding(mac).is_none()));
}

/// Durable ACKs under retransmissions: a REQUEST sent again while its lease still waits for its
/// write waits for that same write (not the next batch); once the store holds the lease, a
/// retransmit is ACKed at once with no new wait; a renewal at half the lease is written before
/// its ACK again. (Without this, a loaded controller's dropped ACKs brought retransmits that
/// each waited for a later batch: 1,000 simulated machines never got their ACKs.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retransmitted_requests_wait_for_their_first_write_and_then_not_at_all() {
    let (store, _directory) = sqlite_store().await;
    let config = table_config();
    let leases = DhcpLeases::load(store.clone(), &config).await.unwrap();
    let client = mac(7);
    let now = fleet::store::now_ms();
    let offer = leases.answer(&client_message(client, MessageType::Discover), &config, now);
    let offered = offer.reply.expect("an offer").message.yiaddr();
    let request = request_for(client, offered);
    let (ack, first) = leases.answer_durably(&request, &config, now);
    assert_eq!(
        ack.reply.unwrap().message.opts().msg_type(),
        Some(MessageType::Ack)
    );
    let first = first.expect("the first ACK waits for its lease's write");
    let (_, again) = leases.answer_durably(&request, &config, now + 300);
    assert_eq!(again, Some(first), "a retransmit waits for the same write");
    assert!(
        leases
            .committed_through(first, Duration::from_secs(10))
            .await
    );
    let (ack, later) = leases.answer_durably(&request, &config, now + 2_000);
    assert!(ack.reply.is_some());
    assert_eq!(
        later, None,
        "the store holds the lease: the ACK needs no wait"
    );
    let half_lease = i64::from(config.subnets[0].lease_seconds) * 500;
    let (_, renewal) = leases.answer_durably(&request, &config, now + half_lease);
    assert!(
        renewal.is_some(),
        "a renewal at half the lease is written before its ACK"
    );
    leases.close().await.unwrap();
}

/// A lease is in the store before the ACK that hands it out leaves: while the store cannot be
/// written (another connection holds SQLite's write lock) udhcpc is offered an address but never
/// bound; once the lock goes, it binds, and its lease is in the store at that moment — read
/// at once, without flushing (a controller killed right after an ACK forgets no lease).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ack_leaves_only_once_its_lease_is_committed() {
    let lab = Lab::start(600, None).await;
    let mut lock = lab.lock_the_store().await;
    let script = lab.write_script("udhcpc.sh", UDHCPC_SCRIPT);
    let mut client = udhcpc(&lab, &script);
    let mac = lab.client_mac();
    let offered = Instant::now() + Duration::from_secs(15);
    while lab.leases.with_table(|table| table.binding(mac).is_none()) {
        assert!(
            Instant::now() < offered,
            "the server never answered the client"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    // The server has bound the address in memory (the REQUEST came); the ACK must wait.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        !Path::new(&lab.path("bound.env")).exists(),
        "udhcpc was ACKed while its lease could not be stored"
    );
    sqlx::query("ROLLBACK").execute(&mut lock).await.unwrap();
    drop(lock);
    let bound = wait_for_env(&lab.path("bound.env"), &mut client.0).await;
    let stored = lab.store.lease_by_mac(mac).await.unwrap();
    assert_eq!(
        stored.map(|lease| lease.ip.to_string()),
        Some(bound["ip"].clone()),
        "the lease is in the store when the client binds"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udhcpc_with_a_declared_machines_mac_gets_its_fixed_address_and_events() {
    let lab = Lab::start(600, Some(DECLARED_MAC)).await;
    let script = lab.write_script("udhcpc.sh", UDHCPC_SCRIPT);
    let mut client = udhcpc(&lab, &script);
    let bound = wait_for_env(&lab.path("bound.env"), &mut client.0).await;
    assert_eq!(bound["ip"], "10.77.0.50");
    let mac = MacAddr::parse(DECLARED_MAC).unwrap();
    let lease = lab
        .wait_for_store_lease(mac, |lease| lease.is_some())
        .await
        .unwrap();
    assert_eq!(lease.ip, ip("10.77.0.50"));
    assert_eq!(lease.machine.as_deref(), Some("node-1"));
    let events = lab
        .store
        .events(&EventFilter {
            machine: Some("node-1".into()),
            ..EventFilter::default()
        })
        .await
        .unwrap();
    let actions: Vec<_> = events
        .iter()
        .map(|event| (event.kind.as_str(), event.action.as_deref()))
        .collect();
    assert_eq!(actions, [("lease", Some("offer")), ("lease", Some("ack"))]);
    assert!(events[1].reason.as_deref().unwrap().contains("10.77.0.50"));
}

const HOLDING_MAC: &str = "52:54:00:aa:00:07";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udhcpc_gets_the_address_its_machine_holds_committed_while_the_server_runs() {
    let lab = Lab::start(600, Some(HOLDING_MAC)).await;
    let mac = MacAddr::parse(HOLDING_MAC).unwrap();
    // After the server started, as an apply would: the server learns it without a restart.
    let machine = crate::support::machines::manual_machine("node-7", vec![mac]);
    lab.store.create_machine(&machine, "test").await.unwrap();
    let allocation = fleet::plan::Allocation {
        machine: machine.name.clone(),
        interface: "eth0".into(),
        subnet: "lab".into(),
        ip: "10.77.0.60".parse().unwrap(),
        origin: fleet::plan::AddressOrigin::Allocated,
    };
    lab.store
        .commit_addresses("node-7", &[allocation], "test", None)
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while lab.leases.held().address(mac, 0).is_none() {
        assert!(
            Instant::now() < deadline,
            "the server never read the held address"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let script = lab.write_script("udhcpc.sh", UDHCPC_SCRIPT);
    let mut client = udhcpc(&lab, &script);
    let bound = wait_for_env(&lab.path("bound.env"), &mut client.0).await;
    assert_eq!(bound["ip"], "10.77.0.60");
    assert_eq!(bound["router"], "10.77.0.254");
    let lease = lab
        .wait_for_store_lease(mac, |lease| lease.is_some())
        .await
        .unwrap();
    assert_eq!(lease.ip, ip("10.77.0.60"));
    assert_eq!(lease.machine.as_deref(), Some("node-7"));
}

const DHCLIENT_SCRIPT: &str = r#"env > "$DIR/$reason.env.tmp"; echo END >> "$DIR/$reason.env.tmp"
case "$reason" in
  BOUND|RENEW|REBIND|REBOOT) ip addr flush dev "$interface"; ip addr add "$new_ip_address/$new_subnet_mask" dev "$interface" ;;
  RELEASE|EXPIRE|STOP) ip addr flush dev "$interface" ;;
esac
mv "$DIR/$reason.env.tmp" "$DIR/$reason.env"
"#;

fn dhclient(lab: &Lab, script: &str, extra: &[&str]) -> Command {
    let mut command = lab.client.command("dhclient");
    command
        .args([
            "-sf",
            script,
            "-lf",
            &lab.path("dhclient.leases"),
            "-pf",
            &lab.path("dhclient.pid"),
        ])
        .args(extra)
        .arg(&lab.client_interface)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    command
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dhclient_gets_a_lease_with_the_subnets_options_renews_and_releases() {
    // A 4-second lease: dhclient renews at T1 = 2 s by itself.
    let lab = Lab::start(4, None).await;
    let script = lab.write_script("dhclient.sh", DHCLIENT_SCRIPT);
    assert!(
        Path::new("/sbin/dhclient").exists() || Path::new("/usr/sbin/dhclient").exists(),
        "dhclient is installed (.ci/setup-dhcp installs isc-dhcp-client)"
    );
    let mut client = KillOnDrop(
        dhclient(&lab, &script, &["-d", "-4"])
            .spawn()
            .expect("dhclient runs"),
    );
    let bound = wait_for_env(&lab.path("BOUND.env"), &mut client.0).await;
    assert_eq!(bound["new_ip_address"], "10.77.0.100");
    assert_eq!(bound["new_routers"], "10.77.0.254");
    assert_eq!(bound["new_domain_name_servers"], "10.77.0.53 10.77.0.54");
    assert_eq!(bound["new_domain_name"], "lab.example");
    assert_eq!(bound["new_dhcp_lease_time"], "4");
    assert_eq!(bound["new_subnet_mask"], "255.255.255.0");

    let mac = lab.client_mac();
    let first = lab
        .wait_for_store_lease(mac, |lease| lease.is_some())
        .await
        .unwrap();
    assert_eq!(first.ip, ip("10.77.0.100"));
    let renewed = wait_for_env(&lab.path("RENEW.env"), &mut client.0).await;
    assert_eq!(renewed["new_ip_address"], "10.77.0.100");
    lab.wait_for_store_lease(mac, |lease| {
        lease.is_some_and(|lease| lease.expires_at > first.expires_at)
    })
    .await;

    // `dhclient -r`: stops the running one (by its pid file) and releases.
    let status = dhclient(&lab, &script, &["-r", "-4"])
        .status()
        .expect("dhclient -r runs");
    assert!(status.success());
    lab.wait_for_store_lease(mac, |lease| lease.is_none()).await;
}

/// A relay's replies go to its port 67 (RFC 2131), or to the port it sent from when that is not
/// 67 and the request came from the relay's own address (a relay without root, RFC 8357's relay
/// source port: how `fleet sim` talks to `[controller] dhcp_listen`).
#[test]
fn relayed_replies_go_back_to_the_port_the_relay_sent_from() {
    use fleet::boot::dhcp::handler::wire_destination;
    use std::net::{SocketAddr, SocketAddrV4};
    let to_relay = SocketAddrV4::new(ip("127.0.0.1"), 67);
    let from = |text: &str| text.parse::<SocketAddr>().unwrap();
    assert_eq!(
        wire_destination(to_relay, from("127.0.0.1:40000")),
        from("127.0.0.1:40000")
    );
    // A relay on port 67, or a request forwarded from another address: port 67, as RFC 2131.
    assert_eq!(
        wire_destination(to_relay, from("127.0.0.1:67")),
        from("127.0.0.1:67")
    );
    assert_eq!(
        wire_destination(to_relay, from("10.0.0.9:40000")),
        from("127.0.0.1:67")
    );
    // A reply to a client (port 68) is never redirected.
    let to_client = SocketAddrV4::new(ip("255.255.255.255"), 68);
    assert_eq!(
        wire_destination(to_client, from("127.0.0.1:40000")),
        from("255.255.255.255:68")
    );
}
