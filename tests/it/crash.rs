//! SIGKILL of the controller in the middle of a burst of actions: no acknowledged action loses
//! its events, and every machine's history is a chain of whitelisted changes that ends in the
//! status the machine has.

use crate::support::controller::TestController;
use fleet::model::{Lifecycle, PowerState, Status};
use fleet::store::{Event, EventFilter};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const MACHINES: usize = 16;
const WORKERS: usize = 8;

fn ready() -> Lifecycle {
    Lifecycle {
        status: Status::Ready,
        previous_status: None,
        locked: false,
        power: PowerState::Off,
        owner: None,
        commissioned: true,
        deployed_os: None,
        power_configured: true,
    }
}

/// Each worker owns its machines and walks them round allocate → deploy → abort → release.
async fn worker(
    api: crate::support::controller::Api,
    names: Vec<String>,
    acknowledged: Arc<Mutex<Vec<(String, String)>>>,
) {
    let cycle = ["allocate", "deploy", "abort", "release"];
    for round in 0.. {
        for name in &names {
            let action = cycle[round % cycle.len()];
            let comment = format!("burst-{name}-{round}");
            let request = api
                .client
                .post(format!(
                    "{}/api/v1/machines/{name}/actions/{action}",
                    api.url
                ))
                .bearer_auth(&api.token)
                .json(&serde_json::json!({ "comment": comment }))
                .send()
                .await;
            match request {
                Ok(response) if response.status() == 200 => {
                    acknowledged.lock().unwrap().push((name.clone(), comment));
                }
                Ok(response) => panic!(
                    "{action} {name}: {}",
                    response.text().await.unwrap_or_default()
                ),
                Err(_) => return, // the controller is gone
            }
        }
    }
}

fn check_history(name: &str, events: &[Event], final_status: Status) {
    let mut current: Option<Status> = None;
    for event in events {
        match event.kind.as_str() {
            "created" | "forced" => current = event.to_status.or(current),
            "status" => {
                let (from, to) = (event.from_status.unwrap(), event.to_status.unwrap());
                assert_eq!(
                    Some(from),
                    current,
                    "{name}: event {} does not follow the one before",
                    event.id
                );
                assert!(
                    from.can_change_to(to),
                    "{name}: {from} -> {to} is not whitelisted"
                );
                current = Some(to);
            }
            _ => {}
        }
    }
    assert_eq!(
        current,
        Some(final_status),
        "{name}: the history ends where the machine is"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_during_a_burst_loses_no_committed_event() {
    let directory = tempfile::tempdir().unwrap();
    let mut controller = TestController::start_in(directory.path(), &[]);
    let api = controller.http();
    let store = controller.store().await;
    let names: Vec<String> = (0..MACHINES)
        .map(|index| format!("crash-{index:02}"))
        .collect();
    for (index, name) in names.iter().enumerate() {
        api.add_idle_machine(name, &format!("52:54:00:cc:00:{index:02x}"))
            .await;
        store
            .write_lifecycle(name, &ready(), "test", "fixture")
            .await
            .unwrap();
    }
    let acknowledged = Arc::new(Mutex::new(Vec::new()));
    let workers: Vec<_> = names
        .chunks(MACHINES / WORKERS)
        .map(|chunk| tokio::spawn(worker(api.clone(), chunk.to_vec(), acknowledged.clone())))
        .collect();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    controller.kill();
    for worker in workers {
        worker.await.unwrap();
    }
    let acknowledged = acknowledged.lock().unwrap().clone();
    assert!(
        acknowledged.len() > 50,
        "the burst was a burst: {} actions",
        acknowledged.len()
    );

    let controller = TestController::start_in(directory.path(), &[]);
    let store = controller.store().await;
    let events = store.events(&EventFilter::default()).await.unwrap();
    let recorded: BTreeSet<(String, String)> = events
        .iter()
        .filter(|event| event.kind == "action")
        .filter_map(|event| Some((event.machine.clone()?, event.reason.clone()?)))
        .collect();
    for pair in &acknowledged {
        assert!(
            recorded.contains(pair),
            "acknowledged action {pair:?} lost its event"
        );
    }
    let mut by_machine: BTreeMap<String, Vec<Event>> = BTreeMap::new();
    for event in events {
        if let Some(machine) = event.machine.clone() {
            by_machine.entry(machine).or_default().push(event);
        }
    }
    for name in &names {
        let record = store
            .machine(name)
            .await
            .unwrap()
            .expect("the machine is still there");
        check_history(name, &by_machine[name], record.lifecycle.status);
    }
    // The restarted controller answers and accepts actions on every machine.
    let output = controller.fleet(&["machines", "--json"]);
    assert!(output.status.success());
}
