//! Static addresses that stick (issue 13): the store's held addresses under UNIQUE (subnet,
//! address) on SQLite and PostgreSQL, the executor committing a plan's addresses and refusing a
//! machine whose address another took since the plan, and `fleet machine show` listing them.
//! (DHCP serving them to a real client: `dhcp.rs`.)

use crate::both_backends;
use crate::support::controller::{stdout, TestController};
use fleet::apply::{progress, queue_apply, ApplyRequest, Executor};
use fleet::model::{decide, Action, ActionRequest, MacAddr, MachineName};
use fleet::plan::{AddressOrigin, Allocation, Observed, Plan};
use fleet::power::PowerDrivers;
use fleet::store::{Commit, EventFilter, NewMachine, Store, StoreError};
use std::net::IpAddr;
use std::time::{Duration, Instant};

fn machine(name: &str, index: u8) -> NewMachine {
    let mac = MacAddr([0x52, 0x54, 0x00, 0xad, 0x00, index]);
    crate::support::machines::manual_machine(name, vec![mac])
}

fn allocation(machine: &str, interface: &str, subnet: &str, ip: &str) -> Allocation {
    Allocation {
        machine: MachineName::parse(machine).unwrap(),
        interface: interface.into(),
        subnet: subnet.into(),
        ip: ip.parse().unwrap(),
        origin: AddressOrigin::Allocated,
    }
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

/// (machine, interface, subnet, ip) of every held address.
async fn held(store: &Store) -> Vec<(String, String, String, IpAddr)> {
    store
        .held_addresses()
        .await
        .unwrap()
        .into_iter()
        .map(|address| {
            (
                address.machine,
                address.interface,
                address.subnet,
                address.ip,
            )
        })
        .collect()
}

fn row(
    machine: &str,
    interface: &str,
    subnet: &str,
    address: &str,
) -> (String, String, String, IpAddr) {
    (machine.into(), interface.into(), subnet.into(), ip(address))
}

/// The `address` events of `machine`: (action, reason).
async fn address_events(store: &Store, machine: &str) -> Vec<(String, String)> {
    store
        .events(&EventFilter {
            machine: Some(machine.into()),
            ..EventFilter::default()
        })
        .await
        .unwrap()
        .into_iter()
        .filter(|event| event.kind == "address")
        .map(|event| {
            (
                event.action.unwrap_or_default(),
                event.reason.unwrap_or_default(),
            )
        })
        .collect()
}

async fn delete(store: &Store, name: &str) {
    let record = store.machine(name).await.unwrap().unwrap();
    let outcome = decide(
        &record.lifecycle,
        &ActionRequest::new(Action::Delete, "alice"),
    )
    .unwrap();
    let commit = Commit {
        actor: "alice",
        action: Some(Action::Delete),
        reason: None,
        outcome: &outcome,
        image: None,
        decides_power: false,
        erase_mode: None,
    };
    assert_eq!(store.commit(&record, &commit).await.unwrap(), None);
}

both_backends!(
    an_address_is_held_by_one_machine_until_it_is_deleted,
    |store| async move {
        store
            .create_machine(&machine("m1", 1), "alice")
            .await
            .unwrap();
        store
            .create_machine(&machine("m5", 5), "alice")
            .await
            .unwrap();
        let first = [allocation("m1", "eth0", "net0", "10.0.0.7")];
        let committed = store
            .commit_addresses("m1", &first, "alice", Some("apply-1"))
            .await
            .unwrap();
        assert_eq!(committed.len(), 1);
        assert_eq!(held(&store).await, [row("m1", "eth0", "net0", "10.0.0.7")]);
        // Again: nothing new, nothing written.
        assert!(store
            .commit_addresses("m1", &first, "alice", None)
            .await
            .unwrap()
            .is_empty());
        assert_eq!(
            address_events(&store, "m1").await,
            [(
                "held".to_string(),
                "holds 10.0.0.7 on subnet net0 (interface eth0) from now on".to_string()
            )]
        );

        // Another machine asking for it fails as a whole (its other address is not written
        // either), naming the address, the subnet and the holder.
        let second = [
            allocation("m5", "eth0", "net0", "10.0.0.8"),
            allocation("m5", "eth1", "net0", "10.0.0.7"),
        ];
        let error = store
            .commit_addresses("m5", &second, "alice", None)
            .await
            .unwrap_err();
        match &error {
            StoreError::AddressTaken {
                ip: taken,
                subnet,
                holder,
                interface,
            } => {
                assert_eq!(
                    (*taken, subnet.as_str(), holder.as_str(), interface.as_str()),
                    (ip("10.0.0.7"), "net0", "m1", "eth0")
                );
            }
            other => panic!("expected AddressTaken, got {other:?}"),
        }
        assert_eq!(
            error.to_string(),
            "address 10.0.0.7 on subnet net0 is held by machine m1 (interface eth0)"
        );
        assert!(store.machine_addresses("m5").await.unwrap().is_empty());
        // The same address on another subnet is another address.
        store
            .commit_addresses(
                "m5",
                &[allocation("m5", "eth1", "net1", "10.0.0.7")],
                "alice",
                None,
            )
            .await
            .unwrap();

        // The constraints themselves, beneath the typed check: one holder per (subnet, address),
        // one address per (machine, interface, subnet).
        let m5 = store.machine("m5").await.unwrap().unwrap().id;
        let m1 = store.machine("m1").await.unwrap().unwrap().id;
        for (id, interface, address) in [(m5, "eth9", "10.0.0.7"), (m1, "eth0", "10.0.0.99")] {
            let inserted = sqlx::query(
                "INSERT INTO held_addresses (machine_id, interface, subnet, address, created_at) \
                 VALUES ($1, $2, 'net0', $3, 0)",
            )
            .bind(id)
            .bind(interface)
            .bind(address)
            .execute(store.pool())
            .await;
            match inserted {
                Err(sqlx::Error::Database(error)) => assert!(error.is_unique_violation()),
                other => panic!("the constraint let {interface} {address} in: {other:?}"),
            }
        }

        // An explicit address the operator changed replaces the interface's old one.
        let mut changed = allocation("m1", "eth0", "net0", "10.0.0.9");
        changed.origin = AddressOrigin::Static;
        let committed = store
            .commit_addresses("m1", &[changed], "alice", None)
            .await
            .unwrap();
        assert_eq!(committed[0].previous, Some(ip("10.0.0.7")));
        assert_eq!(
            held(&store).await,
            [
                row("m1", "eth0", "net0", "10.0.0.9"),
                row("m5", "eth1", "net1", "10.0.0.7")
            ]
        );

        // Deleting the machine releases its addresses, with an event each; the history stays.
        delete(&store, "m1").await;
        assert_eq!(held(&store).await, [row("m5", "eth1", "net1", "10.0.0.7")]);
        let events = address_events(&store, "m1").await;
        assert_eq!(events.last().unwrap().0, "released");
        assert!(events.last().unwrap().1.contains("10.0.0.9 on subnet net0"));
        store
            .commit_addresses(
                "m5",
                &[allocation("m5", "eth0", "net0", "10.0.0.9")],
                "alice",
                None,
            )
            .await
            .unwrap();
    }
);

both_backends!(
    two_machines_committing_one_address_at_once_give_it_to_one,
    |store| async move {
        for round in 0..5u8 {
            let (a, b) = (format!("a-{round}"), format!("b-{round}"));
            store
                .create_machine(&machine(&a, 20 + 2 * round), "t")
                .await
                .unwrap();
            store
                .create_machine(&machine(&b, 21 + 2 * round), "t")
                .await
                .unwrap();
            let address = format!("10.1.0.{}", 10 + round);
            let (first, second) = (store.clone(), store.clone());
            let (one, two) = tokio::join!(
                async {
                    let claim = [allocation(&a, "eth0", "net0", &address)];
                    first.commit_addresses(&a, &claim, "t", None).await
                },
                async {
                    let claim = [allocation(&b, "eth0", "net0", &address)];
                    second.commit_addresses(&b, &claim, "t", None).await
                },
            );
            let taken = [&one, &two]
                .iter()
                .filter(|result| matches!(result, Err(StoreError::AddressTaken { .. })))
                .count();
            assert_eq!(
                (one.is_ok() as u8 + two.is_ok() as u8, taken),
                (1, 1),
                "{one:?} {two:?}"
            );
        }
    }
);

// ---------------------------------------------------------------------------------------------
// The executor.

const FLEET: &str = r#"
[subnets.net0]
cidr = "10.0.0.0/24"
dynamic_range = { start = "10.0.0.100", end = "10.0.0.200" }

[[machine]]
name = "m1"
macs = ["52:54:00:ad:00:01"]
state = "new"
tags = ["rack-1"]
power = { type = "manual" }
interfaces = [{ name = "eth0", subnet = "net0" }]

[[machine]]
name = "m5"
macs = ["52:54:00:ad:00:05"]
state = "new"
tags = ["rack-1"]
power = { type = "manual" }
interfaces = [{ name = "eth0", subnet = "net0" }]
"#;

async fn fresh_plan(store: &Store) -> Plan {
    let fleet = fleet::config::load_str("fleet.toml", FLEET).expect("a valid fleet file");
    let observed: Observed = fleet::apply::observe(store).await.unwrap();
    fleet::plan::plan(&fleet, &observed)
}

/// `plan` with `machine`'s addresses set by hand (what the planner will decide once it calls
/// `allocate`), and every other machine's steps and addresses left out.
fn only(mut plan: Plan, machine: &str, addresses: Vec<Allocation>) -> Plan {
    for planned in &mut plan.machines {
        if planned.name == machine {
            planned.addresses = addresses.clone();
        } else {
            planned.steps.clear();
            planned.addresses.clear();
        }
    }
    plan
}

/// Applies `plan` and waits for the apply to finish; returns each machine's (state, reason).
async fn apply(store: &Store, plan: Plan) -> Vec<(String, String, Option<String>)> {
    let request = ApplyRequest {
        plan,
        allow_destroy: false,
        strict: false,
    };
    // The leader's executor, as `fleet serve` runs it, for this apply only.
    let executor = tokio::spawn(
        Executor {
            store: store.clone(),
            drivers: PowerDrivers::standard(),
            metrics: std::sync::Arc::new(fleet::metrics::Metrics::new()),
            holder: "test/1".into(),
            wake: std::sync::Arc::new(tokio::sync::Notify::new()),
        }
        .run(),
    );
    let started = queue_apply(store, request, "alice", None).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = progress(store, &started.id).await.unwrap();
        if now.finished() {
            executor.abort();
            return now
                .machines
                .into_iter()
                .map(|machine| (machine.name, machine.state, machine.reason))
                .collect();
        }
        assert!(
            Instant::now() < deadline,
            "the apply did not finish: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

both_backends!(
    apply_commits_a_plans_address_and_refuses_a_machine_whose_address_was_taken_since,
    |store| async move {
        store
            .create_machine(&machine("m1", 1), "alice")
            .await
            .unwrap();
        store
            .create_machine(&machine("m5", 5), "alice")
            .await
            .unwrap();
        // Two plans made before either is applied, both giving 10.0.0.7 away (say, from two
        // versions of the fleet file): each machine has a step (the `rack-1` tag).
        let plan = fresh_plan(&store).await;
        for name in ["m1", "m5"] {
            assert!(!plan.machine(name).unwrap().steps.is_empty(), "{plan:#?}");
        }
        let for_m1 = only(
            plan.clone(),
            "m1",
            vec![allocation("m1", "eth0", "net0", "10.0.0.7")],
        );
        let for_m5 = only(
            plan,
            "m5",
            vec![allocation("m5", "eth0", "net0", "10.0.0.7")],
        );

        let done = apply(&store, for_m1).await;
        assert_eq!(done, [("m1".to_string(), "done".to_string(), None)]);
        assert_eq!(held(&store).await, [row("m1", "eth0", "net0", "10.0.0.7")]);
        assert_eq!(address_events(&store, "m1").await.len(), 1);

        let message =
            "address 10.0.0.7 on subnet net0 was taken by m1 after this plan was made: plan again";
        let refused = apply(&store, for_m5).await;
        assert_eq!(
            refused,
            [(
                "m5".to_string(),
                "refused".to_string(),
                Some(message.to_string())
            )]
        );
        // m1 keeps it; m5 holds nothing and its step never ran.
        assert_eq!(held(&store).await, [row("m1", "eth0", "net0", "10.0.0.7")]);
        let m5 = store.machine("m5").await.unwrap().unwrap();
        assert!(m5.tags.is_empty(), "{:?}", m5.tags);
        let events = store
            .events(&EventFilter {
                machine: Some("m5".into()),
                ..EventFilter::default()
            })
            .await
            .unwrap();
        assert!(events.iter().any(|event| event.kind == "apply"
            && event.action.as_deref() == Some("apply refused")
            && event.reason.as_deref() == Some(message)));

        // Planned again: m1 keeps its address and has no step; m5 gets another one before its
        // step. m1's unchanged address commits nothing.
        let plan = fresh_plan(&store).await;
        assert!(plan.machine("m1").unwrap().steps.is_empty());
        let mut again = plan;
        for planned in &mut again.machines {
            planned.addresses = match planned.name.as_str() {
                "m1" => {
                    let mut kept = allocation("m1", "eth0", "net0", "10.0.0.7");
                    kept.origin = AddressOrigin::Held;
                    vec![kept]
                }
                _ => vec![allocation("m5", "eth0", "net0", "10.0.0.8")],
            };
        }
        let done = apply(&store, again).await;
        assert_eq!(done, [("m5".to_string(), "done".to_string(), None)]);
        assert_eq!(
            held(&store).await,
            [
                row("m1", "eth0", "net0", "10.0.0.7"),
                row("m5", "eth0", "net0", "10.0.0.8")
            ]
        );
        assert_eq!(address_events(&store, "m1").await.len(), 1);
        assert_eq!(address_events(&store, "m5").await.len(), 1);
        // The planner's snapshot carries them.
        let observed = fleet::apply::observe(&store).await.unwrap();
        assert_eq!(observed.addresses.len(), 2);
        assert_eq!(observed.addresses[0].ip, ip("10.0.0.7"));
    }
);

// ---------------------------------------------------------------------------------------------
// `fleet machine show`.

#[tokio::test(flavor = "multi_thread")]
async fn machine_show_lists_the_addresses_a_machine_holds() {
    let controller = TestController::start();
    let store = controller.store().await;
    store
        .create_machine(&machine("m1", 1), "alice")
        .await
        .unwrap();
    store
        .commit_addresses(
            "m1",
            &[allocation("m1", "eth0", "net0", "10.0.0.7")],
            "alice",
            None,
        )
        .await
        .unwrap();
    let output = controller.fleet(&["machine", "show", "m1"]);
    assert!(output.status.success(), "{output:?}");
    let text = stdout(&output);
    assert!(
        text.lines()
            .any(|line| line.starts_with("address")
                && line.contains("10.0.0.7 on eth0 (subnet net0)")),
        "{text}"
    );
    let output = controller.fleet(&["machine", "show", "m1", "--json"]);
    let detail: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(detail["addresses"][0]["ip"], "10.0.0.7");
    assert_eq!(detail["addresses"][0]["interface"], "eth0");
    assert_eq!(detail["addresses"][0]["subnet"], "net0");
}

both_backends!(
    a_machine_the_apply_adds_holds_its_address_once_it_exists,
    |store| async move {
        // Nothing in the store: the plan adds both machines, and their addresses are committed
        // once `add` has created them.
        let mut plan = fresh_plan(&store).await;
        for planned in &mut plan.machines {
            assert_eq!(planned.steps[0].verb(), "add", "{planned:#?}");
            let address = if planned.name == "m1" {
                "10.0.0.7"
            } else {
                "10.0.0.8"
            };
            planned.addresses = vec![allocation(&planned.name, "eth0", "net0", address)];
        }
        let done = apply(&store, plan).await;
        assert!(done.iter().all(|(_, state, _)| state == "done"), "{done:?}");
        assert_eq!(
            held(&store).await,
            [
                row("m1", "eth0", "net0", "10.0.0.7"),
                row("m5", "eth0", "net0", "10.0.0.8")
            ]
        );
    }
);
