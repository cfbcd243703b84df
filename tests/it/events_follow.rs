//! Following the history (`GET /api/v1/events/stream`, `fleet events --follow`): an event written
//! through one controller reaches a follower on another controller of the same PostgreSQL
//! database at once (LISTEN/NOTIFY, not the fallback read); resuming with `Last-Event-ID` gives
//! no gap and no duplicate; a follower never steps over an event whose transaction is still open;
//! a single SQLite controller streams its own events; the CLI prints them as JSON lines and ends
//! on Ctrl-C.

use crate::support::controller::{stderr, Api, TestController, FLEET};
use crate::support::db::{drop_postgres_store, empty_postgres_database};
use fleet::store::{FeedStart, NewEvent, Store, FALLBACK_READ};
use serde_json::Value;
use std::io::BufRead;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A test's SSE client: the events of one stream, with their ids.
struct Follower {
    response: reqwest::Response,
    partial: Vec<u8>,
}

impl Follower {
    /// Opens `/events/stream` + `query` with `Last-Event-ID` when given.
    async fn open(api: &Api, query: &str, last_event_id: Option<i64>) -> Follower {
        let mut request = api.request(reqwest::Method::GET, &format!("/events/stream{query}"));
        if let Some(id) = last_event_id {
            request = request.header("Last-Event-ID", id.to_string());
        }
        let response = request.send().await.expect("the controller answers");
        assert_eq!(response.status(), 200, "the stream opens");
        assert_eq!(
            response.headers()["content-type"],
            "text/event-stream",
            "server-sent events"
        );
        Follower {
            response,
            partial: Vec::new(),
        }
    }

    /// The next event (its SSE id and its JSON), or `None` if none comes within `limit`.
    async fn next(&mut self, limit: Duration) -> Option<(i64, Value)> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Some(event) = self.take_event() {
                return Some(event);
            }
            let chunk = tokio::time::timeout_at(deadline, self.response.chunk())
                .await
                .ok()?
                .expect("the stream reads")
                .expect("the stream stays open");
            self.partial.extend_from_slice(&chunk);
        }
    }

    /// Events until one of `machine`'s (included), within `limit`.
    async fn until_machine(&mut self, machine: &str, limit: Duration) -> Vec<(i64, Value)> {
        let mut events = Vec::new();
        loop {
            let Some(event) = self.next(limit).await else {
                panic!("no event of {machine} within {limit:?}; got {events:?}");
            };
            let done = event.1["machine"] == machine;
            events.push(event);
            if done {
                return events;
            }
        }
    }

    fn take_event(&mut self) -> Option<(i64, Value)> {
        loop {
            let text = String::from_utf8_lossy(&self.partial).into_owned();
            let end = text.find("\n\n")?;
            self.partial.drain(..end + 2);
            let block = &text[..end];
            let mut id = None;
            let mut data = None;
            for line in block.lines() {
                if let Some(value) = line.strip_prefix("id:") {
                    id = Some(value.trim().parse::<i64>().expect("a numeric id"));
                } else if let Some(value) = line.strip_prefix("data:") {
                    data = Some(value.trim().to_string());
                }
            }
            // A keep-alive comment has neither.
            if let Some(data) = data {
                let event: Value = serde_json::from_str(&data).expect("JSON data");
                let id = id.expect("every event has an id");
                assert_eq!(event["id"], id, "the SSE id is the event's");
                return Some((id, event));
            }
        }
    }
}

/// The ids of every event after `after`, as `GET /events` lists them.
async fn listed_ids(api: &Api, after: i64) -> Vec<i64> {
    let (code, events) = api.get(&format!("/events?after={after}&limit=10000")).await;
    assert_eq!(code, 200, "{events}");
    events
        .as_array()
        .expect("a list")
        .iter()
        .map(|event| event["id"].as_i64().unwrap())
        .collect()
}

async fn newest_id(api: &Api) -> i64 {
    let (_, events) = api.get("/events?limit=1").await;
    events[0]["id"].as_i64().unwrap_or(0)
}

fn mac(index: usize) -> String {
    format!("52:54:00:ef:00:{index:02x}")
}

/// Three machines added through `writer`, a second apart, each reaching `follower` within 0.8 s.
/// The fallback read comes every 3 s, so it can serve at most one of the three windows: the
/// others were woken by the notification the writer's commit sent.
async fn three_arrive_at_once(follower: &mut Follower, writer: &Api, prefix: &str, macs: usize) {
    assert!(FALLBACK_READ >= Duration::from_secs(3));
    for index in 0..3 {
        let name = format!("{prefix}-{index}");
        writer.add_idle_machine(&name, &mac(macs + index)).await;
        let added = Instant::now();
        let events = follower.until_machine(&name, Duration::from_secs(2)).await;
        let latency = added.elapsed();
        assert!(
            latency < Duration::from_millis(800),
            "{name}'s event took {latency:?} to reach the other controller's follower"
        );
        assert_eq!(events.last().unwrap().1["kind"], "created", "{events:?}");
        tokio::time::sleep(Duration::from_millis(1_000)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_follower_on_one_controller_gets_at_once_what_another_controller_wrote() {
    let url = empty_postgres_database().await;
    let first_dir = tempfile::tempdir().unwrap();
    let second_dir = tempfile::tempdir().unwrap();
    let first = TestController::start_in(first_dir.path(), &["--database", &url]);
    let second = TestController::start_in(second_dir.path(), &["--database", &url]);
    let on_first = first.http();
    let on_second = second.http().with_token(&first.token);
    let mut follower = Follower::open(&on_first, "", None).await;
    three_arrive_at_once(&mut follower, &on_second, "via-second", 0).await;

    // The listening connection is cut (a database restart, a proxy): it is made again, and
    // notifications wake the follower as before.
    let store = Store::open(&url).await.unwrap();
    let cut = sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND query LIKE 'LISTEN%' AND pid <> pg_backend_pid()",
    )
    .fetch_all(store.pool())
    .await
    .unwrap();
    assert_eq!(cut.len(), 1, "the first controller's one LISTEN connection");
    store.close().await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    three_arrive_at_once(&mut follower, &on_second, "after-cut", 3).await;
    drop(follower);
    drop((first, second));
    drop_postgres_store(Store::open(&url).await.unwrap()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn resuming_with_last_event_id_on_another_controller_gives_no_gap_and_no_duplicate() {
    let url = empty_postgres_database().await;
    let first_dir = tempfile::tempdir().unwrap();
    let second_dir = tempfile::tempdir().unwrap();
    let first = TestController::start_in(first_dir.path(), &["--database", &url]);
    let second = TestController::start_in(second_dir.path(), &["--database", &url]);
    let on_first = first.http();
    let on_second = second.http().with_token(&first.token);
    let start = newest_id(&on_first).await;

    let mut follower = Follower::open(&on_first, &format!("?after={start}"), None).await;
    on_second.add_idle_machine("resume-0", &mac(10)).await;
    on_first.add_idle_machine("resume-1", &mac(11)).await;
    let mut seen = follower
        .until_machine("resume-1", Duration::from_secs(5))
        .await;
    let last = seen.last().unwrap().0;
    drop(follower);

    // Written while nobody follows, through both controllers.
    on_second.add_idle_machine("resume-2", &mac(12)).await;
    on_first.add_idle_machine("resume-3", &mac(13)).await;
    let mut follower = Follower::open(&on_second, "?after=0", Some(last)).await;
    seen.extend(
        follower
            .until_machine("resume-3", Duration::from_secs(5))
            .await,
    );
    // Nothing more is owed: no duplicate arrives later either.
    on_second.add_idle_machine("resume-4", &mac(14)).await;
    seen.extend(
        follower
            .until_machine("resume-4", Duration::from_secs(5))
            .await,
    );
    let ids: Vec<i64> = seen.iter().map(|(id, _)| *id).collect();
    assert_eq!(
        ids,
        listed_ids(&on_first, start).await,
        "the two streams together are the history, each event once, in order"
    );
    let names: Vec<&str> = seen
        .iter()
        .filter(|(_, event)| event["kind"] == "created")
        .map(|(_, event)| event["machine"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["resume-0", "resume-1", "resume-2", "resume-3", "resume-4"]
    );
    drop(follower);
    drop((first, second));
    drop_postgres_store(Store::open(&url).await.unwrap()).await;
}

fn event(machine: &str, reason: &str) -> NewEvent {
    NewEvent {
        machine: Some(machine.to_string()),
        kind: "note".into(),
        actor: "test".into(),
        action: None,
        from_status: None,
        to_status: None,
        reason: Some(reason.into()),
        detail: serde_json::json!({}),
    }
}

/// PostgreSQL numbers events at insert and commits them in any order: a feed must wait for an
/// open transaction's event rather than step over it, and step over a rolled-back one.
#[tokio::test(flavor = "multi_thread")]
async fn a_feed_waits_for_an_open_transactions_event_and_passes_a_rolled_back_one() {
    let url = empty_postgres_database().await;
    let store = Store::open(&url).await.unwrap();
    let start = store.append_event(&event("m", "before")).await.unwrap();
    let mut feed = store
        .event_feed(FeedStart::After(start), None)
        .await
        .unwrap();

    let insert = "INSERT INTO events (at, machine, kind, actor, detail) \
                  VALUES (0, 'm', 'note', 'test', '{}') RETURNING id";
    let mut open = store.pool().begin().await.unwrap();
    let held: i64 = sqlx::Row::get(&sqlx::query(insert).fetch_one(&mut *open).await.unwrap(), 0);
    let later = store.append_event(&event("m", "later")).await.unwrap();
    assert!(later > held);
    // The later event is committed, the held one not: nothing may come yet.
    let early = tokio::time::timeout(Duration::from_millis(1_500), feed.next()).await;
    assert!(
        early.is_err(),
        "the feed stepped over the open transaction's event: {early:?}"
    );
    open.commit().await.unwrap();
    let mut got = Vec::new();
    while got.len() < 2 {
        let events = tokio::time::timeout(Duration::from_secs(5), feed.next())
            .await
            .expect("the events come once the transaction commits")
            .unwrap();
        got.extend(events.into_iter().map(|event| event.id));
    }
    assert_eq!(got, [held, later]);

    // A rolled-back insert leaves a hole that is passed over once settled.
    let mut aborted = store.pool().begin().await.unwrap();
    let lost: i64 = sqlx::Row::get(
        &sqlx::query(insert).fetch_one(&mut *aborted).await.unwrap(),
        0,
    );
    let after_lost = store
        .append_event(&event("m", "after the hole"))
        .await
        .unwrap();
    aborted.rollback().await.unwrap();
    assert!(after_lost > lost);
    let events = tokio::time::timeout(Duration::from_secs(5), feed.next())
        .await
        .expect("the event after a rolled-back one comes")
        .unwrap();
    assert_eq!(
        events.iter().map(|event| event.id).collect::<Vec<_>>(),
        [after_lost]
    );
    assert_eq!(feed.position(), after_lost);
    drop(feed);
    drop_postgres_store(store).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_single_sqlite_controller_streams_its_own_events_by_machine() {
    let controller = TestController::start();
    let api = controller.http();
    let mut all = Follower::open(&api, "", None).await;
    let mut one = Follower::open(&api, "?machine=wanted", None).await;
    api.add_idle_machine("other", &mac(20)).await;
    let added = Instant::now();
    api.add_idle_machine("wanted", &mac(21)).await;
    let events = one.until_machine("wanted", Duration::from_secs(2)).await;
    assert!(added.elapsed() < Duration::from_secs(2));
    assert!(
        events.iter().all(|(_, event)| event["machine"] == "wanted"),
        "only the machine's events: {events:?}"
    );
    let everything = all.until_machine("wanted", Duration::from_secs(2)).await;
    assert!(
        everything
            .iter()
            .any(|(_, event)| event["machine"] == "other"),
        "{everything:?}"
    );
    // Resuming after the first of them gives the rest, not the first again.
    let first = everything[0].0;
    let mut resumed = Follower::open(&api, "", Some(first)).await;
    let again = resumed
        .until_machine("wanted", Duration::from_secs(2))
        .await;
    assert_eq!(
        again.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
        everything[1..]
            .iter()
            .map(|(id, _)| *id)
            .collect::<Vec<_>>()
    );
    for (query, header, message) in [
        (
            "?after=-1",
            None,
            "after must be an event id, 0 or more (got -1)",
        ),
        (
            "",
            Some("soon"),
            "Last-Event-ID must be an event id, a whole number (got `soon`)",
        ),
    ] {
        let mut request = api.request(reqwest::Method::GET, &format!("/events/stream{query}"));
        if let Some(header) = header {
            request = request.header("Last-Event-ID", header);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 400, "{query} {header:?}");
        let answer: Value = response.json().await.unwrap();
        assert_eq!(answer["error"]["message"], message);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn fleet_events_follow_json_prints_new_events_and_ends_on_ctrl_c() {
    let controller = TestController::start();
    let mut child = Command::new(FLEET)
        .arg("--state-dir")
        .arg(&controller.state_dir)
        .arg("--server")
        .arg(&controller.api_url)
        .args(["events", "--follow", "--json", "--machine", "followed"])
        .env_remove("FLEET_SERVER")
        .env_remove("FLEET_TOKEN")
        .env_remove("FLEET_TLS_FINGERPRINT")
        .env(
            "XDG_CONFIG_HOME",
            controller.state_dir.join("client-config"),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("fleet events --follow starts");
    let stdout = child.stdout.take().unwrap();
    let (lines, received) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    // Whether the follower has opened its stream yet or not, it starts after what it listed.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let api = controller.http();
    api.add_idle_machine("unfollowed", &mac(30)).await;
    api.add_idle_machine("followed", &mac(31)).await;
    let line = received
        .recv_timeout(Duration::from_secs(10))
        .expect("fleet events --follow prints the new event");
    let event: Value = serde_json::from_str(&line).expect("one JSON object per line");
    assert_eq!(event["machine"], "followed", "{line}");
    assert_eq!(event["kind"], "created", "{line}");
    assert!(event["id"].as_i64().unwrap() > 0);

    // Ctrl-C: it ends cleanly.
    let status = interrupt(&mut child, Duration::from_secs(5));
    let output = child.wait_with_output().unwrap();
    assert!(status.success(), "exit {status}: {}", stderr(&output));
    // The other machine's event was never printed.
    assert!(received.try_iter().all(|line| !line.contains("unfollowed")));
}

/// Sends SIGINT (Ctrl-C) to `child` and waits for its exit, within `limit`.
fn interrupt(child: &mut std::process::Child, limit: Duration) -> std::process::ExitStatus {
    let sent = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "still running {limit:?} after Ctrl-C"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn fleet_events_follow_resumes_after_the_controller_restarts_without_repeating() {
    let directory = tempfile::tempdir().unwrap();
    let mut controller = TestController::start_in(directory.path(), &[]);
    let follower_log = directory.path().join("follower.log");
    let mut child = Command::new(FLEET)
        .arg("--state-dir")
        .arg(&controller.state_dir)
        .arg("--server")
        .arg(&controller.api_url)
        .args(["events", "--follow", "--json"])
        .env_remove("FLEET_SERVER")
        .env_remove("FLEET_TOKEN")
        .env_remove("FLEET_TLS_FINGERPRINT")
        .env(
            "XDG_CONFIG_HOME",
            controller.state_dir.join("client-config"),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&follower_log).unwrap())
        .spawn()
        .expect("fleet events --follow starts");
    let stdout = child.stdout.take().unwrap();
    let (lines, received) = std::sync::mpsc::channel::<Value>();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let event = serde_json::from_str(&line).expect("one JSON object per line");
            if lines.send(event).is_err() {
                break;
            }
        }
    });
    let wait_for = |machine: &str| -> Vec<Value> {
        let mut events = Vec::new();
        loop {
            let event = received
                .recv_timeout(Duration::from_secs(15))
                .unwrap_or_else(|_| {
                    panic!(
                        "no event of {machine}; got {events:?}; the follower said: {}",
                        std::fs::read_to_string(&follower_log).unwrap_or_default()
                    )
                });
            let done = event["machine"] == machine;
            events.push(event);
            if done {
                return events;
            }
        }
    };
    // The listing (the start's token event), then time to open the stream.
    let mut printed = vec![received
        .recv_timeout(Duration::from_secs(15))
        .expect("the listing")];
    tokio::time::sleep(Duration::from_millis(500)).await;
    controller
        .http()
        .add_idle_machine("before-restart", &mac(40))
        .await;
    printed.extend(wait_for("before-restart"));

    // Stopped with its follower attached, the controller ends the stream and exits at once (not
    // after the 10 s grace for requests).
    let status = interrupt(&mut controller.child, Duration::from_secs(5));
    assert!(status.success(), "fleet serve exits cleanly: {status}");
    let api_url = controller.api_url.clone();
    let listen = api_url.trim_start_matches("https://");
    // An event written while no controller runs: the follower gets it after the restart.
    let store = Store::open(&controller.database).await.unwrap();
    store
        .append_event(&event("while-down", "written with no controller running"))
        .await
        .unwrap();
    store.close().await;
    let restarted = TestController::start_listening(directory.path(), listen, &[]);
    assert_eq!(restarted.api_url, api_url);
    restarted
        .http()
        .add_idle_machine("after-restart", &mac(41))
        .await;
    printed.extend(wait_for("after-restart"));
    let ids: Vec<i64> = printed.iter().map(|e| e["id"].as_i64().unwrap()).collect();
    let first = ids[0];
    assert_eq!(
        ids,
        listed_ids(&restarted.http(), first - 1).await,
        "every event once, in order, across the restart"
    );
    assert!(printed.iter().any(|event| event["machine"] == "while-down"));
    let status = interrupt(&mut child, Duration::from_secs(5));
    let said = std::fs::read_to_string(&follower_log).unwrap();
    assert!(status.success(), "exit {status}: {said}");
    assert!(said.contains("opening it again after event"), "{said}");
}
