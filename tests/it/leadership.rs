//! One leader among the controllers on a database (`controller/leader.rs`,
//! `store/leadership.rs`): terms judged by the database's clock, taken over only when they end,
//! and fenced — a leader whose term is over has every write refused by PostgreSQL itself.

use crate::support::controller::{stdout, TestController};
use crate::support::db::{drop_postgres_store, empty_postgres_database, postgres_store};
use crate::support::machines::manual_machine;
use fleet::store::{Store, StoreError};
use serde_json::Value;
use std::time::{Duration, Instant};

const SHORT_TERM: Duration = Duration::from_millis(600);

/// A term is granted to one controller, renewed by it with the same generation, refused to
/// another while current, and taken with a new generation once it has ended; a restarted
/// process of the leading controller takes its own term over at once, with a new generation.
async fn terms_are_granted_renewed_and_taken_over(store: Store) {
    let first = store
        .claim_leadership("a/1", "a", None, SHORT_TERM)
        .await
        .unwrap()
        .expect("a free term is granted");
    let renewed = store
        .claim_leadership("a/1", "a", Some(first.generation), SHORT_TERM)
        .await
        .unwrap()
        .expect("the holder renews");
    assert_eq!(renewed.generation, first.generation);
    assert!(store
        .claim_leadership("b/1", "b", None, SHORT_TERM)
        .await
        .unwrap()
        .is_none());
    assert_eq!(store.leader().await.unwrap().unwrap().holder, "a/1");
    tokio::time::sleep(SHORT_TERM + Duration::from_millis(200)).await;
    assert_eq!(store.leader().await.unwrap(), None, "the term has ended");
    let second = store
        .claim_leadership("b/1", "b", None, SHORT_TERM)
        .await
        .unwrap()
        .expect("an ended term is taken over");
    assert_eq!(second.generation, first.generation + 1);
    assert!(
        store
            .claim_leadership("a/1", "a", Some(first.generation), SHORT_TERM)
            .await
            .unwrap()
            .is_none(),
        "the old holder's renewal is refused"
    );
    let restarted = store
        .claim_leadership("b/2", "b", None, SHORT_TERM)
        .await
        .unwrap()
        .expect("a restarted controller takes its own term over");
    assert_eq!(restarted.generation, second.generation + 1);
    store
        .resign_leadership("b/2", restarted.generation)
        .await
        .unwrap();
    assert_eq!(store.leader().await.unwrap(), None, "resigned: no leader");
}

#[tokio::test]
async fn terms_are_granted_renewed_and_taken_over_sqlite() {
    let (store, _directory) = crate::support::db::sqlite_store().await;
    terms_are_granted_renewed_and_taken_over(store).await;
}

#[tokio::test]
async fn terms_are_granted_renewed_and_taken_over_postgres() {
    let store = postgres_store().await;
    terms_are_granted_renewed_and_taken_over(store.clone()).await;
    drop_postgres_store(store).await;
}

/// The fence: a leader's store writes while its term is current; once another controller holds
/// a newer term, every write the old leader attempts — a machine, an event, a status, a lease,
/// an apply step's lock — is refused with `Fenced`, and nothing of it is stored. The new
/// leader and unfenced sessions (the API, DHCP) write on.
#[tokio::test]
async fn a_leader_whose_term_is_over_has_every_write_refused() {
    let url = empty_postgres_database().await;
    let store = Store::open(&url).await.unwrap();
    let old_term = store
        .claim_leadership("a/1", "a", None, SHORT_TERM)
        .await
        .unwrap()
        .unwrap();
    let old_leader = store.fenced(&url, &old_term).await.unwrap();
    old_leader
        .create_machine(&manual_machine("written-in-term", vec![]), "test")
        .await
        .expect("a current term writes");
    tokio::time::sleep(SHORT_TERM + Duration::from_millis(200)).await;
    let new_term = store
        .claim_leadership("b/1", "b", None, Duration::from_secs(30))
        .await
        .unwrap()
        .unwrap();

    let refused = |result: Result<(), StoreError>, what: &str| match result {
        Err(StoreError::Fenced(message)) => assert!(message.contains("a/1"), "{message}"),
        other => panic!("{what}: expected Fenced, got {other:?}"),
    };
    refused(
        old_leader
            .create_machine(&manual_machine("written-after", vec![]), "test")
            .await
            .map(drop),
        "a new machine",
    );
    let event = fleet::store::NewEvent {
        machine: Some("written-in-term".into()),
        kind: "note".into(),
        actor: "test".into(),
        action: None,
        from_status: None,
        to_status: None,
        reason: Some("written by a leader whose term is over".into()),
        detail: serde_json::json!({}),
    };
    refused(old_leader.append_event(&event).await.map(drop), "an event");
    let record = store.machine("written-in-term").await.unwrap().unwrap();
    let mut lifecycle = record.lifecycle.clone();
    lifecycle.status = fleet::model::Status::Broken;
    refused(
        old_leader
            .write_lifecycle("written-in-term", &lifecycle, "test", "fenced")
            .await
            .map(drop),
        "a status",
    );
    refused(
        old_leader.try_lock("apply", "a/1", 30_000).await.map(drop),
        "the apply lock",
    );
    refused(
        old_leader
            .delete_events_up_to(i64::MAX, 100)
            .await
            .map(drop),
        "event retention",
    );
    refused(
        old_leader
            .delete_lease("52:54:00:00:00:01".parse().unwrap())
            .await
            .map(drop),
        "a lease",
    );
    refused(
        old_leader
            .set_power_intent(
                "written-in-term",
                Some(&fleet::model::records::PowerIntent {
                    target: fleet::model::PowerState::Off,
                    passing: None,
                    why: "power off by a leader whose term is over".into(),
                }),
            )
            .await,
        "a power intent",
    );
    refused(
        old_leader.clear_pending_power(record.id, 1).await,
        "the power outbox",
    );
    refused(
        old_leader
            .set_apply_step("an-apply", "written-in-term", 0, "done", None, None)
            .await,
        "an apply step",
    );
    refused(
        old_leader.set_plan_status("an-apply", "done").await,
        "an apply's status",
    );
    assert!(store.machine("written-after").await.unwrap().is_none());
    assert_eq!(
        store
            .machine("written-in-term")
            .await
            .unwrap()
            .unwrap()
            .lifecycle
            .status,
        record.lifecycle.status,
        "the refused status change left nothing"
    );

    let new_leader = store.fenced(&url, &new_term).await.unwrap();
    new_leader
        .create_machine(&manual_machine("by-the-new-leader", vec![]), "test")
        .await
        .expect("the new term writes");
    store
        .create_machine(&manual_machine("by-the-api", vec![]), "test")
        .await
        .expect("unfenced sessions write");
    old_leader.close().await;
    new_leader.close().await;
    drop_postgres_store(store).await;
}

/// Every table a migration made carries the fence (a new table without it would be a table an
/// old leader could still write).
#[tokio::test]
async fn every_table_is_fenced_on_postgres() {
    let store = postgres_store().await;
    let rows = sqlx::query(
        "SELECT CAST(t.tablename AS TEXT) AS name FROM pg_tables t \
         WHERE t.schemaname = current_schema() \
           AND t.tablename NOT IN ('leadership', '_sqlx_migrations') \
           AND NOT EXISTS (SELECT 1 FROM pg_trigger g JOIN pg_class c ON c.oid = g.tgrelid \
                           WHERE c.relname = t.tablename AND g.tgname = 'fleet_fence')",
    )
    .fetch_all(store.pool())
    .await
    .unwrap();
    let unfenced: Vec<String> = rows.iter().map(|row| sqlx::Row::get(row, "name")).collect();
    assert!(
        unfenced.is_empty(),
        "tables without the fence (call fleet_fence_every_table() in the migration that adds them): {unfenced:?}"
    );
    drop_postgres_store(store).await;
}

fn leaders(controller: &TestController) -> Vec<(String, i64)> {
    let output = controller.fleet(&["--token", &controller.token, "controllers", "--json"]);
    assert!(output.status.success(), "{output:?}");
    let rows: Vec<Value> = serde_json::from_str(&stdout(&output)).unwrap();
    rows.iter()
        .filter(|row| row["leader"] == true)
        .map(|row| {
            (
                row["id"].as_str().unwrap().to_string(),
                row["leader_term"].as_i64().unwrap(),
            )
        })
        .collect()
}

fn wait_for_leader(asked: &TestController, id: &str, limit: Duration) -> (i64, Duration) {
    let started = Instant::now();
    loop {
        let found = leaders(asked);
        if let [(leader, term)] = found.as_slice() {
            if leader == id {
                return (*term, started.elapsed());
            }
        }
        assert!(
            started.elapsed() < limit,
            "{id} does not lead after {limit:?}: leaders {found:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn id_of(controller: &TestController) -> String {
    std::fs::read_to_string(controller.state_dir.join("controller-id"))
        .unwrap()
        .trim()
        .to_string()
}

/// Two `fleet serve` on one PostgreSQL: exactly one leads; the leader killed with SIGKILL,
/// the other leads within 10 s with a newer term; that one stopped with SIGSTOP past its term,
/// the first (restarted) takes over, and the stopped one, resumed, sees its term is over,
/// stops its duties and stays a follower.
#[tokio::test(flavor = "multi_thread")]
async fn a_killed_or_paused_leader_is_replaced_within_ten_seconds() {
    let url = empty_postgres_database().await;
    let (first_dir, second_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut first = TestController::start_in(first_dir.path(), &["--database", &url]);
    let mut second = TestController::start_in(second_dir.path(), &["--database", &url]);
    second.token = first.token.clone();
    let (first_id, second_id) = (id_of(&first), id_of(&second));
    let (first_term, _) = wait_for_leader(&second, &first_id, Duration::from_secs(5));

    first.kill();
    let (second_term, took) = wait_for_leader(&second, &second_id, Duration::from_secs(10));
    assert!(second_term > first_term, "{second_term} after {first_term}");
    eprintln!("took over after SIGKILL in {took:?}");

    let mut first = TestController::start_in(first_dir.path(), &["--database", &url]);
    first.token = second.token.clone();
    assert_eq!(leaders(&first), vec![(second_id.clone(), second_term)]);
    let pid = i32::try_from(second.child.id()).unwrap();
    // SAFETY: signals a child process this test started and still owns.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
    let (first_term, took) = wait_for_leader(&first, &first_id, Duration::from_secs(10));
    assert!(first_term > second_term);
    eprintln!("took over from a stopped leader in {took:?}");
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGCONT) }, 0);
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(
        leaders(&second),
        vec![(first_id.clone(), first_term)],
        "the resumed controller serves and shows the new leader"
    );
    second.kill();
    let text = second.log();
    assert!(
        text.contains(&format!("term {second_term} is over")),
        "the resumed leader stopped its duties: {text}"
    );
    drop((first, second));
    drop_postgres_store(Store::open(&url).await.unwrap()).await;
}
