//! DHCP leases of several controllers on one database (issue 16): the store's lease batch never
//! takes or deletes another MAC's live lease, a REQUEST whose lease the database refused gets a
//! NAK, and two DHCP servers on one PostgreSQL database serving one segment hand out no address
//! twice, one of them stopped mid-run while its clients move to the other.

use crate::support::db::{drop_postgres_store, empty_postgres_database};
use dhcproto::v4::{DhcpOption, HType, Message, MessageType, Opcode, OptionCode};
use dhcproto::{Decodable, Decoder, Encodable, Encoder};
use fleet::boot::dhcp::{serve, DhcpConfig, DhcpLeases, DhcpSubnet};
use fleet::model::MacAddr;
use fleet::store::{Lease, Store};
use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;

fn mac(index: u32) -> MacAddr {
    let bytes = index.to_be_bytes();
    MacAddr([0x52, 0x54, 0x16, bytes[1], bytes[2], bytes[3]])
}

fn lease(client: MacAddr, ip: &str, expires_at: i64) -> Lease {
    Lease {
        mac: client,
        ip: ip.parse().unwrap(),
        subnet: "loopback".into(),
        hostname: None,
        machine: None,
        expires_at,
    }
}

// ---------------------------------------------------------------------------------------------
// The store's lease batch.

crate::both_backends!(
    a_lease_batch_never_takes_or_deletes_another_macs_live_lease,
    |store| { batch_respects_live_leases(store) }
);

async fn batch_respects_live_leases(store: Store) {
    let now = store.database_clock_ms().await.unwrap();
    let later = now + 600_000;
    let (a1, a2, b1, b2) = (mac(1), mac(2), mac(101), mac(102));
    // Controller B's clients: one live lease, one expired.
    let live = lease(b1, "127.10.0.1", later);
    let expired = lease(b2, "127.10.0.2", now - 1_000);
    let refused = store
        .write_lease_batch("controller-b", &[live.clone(), expired.clone()], &[])
        .await
        .unwrap();
    assert!(refused.is_empty(), "{refused:?}");

    // Controller A's batch: a1 on B's live address (refused, and B's row stays), a2 on the
    // expired one (taken), in one transaction.
    let wanted_live = lease(a1, "127.10.0.1", later);
    let wanted_expired = lease(a2, "127.10.0.2", later);
    let refused = store
        .write_lease_batch(
            "controller-a",
            &[wanted_live.clone(), wanted_expired.clone()],
            &[],
        )
        .await
        .unwrap();
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(refused[0].lease, wanted_live);
    assert_eq!(refused[0].holder.as_ref(), Some(&live));
    assert_eq!(
        store.lease_by_ip(live.ip).await.unwrap(),
        Some(live.clone())
    );
    assert_eq!(store.lease_by_mac(a1).await.unwrap(), None);
    assert_eq!(
        store.lease_by_ip(wanted_expired.ip).await.unwrap(),
        Some(wanted_expired.clone())
    );
    assert_eq!(store.lease_by_mac(b2).await.unwrap(), None);

    // A MAC moving to another address keeps one row; a release deletes only its own MAC's.
    let moved = lease(a2, "127.10.0.3", later);
    let refused = store
        .write_lease_batch("controller-a", std::slice::from_ref(&moved), &[a1])
        .await
        .unwrap();
    assert!(refused.is_empty(), "{refused:?}");
    assert_eq!(store.lease_by_mac(a2).await.unwrap(), Some(moved.clone()));
    assert_eq!(store.lease_by_ip(wanted_expired.ip).await.unwrap(), None);
    assert_eq!(
        store.leases().await.unwrap(),
        vec![live.clone(), moved.clone()]
    );

    // B renews its own client's lease (same MAC, same address) whatever A wrote.
    let renewed = lease(b1, "127.10.0.1", later + 60_000);
    let refused = store
        .write_lease_batch("controller-b", std::slice::from_ref(&renewed), &[])
        .await
        .unwrap();
    assert!(refused.is_empty());
    assert_eq!(store.lease_by_mac(b1).await.unwrap(), Some(renewed.clone()));

    // Each controller reads what the others wrote, not its own rows.
    let seen_by_a = store
        .leases_changed_since("controller-a", now - 5_000)
        .await
        .unwrap();
    assert_eq!(seen_by_a.leases, vec![renewed.clone()]);
    assert!(seen_by_a.read_at >= now);
    let seen_by_b = store
        .leases_changed_since("controller-b", now - 5_000)
        .await
        .unwrap();
    assert_eq!(seen_by_b.leases, vec![moved]);
    let nothing_later = store
        .leases_changed_since("controller-a", seen_by_a.read_at + 60_000)
        .await
        .unwrap();
    assert!(nothing_later.leases.is_empty());
}

// ---------------------------------------------------------------------------------------------
// Two lease tables on one database, in memory (no sockets).

/// One subnet containing the relay address 127.0.0.1, its pool 127.10.0.1–127.10.`pool_top`.x.
fn loopback_config(pool_end: &str) -> DhcpConfig {
    let mut subnet = DhcpSubnet::new("loopback", "127.0.0.0/8".parse().unwrap());
    subnet.pool = Some(("127.10.0.1".parse().unwrap(), pool_end.parse().unwrap()));
    subnet.lease_seconds = 600;
    let mut config = DhcpConfig::new(Default::default());
    config.subnets = vec![subnet];
    config
}

fn client_message(client: MacAddr, xid: u32, message_type: MessageType) -> Message {
    let mut message = Message::default();
    message
        .set_opcode(Opcode::BootRequest)
        .set_htype(HType::Eth)
        .set_xid(xid)
        .set_giaddr(Ipv4Addr::LOCALHOST)
        .set_hops(1)
        .set_chaddr(&client.0);
    message
        .opts_mut()
        .insert(DhcpOption::MessageType(message_type));
    message
}

/// INIT-REBOOT: a client asking for `ip` without an offer.
fn init_reboot(client: MacAddr, ip: Ipv4Addr) -> Message {
    let mut request = client_message(client, 7, MessageType::Request);
    request
        .opts_mut()
        .insert(DhcpOption::RequestedIpAddress(ip));
    request
}

async fn two_tables_on_one_database(first: Store, second: Store) {
    let config = loopback_config("127.10.0.9").relayed_only(Ipv4Addr::LOCALHOST);
    let a = DhcpLeases::load_as(first, &config, "controller-a")
        .await
        .unwrap();
    let b = DhcpLeases::load_as(second.clone(), &config, "controller-b")
        .await
        .unwrap();
    let now = fleet::store::now_ms();
    let contested: Ipv4Addr = "127.10.0.5".parse().unwrap();
    let (winner, loser) = (mac(1), mac(2));
    let (granted, sequence) = a.answer_durably(&init_reboot(winner, contested), &config, now);
    assert_eq!(
        granted.reply.unwrap().message.opts().msg_type(),
        Some(MessageType::Ack)
    );
    assert!(
        a.committed_through(sequence.unwrap(), Duration::from_secs(10))
            .await
    );
    // B's table may not know yet: either it refuses at once, or the database refuses the lease
    // and the ACK waiting on it becomes a NAK. The client never gets an ACK.
    let (answer, sequence) = b.answer_durably(&init_reboot(loser, contested), &config, now + 1);
    let reply = answer.reply.expect("a reply");
    let reply = match sequence {
        None => reply.message,
        Some(sequence) => {
            assert_eq!(reply.message.opts().msg_type(), Some(MessageType::Ack));
            let settled = b.settled(sequence, Duration::from_secs(10)).await;
            assert_eq!(settled, fleet::boot::dhcp::Settled::Refused);
            b.refusal(&init_reboot(loser, contested), &config, now + 1)
                .reply
                .expect("a NAK")
                .message
        }
    };
    assert_eq!(reply.opts().msg_type(), Some(MessageType::Nak));
    // B now knows who holds the address, and offers the loser another one.
    let holder = b.with_table(|table| table.holder(contested).map(|binding| binding.mac));
    assert_eq!(holder, Some(winner));
    let offer = b.answer(
        &client_message(loser, 8, MessageType::Discover),
        &config,
        now + 2,
    );
    let offered = offer.reply.expect("an offer").message.yiaddr();
    assert_ne!(offered, contested);
    let stored = second.lease_by_ip(contested).await.unwrap().unwrap();
    assert_eq!(stored.mac, winner);
    assert_eq!(second.lease_by_mac(loser).await.unwrap(), None);
    a.close().await.unwrap();
    b.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_lease_gets_a_nak_on_sqlite() {
    let (first, directory) = crate::support::db::sqlite_store().await;
    let path = directory.path().join("fleet.db");
    let second = Store::open(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    two_tables_on_one_database(first.clone(), second.clone()).await;
    second.close().await;
    first.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_lease_gets_a_nak_on_postgres() {
    let url = empty_postgres_database().await;
    let first = Store::open(&url).await.unwrap();
    let second = Store::open(&url).await.unwrap();
    two_tables_on_one_database(first.clone(), second.clone()).await;
    second.close().await;
    drop_postgres_store(first).await;
}

// ---------------------------------------------------------------------------------------------
// Changes pushed (LISTEN/NOTIFY), not polled: the safety net's period is an hour here, so only a
// notification (or the read after the LISTEN connection is made) can carry a change in time.

/// The safety net's period in these tests: far beyond any limit they wait.
const NO_FALLBACK: Duration = Duration::from_secs(3_600);
/// How long a pushed change may take to arrive (about 0.5 s measured; generous for a loaded
/// machine, and far below the production safety net's 30 s).
const PUSH_LIMIT: Duration = Duration::from_secs(5);

/// The LISTEN connections on the store's database.
async fn listening_sessions(store: &Store) -> usize {
    let rows = sqlx::query(
        "SELECT pid FROM pg_stat_activity \
         WHERE datname = current_database() AND query LIKE 'LISTEN%' AND pid <> pg_backend_pid()",
    )
    .fetch_all(store.pool())
    .await
    .unwrap();
    rows.len()
}

/// Waits until `count` LISTEN connections are up, then for the read each does once connected.
async fn wait_until_listening(store: &Store, count: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while listening_sessions(store).await < count {
        assert!(
            Instant::now() < deadline,
            "the LISTEN connections never came up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// How long until `holds` is true of `table`, if within `limit`.
async fn time_until(limit: Duration, holds: impl Fn() -> bool) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < limit {
        if holds() {
            return Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

/// Two stores (two controllers' views) of a fresh PostgreSQL database, and the DHCP
/// configuration the push tests share.
async fn two_stores_on_a_fresh_database() -> (Store, Store, DhcpConfig) {
    let url = empty_postgres_database().await;
    let first = Store::open(&url).await.unwrap();
    let second = Store::open(&url).await.unwrap();
    let config = loopback_config("127.10.0.9").relayed_only(Ipv4Addr::LOCALHOST);
    (first, second, config)
}

/// `controller`'s lease table on `store`, following the others by notification only.
async fn follow_pushed(store: &Store, config: &DhcpConfig, controller: &str) -> Arc<DhcpLeases> {
    DhcpLeases::load_following(store.clone(), config, controller, NO_FALLBACK)
        .await
        .unwrap()
}

/// Controller A ACKs a lease; controller B's table knows who holds the address within
/// [`PUSH_LIMIT`] (a poll-only B, at the 30 s safety net or the hour here, would not).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_one_controller_writes_reaches_the_others_table_at_once() {
    let (first, second, config) = two_stores_on_a_fresh_database().await;
    let a = follow_pushed(&first, &config, "controller-a").await;
    let b = follow_pushed(&second, &config, "controller-b").await;
    wait_until_listening(&first, 2).await;
    for (index, last) in [(1, 3), (2, 4)] {
        let client = mac(index);
        let ip: Ipv4Addr = format!("127.10.0.{last}").parse().unwrap();
        let (granted, sequence) =
            a.answer_durably(&init_reboot(client, ip), &config, fleet::store::now_ms());
        assert_eq!(
            granted.reply.unwrap().message.opts().msg_type(),
            Some(MessageType::Ack)
        );
        assert!(a.committed_through(sequence.unwrap(), PUSH_LIMIT).await);
        let learned = time_until(PUSH_LIMIT, || {
            b.with_table(|table| table.holder(ip).map(|binding| binding.mac)) == Some(client)
        })
        .await;
        let learned = learned.unwrap_or_else(|| {
            panic!("controller B did not learn A's lease of {ip} within {PUSH_LIMIT:?}")
        });
        println!("A's lease of {ip} in B's table {learned:?} after its commit");
    }
    a.close().await.unwrap();
    b.close().await.unwrap();
    second.close().await;
    drop_postgres_store(first).await;
}

/// A machine created with an address held (an apply on another controller) is served by this
/// controller's table within [`PUSH_LIMIT`] (the `fleet_machines` notification).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_address_another_controller_commits_is_served_at_once() {
    let (first, second, config) = two_stores_on_a_fresh_database().await;
    let b = follow_pushed(&second, &config, "controller-b").await;
    wait_until_listening(&first, 1).await;
    let client = mac(7);
    let machine = crate::support::machines::manual_machine("node-7", vec![client]);
    first.create_machine(&machine, "test").await.unwrap();
    let allocation = fleet::plan::Allocation {
        machine: machine.name.clone(),
        interface: "eth0".into(),
        subnet: "loopback".into(),
        ip: "127.20.0.7".parse().unwrap(),
        origin: fleet::plan::AddressOrigin::Allocated,
    };
    first
        .commit_addresses("node-7", &[allocation], "test", None)
        .await
        .unwrap();
    let held: Ipv4Addr = "127.20.0.7".parse().unwrap();
    let learned = time_until(PUSH_LIMIT, || b.held().address(client, 0) == Some(held)).await;
    let learned =
        learned.unwrap_or_else(|| panic!("the held address was not served within {PUSH_LIMIT:?}"));
    println!("held address served {learned:?} after its commit");
    b.close().await.unwrap();
    second.close().await;
    drop_postgres_store(first).await;
}

/// A lease whose notification never came (the triggers off while it was written, as if the
/// LISTEN connection had been down) is not learned — until the LISTEN connection is cut: it is
/// made again, and the read that follows catches up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_listen_connection_is_made_again_and_catches_up() {
    let (first, second, config) = two_stores_on_a_fresh_database().await;
    let b = follow_pushed(&second, &config, "controller-b").await;
    wait_until_listening(&first, 1).await;
    let triggers = |state: &str| {
        format!(
            "ALTER TABLE leases {state} TRIGGER leases_notify_insert, \
             {state} TRIGGER leases_notify_update"
        )
    };
    sqlx::query(&triggers("DISABLE"))
        .execute(first.pool())
        .await
        .unwrap();
    let (client, ip) = (mac(9), "127.10.0.5".parse::<Ipv4Addr>().unwrap());
    let expires_at = first.database_clock_ms().await.unwrap() + 600_000;
    let refused = first
        .write_lease_batch(
            "controller-a",
            &[lease(client, "127.10.0.5", expires_at)],
            &[],
        )
        .await
        .unwrap();
    assert!(refused.is_empty(), "{refused:?}");
    sqlx::query(&triggers("ENABLE"))
        .execute(first.pool())
        .await
        .unwrap();
    let holder = || b.with_table(|table| table.holder(ip).map(|binding| binding.mac));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        holder(),
        None,
        "learned without a notification or a reconnection"
    );

    let cut = sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND query LIKE 'LISTEN%' AND pid <> pg_backend_pid()",
    )
    .fetch_all(first.pool())
    .await
    .unwrap();
    assert_eq!(cut.len(), 1, "B's one LISTEN connection");
    let learned = time_until(PUSH_LIMIT, || holder() == Some(client)).await;
    let learned = learned.unwrap_or_else(|| {
        panic!("no catch-up read within {PUSH_LIMIT:?} of the LISTEN connection's cut")
    });
    println!("caught up {learned:?} after the cut");
    // Listening again: the next lease comes by notification.
    wait_until_listening(&first, 1).await;
    let (next, next_ip) = (mac(10), "127.10.0.6".parse::<Ipv4Addr>().unwrap());
    let refused = first
        .write_lease_batch(
            "controller-a",
            &[lease(next, "127.10.0.6", expires_at)],
            &[],
        )
        .await
        .unwrap();
    assert!(refused.is_empty(), "{refused:?}");
    let notified = time_until(PUSH_LIMIT, || {
        b.with_table(|table| table.holder(next_ip).map(|binding| binding.mac)) == Some(next)
    })
    .await;
    assert!(notified.is_some(), "no notification after the reconnection");
    b.close().await.unwrap();
    second.close().await;
    drop_postgres_store(first).await;
}

// ---------------------------------------------------------------------------------------------
// Two DHCP servers on one PostgreSQL database, 2,000 simulated clients.

const CLIENTS: u32 = 2_000;
/// Clients exchanging at once.
const CONCURRENT_CLIENTS: usize = 64;
/// How long a client waits for one reply; after two silent tries it turns to the other server.
const REPLY_WAIT: Duration = Duration::from_millis(1_000);
/// The second server is stopped once it has ACKed this many clients (over 30 % of them).
const STOP_AFTER_ACKS: usize = 640;

/// The two servers' addresses and identifiers, and what the clients saw.
struct Segment {
    servers: [SocketAddr; 2],
    /// ACKs each server sent (counted as the clients receive them).
    acked_by: [AtomicUsize; 2],
    /// Every ACK any client got: (client, address, server index).
    acks: Mutex<Vec<(MacAddr, Ipv4Addr, usize)>>,
    naks: AtomicUsize,
}

/// One simulated client: its MAC and, while it exchanges, a UDP socket on the relay address
/// (loopback, as `src/sim` does; one at a time per client, so 2,000 clients need no more file
/// descriptors than the clients exchanging at once).
struct Client {
    mac: MacAddr,
}

impl Client {
    /// Sends `message` to `server` up to `tries` times; the first reply with its xid.
    async fn ask(
        socket: &UdpSocket,
        server: SocketAddr,
        message: &Message,
        tries: u32,
    ) -> Option<Message> {
        let mut bytes = Vec::new();
        message.encode(&mut Encoder::new(&mut bytes)).unwrap();
        let mut buffer = vec![0u8; 1500];
        for _ in 0..tries {
            socket.send_to(&bytes, server).await.unwrap();
            let deadline = tokio::time::Instant::now() + REPLY_WAIT;
            while let Ok(received) =
                tokio::time::timeout_at(deadline, socket.recv(&mut buffer)).await
            {
                let Ok(length) = received else { continue };
                let Ok(reply) = Message::decode(&mut Decoder::new(&buffer[..length])) else {
                    continue;
                };
                if reply.xid() == message.xid() {
                    return Some(reply);
                }
            }
        }
        None
    }

    /// DISCOVER, OFFER, REQUEST, ACK with `home`, starting over after a NAK and turning to the
    /// other server when `home` is silent. The address and the server that ACKed it.
    async fn obtain(&self, segment: &Segment, home: usize) -> (Ipv4Addr, usize) {
        let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let mut server = home;
        for _ in 0..20 {
            let xid: u32 = rand::random();
            let discover = client_message(self.mac, xid, MessageType::Discover);
            let Some(offer) = Client::ask(&socket, segment.servers[server], &discover, 2).await
            else {
                server = 1 - server;
                continue;
            };
            let mut request = client_message(self.mac, xid, MessageType::Request);
            request
                .opts_mut()
                .insert(DhcpOption::RequestedIpAddress(offer.yiaddr()));
            if let Some(DhcpOption::ServerIdentifier(id)) =
                offer.opts().get(OptionCode::ServerIdentifier)
            {
                request.opts_mut().insert(DhcpOption::ServerIdentifier(*id));
            }
            match Client::ask(&socket, segment.servers[server], &request, 2).await {
                Some(reply) if reply.opts().msg_type() == Some(MessageType::Ack) => {
                    segment.record_ack(self.mac, reply.yiaddr(), server);
                    return (reply.yiaddr(), server);
                }
                Some(_) => {
                    segment.naks.fetch_add(1, Ordering::SeqCst);
                }
                None => server = 1 - server,
            }
        }
        panic!("client {} got no lease in 20 tries", self.mac);
    }

    /// RENEWING with the server that ACKed `ip`, then REBINDING with the other if it is silent.
    /// The server that renewed it.
    async fn renew(&self, segment: &Segment, ip: Ipv4Addr, leased_by: usize) -> usize {
        let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        // One try with the server that leased it (the stopped one costs each of its clients
        // one wait), two with the other.
        for (server, tries) in [(leased_by, 1), (1 - leased_by, 2)] {
            let mut request = client_message(self.mac, rand::random(), MessageType::Request);
            request.set_ciaddr(ip);
            let Some(reply) = Client::ask(&socket, segment.servers[server], &request, tries).await
            else {
                continue;
            };
            assert_eq!(
                reply.opts().msg_type(),
                Some(MessageType::Ack),
                "client {} renewing {ip} with server {server}",
                self.mac
            );
            assert_eq!(reply.yiaddr(), ip);
            segment.record_ack(self.mac, ip, server);
            return server;
        }
        panic!(
            "client {} could not renew {ip} with either server",
            self.mac
        );
    }
}

impl Segment {
    fn record_ack(&self, client: MacAddr, ip: Ipv4Addr, server: usize) {
        self.acked_by[server].fetch_add(1, Ordering::SeqCst);
        self.acks.lock().unwrap().push((client, ip, server));
    }
}

/// Starts a DHCP server with its own store handle on `url`, on a new socket on `address`.
async fn start_server(
    url: &str,
    address: Ipv4Addr,
    name: &str,
) -> (
    SocketAddr,
    tokio::sync::oneshot::Sender<()>,
    Arc<DhcpLeases>,
) {
    let store = Store::open(url).await.unwrap();
    let config = loopback_config("127.10.11.255").relayed_only(address);
    let leases = DhcpLeases::load_as(store, &config, name).await.unwrap();
    let socket = UdpSocket::bind((address, 0)).await.unwrap();
    let bound = socket.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let metrics = Arc::new(fleet::metrics::Metrics::new());
    tokio::spawn(serve(socket, config, leases.clone(), metrics, async move {
        let _ = stopped.await;
    }));
    (bound, stop, leases)
}

/// Runs `work` for every client, `CONCURRENT_CLIENTS` at once; the results in client order.
async fn for_every_client<T, F>(
    clients: &Arc<Vec<Client>>,
    work: impl Fn(Arc<Vec<Client>>, usize) -> F,
) -> Vec<T>
where
    T: Send + 'static,
    F: std::future::Future<Output = T> + Send + 'static,
{
    let permits = Arc::new(tokio::sync::Semaphore::new(CONCURRENT_CLIENTS));
    let mut tasks = Vec::new();
    for index in 0..clients.len() {
        let permit = permits.clone().acquire_owned().await.unwrap();
        let task = work(clients.clone(), index);
        tasks.push(tokio::spawn(async move {
            let result = task.await;
            drop(permit);
            result
        }));
    }
    let mut results = Vec::new();
    for task in tasks {
        results.push(task.await.unwrap());
    }
    results
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_on_one_postgres_lease_no_address_twice_and_survive_one_stopping() {
    let started = Instant::now();
    let url = empty_postgres_database().await;
    let check = Store::open(&url).await.unwrap();
    let (first, stop_first, leases_first) =
        start_server(&url, Ipv4Addr::new(127, 0, 0, 1), "controller-a").await;
    let (second, stop_second, leases_second) =
        start_server(&url, Ipv4Addr::new(127, 0, 0, 2), "controller-b").await;
    let segment = Arc::new(Segment {
        servers: [first, second],
        acked_by: [AtomicUsize::new(0), AtomicUsize::new(0)],
        acks: Mutex::new(Vec::new()),
        naks: AtomicUsize::new(0),
    });
    let mut clients = Vec::new();
    for index in 0..CLIENTS {
        clients.push(Client { mac: mac(index) });
    }
    let clients = Arc::new(clients);

    // The second server is stopped once it has ACKed over 30 % of the clients, mid-run.
    let stopper = {
        let segment = segment.clone();
        tokio::spawn(async move {
            while segment.acked_by[1].load(Ordering::SeqCst) < STOP_AFTER_ACKS {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let _ = stop_second.send(());
            leases_second.close().await.unwrap();
            segment.acked_by[1].load(Ordering::SeqCst)
        })
    };
    // Clients alternate between the two servers.
    let leased: Vec<(Ipv4Addr, usize)> = for_every_client(&clients, |clients, index| {
        let segment = segment.clone();
        async move { clients[index].obtain(&segment, index % 2).await }
    })
    .await;
    let acked_when_stopped = tokio::time::timeout(Duration::from_secs(5), stopper)
        .await
        .expect("the second server ACKed enough clients to be stopped mid-run")
        .unwrap();
    let first_acks = leased.iter().filter(|(_, server)| *server == 0).count();
    let second_acks = leased.iter().filter(|(_, server)| *server == 1).count();
    let minimum = (CLIENTS as usize) * 30 / 100;
    assert!(
        first_acks >= minimum && second_acks >= minimum,
        "each server ACKs at least 30 % of the clients: {first_acks} and {second_acks}"
    );
    let moved_before_lease = (0..CLIENTS as usize)
        .filter(|index| index % 2 == 1 && leased[*index].1 == 0)
        .count();
    assert!(
        moved_before_lease > 0,
        "the stopped server's clients without a lease got one from the other \
         (stopped after {acked_when_stopped} ACKs)"
    );

    // Every client renews; those of the stopped server rebind to the other, keeping their address.
    let renewed: Vec<usize> = for_every_client(&clients, |clients, index| {
        let segment = segment.clone();
        let (ip, server) = leased[index];
        async move { clients[index].renew(&segment, ip, server).await }
    })
    .await;
    for (index, (ip, server)) in leased.iter().enumerate() {
        if *server == 1 {
            assert_eq!(
                renewed[index], 0,
                "client {index} of the stopped server ({ip}) rebinds to the other"
            );
        }
    }

    // No address ever ACKed to two clients, from the clients' side...
    let acks = segment.acks.lock().unwrap().clone();
    let mut holders: HashMap<Ipv4Addr, HashSet<MacAddr>> = HashMap::new();
    for (client, ip, _) in &acks {
        holders.entry(*ip).or_default().insert(*client);
    }
    let duplicates: Vec<_> = holders
        .iter()
        .filter(|(_, clients)| clients.len() > 1)
        .collect();
    assert!(
        duplicates.is_empty(),
        "addresses ACKed to two clients: {duplicates:?}"
    );
    let distinct: HashSet<Ipv4Addr> = leased.iter().map(|(ip, _)| *ip).collect();
    assert_eq!(distinct.len(), CLIENTS as usize);
    // ... and in the database: every client's lease, each address once.
    let stored = check.leases().await.unwrap();
    assert_eq!(stored.len(), CLIENTS as usize);
    for stored_lease in &stored {
        let index = clients
            .iter()
            .position(|client| client.mac == stored_lease.mac)
            .expect("a lease of one of the clients");
        assert_eq!(stored_lease.ip, leased[index].0);
    }
    eprintln!(
        "two servers: {first_acks} and {second_acks} clients leased (second stopped after \
         {acked_when_stopped} ACKs), {moved_before_lease} moved before their lease, {} NAKs, {:.1} s",
        segment.naks.load(Ordering::SeqCst),
        started.elapsed().as_secs_f64()
    );
    let _ = stop_first.send(());
    leases_first.close().await.unwrap();
    drop_postgres_store(check).await;
}
