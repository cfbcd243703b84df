//! Bounded growth (issue #12): requests without a credential are rate-limited per source address
//! (429 with Retry-After), never write one event each (the first of a kind is an event, the rest
//! one summary per interval), and the event history is pruned by age and count. Each test runs
//! the real `fleet serve` and attacks it over loopback, from distinct 127.0.0.x addresses where
//! the source matters.

use crate::support::controller::{TestController, FLEET};
use fleet::store::{Event, EventFilter, NewEvent, Store};
use std::net::{IpAddr, Ipv4Addr, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// A controller with `policy` (TOML under `[policy...]` headers) and TFTP on `tftp_listen`.
fn start(policy: &str, tftp_listen: &str, loader_dir: &Path) -> (TestController, TempDir) {
    let directory = tempfile::tempdir().unwrap();
    let file = directory.path().join("fleet.toml");
    std::fs::write(
        &file,
        format!(
            "[controller]\ntftp_listen = \"{tftp_listen}\"\nloader_dir = \"{}\"\n\n{policy}",
            loader_dir.display()
        ),
    )
    .unwrap();
    let state = directory.path().join("state");
    let controller = TestController::start_in(&state, &["-f", file.to_str().unwrap()]);
    (controller, directory)
}

fn start_with_policy(policy: &str) -> (TestController, TempDir) {
    start(policy, "127.0.0.1:0", Path::new("/nonexistent"))
}

/// A client whose connections come from `address` (any 127.0.0.x is this host's).
fn client_from(address: Ipv4Addr) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(IpAddr::V4(address))
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

async fn all_events(store: &Store) -> Vec<Event> {
    let filter = EventFilter {
        machine: None,
        after_id: None,
        limit: Some(100_000),
    };
    store.events(&filter).await.unwrap()
}

/// Summary events of `what`, and how many occurrences they counted.
fn summarised(events: &[Event], what: &str) -> (usize, u64) {
    let summaries: Vec<&Event> = events
        .iter()
        .filter(|event| {
            event.action.as_deref() == Some("summary") && event.detail["summary"] == what
        })
        .collect();
    let counted = summaries
        .iter()
        .map(|event| event.detail["count"].as_u64().unwrap())
        .sum();
    (summaries.len(), counted)
}

/// Waits until the summaries of `what` have counted `expected` occurrences.
async fn wait_for_summaries(store: &Store, what: &str, expected: u64) -> Vec<Event> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let events = all_events(store).await;
        let (_, counted) = summarised(&events, what);
        if counted >= expected || Instant::now() > deadline {
            assert_eq!(counted, expected, "{what}: {events:#?}");
            return events;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_flood_of_anonymous_boot_scripts_is_throttled_and_leaves_a_few_events() {
    let (controller, _directory) = start_with_policy(
        "[policy.rate_limits]\nanonymous_burst = 50\nanonymous_per_minute = 60\n\n\
         [policy.events]\nsummary_seconds = 1\n",
    );
    let store = controller.store().await;
    let before = all_events(&store).await.len();
    let client = client_from(Ipv4Addr::new(127, 0, 0, 21));
    let flood = 1000;
    let (mut served, mut throttled) = (0u64, 0u64);
    let started = Instant::now();
    for index in 0..flood {
        let url = format!(
            "{}/boot/52:54:00:ff:{:02x}:{:02x}.ipxe",
            controller.url,
            index / 256,
            index % 256
        );
        let response = client.get(&url).send().await.unwrap();
        match response.status().as_u16() {
            200 => served += 1,
            429 => {
                throttled += 1;
                let wait: u64 = response.headers()["retry-after"]
                    .to_str()
                    .unwrap()
                    .parse()
                    .unwrap();
                assert!((1..=2).contains(&wait), "Retry-After {wait}");
                let body = response.text().await.unwrap();
                assert!(
                    body.starts_with("error too many requests without a credential from 127.0.0.21: at most 50 at once")
                        && body.ends_with("s\n")
                        && body.lines().count() == 1,
                    "{body}"
                );
            }
            other => panic!("{url}: {other}"),
        }
    }
    let seconds = started.elapsed().as_secs() + 1;
    // The burst, then one a second.
    assert!(
        served >= 50 && served <= 50 + seconds,
        "{served} served in {seconds} s"
    );
    assert_eq!(served + throttled, flood);
    // Another address is not held back by the flood.
    let other = client_from(Ipv4Addr::new(127, 0, 0, 22));
    let response = other
        .get(format!("{}/boot/52:54:00:fe:00:01.ipxe", controller.url))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    // Every request is accounted for, in a few events: the first of each kind on its own, the
    // rest counted into summaries (at most one per kind a second).
    let events = wait_for_summaries(
        &store,
        "boot-script requests for unknown MACs",
        served, // the flood's served ones after the first, plus the other address's one
    )
    .await;
    let events = {
        let (_, counted) = summarised(&events, "requests throttled");
        if counted < throttled - 1 {
            wait_for_summaries(&store, "requests throttled", throttled - 1).await
        } else {
            assert_eq!(counted, throttled - 1);
            events
        }
    };
    let new_events = events.len() - before;
    eprintln!(
        "boot-script flood: {flood} requests in {} ms from one address: {served} served, \
         {throttled} throttled (429), {new_events} events",
        started.elapsed().as_millis()
    );
    let bound = 2 * (2 + seconds as usize + 3);
    assert!(
        new_events <= bound,
        "{new_events} events for {flood} requests (bound {bound}): {events:#?}"
    );
    let first = events
        .iter()
        .find(|event| {
            event
                .reason
                .as_deref()
                .unwrap_or("")
                .starts_with("iPXE script served")
        })
        .expect("the first script is an event of its own");
    assert_eq!(first.detail["mac"], "52:54:00:ff:00:00");
    let summary = events
        .iter()
        .find(|event| event.detail["summary"] == "boot-script requests for unknown MACs")
        .unwrap();
    let reason = summary.reason.as_deref().unwrap();
    assert!(
        reason.contains(" more boot-script requests for unknown MACs from ")
            && reason.contains("in the last second"),
        "{reason}"
    );
}

#[tokio::test]
async fn two_hundred_machines_enlist_at_once_while_a_flood_from_one_address_is_throttled() {
    let (controller, _directory) = start_with_policy("[policy.events]\nsummary_seconds = 1\n");
    let store = controller.store().await;
    let enlist = |client: reqwest::Client, url: String, mac: String| async move {
        let body = serde_json::json!({
            "architecture": "amd64", "boot_mac": mac, "macs": [mac],
        });
        let response = client
            .post(format!("{url}/metadata/v1/enlist"))
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let retry_after = response.headers().get("retry-after").cloned();
        (status, retry_after, response.text().await.unwrap())
    };
    // The rack: 200 machines, each from its own address, all at once.
    let started = Instant::now();
    let mut rack = tokio::task::JoinSet::new();
    for index in 0..200u32 {
        let address = Ipv4Addr::new(127, 0, 1 + (index / 200) as u8, 2 + (index % 200) as u8);
        let mac = format!("52:54:00:aa:{:02x}:{:02x}", index / 256, index % 256);
        rack.spawn(enlist(client_from(address), controller.url.clone(), mac));
    }
    // Meanwhile one address floods, 20 at a time.
    let flooder = client_from(Ipv4Addr::new(127, 0, 9, 9));
    let mut flood = tokio::task::JoinSet::new();
    let flood_size = 300u32;
    let mut flood_answers = Vec::new();
    for index in 0..flood_size {
        let mac = format!("52:54:00:bb:{:02x}:{:02x}", index / 256, index % 256);
        flood.spawn(enlist(flooder.clone(), controller.url.clone(), mac));
        if flood.len() >= 20 {
            flood_answers.push(flood.join_next().await.unwrap().unwrap());
        }
    }
    while let Some(answer) = flood.join_next().await {
        flood_answers.push(answer.unwrap());
    }
    let mut rack_names = std::collections::BTreeSet::new();
    while let Some(answer) = rack.join_next().await {
        let (status, _, body) = answer.unwrap();
        assert_eq!(status, 201, "a rack machine was refused: {body}");
        let name = body
            .lines()
            .next()
            .unwrap()
            .strip_prefix("machine ")
            .unwrap();
        assert!(name.starts_with("enlisted-525400aa"), "{body}");
        rack_names.insert(name.to_string());
    }
    assert_eq!(rack_names.len(), 200, "200 machines, 200 records");
    let rack_ms = started.elapsed().as_millis();
    // The flood: most throttled, each with Retry-After; the ones that went through are bounded
    // by the enlistment bucket (10 at once, then 10 a minute).
    assert_eq!(flood_answers.len() as u32, flood_size);
    let mut flood_created = 0;
    for (status, retry_after, body) in &flood_answers {
        match status {
            201 => flood_created += 1,
            429 => {
                let seconds: u64 = retry_after
                    .as_ref()
                    .expect("Retry-After")
                    .to_str()
                    .unwrap()
                    .parse()
                    .unwrap();
                assert!((1..=6).contains(&seconds), "Retry-After {seconds}");
                assert!(
                    body.starts_with("error too many enlistments from 127.0.9.9: at most 10 at once, then 10 a minute; retry in "),
                    "{body}"
                );
            }
            other => panic!("flood answer {other}: {body}"),
        }
    }
    assert!(
        (10..=12).contains(&flood_created),
        "{flood_created} flood enlistments went through"
    );
    let machines = store.machine_summaries().await.unwrap();
    assert_eq!(
        machines.len(),
        200 + flood_created,
        "records: the rack's and the flood's few"
    );
    // Events: one enlistment event per record, and the throttled ones in a few summaries that
    // count every one of them.
    let throttled = flood_size as u64 - flood_created as u64;
    let events = wait_for_summaries(&store, "requests throttled", throttled - 1).await;
    eprintln!(
        "enlistment: 200 machines from 200 addresses enlisted in {rack_ms} ms; a flood of \
         {flood_size} from one address: {flood_created} enlisted, {throttled} throttled; {} events",
        events.len()
    );
    let enlist_events = events.iter().filter(|event| event.kind == "enlist").count();
    assert_eq!(enlist_events, machines.len());
    let request_events = events
        .iter()
        .filter(|event| event.kind == "request")
        .count();
    assert!(
        request_events <= 10,
        "{request_events} request events: {events:#?}"
    );
}

/// A free UDP port on 127.0.0.1 (released for the controller to take).
fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A TFTP write request (opcode 2) for `name`.
fn write_request(name: &str) -> Vec<u8> {
    let mut datagram = vec![0, 2];
    datagram.extend_from_slice(name.as_bytes());
    datagram.push(0);
    datagram.extend_from_slice(b"octet\0");
    datagram
}

#[tokio::test]
async fn a_flood_of_refused_tftp_requests_leaves_a_bounded_number_of_events() {
    let loaders = tempfile::tempdir().unwrap();
    std::fs::write(loaders.path().join("undionly.kpxe"), b"loader").unwrap();
    let port = free_udp_port();
    let (controller, _directory) = start(
        "[policy.events]\nsummary_seconds = 1\n",
        &format!("127.0.0.1:{port}"),
        loaders.path(),
    );
    let store = controller.store().await;
    let before = all_events(&store).await.len();
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let sent = 1000u64;
    let started = Instant::now();
    for index in 0..sent {
        socket
            .send_to(
                &write_request(&format!("upload-{index}")),
                ("127.0.0.1", port),
            )
            .unwrap();
        // Paced so that loopback drops none of them.
        if index % 20 == 0 {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    let seconds = started.elapsed().as_secs() as usize + 1;
    let what = "TFTP requests from unknown clients refused or failed";
    let deadline = Instant::now() + Duration::from_secs(20);
    let (events, counted) = loop {
        let events = all_events(&store).await;
        let (_, counted) = summarised(&events, what);
        if counted + 1 >= sent * 9 / 10 || Instant::now() > deadline {
            break (events, counted);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // Nearly every request reached the server (UDP), and every one that did is counted.
    assert!(
        counted + 1 >= sent * 9 / 10 && counted < sent,
        "{counted} of {sent} counted"
    );
    let refused_events: Vec<&Event> = events
        .iter()
        .filter(|event| event.kind == "transfer")
        .collect();
    assert!(
        refused_events.len() <= seconds + 3,
        "{} TFTP events for {sent} requests in {seconds} s",
        refused_events.len()
    );
    assert!(events.len() - before <= seconds + 3);
    eprintln!(
        "TFTP flood: {sent} write requests in {seconds} s: {} counted, {} events",
        counted + 1,
        events.len() - before
    );
    let first = refused_events
        .iter()
        .find(|event| event.action.is_none())
        .expect("the first refusal is an event of its own");
    assert!(
        first
            .reason
            .as_deref()
            .unwrap()
            .contains("upload-0 not sent"),
        "{first:?}"
    );
}

fn event(machine: Option<&str>, reason: &str) -> NewEvent {
    NewEvent {
        machine: machine.map(str::to_string),
        kind: "note".to_string(),
        actor: "test".to_string(),
        action: None,
        from_status: None,
        to_status: None,
        reason: Some(reason.to_string()),
        detail: serde_json::json!({}),
    }
}

const DAY_MS: i64 = 24 * 60 * 60 * 1000;

/// Seeds `old` events 100 days old and `new` events of today.
async fn seed(store: &Store, old: usize, new: usize) {
    let now = fleet::store::now_ms();
    for index in 0..old {
        let at = now - 100 * DAY_MS + index as i64;
        store
            .append_event_at(&event(None, &format!("old {index}")), at)
            .await
            .unwrap();
    }
    for index in 0..new {
        store
            .append_event(&event(None, &format!("new {index}")))
            .await
            .unwrap();
    }
}

fn reasons(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .filter(|event| event.kind == "note")
        .map(|event| event.reason.clone().unwrap())
        .collect()
}

/// Retention at start (by age: events older than `max_age_days` go) and while running (by
/// count: beyond `max_count` the oldest go), through the real controller.
#[tokio::test]
async fn retention_prunes_the_oldest_events_by_age_at_start_and_by_count_while_running() {
    let directory = tempfile::tempdir().unwrap();
    let state = directory.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    let database = format!("sqlite://{}", state.join("fleet.db").display());
    {
        let store = Store::open(&database).await.unwrap();
        seed(&store, 30, 5).await;
        store.close().await;
    }
    let file = directory.path().join("fleet.toml");
    std::fs::write(
        &file,
        "[controller]\ntftp_listen = \"127.0.0.1:0\"\n\n\
         [policy.events]\nmax_age_days = 90\nmax_count = 20\nprune_every_seconds = 1\n",
    )
    .unwrap();
    let controller = TestController::start_in(&state, &["-f", file.to_str().unwrap()]);
    let store = controller.store().await;
    // At start: the 30 events of 100 days ago are gone, today's 5 stay.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let kept = reasons(&all_events(&store).await);
        if !kept.iter().any(|reason| reason.starts_with("old ")) {
            assert_eq!(kept, (0..5).map(|i| format!("new {i}")).collect::<Vec<_>>());
            break;
        }
        assert!(Instant::now() < deadline, "old events not pruned: {kept:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // While running: 40 more; within a pass or two only the newest 20 events remain.
    for index in 5..45 {
        store
            .append_event(&event(None, &format!("new {index}")))
            .await
            .unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let all = all_events(&store).await;
        if all.len() <= 20 {
            let expected: Vec<String> = (25..45).map(|i| format!("new {i}")).collect();
            assert_eq!(reasons(&all), expected, "the newest 20 are kept");
            assert_eq!(all.len(), 20, "{all:#?}");
            break;
        }
        assert!(Instant::now() < deadline, "{} events kept", all.len());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The store's deletes on both backends: oldest first, bounded batches, and never an event of a
/// machine's current run.
async fn prune_keeps_the_current_run(store: &Store) {
    use fleet::model::{MacAddr, Status};
    let mac = MacAddr::parse("52:54:00:cc:00:01").unwrap();
    let new = crate::support::machines::manual_machine("busy", vec![mac]);
    store.create_machine(&new, "test").await.unwrap();
    let mut lifecycle = store.machine("busy").await.unwrap().unwrap().lifecycle;
    lifecycle.status = Status::Commissioning;
    let record = store
        .write_lifecycle("busy", &lifecycle, "test", "fixture")
        .await
        .unwrap();
    let since = record.status_since;
    // 12 old events of nobody, one of the busy machine before its run, then its run.
    for index in 0..12 {
        let at = since - 200 * DAY_MS + index;
        store
            .append_event_at(&event(None, &format!("old {index}")), at)
            .await
            .unwrap();
    }
    store
        .append_event_at(&event(Some("busy"), "before the run"), since - 10 * DAY_MS)
        .await
        .unwrap();
    store
        .append_event_at(&event(Some("busy"), "run 1"), since)
        .await
        .unwrap();
    store
        .append_event(&event(Some("busy"), "run 2"))
        .await
        .unwrap();
    // By age, in batches of 5, oldest first: 5, 5, then the last 2 and the busy machine's
    // event from before its run.
    let cut = since - DAY_MS;
    assert_eq!(store.delete_events_older_than(cut, 5).await.unwrap(), 5);
    let kept = reasons(&all_events(store).await);
    assert_eq!(kept[0], "old 5", "oldest first: {kept:?}");
    assert_eq!(store.delete_events_older_than(cut, 5).await.unwrap(), 5);
    assert_eq!(store.delete_events_older_than(cut, 5).await.unwrap(), 3);
    assert_eq!(store.delete_events_older_than(cut, 5).await.unwrap(), 0);
    assert_eq!(reasons(&all_events(store).await), ["run 1", "run 2"]);
    // Even past its age, the current run is kept.
    store
        .delete_events_older_than(fleet::store::now_ms() + DAY_MS, 100)
        .await
        .unwrap();
    assert_eq!(reasons(&all_events(store).await), ["run 1", "run 2"]);

    // By count: everything beyond the newest 1 goes, except the run.
    for index in 0..3 {
        store
            .append_event(&event(None, &format!("new {index}")))
            .await
            .unwrap();
    }
    assert_eq!(store.events_beyond_count(1000).await.unwrap(), None);
    let last = store
        .events_beyond_count(1)
        .await
        .unwrap()
        .expect("more than 1");
    store.delete_events_up_to(last, 100).await.unwrap();
    assert_eq!(
        reasons(&all_events(store).await),
        ["run 1", "run 2", "new 2"]
    );
    // Once the run is over (ready), its events are history like any other.
    lifecycle.status = Status::Ready;
    store
        .write_lifecycle("busy", &lifecycle, "test", "fixture")
        .await
        .unwrap();
    let last = store
        .events_beyond_count(1)
        .await
        .unwrap()
        .expect("more than 1");
    store.delete_events_up_to(last, 100).await.unwrap();
    let left = all_events(store).await;
    assert_eq!(left.len(), 1, "{left:#?}");
    assert_eq!(store.count_events().await.unwrap(), 1);
}

#[tokio::test]
async fn pruning_keeps_the_current_run_on_sqlite() {
    let (store, _directory) = crate::support::db::sqlite_store().await;
    prune_keeps_the_current_run(&store).await;
}

#[tokio::test]
async fn pruning_keeps_the_current_run_on_postgres() {
    let store = crate::support::db::postgres_store().await;
    prune_keeps_the_current_run(&store).await;
    crate::support::db::drop_postgres_store(store).await;
}

#[test]
fn a_bad_rate_limit_is_a_validate_error_with_its_position() {
    let directory = tempfile::tempdir().unwrap();
    let file: PathBuf = directory.path().join("fleet.toml");
    std::fs::write(
        &file,
        "[policy.rate_limits]\nanonymous_burst = 0\nenlist_per_minute = \"fast\"\nbucket = 3\n\n\
         [policy.events]\nmax_count = 0\n",
    )
    .unwrap();
    let output = std::process::Command::new(FLEET)
        .arg("validate")
        .arg(&file)
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let said = String::from_utf8_lossy(&output.stderr).to_string()
        + &String::from_utf8_lossy(&output.stdout);
    let at = |line: usize, column: usize| format!("{}:{line}:{column}", file.display());
    for (position, message) in [
        (
            at(2, 19),
            "`anonymous_burst` must be between 1 and 1000000, found 0",
        ),
        (
            at(3, 21),
            "`enlist_per_minute` must be a whole number, found a string",
        ),
        (at(4, 1), "unknown key `bucket`"),
        (at(7, 13), "`max_count` must be between 1 and"),
    ] {
        assert!(said.contains(&position), "no {position} in:\n{said}");
        assert!(said.contains(message), "no `{message}` in:\n{said}");
    }
}

/// UEFI HTTP boot clients are sent to `/boot/loaders/NAME` by DHCP (`http_loader_path`): the
/// loaders of `loader_dir` are served there, with Range, and nothing else is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uefi_http_boot_clients_get_the_loaders_of_loader_dir_and_nothing_else() {
    let loaders = tempfile::tempdir().unwrap();
    let loader: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(loaders.path().join("ipxe.efi"), &loader).unwrap();
    std::fs::create_dir(loaders.path().join("sub")).unwrap();
    std::fs::write(loaders.path().join("sub/hidden.efi"), b"not a loader").unwrap();
    let (controller, _directory) = start("", "127.0.0.1:0", loaders.path());
    let client = client_from(Ipv4Addr::new(127, 0, 0, 31));
    let get = |path: &str| client.get(format!("{}{path}", controller.url));

    let whole = get("/boot/loaders/ipxe.efi").send().await.unwrap();
    assert_eq!(whole.status(), 200);
    assert!(whole.bytes().await.unwrap() == loader, "the loader's bytes");
    let part = get("/boot/loaders/ipxe.efi")
        .header("Range", "bytes=1000-1099")
        .send()
        .await
        .unwrap();
    assert_eq!(part.status(), 206);
    assert!(part.bytes().await.unwrap() == loader[1000..1100]);
    for refused in [
        "/boot/loaders/nothing.efi",
        "/boot/loaders/sub",
        "/boot/loaders/..%2Ffleet.toml",
        "/boot/loaders/sub%2Fhidden.efi",
    ] {
        let response = get(refused).send().await.unwrap();
        assert_eq!(response.status(), 404, "{refused}");
        let text = response.text().await.unwrap();
        assert!(
            text.contains("not a loader of the controller's loader_dir"),
            "{refused}: {text}"
        );
    }
    // The path DHCP gives UEFI HTTP boot clients is this route's.
    let settings = fleet::boot::dhcp::BootSettings::default();
    assert_eq!(settings.http_loader_path, "/boot/loaders");
}
