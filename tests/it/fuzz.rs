//! Hostile input (issue #12): one property-based fuzz target per input surface that strangers
//! reach — DHCP datagrams (decoder and responder), TFTP requests, fleet files (`fleet validate`),
//! fact lines (commissioning output) and the machine API's JSON bodies (enlist, result,
//! heartbeat, signal). Each target feeds random bytes and structured mutations of real inputs to
//! the entry point the server uses, and asserts what must hold, not only "no panic": decoders
//! never panic, every refusal carries its reason (a position inside the file for the loader), the
//! DHCP responder never answers a malformed datagram and answers a well-formed one sensibly, and
//! no case takes more than [`CPU_LIMIT`] of CPU (a hang trips the [`HANG_LIMIT`] watchdog).
//!
//! Why proptest and not a coverage-guided fuzzer: cargo-fuzz (libFuzzer) needs a nightly
//! toolchain, which cannot be installed here; see ARCHITECTURE.md (tests) for what was found
//! about AFL and for the long run (`examples/fuzz-long.sh`, at least 100,000 cases per target).
//!
//! Case counts: a modest default per target so that CI stays fast; `FLEET_FUZZ_CASES=N` sets every
//! target's count, `FLEET_FUZZ_CASES_<TARGET>=N` (e.g. `FLEET_FUZZ_CASES_DHCP`) one target's.
//! Each target prints its figures (cases, time) on stderr (`--nocapture` shows them).
//! Inputs that once broke something are kept twice: proptest's seeds in
//! `tests/it/fuzz.proptest-regressions` and, readable, the named tests at the end of this file.

use base64::Engine;
use dhcproto::v4::{Message, MessageType, Opcode};
use dhcproto::{Decodable, Decoder};
use fleet::boot::dhcp::handler::{
    client_mac, decode_request, encode_reply, handle, options_are_sane, Context,
    MAXIMUM_REQUEST_SIZE, MINIMUM_REPLY_SIZE,
};
use fleet::boot::dhcp::leases::LeaseTable;
use fleet::boot::dhcp::{DhcpConfig, DhcpSubnet};
use fleet::boot::tftp::packet::{
    looks_like_request, parse_client_packet, parse_request, ClientPacket,
};
use fleet::boot::tftp::{negotiate, relative_path, Limits, LARGEST_BLOCK_SIZE};
use fleet::commissioning::{parse_facts, Inventory};
use fleet::model::MacAddr;
use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence, TestCaseError, TestRunner};
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::fmt::Debug;
use std::net::Ipv4Addr;
use std::path::{Component, Path};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------------
// The harness: case counts, the CPU bound per case, the hang watchdog, the figures.

/// The most CPU one case may take (thread CPU time, so a loaded machine does not trip it).
const CPU_LIMIT: Duration = Duration::from_secs(1);
/// A case still running after this much wall time is a hang: the watchdog prints the input and
/// aborts the test binary (a hung thread cannot be stopped any other way).
const HANG_LIMIT: Duration = Duration::from_secs(60);

/// The number of cases for `target`: `FLEET_FUZZ_CASES_<TARGET>`, else `FLEET_FUZZ_CASES`, else
/// `default`.
fn cases_for(target: &str, default: u32) -> u32 {
    let own = format!("FLEET_FUZZ_CASES_{}", target.to_ascii_uppercase());
    [own.as_str(), "FLEET_FUZZ_CASES"]
        .iter()
        .find_map(|name| std::env::var(name).ok())
        .map(|text| {
            text.parse()
                .unwrap_or_else(|_| panic!("{own} or FLEET_FUZZ_CASES: `{text}` is not a count"))
        })
        .unwrap_or(default)
}

/// CPU time this thread has used.
fn thread_cpu_time() -> Duration {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through a valid pointer.
    let result = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    assert_eq!(result, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
}

type Running = Arc<Mutex<Option<(Instant, Box<dyn Debug + Send>)>>>;

/// Watches the case being run; aborts the process with the input when one runs past
/// [`HANG_LIMIT`].
struct Watchdog {
    running: Running,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watchdog {
    fn start(target: &'static str) -> Watchdog {
        let running: Running = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (running, stop) = (Arc::clone(&running), Arc::clone(&stop));
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(100));
                    let running = running.lock().unwrap_or_else(|p| p.into_inner());
                    if let Some((started, input)) = running.as_ref() {
                        if started.elapsed() > HANG_LIMIT {
                            eprintln!(
                                "fuzz {target}: a case hangs (over {HANG_LIMIT:?}): {input:?}"
                            );
                            std::process::abort();
                        }
                    }
                }
            })
        };
        Watchdog {
            running,
            stop,
            thread: Some(thread),
        }
    }

    /// Watches one case until the guard is dropped (also when the case panics).
    fn case(&self, input: Box<dyn Debug + Send>) -> CaseGuard<'_> {
        *self.running.lock().unwrap_or_else(|p| p.into_inner()) = Some((Instant::now(), input));
        CaseGuard(&self.running)
    }
}

struct CaseGuard<'a>(&'a Running);

impl Drop for CaseGuard<'_> {
    fn drop(&mut self) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Runs `check` on `cases_for(target, default_cases)` inputs drawn from `strategy`, each within
/// [`CPU_LIMIT`], and prints the figures. A failure is shrunk, its seed kept in the regressions
/// file, and the test fails with the smallest input found.
fn fuzz<S>(
    target: &'static str,
    default_cases: u32,
    strategy: S,
    check: impl Fn(&S::Value) -> Result<(), TestCaseError>,
) where
    S: Strategy,
    S::Value: Clone + Debug + Send + 'static,
{
    let cases = cases_for(target, default_cases);
    let config = Config {
        cases,
        source_file: Some(file!()),
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "tests/it/fuzz.proptest-regressions",
        ))),
        max_shrink_time: 60_000,
        ..Config::default()
    };
    let mut runner = TestRunner::new(config);
    let watchdog = Watchdog::start(target);
    let executed = AtomicU64::new(0);
    let slowest = Mutex::new(Duration::ZERO);
    let started = Instant::now();
    let result = runner.run(&strategy, |input| {
        executed.fetch_add(1, Ordering::Relaxed);
        let watched = watchdog.case(Box::new(input.clone()));
        let cpu_before = thread_cpu_time();
        let outcome = check(&input);
        let cpu = thread_cpu_time().saturating_sub(cpu_before);
        drop(watched);
        outcome?;
        let mut slowest = slowest.lock().unwrap_or_else(|p| p.into_inner());
        *slowest = (*slowest).max(cpu);
        prop_assert!(cpu < CPU_LIMIT, "one case took {cpu:?} of CPU");
        Ok(())
    });
    eprintln!(
        "fuzz {target}: {} cases executed ({cases} asked) in {:.1?}, slowest case {:?} CPU",
        executed.load(Ordering::Relaxed),
        started.elapsed(),
        slowest.lock().unwrap_or_else(|p| p.into_inner())
    );
    if let Err(failure) = result {
        panic!("fuzz {target}: {failure}");
    }
}

/// Byte-level damage: overwrite bytes, cut, append.
#[derive(Debug, Clone)]
struct ByteDamage {
    overwrites: Vec<(usize, u8)>,
    cut: Option<usize>,
    tail: Vec<u8>,
}

fn byte_damage() -> impl Strategy<Value = ByteDamage> {
    (
        prop::collection::vec((any::<usize>(), any::<u8>()), 0..6),
        prop::option::weighted(0.2, any::<usize>()),
        prop::collection::vec(any::<u8>(), 0..8),
    )
        .prop_map(|(overwrites, cut, tail)| ByteDamage {
            overwrites,
            cut,
            tail,
        })
}

/// No damage at all, most of the time: the valid input itself must be read right too.
fn maybe_byte_damage() -> impl Strategy<Value = Option<ByteDamage>> {
    prop::option::weighted(0.6, byte_damage())
}

impl ByteDamage {
    fn apply(&self, bytes: &mut Vec<u8>) {
        if !bytes.is_empty() {
            for (at, value) in &self.overwrites {
                let length = bytes.len();
                bytes[at % length] = *value;
            }
        }
        if let Some(cut) = self.cut {
            bytes.truncate(cut % (bytes.len() + 1));
        }
        bytes.extend_from_slice(&self.tail);
    }
}

// ---------------------------------------------------------------------------------------------
// DHCP: `decode_request` (what the server loop runs on every datagram) and `handle`.

const SERVER: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
const NOW: i64 = 1_700_000_000_000;
const FIXED_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 50);
const IGNORED_LAST: u8 = 9;

fn dhcp_mac(last: u8) -> MacAddr {
    MacAddr([0x52, 0x54, 0x00, 0x77, 0x00, last])
}

/// A served subnet (pool .100–.109 with .105 reserved, a fixed address for MAC 1), a relayed
/// subnet, an ignored MAC; or the same subnet as proxy DHCP.
fn dhcp_config(proxy: bool) -> DhcpConfig {
    let mut local = DhcpSubnet::new("local", "10.77.0.0/24".parse().unwrap());
    local.gateway = Some(Ipv4Addr::new(10, 77, 0, 254));
    local.dns = vec![Ipv4Addr::new(10, 77, 0, 53)];
    local.domain = Some("lab.example".into());
    local.pool = Some((Ipv4Addr::new(10, 77, 0, 100), Ipv4Addr::new(10, 77, 0, 109)));
    local.reserved = vec![(Ipv4Addr::new(10, 77, 0, 105), Ipv4Addr::new(10, 77, 0, 105))];
    local.lease_seconds = 600;
    local.proxy = proxy;
    let mut relayed = DhcpSubnet::new("relayed", "10.88.0.0/24".parse().unwrap());
    relayed.pool = Some((Ipv4Addr::new(10, 88, 0, 100), Ipv4Addr::new(10, 88, 0, 103)));
    let mut config = DhcpConfig::new(Default::default());
    config.subnets = vec![local, relayed];
    config.known_machines.insert(dhcp_mac(2), "node-2".into());
    let mut config = config
        .with_ignored_macs([dhcp_mac(IGNORED_LAST)])
        .on_interface("test0", SERVER);
    assert!(config.add_fixed(dhcp_mac(1), FIXED_IP, "node-1"));
    config
}

/// One DHCP datagram, built field by field so that any field can be wrong.
#[derive(Debug, Clone)]
struct DhcpDatagram {
    opcode: u8,
    htype: u8,
    hlen: u8,
    xid: u32,
    flags: u16,
    ciaddr: Ipv4Addr,
    giaddr: Ipv4Addr,
    mac_last: u8,
    /// (code, value, a length that lies about the value)
    options: Vec<(u8, Vec<u8>, Option<u8>)>,
    end: bool,
    damage: Option<ByteDamage>,
}

impl DhcpDatagram {
    fn bytes(&self) -> Vec<u8> {
        let mut bytes = vec![0u8; 236];
        bytes[0] = self.opcode;
        bytes[1] = self.htype;
        bytes[2] = self.hlen;
        bytes[4..8].copy_from_slice(&self.xid.to_be_bytes());
        bytes[10..12].copy_from_slice(&self.flags.to_be_bytes());
        bytes[12..16].copy_from_slice(&self.ciaddr.octets());
        bytes[24..28].copy_from_slice(&self.giaddr.octets());
        bytes[28..34].copy_from_slice(&dhcp_mac(self.mac_last).octets());
        bytes.extend_from_slice(&[99, 130, 83, 99]);
        for (code, value, lying_length) in &self.options {
            bytes.push(*code);
            if *code == 0 || *code == 255 {
                continue;
            }
            bytes.push(lying_length.unwrap_or(value.len().min(255) as u8));
            bytes.extend_from_slice(&value[..value.len().min(255)]);
        }
        if self.end {
            bytes.push(255);
        }
        if let Some(damage) = &self.damage {
            damage.apply(&mut bytes);
        }
        bytes
    }
}

fn interesting_ipv4() -> impl Strategy<Value = Ipv4Addr> {
    prop_oneof![
        4 => Just(Ipv4Addr::UNSPECIFIED),
        2 => (100u8..=110).prop_map(|last| Ipv4Addr::new(10, 77, 0, last)),
        1 => Just(SERVER),
        1 => Just(FIXED_IP),
        1 => Just(Ipv4Addr::new(10, 88, 0, 1)),
        1 => (100u8..=104).prop_map(|last| Ipv4Addr::new(10, 88, 0, last)),
        1 => Just(Ipv4Addr::BROADCAST),
        1 => any::<[u8; 4]>().prop_map(Ipv4Addr::from),
    ]
}

fn random_bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..max)
}

/// A value for option `code`: usually one a real client sends, sometimes anything.
fn dhcp_option_value(code: u8) -> BoxedStrategy<Vec<u8>> {
    let real: BoxedStrategy<Vec<u8>> = match code {
        53 => (1u8..=8).prop_map(|kind| vec![kind]).boxed(),
        60 => prop::sample::select(vec![
            "PXEClient:Arch:00000:UNDI:002001",
            "PXEClient:Arch:00007:UNDI:003016",
            "PXEClient:Arch:00011:UNDI:003016",
            "HTTPClient:Arch:00016:UNDI:003001",
            "PXEClient",
            "HTTPClient",
            "udhcp 1.36.1",
        ])
        .prop_map(|class| class.as_bytes().to_vec())
        .boxed(),
        93 => prop_oneof![
            prop::sample::select(vec![0u16, 6, 7, 9, 11, 16, 19]),
            any::<u16>()
        ]
        .prop_map(|arch| arch.to_be_bytes().to_vec())
        .boxed(),
        77 => prop_oneof![Just(b"iPXE".to_vec()), Just(b"\x04iPXE".to_vec())].boxed(),
        175 => Just(vec![177, 5, 1, 0x10, 0xec, 0x81, 0x39]).boxed(),
        50 | 54 => interesting_ipv4()
            .prop_map(|ip| ip.octets().to_vec())
            .boxed(),
        12 => "[a-z0-9-]{1,12}".prop_map(String::into_bytes).boxed(),
        55 => Just(vec![1, 3, 6, 12, 15, 28, 42, 43, 60, 66, 67, 93, 175]).boxed(),
        57 => Just(1500u16.to_be_bytes().to_vec()).boxed(),
        61 => Just(vec![1, 0x52, 0x54, 0x00, 0x77, 0x00, 0x01]).boxed(),
        // Option 82 as a relay sends it: circuit id and remote id.
        82 => Just(vec![1, 4, b'p', b'o', b'r', b't', 2, 2, 0xab, 0xcd]).boxed(),
        81 => Just(vec![0, 0, 0, 4, b'h', b'o', b's', b't', 0]).boxed(),
        94 => Just(vec![1, 3, 16]).boxed(),
        97 => Just([vec![0], vec![0x11; 16]].concat()).boxed(),
        121 => Just(vec![24, 10, 99, 0, 10, 77, 0, 254]).boxed(),
        119 => Just(vec![3, b'l', b'a', b'b', 0]).boxed(),
        _ => random_bytes(8).boxed(),
    };
    prop_oneof![4 => real, 1 => random_bytes(24)].boxed()
}

fn dhcp_option() -> impl Strategy<Value = (u8, Vec<u8>, Option<u8>)> {
    let codes = vec![
        52, 53, 60, 93, 77, 175, 50, 54, 12, 55, 57, 61, 82, 81, 80, 94, 97, 119, 121, 151, 152,
        153, 154, 155, 43, 0, 255,
    ];
    prop_oneof![
        6 => prop::sample::select(codes),
        1 => any::<u8>(),
    ]
    .prop_flat_map(|code| {
        (
            Just(code),
            dhcp_option_value(code),
            prop::option::weighted(0.05, any::<u8>()),
        )
    })
}

fn dhcp_datagram() -> impl Strategy<Value = DhcpDatagram> {
    let header = (
        prop_oneof![9 => Just(1u8), 1 => any::<u8>()],
        prop_oneof![9 => Just(1u8), 1 => any::<u8>()],
        prop_oneof![9 => Just(6u8), 1 => any::<u8>()],
        any::<u32>(),
        prop_oneof![3 => Just(0u16), 1 => Just(0x8000u16), 1 => any::<u16>()],
        interesting_ipv4(),
        prop_oneof![4 => Just(Ipv4Addr::UNSPECIFIED), 1 => interesting_ipv4()],
        prop_oneof![
            Just(1u8),
            Just(2),
            Just(3),
            Just(4),
            Just(IGNORED_LAST),
            any::<u8>()
        ],
    );
    let message_type = (1u8..=8).prop_map(|kind| (53u8, vec![kind], None));
    (
        header,
        message_type,
        prop::collection::vec(dhcp_option(), 0..8),
        prop::bool::weighted(0.9),
        maybe_byte_damage(),
    )
        .prop_map(
            |(
                (opcode, htype, hlen, xid, flags, ciaddr, giaddr, mac_last),
                message_type,
                mut options,
                end,
                damage,
            )| {
                options.insert(0, message_type);
                DhcpDatagram {
                    opcode,
                    htype,
                    hlen,
                    xid,
                    flags,
                    ciaddr,
                    giaddr,
                    mac_last,
                    options,
                    end,
                    damage,
                }
            },
        )
}

/// A few datagrams in a row against one lease table (an exchange, with any of them broken), or
/// random bytes.
fn dhcp_input() -> impl Strategy<Value = (bool, Vec<Vec<u8>>)> {
    let datagram = prop_oneof![
        5 => dhcp_datagram().prop_map(|datagram| datagram.bytes()),
        1 => random_bytes(1600),
        1 => random_bytes(300).prop_map(|mut bytes| {
            // Random bytes behind a valid fixed header and cookie: the options walk.
            let mut datagram = vec![1, 1, 6, 0];
            datagram.resize(236, 0);
            datagram.extend_from_slice(&[99, 130, 83, 99]);
            datagram.append(&mut bytes);
            datagram
        }),
    ];
    (
        prop::bool::weighted(0.2),
        prop::collection::vec(datagram, 1..6),
    )
}

/// What the fixed header says, read without dhcproto: the oracle for "malformed".
fn header_is_well_formed(bytes: &[u8]) -> bool {
    (240..=MAXIMUM_REQUEST_SIZE).contains(&bytes.len())
        && bytes[0] == 1
        && bytes[1] == 1
        && bytes[2] == 6
        && bytes[236..240] == [99, 130, 83, 99]
}

fn check_dhcp_datagram(
    bytes: &[u8],
    config: &DhcpConfig,
    leases: &mut LeaseTable,
) -> Result<(), TestCaseError> {
    if header_is_well_formed(bytes) && options_are_sane(&bytes[240..]) {
        // The filter's promise: dhcproto does not panic on what it lets through.
        let raw = std::panic::catch_unwind(|| Message::decode(&mut Decoder::new(bytes)).is_ok());
        prop_assert!(
            raw.is_ok(),
            "dhcproto panicked on options the filter let through"
        );
    }
    let Some(request) = decode_request(bytes) else {
        return Ok(());
    };
    prop_assert!(
        header_is_well_formed(bytes),
        "a datagram with a malformed header was decoded"
    );
    let message_type = request.opts().msg_type();
    prop_assert!(message_type.is_some(), "decoded without a message type");
    let context = Context {
        config,
        now_ms: NOW,
        store_machines: None,
        held: None,
    };
    let outcome = handle(&request, &context, leases);
    check_lease_table(leases)?;
    let Some(reply) = outcome.reply else {
        return Ok(());
    };
    let mac = client_mac(&request).expect("decode_request checked hlen");
    prop_assert_ne!(mac, dhcp_mac(IGNORED_LAST), "an ignored MAC was answered");
    let answered = reply.message.opts().msg_type();
    let expected: &[MessageType] = match message_type {
        Some(MessageType::Discover) => &[MessageType::Offer],
        Some(MessageType::Request) => &[MessageType::Ack, MessageType::Nak],
        Some(MessageType::Inform) => &[MessageType::Ack],
        other => {
            return Err(TestCaseError::fail(format!(
                "a {other:?} was answered with {answered:?}"
            )))
        }
    };
    prop_assert!(
        answered.is_some_and(|answered| expected.contains(&answered)),
        "{message_type:?} answered with {answered:?}"
    );
    prop_assert_eq!(reply.message.opcode(), Opcode::BootReply);
    prop_assert_eq!(reply.message.xid(), request.xid());
    prop_assert_eq!(reply.message.chaddr(), request.chaddr());
    let relayed = !request.giaddr().is_unspecified();
    let port = reply.destination.port();
    prop_assert_eq!(port, if relayed { 67 } else { 68 }, "reply port");
    if answered == Some(MessageType::Offer) || answered == Some(MessageType::Ack) {
        check_offered_address(reply.message.yiaddr(), mac, config)?;
    }
    let mut encoded = Vec::new();
    prop_assert!(
        encode_reply(&reply.message, &mut encoded).is_ok(),
        "the reply does not encode"
    );
    prop_assert!(encoded.len() >= MINIMUM_REPLY_SIZE);
    let decoded = Message::decode(&mut Decoder::new(&encoded));
    prop_assert!(decoded.is_ok(), "the reply does not decode: {decoded:?}");
    Ok(())
}

/// An address handed out is the MAC's fixed one, or in a pool, never reserved, never another
/// machine's fixed address (0.0.0.0: an INFORM's ACK or a proxy reply carries none).
fn check_offered_address(
    ip: Ipv4Addr,
    mac: MacAddr,
    config: &DhcpConfig,
) -> Result<(), TestCaseError> {
    if ip.is_unspecified() {
        return Ok(());
    }
    if let Some(fixed) = config.fixed.get(&mac) {
        prop_assert_eq!(ip, fixed.ip, "a machine with a fixed address got another");
        return Ok(());
    }
    prop_assert!(
        !config.fixed_ips.contains(&ip),
        "{ip}: a fixed address given to {mac}"
    );
    let in_pool = config.subnets.iter().any(|subnet| {
        subnet
            .pool
            .is_some_and(|(start, end)| start <= ip && ip <= end)
            && !subnet.is_reserved(ip)
            && !subnet.proxy
    });
    prop_assert!(in_pool, "{ip} given to {mac} is in no pool or is reserved");
    Ok(())
}

/// No address is bound to two MACs.
fn check_lease_table(leases: &LeaseTable) -> Result<(), TestCaseError> {
    let mut holders: HashMap<Ipv4Addr, MacAddr> = HashMap::new();
    for binding in leases.bindings() {
        if let Some(other) = holders.insert(binding.ip, binding.mac) {
            return Err(TestCaseError::fail(format!(
                "{} bound to {other} and {}",
                binding.ip, binding.mac
            )));
        }
    }
    Ok(())
}

#[test]
fn dhcp_decoder_and_responder() {
    let configs = [dhcp_config(false), dhcp_config(true)];
    fuzz("dhcp", 1500, dhcp_input(), |(proxy, datagrams)| {
        let config = &configs[usize::from(*proxy)];
        let mut leases = LeaseTable::new();
        for bytes in datagrams {
            check_dhcp_datagram(bytes, config, &mut leases)?;
        }
        Ok(())
    });
}

// ---------------------------------------------------------------------------------------------
// TFTP: the request parser, the path a request names, option negotiation, transfer packets.

#[derive(Debug, Clone)]
struct TftpDatagram {
    opcode: u16,
    fields: Vec<Vec<u8>>,
    terminated: bool,
    damage: Option<ByteDamage>,
}

impl TftpDatagram {
    fn bytes(&self) -> Vec<u8> {
        let mut bytes = self.opcode.to_be_bytes().to_vec();
        for (index, field) in self.fields.iter().enumerate() {
            bytes.extend_from_slice(field);
            if self.terminated || index + 1 < self.fields.len() {
                bytes.push(0);
            }
        }
        if let Some(damage) = &self.damage {
            damage.apply(&mut bytes);
        }
        bytes
    }
}

fn tftp_text(choices: Vec<&'static str>) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        6 => prop::sample::select(choices).prop_map(|text| text.as_bytes().to_vec()),
        1 => "\\PC{0,12}".prop_map(String::into_bytes),
        1 => random_bytes(12),
    ]
}

fn tftp_datagram() -> impl Strategy<Value = TftpDatagram> {
    let filename = tftp_text(vec![
        "undionly.kpxe",
        "/ipxe.efi",
        "pxelinux.cfg/01-52-54-00-12-34-56",
        "../etc/passwd",
        "/../../etc/shadow",
        "a\\..\\..\\b",
        "./././undionly.kpxe",
        "//double//slash",
        "",
        "é/ü.efi",
    ]);
    let mode = tftp_text(vec!["octet", "OCTET", "netascii", "mail", "binary", ""]);
    let option = (
        tftp_text(vec![
            "blksize",
            "BLKSIZE",
            "tsize",
            "timeout",
            "windowsize",
            "WindowSize",
            "multicast",
        ]),
        tftp_text(vec![
            "1468",
            "0",
            "8",
            "7",
            "65464",
            "65465",
            "1",
            "255",
            "256",
            "64",
            "65535",
            "65536",
            " 12 ",
            "-1",
            "1e3",
            "99999999999999999999999",
        ]),
    );
    (
        prop_oneof![
            6 => Just(1u16),
            1 => Just(2u16),
            1 => Just(4u16),
            1 => Just(5u16),
            1 => any::<u16>(),
        ],
        filename,
        mode,
        prop::collection::vec(option, 0..6),
        prop::bool::weighted(0.9),
        maybe_byte_damage(),
    )
        .prop_map(|(opcode, filename, mode, options, terminated, damage)| {
            let mut fields = vec![filename, mode];
            for (name, value) in options {
                fields.push(name);
                fields.push(value);
            }
            TftpDatagram {
                opcode,
                fields,
                terminated,
                damage,
            }
        })
}

fn check_tftp_datagram(bytes: &[u8]) -> Result<(), TestCaseError> {
    let limits = Limits::default();
    match parse_request(bytes) {
        Err(reason) => {
            prop_assert!(!reason.is_empty(), "a refusal without a reason");
        }
        Ok(request) => {
            prop_assert!(looks_like_request(bytes), "parsed but not a request");
            prop_assert_eq!(request.write, bytes[1] == 2);
            prop_assert!(!request.filename.is_empty() && !request.filename.contains('\0'));
            prop_assert!(["octet", "netascii", "mail"].contains(&request.mode.as_str()));
            for (name, _) in &request.options {
                prop_assert_eq!(name, &name.to_ascii_lowercase());
            }
            check_tftp_path(&request.filename)?;
            for file_size in [0u64, 1 << 20] {
                check_negotiation(&request.options, file_size, &limits)?;
            }
        }
    }
    if let ClientPacket::Error { message, .. } = parse_client_packet(bytes) {
        prop_assert!(message.chars().count() <= 200 && !message.chars().any(char::is_control));
    }
    Ok(())
}

/// A path the server would open stays under its root.
fn check_tftp_path(filename: &str) -> Result<(), TestCaseError> {
    let Ok(relative) = relative_path(filename) else {
        return Ok(());
    };
    prop_assert!(relative.is_relative(), "{filename:?} gave {relative:?}");
    for component in relative.components() {
        prop_assert!(
            matches!(component, Component::Normal(_)),
            "{filename:?} gave {relative:?}"
        );
    }
    let root = Path::new("/srv/tftp");
    prop_assert!(root.join(&relative).starts_with(root));
    Ok(())
}

/// The OACK confirms each option once, with the value the transfer then uses.
fn check_negotiation(
    requested: &[(String, String)],
    file_size: u64,
    limits: &Limits,
) -> Result<(), TestCaseError> {
    let negotiated = negotiate(requested, file_size, limits);
    prop_assert!(
        (8..=LARGEST_BLOCK_SIZE.min(limits.max_block_size)).contains(&negotiated.block_size)
    );
    prop_assert!((1..=limits.max_window_size).contains(&negotiated.window_size));
    prop_assert!((1..=255).contains(&negotiated.timeout.as_secs()));
    let mut confirmed = HashSet::new();
    for (name, value) in &negotiated.accepted {
        prop_assert!(confirmed.insert(*name), "the OACK confirms {name} twice");
        let used = match *name {
            "blksize" => negotiated.block_size.to_string(),
            "windowsize" => negotiated.window_size.to_string(),
            "timeout" => negotiated.timeout.as_secs().to_string(),
            "tsize" => file_size.to_string(),
            other => return Err(TestCaseError::fail(format!("OACK confirms {other}"))),
        };
        prop_assert_eq!(
            value,
            &used,
            "the OACK's {} is not what the transfer uses",
            name
        );
    }
    Ok(())
}

#[test]
fn tftp_requests() {
    let input = prop_oneof![
        5 => tftp_datagram().prop_map(|datagram| datagram.bytes()),
        1 => random_bytes(600),
    ];
    fuzz("tftp", 3000, input, |bytes| check_tftp_datagram(bytes));
}

// ---------------------------------------------------------------------------------------------
// Text mutations, shared by the fleet-file and fact-line targets.

#[derive(Debug, Clone)]
enum TextEdit {
    DeleteLine(usize),
    DuplicateLine(usize),
    SwapLines(usize, usize),
    InsertLine(usize, String),
    Insert(usize, String),
    Delete(usize, usize),
    Truncate(usize),
}

fn char_floor(text: &str, mut at: usize) -> usize {
    at = at.min(text.len());
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    at
}

impl TextEdit {
    fn apply(&self, text: &mut String) {
        let mut lines: Vec<String> = text.split('\n').map(str::to_string).collect();
        let count = lines.len();
        match self {
            TextEdit::DeleteLine(at) => {
                lines.remove(at % count);
            }
            TextEdit::DuplicateLine(at) => lines.insert(at % count, lines[at % count].clone()),
            TextEdit::SwapLines(a, b) => lines.swap(a % count, b % count),
            TextEdit::InsertLine(at, line) => lines.insert(at % (count + 1), line.clone()),
            TextEdit::Insert(at, inserted) => {
                let at = char_floor(text, at % (text.len() + 1));
                text.insert_str(at, inserted);
                return;
            }
            TextEdit::Delete(at, length) => {
                let start = char_floor(text, at % (text.len() + 1));
                let end = char_floor(text, start + length % 64);
                text.replace_range(start..end, "");
                return;
            }
            TextEdit::Truncate(at) => {
                let at = char_floor(text, at % (text.len() + 1));
                text.truncate(at);
                return;
            }
        }
        *text = lines.join("\n");
    }
}

/// Edits made of `pieces` (the input's own tokens) and arbitrary characters.
fn text_edits(pieces: Vec<&'static str>) -> impl Strategy<Value = Vec<TextEdit>> {
    let piece = prop_oneof![
        4 => prop::sample::select(pieces).prop_map(str::to_string),
        1 => "\\PC{0,6}",
        1 => any::<char>().prop_map(String::from),
    ];
    let phrase = prop::collection::vec(piece, 1..5).prop_map(|pieces| pieces.concat());
    let edit = prop_oneof![
        any::<usize>().prop_map(TextEdit::DeleteLine),
        any::<usize>().prop_map(TextEdit::DuplicateLine),
        (any::<usize>(), any::<usize>()).prop_map(|(a, b)| TextEdit::SwapLines(a, b)),
        (any::<usize>(), phrase.clone()).prop_map(|(at, line)| TextEdit::InsertLine(at, line)),
        (any::<usize>(), phrase).prop_map(|(at, text)| TextEdit::Insert(at, text)),
        (any::<usize>(), any::<usize>()).prop_map(|(at, length)| TextEdit::Delete(at, length)),
        any::<usize>().prop_map(TextEdit::Truncate),
    ];
    prop::collection::vec(edit, 0..6)
}

/// One of `bases` with edits, or arbitrary text: (which base, edits) or the text.
fn edited_text(
    bases: &'static [(&'static str, &'static str)],
    pieces: Vec<&'static str>,
) -> impl Strategy<Value = (String, String)> {
    prop_oneof![
        6 => (0..bases.len(), text_edits(pieces)).prop_map(move |(base, edits)| {
            let (name, text) = bases[base];
            let mut text = text.to_string();
            for edit in &edits {
                edit.apply(&mut text);
            }
            (name.to_string(), text)
        }),
        1 => "(?s)\\PC{0,300}".prop_map(|text| ("random".to_string(), text)),
    ]
}

// ---------------------------------------------------------------------------------------------
// Fleet files: `config::load_str`, the loader `fleet validate` runs, and the rendering.

const FLEET_FILES: &[(&str, &str)] = &[
    (
        "fleet.toml.example",
        include_str!("../../fleet.toml.example"),
    ),
    (
        "examples/rack2.toml",
        include_str!("../../examples/rack2.toml"),
    ),
    (
        "plan/fleet.toml",
        include_str!("../fixtures/plan/fleet.toml"),
    ),
    (
        "broken/syntax.toml",
        include_str!("../fixtures/config/broken/syntax.toml"),
    ),
    (
        "broken/references.toml",
        include_str!("../fixtures/config/broken/references.toml"),
    ),
    (
        "broken/wrong_types.toml",
        include_str!("../fixtures/config/broken/wrong_types.toml"),
    ),
    (
        "broken/network.toml",
        include_str!("../fixtures/config/broken/network.toml"),
    ),
    (
        "broken/secrets.toml",
        include_str!("../fixtures/config/broken/secrets.toml"),
    ),
];

const TOML_PIECES: &[&str] = &[
    "[",
    "]",
    "[[machine]]",
    "[machine.power]",
    "[[subnet]]",
    "[controller]",
    "[policy]",
    "[profile.x]",
    "[image.x]",
    "[scripts.x]",
    "=",
    " = ",
    "\"",
    "'",
    "\"\"\"",
    "'''",
    "{",
    "}",
    "[]",
    ",",
    "#",
    "\n",
    "\r\n",
    "\t",
    ".",
    "-",
    "_",
    "\\",
    "\\u00e9",
    "\\U0001F600",
    "0",
    "1",
    "-1",
    "9223372036854775808",
    "1e400",
    "0x7f",
    "0o7",
    "0b1",
    "inf",
    "nan",
    "true",
    "false",
    "1979-05-27T07:32:00Z",
    "07:32:00",
    "name",
    "mac",
    "macs",
    "power",
    "type",
    "include",
    "cidr",
    "ip",
    "dynamic_range",
    "clone",
    "profile",
    "desired",
    "deployed",
    "ready",
    "\"52:54:00:00:00:01\"",
    "\"10.0.0.0/24\"",
    "\"10.0.0.5\"",
    "{ env = \"X\" }",
    "{ file = \"p\" }",
    "\"90s\"",
    "\"10G\"",
    "é",
    "\u{0}",
    "\u{feff}",
    "\u{202e}",
];

/// Every diagnostic points inside a file (line and column inside its text, the span on
/// character boundaries), and the whole report renders.
fn check_fleet_load(file: &Path, text: &str) -> Result<(), TestCaseError> {
    let Err(diagnostics) = fleet::config::load_str(&file.display().to_string(), text) else {
        return Ok(());
    };
    prop_assert!(!diagnostics.is_empty(), "refused without a diagnostic");
    for diagnostic in diagnostics.iter() {
        prop_assert!(
            !diagnostic.message.trim().is_empty(),
            "{diagnostic}: no message"
        );
        // An include may name a file that exists: its errors point into that file.
        let source = if diagnostic.file == file {
            text.to_string()
        } else {
            let other = std::fs::read_to_string(&diagnostic.file);
            prop_assert!(
                other.is_ok(),
                "{diagnostic}: a file that is neither read nor ours"
            );
            other.unwrap_or_default()
        };
        let lines = source.split('\n').count();
        prop_assert!(
            (1..=lines).contains(&diagnostic.line),
            "{diagnostic}: line outside the file ({lines} lines)"
        );
        let line_text = source.split('\n').nth(diagnostic.line - 1).unwrap_or("");
        prop_assert!(
            (1..=line_text.chars().count() + 1).contains(&diagnostic.column),
            "{diagnostic}: column outside its line"
        );
        let span = &diagnostic.span;
        prop_assert!(
            span.start <= span.end
                && span.end <= source.len()
                && source.is_char_boundary(span.start)
                && source.is_char_boundary(span.end),
            "{diagnostic}: span {span:?} outside the text or inside a character"
        );
    }
    let rendered = diagnostics.render(false);
    prop_assert!(rendered.trim_end().ends_with("error") || rendered.trim_end().ends_with("errors"));
    Ok(())
}

#[test]
fn fleet_file_loader() {
    let directory = tempfile::tempdir().expect("a temporary directory");
    let file = directory.path().join("fleet.toml");
    for (name, text) in FLEET_FILES {
        // The unedited files load (or are refused) with every diagnostic in place.
        check_fleet_load(&file, text).unwrap_or_else(|error| panic!("{name}: {error}"));
    }
    let input = edited_text(FLEET_FILES, TOML_PIECES.to_vec());
    fuzz("fleet_file", 500, input, |(_, text)| {
        check_fleet_load(&file, text)
    });
}

// ---------------------------------------------------------------------------------------------
// Fact lines: `commissioning::parse_facts` on what the built-in scripts print.

const FACT_FILES: &[(&str, &str)] = &[
    (
        "qemu-q35-captured.facts",
        include_str!("../../src/commissioning/fixtures/qemu-q35-captured.facts"),
    ),
    (
        "qemu-i440fx.facts",
        include_str!("../../src/commissioning/fixtures/qemu-i440fx.facts"),
    ),
];

const FACT_PIECES: &[&str] = &[
    "arch",
    "cpu",
    "memory",
    "disk",
    "interface",
    "pci",
    "usb",
    "dmi",
    " ",
    "\t",
    "=",
    "\"",
    "\\",
    "\\\"",
    "\\\\",
    "\\n",
    "\r",
    "\n",
    "name=",
    "size=",
    "count=",
    "kib=",
    "mac=",
    "link=",
    "rotational=",
    "speed=",
    "mhz=",
    "slot=",
    "path=",
    "up",
    "down",
    "0",
    "1",
    "18446744073709551616",
    "-1",
    "52:54:00:12:34:56",
    "\u{a0}",
    "é",
    "\u{0}",
];

const KNOWN_FACT_KINDS: &[&str] = &[
    "arch",
    "cpu",
    "memory",
    "disk",
    "interface",
    "pci",
    "usb",
    "dmi",
];

/// Problems name the script and a line of a known kind, in order; parsing is repeatable.
fn check_facts(stdout: &str) -> Result<(), TestCaseError> {
    let mut inventory = Inventory::default();
    let problems = parse_facts("fuzz", stdout, &mut inventory);
    let lines: Vec<&str> = stdout.lines().collect();
    let mut previous = 0;
    for problem in &problems {
        prop_assert_eq!(&problem.script, "fuzz");
        prop_assert!(
            problem.line > previous && problem.line <= lines.len(),
            "{problem}"
        );
        previous = problem.line;
        prop_assert!(!problem.reason.is_empty(), "{problem}: no reason");
        let shown = problem.to_string();
        prop_assert!(shown.contains(&format!("line {}", problem.line)), "{shown}");
        let line = lines[problem.line - 1].trim_matches([' ', '\t', '\r']);
        let kind = line.split([' ', '\t']).next().unwrap_or("");
        prop_assert!(
            KNOWN_FACT_KINDS.contains(&kind),
            "{problem}: a line of kind {kind:?}"
        );
    }
    let names: HashSet<&str> = inventory
        .disks
        .iter()
        .map(|disk| disk.name.as_str())
        .collect();
    prop_assert_eq!(names.len(), inventory.disks.len(), "a disk listed twice");
    let mut again = Inventory::default();
    prop_assert_eq!(parse_facts("fuzz", stdout, &mut again), problems);
    prop_assert_eq!(again, inventory);
    Ok(())
}

#[test]
fn fact_lines() {
    for (name, text) in FACT_FILES {
        let mut inventory = Inventory::default();
        assert_eq!(parse_facts(name, text, &mut inventory), vec![], "{name}");
    }
    let input = edited_text(FACT_FILES, FACT_PIECES.to_vec());
    fuzz("facts", 1000, input, |(_, text)| check_facts(text));
}

// ---------------------------------------------------------------------------------------------
// The machine API's JSON bodies: the decoders its handlers run before anything else.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Body {
    Enlist,
    Result,
    Heartbeat,
    Signal,
}

const PASSWORD: &str = "Xq7-pass-Wz9";

/// Bodies as fleet-runner.sh sends them.
fn real_bodies(body: Body) -> Vec<Value> {
    let b64 = |text: &str| base64::engine::general_purpose::STANDARD.encode(text);
    match body {
        Body::Enlist => vec![
            json!({"architecture": "amd64", "boot_mac": "52:54:00:12:34:56",
                   "macs": ["52:54:00:12:34:56", "52:54:00:ab:cd:ef"]}),
            json!({"architecture": "arm64", "boot_mac": "52:54:00:12:34:56", "macs": [],
                   "bmc": {"type": "ipmi", "address": "10.0.0.5", "user": "fleet",
                           "password": PASSWORD}}),
        ],
        Body::Result => vec![
            json!({"run": "r-1", "name": "20-fleet-cpu", "kind": "commissioning",
                   "status": "running"}),
            json!({"run": "r-1", "name": "30-fleet-disks", "kind": "commissioning",
                   "status": "passed", "exit_code": 0, "runtime_ms": 1200,
                   "stdout_b64": b64("disk name=vda size=268435456\n"), "stderr_b64": "",
                   "results_b64": b64("{\"ok\": true}")}),
            json!({"run": "r-1", "name": "smartctl", "kind": "testing", "status": "failed",
                   "exit_code": 1, "stdout": "", "stderr": "bad sector", "results": {}}),
        ],
        Body::Heartbeat => vec![
            json!({"stage": "running 20-fleet-cpu"}),
            json!({}),
            json!({"stage": "running fleet-deploy",
                   "progress": {"phase": "write-image", "done": 1048576, "total": 4194304}}),
            json!({"progress": {"phase": "partition"}}),
        ],
        Body::Signal => vec![
            json!({"run": "r-1", "result": "ok"}),
            json!({"run": "r-1", "result": "failed", "reason": "30-fleet-disks failed"}),
        ],
    }
}

fn json_leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        "\\PC{0,16}".prop_map(Value::from),
        prop::sample::select(vec![
            "amd64",
            "arm64",
            "ipmi",
            "redfish",
            "ok",
            "failed",
            "passed",
            "running",
            "commissioning",
            "testing",
            "erase",
            "52:54:00:12:34:56",
            "52-54-00-12-34-56",
            "ff:ff:ff:ff:ff:ff",
            "10.0.0.5",
            "r-1",
            "../x",
            "e30=",
            "====",
            "",
        ])
        .prop_map(Value::from),
        "[A-Za-z0-9+/=\\s]{0,24}".prop_map(Value::from),
        prop::collection::vec(any::<char>(), 0..300)
            .prop_map(|chars| { Value::from(chars.into_iter().collect::<String>()) }),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    json_leaf().prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
            prop::collection::hash_map("[a-z_]{1,8}", inner, 0..6)
                .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

#[derive(Debug, Clone)]
enum JsonEdit {
    Set(Vec<String>, Value),
    Remove(Vec<String>),
    Replace(Value),
}

fn json_edit() -> impl Strategy<Value = JsonEdit> {
    let key = prop_oneof![
        6 => prop::sample::select(vec![
            "architecture", "boot_mac", "macs", "bmc", "type", "address", "user", "password",
            "run", "name", "kind", "status", "exit_code", "runtime_ms", "stdout", "stderr",
            "results", "stdout_b64", "stderr_b64", "results_b64", "stage", "result", "reason",
            "progress", "phase", "done", "total",
        ])
        .prop_map(str::to_string),
        1 => "[a-z_]{1,10}",
    ];
    let path = prop::collection::vec(key, 1..3);
    prop_oneof![
        8 => (path.clone(), json_value()).prop_map(|(path, value)| JsonEdit::Set(path, value)),
        3 => path.prop_map(JsonEdit::Remove),
        1 => json_value().prop_map(JsonEdit::Replace),
    ]
}

impl JsonEdit {
    fn apply(&self, document: &mut Value) {
        match self {
            JsonEdit::Replace(value) => *document = value.clone(),
            JsonEdit::Set(path, _) | JsonEdit::Remove(path) => {
                let (last, parents) = path.split_last().expect("a path has a key");
                let mut target = document;
                for key in parents {
                    let Some(object) = target.as_object_mut() else {
                        return;
                    };
                    target = object.entry(key.clone()).or_insert_with(|| json!({}));
                }
                if let Some(object) = target.as_object_mut() {
                    match self {
                        JsonEdit::Set(_, value) => {
                            object.insert(last.clone(), value.clone());
                        }
                        _ => {
                            object.remove(last);
                        }
                    }
                }
            }
        }
    }
}

fn body_input() -> impl Strategy<Value = (Body, Vec<u8>)> {
    let kind = prop::sample::select(vec![
        Body::Enlist,
        Body::Result,
        Body::Heartbeat,
        Body::Signal,
    ]);
    kind.prop_flat_map(|kind| {
        let bases = real_bodies(kind);
        let edited = (
            0..bases.len(),
            prop::collection::vec(json_edit(), 0..4),
            maybe_byte_damage(),
        )
            .prop_map(move |(base, edits, damage)| {
                let mut document = bases[base].clone();
                for edit in &edits {
                    edit.apply(&mut document);
                }
                let mut bytes = serde_json::to_vec(&document).expect("JSON");
                if let Some(damage) = damage {
                    damage.apply(&mut bytes);
                }
                bytes
            });
        (Just(kind), prop_oneof![6 => edited, 1 => random_bytes(200)])
    })
}

/// A refusal says what is wrong: it names a field (in backquotes) or says the JSON is bad.
fn check_reason(reason: &str) -> Result<(), TestCaseError> {
    prop_assert!(
        reason.contains('`') || reason.contains("JSON"),
        "a refusal that names nothing: {reason:?}"
    );
    Ok(())
}

fn check_body(kind: Body, bytes: &[u8]) -> Result<(), TestCaseError> {
    let reason = match kind {
        Body::Enlist => match fleet::api::decode_enlist(bytes) {
            Ok(request) => {
                prop_assert_eq!(request.macs.first(), Some(&request.boot_mac));
                let unique: HashSet<_> = request.macs.iter().collect();
                prop_assert!(unique.len() == request.macs.len() && request.macs.len() <= 64);
                prop_assert!(fleet::config::Arch::parse(&request.architecture).is_some());
                if let Some(bmc) = &request.bmc {
                    prop_assert!(["ipmi", "redfish"].contains(&bmc.kind.as_str()));
                    prop_assert!(!bmc.address.is_empty() && bmc.address.len() <= 253);
                    if let Some(password) = &bmc.password {
                        prop_assert!(!password.expose().chars().any(char::is_control));
                        let shown = format!("{bmc:?}");
                        prop_assert!(!shown.contains(password.expose()), "{shown}");
                    }
                }
                return Ok(());
            }
            Err(reason) => {
                // Errors never repeat the password (when it is a value of its own).
                let body = String::from_utf8_lossy(bytes);
                if body.matches(PASSWORD).count() == 1 && body.contains(&format!("\"{PASSWORD}\""))
                {
                    prop_assert!(!reason.contains(PASSWORD), "the password in {reason:?}");
                }
                reason
            }
        },
        Body::Result => match fleet::api::decode_result(bytes) {
            Ok(report) => {
                prop_assert!(fleet::services::machine_api::rules::is_plain_name(
                    &report.name
                ));
                prop_assert!(fleet::services::machine_api::rules::is_plain_name(
                    &report.run
                ));
                prop_assert!(report.results.is_object());
                return Ok(());
            }
            Err(reason) => reason,
        },
        Body::Heartbeat => match fleet::api::decode_heartbeat(bytes) {
            Ok(_) => return Ok(()),
            Err(reason) => reason,
        },
        Body::Signal => match fleet::api::decode_signal(bytes) {
            Ok(_) => return Ok(()),
            Err(reason) => reason,
        },
    };
    check_reason(&reason)
}

#[test]
fn machine_api_bodies() {
    for kind in [Body::Enlist, Body::Result, Body::Heartbeat, Body::Signal] {
        for body in real_bodies(kind) {
            let bytes = serde_json::to_vec(&body).expect("JSON");
            let accepted = match kind {
                Body::Enlist => fleet::api::decode_enlist(&bytes).err(),
                Body::Result => fleet::api::decode_result(&bytes).err(),
                Body::Heartbeat => fleet::api::decode_heartbeat(&bytes).err(),
                Body::Signal => fleet::api::decode_signal(&bytes).err(),
            };
            assert_eq!(accepted, None, "{kind:?}: {body}");
        }
    }
    fuzz("machine_api", 3000, body_input(), |(kind, bytes)| {
        check_body(*kind, bytes)
    });
}

// ---------------------------------------------------------------------------------------------
// What dhcproto asserts on, and that none of it reaches it.

/// A DISCOVER carrying one option `code` with a value of `length` bytes.
fn discover_with(code: u8, length: usize) -> Vec<u8> {
    DhcpDatagram {
        opcode: 1,
        htype: 1,
        hlen: 6,
        xid: 7,
        flags: 0,
        ciaddr: Ipv4Addr::UNSPECIFIED,
        giaddr: Ipv4Addr::UNSPECIFIED,
        mac_last: 3,
        options: vec![(53, vec![1], None), (code, vec![0; length], None)],
        end: true,
        damage: None,
    }
    .bytes()
}

/// dhcproto 0.14 checks these option lengths with `debug_assert!` (or subtracts from them
/// unchecked), so in a build with debug assertions it panics on them; the filter refuses them
/// before dhcproto sees them, and a well-formed length still decodes.
#[test]
fn the_option_lengths_dhcproto_panics_on_never_reach_it() {
    let bad: &[(u8, usize, usize)] = &[
        (80, 1, 0),
        (81, 2, 3),
        (94, 2, 3),
        (152, 3, 4),
        (153, 5, 4),
        (154, 0, 4),
        (155, 1, 4),
    ];
    for &(code, bad_length, good_length) in bad {
        let bytes = discover_with(code, bad_length);
        if cfg!(debug_assertions) {
            let raw = std::panic::catch_unwind(|| Message::decode(&mut Decoder::new(&bytes)));
            assert!(
                raw.is_err(),
                "option {code} length {bad_length}: dhcproto no longer panics"
            );
        }
        assert!(
            !options_are_sane(&bytes[240..]),
            "option {code} length {bad_length}"
        );
        assert!(
            decode_request(&bytes).is_none(),
            "option {code} length {bad_length}"
        );
        let good = discover_with(code, good_length);
        assert!(
            options_are_sane(&good[240..]),
            "option {code} length {good_length}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Inputs the fuzz targets found, kept as named tests.

/// dhcproto joins consecutive options of one code (RFC 3396) before reading them: two option-94s
/// of 3 bytes each are one of 6, on which it asserted (caught by `catch_unwind`, but a panic
/// all the same). The filter now counts the run's length.
#[test]
fn found_a_split_option_94_is_refused_before_dhcproto_reads_it() {
    let mut bytes = discover_with(94, 3);
    bytes.pop(); // END
    bytes.extend_from_slice(&[94, 3, 1, 3, 16, 255]);
    assert!(!options_are_sane(&bytes[240..]));
    assert!(decode_request(&bytes).is_none());
    // One option-94 of 3 bytes, or two apart, are fine.
    let once = discover_with(94, 3);
    assert!(options_are_sane(&once[240..]) && decode_request(&once).is_some());
    let mut apart = discover_with(94, 3);
    apart.pop();
    apart.extend_from_slice(&[53, 1, 1, 94, 3, 1, 3, 16, 255]);
    assert!(options_are_sane(&apart[240..]));
}

/// A syntax error at a character of several bytes: the diagnostic's span covers the whole
/// character (it covered its first byte only, half a character for every consumer of the span).
#[test]
fn found_a_diagnostic_at_a_four_byte_character_covers_all_of_it() {
    let diagnostics = fleet::config::load_str("fleet.toml", "𐼰").expect_err("not TOML");
    let diagnostic = diagnostics.iter().next().expect("a diagnostic");
    assert_eq!((diagnostic.line, diagnostic.column), (1, 1));
    assert_eq!(diagnostic.span, 0..4);
    assert!(diagnostics.render(false).contains("𐼰"));
}

/// `timeout 1` then `timeout 8`: the OACK confirmed both while the transfer used 8.
#[test]
fn found_a_repeated_tftp_option_is_confirmed_once_with_the_value_used() {
    let bytes = b"\x00\x01undionly.kpxe\x00octet\x00timeout\x001\x00timeout\x008\x00";
    let request = parse_request(bytes).expect("a read request");
    let negotiated = negotiate(&request.options, 0, &Limits::default());
    assert_eq!(negotiated.timeout, Duration::from_secs(1));
    assert_eq!(negotiated.accepted, vec![("timeout", "1".to_string())]);
}
