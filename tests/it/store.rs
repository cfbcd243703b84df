//! The store, on SQLite and on PostgreSQL: every test runs on both (see `both_backends!`).

use crate::both_backends;
use fleet::model::{
    decide, Action, ActionOptions, ActionRequest, EraseMode, Lifecycle, MacAddr, MachineName,
    PowerState, Status,
};
use fleet::store::{
    Backend, Commit, Disk, EventFilter, Hardware, Interface, Lease, LockHolder, MachineRecord,
    MachineRun, MachineState, NewEvent, NewMachine, ScriptResult, Store, StoreError, StoredPlan,
};
use serde_json::json;
use std::net::Ipv4Addr;

fn mac(text: &str) -> MacAddr {
    MacAddr::parse(text).unwrap()
}

fn name(text: &str) -> MachineName {
    MachineName::parse(text).unwrap()
}

fn new_machine(machine: &str, macs: &[&str]) -> NewMachine {
    NewMachine {
        name: name(machine),
        status: Status::New,
        macs: macs.iter().map(|text| mac(text)).collect(),
        arch: Some("amd64".into()),
        power_type: "ipmi".into(),
        power_params: json!({ "address": "10.0.0.1", "user": "admin", "password": { "env": "BMC_PASSWORD" } }),
        bmc_address: Some("10.0.0.1".into()),
        image: Some("ubuntu-24.04".into()),
        tags: vec!["rack-1".into(), "gpu".into()],
        deployed_os: None,
    }
}

async fn created(store: &Store, machine: &str, macs: &[&str]) -> MachineRecord {
    store
        .create_machine(&new_machine(machine, macs), "alice")
        .await
        .unwrap()
}

async fn events_of(store: &Store, machine: &str) -> Vec<fleet::store::Event> {
    store
        .events(&EventFilter {
            machine: Some(machine.into()),
            ..EventFilter::default()
        })
        .await
        .unwrap()
}

/// Takes `action` the way the controller does: decide on the record read, then commit.
async fn act(
    store: &Store,
    machine: &MachineRecord,
    request: &ActionRequest,
) -> Option<MachineRecord> {
    let outcome = decide(&machine.lifecycle, request).expect("the action is accepted");
    let commit = Commit {
        actor: &request.actor,
        action: Some(request.action),
        reason: request.comment.as_deref(),
        outcome: &outcome,
        image: request.options.image.as_deref(),
        decides_power: outcome.power.is_some(),
        erase_mode: None,
    };
    store.commit(machine, &commit).await.unwrap()
}

async fn force_status(store: &Store, machine: &str, status: Status) -> MachineRecord {
    let mut lifecycle = store.machine(machine).await.unwrap().unwrap().lifecycle;
    lifecycle.status = status;
    lifecycle.commissioned = true;
    store
        .write_lifecycle(machine, &lifecycle, "test", "set up")
        .await
        .unwrap()
}

fn disk(name: &str, size_bytes: i64) -> Disk {
    Disk {
        name: name.into(),
        model: Some("SAMSUNG MZ7L3".into()),
        serial: Some(format!("S{name}")),
        id_path: Some(format!("/dev/disk/by-id/wwn-{name}")),
        bus: Some("scsi".into()),
        size_bytes,
        block_size: Some(4096),
        rotational: Some(false),
    }
}

both_backends!(create_and_read_back_every_field, |store| async move {
    let before = fleet::store::now_ms();
    let record = created(
        &store,
        "node-1",
        &["52:54:00:00:00:01", "52:54:00:00:00:02"],
    )
    .await;
    assert!(record.id > 0);
    assert_eq!(record.name.as_str(), "node-1");
    let expected_lifecycle = Lifecycle {
        power_configured: true,
        ..Lifecycle::created(Status::New).unwrap()
    };
    assert_eq!(record.lifecycle, expected_lifecycle);
    assert_eq!(record.generation, 1);
    assert_eq!(record.status_reason, None);
    assert!(record.status_since >= before && record.created_at == record.status_since);
    assert_eq!(record.updated_at, record.created_at);
    assert_eq!(record.last_heard, None);
    assert_eq!(record.arch.as_deref(), Some("amd64"));
    assert_eq!(record.power_type, "ipmi");
    assert_eq!(
        record.power_params["password"],
        json!({ "env": "BMC_PASSWORD" })
    );
    assert_eq!(record.bmc_address.as_deref(), Some("10.0.0.1"));
    assert_eq!(record.image.as_deref(), Some("ubuntu-24.04"));
    assert_eq!(record.tags, vec!["rack-1".to_string(), "gpu".to_string()]);
    assert_eq!(
        record.hardware,
        Hardware {
            facts: json!({}),
            ..Hardware::default()
        }
    );
    let macs: Vec<String> = record
        .interfaces
        .iter()
        .map(|interface| interface.mac.to_string())
        .collect();
    assert_eq!(macs, ["52:54:00:00:00:01", "52:54:00:00:00:02"]);
    assert!(record.disks.is_empty());
    assert_eq!(store.machine("node-1").await.unwrap(), Some(record.clone()));
    assert_eq!(store.machine("node-2").await.unwrap(), None);
    assert_eq!(
        store
            .machine_by_mac(mac("52:54:00:00:00:02"))
            .await
            .unwrap(),
        Some(record.clone())
    );
    assert_eq!(
        store
            .machine_by_mac(mac("52:54:00:00:00:03"))
            .await
            .unwrap(),
        None
    );

    let events = events_of(&store, "node-1").await;
    assert_eq!(events.len(), 1);
    assert_eq!(
        (events[0].kind.as_str(), events[0].actor.as_str()),
        ("created", "alice")
    );
    assert_eq!(
        (events[0].from_status, events[0].to_status),
        (None, Some(Status::New))
    );
});

both_backends!(
    hardware_config_and_heartbeat_are_stored,
    |store| async move {
        created(&store, "node-1", &["52:54:00:00:00:01"]).await;
        let hardware = Hardware {
            cpus: Some(64),
            cpu_model: Some("AMD EPYC 9354".into()),
            cpu_speed_mhz: Some(3250),
            memory_mib: Some(262_144),
            facts: json!({ "dmi": { "vendor": "Dell Inc.", "serial": "7XQ4" }, "pci": [ "10de:2330" ] }),
        };
        let interfaces = vec![
            Interface {
                name: "eno1".into(),
                mac: mac("52:54:00:00:00:01"),
                link_up: Some(true),
                speed_mbps: Some(25_000),
                driver: Some("mlx5_core".into()),
            },
            Interface {
                name: "eno2".into(),
                mac: mac("52:54:00:00:00:09"),
                link_up: None,
                speed_mbps: None,
                driver: None,
            },
        ];
        let disks = vec![
            disk("nvme0n1", 3_840_755_982_336),
            Disk {
                rotational: None,
                block_size: None,
                ..disk("sda", 512)
            },
        ];
        store
            .replace_hardware("node-1", Some("arm64"), &hardware, &interfaces, &disks)
            .await
            .unwrap();
        store
            .update_config(
                "node-1",
                "redfish",
                &json!({ "address": "10.0.0.9" }),
                &["edge".into()],
                None,
            )
            .await
            .unwrap();
        store.heard_from("node-1").await.unwrap();

        let record = store.machine("node-1").await.unwrap().unwrap();
        assert_eq!(record.arch.as_deref(), Some("arm64"));
        assert_eq!(record.hardware, hardware);
        assert_eq!(record.interfaces, interfaces);
        assert_eq!(record.disks, disks);
        assert_eq!(record.power_type, "redfish");
        assert_eq!(record.power_params, json!({ "address": "10.0.0.9" }));
        assert_eq!(record.tags, vec!["edge".to_string()]);
        assert_eq!(
            record.image.as_deref(),
            Some("ubuntu-24.04"),
            "None keeps the image"
        );
        assert!(record.last_heard.is_some());
        assert_eq!(
            record.generation, 3,
            "hardware and config bump the generation, heartbeats do not"
        );

        // `arch: None` keeps the architecture; a MAC of another machine is refused.
        created(&store, "node-2", &["52:54:00:00:00:02"]).await;
        store
            .replace_hardware("node-1", None, &hardware, &interfaces[..1], &[])
            .await
            .unwrap();
        assert_eq!(
            store
                .machine("node-1")
                .await
                .unwrap()
                .unwrap()
                .arch
                .as_deref(),
            Some("arm64")
        );
        let stolen = Interface {
            mac: mac("52:54:00:00:00:02"),
            ..interfaces[0].clone()
        };
        let error = store
            .replace_hardware("node-1", None, &hardware, &[stolen], &[])
            .await
            .unwrap_err();
        assert!(
            matches!(&error, StoreError::DuplicateMac { owner, .. } if owner == "node-2"),
            "{error}"
        );

        // Unconfigured power: the life-cycle sees it.
        store
            .update_config("node-1", "unconfigured", &json!({}), &[], None)
            .await
            .unwrap();
        assert!(
            !store
                .machine("node-1")
                .await
                .unwrap()
                .unwrap()
                .lifecycle
                .power_configured
        );
        let missing = store.heard_from("node-9").await.unwrap_err();
        assert!(matches!(missing, StoreError::UnknownMachine(_)));
    }
);

both_backends!(initial_statuses_follow_the_rules, |store| async move {
    let live = NewMachine {
        status: Status::Deployed,
        deployed_os: Some("rhel-9".into()),
        power_type: "unconfigured".into(),
        ..new_machine("live-1", &[])
    };
    let record = store.create_machine(&live, "alice").await.unwrap();
    assert_eq!(record.lifecycle.status, Status::Deployed);
    assert_eq!(record.lifecycle.deployed_os.as_deref(), Some("rhel-9"));
    assert!(!record.lifecycle.commissioned && !record.lifecycle.power_configured);

    let ready = NewMachine {
        status: Status::Ready,
        ..new_machine("ready-1", &[])
    };
    let error = store.create_machine(&ready, "alice").await.unwrap_err();
    assert!(
        matches!(error, StoreError::InvalidInitialStatus { .. }),
        "{error}"
    );
    assert!(error.to_string().contains("(created) -> ready"), "{error}");
    assert_eq!(store.machine("ready-1").await.unwrap(), None);
});

both_backends!(duplicate_names_and_macs_are_refused, |store| async move {
    created(&store, "node-1", &["52:54:00:00:00:01"]).await;
    let error = store
        .create_machine(&new_machine("node-1", &["52:54:00:00:00:07"]), "bob")
        .await
        .unwrap_err();
    assert!(
        matches!(&error, StoreError::DuplicateName(name) if name == "node-1"),
        "{error}"
    );

    let error = store
        .create_machine(&new_machine("node-2", &["52:54:00:00:00:01"]), "bob")
        .await
        .unwrap_err();
    assert!(
        matches!(&error, StoreError::DuplicateMac { owner, .. } if owner == "node-1"),
        "{error}"
    );
    assert_eq!(
        error.to_string(),
        "MAC 52:54:00:00:00:01 already belongs to machine `node-1`"
    );

    let twice = new_machine("node-3", &["52:54:00:00:00:03", "52:54:00:00:00:03"]);
    let error = store.create_machine(&twice, "bob").await.unwrap_err();
    assert!(matches!(error, StoreError::DuplicateMac { .. }), "{error}");

    // Nothing of the refused machines was written, not even half.
    assert_eq!(store.machine_summaries().await.unwrap().len(), 1);
    assert!(events_of(&store, "node-2").await.is_empty());
    assert_eq!(
        store
            .machine_by_mac(mac("52:54:00:00:00:07"))
            .await
            .unwrap(),
        None
    );

    // A batch is all or nothing too.
    let batch = [new_machine("node-4", &[]), new_machine("node-1", &[])];
    assert!(store.create_machines(&batch, "bob").await.is_err());
    assert_eq!(store.machine("node-4").await.unwrap(), None);
});

both_backends!(
    a_decided_outcome_is_committed_with_its_events,
    |store| async move {
        let machine = created(&store, "node-1", &["52:54:00:00:00:01"]).await;
        let commissioned = act(
            &store,
            &machine,
            &ActionRequest::new(Action::Commission, "alice"),
        )
        .await
        .unwrap();
        assert_eq!(commissioned.lifecycle.status, Status::Commissioning);
        assert_eq!(commissioned.lifecycle.previous_status, Some(Status::New));
        assert_eq!(commissioned.lifecycle.power, PowerState::On);
        assert_eq!(commissioned.generation, machine.generation + 1);
        assert!(commissioned.status_since >= machine.status_since);

        let events = events_of(&store, "node-1").await;
        let kinds: Vec<&str> = events.iter().map(|event| event.kind.as_str()).collect();
        assert_eq!(kinds, ["created", "action", "status", "power"]);
        assert_eq!(events[1].action.as_deref(), Some("commission"));
        assert_eq!(events[2].from_status, Some(Status::New));
        assert_eq!(events[2].to_status, Some(Status::Commissioning));
        // The command is recorded as asked for; its result comes with the driver's answer.
        assert_eq!(events[3].detail["requested"], json!(true));
        assert_eq!(events[3].detail["from"], json!("unknown"));
        assert!(events.windows(2).all(|pair| pair[0].id < pair[1].id));

        // Deploy from ready allocates first: two status changes, in order; owner and image recorded.
        let ready = force_status(&store, "node-1", Status::Ready).await;
        let request = ActionRequest {
            comment: Some("for the batch cluster".into()),
            options: ActionOptions {
                image: Some("debian-13".into()),
                ..ActionOptions::default()
            },
            ..ActionRequest::new(Action::Deploy, "bob")
        };
        let deploying = act(&store, &ready, &request).await.unwrap();
        assert_eq!(deploying.lifecycle.status, Status::Deploying);
        assert_eq!(deploying.lifecycle.owner.as_deref(), Some("bob"));
        assert_eq!(deploying.image.as_deref(), Some("debian-13"));
        assert_eq!(
            deploying.status_reason.as_deref(),
            Some("for the batch cluster")
        );
        let after_id = events_of(&store, "node-1")
            .await
            .iter()
            .find(|event| event.kind == "forced")
            .unwrap()
            .id;
        let filter = EventFilter {
            machine: Some("node-1".into()),
            after_id: Some(after_id),
            limit: None,
        };
        let changes: Vec<(Option<Status>, Option<Status>)> = store
            .events(&filter)
            .await
            .unwrap()
            .iter()
            .filter(|event| event.kind == "status")
            .map(|event| (event.from_status, event.to_status))
            .collect();
        assert_eq!(
            changes,
            [
                (Some(Status::Ready), Some(Status::Allocated)),
                (Some(Status::Allocated), Some(Status::Deploying))
            ]
        );

        // A change without a status change keeps the status' reason and time.
        let locked = force_status(&store, "node-1", Status::Deployed).await;
        let after_lock = act(&store, &locked, &ActionRequest::new(Action::Lock, "bob"))
            .await
            .unwrap();
        assert!(after_lock.lifecycle.locked);
        assert_eq!(after_lock.status_since, locked.status_since);
        assert_eq!(after_lock.status_reason, locked.status_reason);
    }
);

both_backends!(
    a_commit_from_a_stale_read_conflicts_and_writes_nothing,
    |store| async move {
        let machine = created(&store, "node-1", &[]).await;
        let first = act(
            &store,
            &machine,
            &ActionRequest::new(Action::Commission, "alice"),
        )
        .await
        .unwrap();
        let events_before = events_of(&store, "node-1").await;

        let outcome = decide(
            &machine.lifecycle,
            &ActionRequest::new(Action::Commission, "bob"),
        )
        .unwrap();
        let commit = Commit {
            actor: "bob",
            action: Some(Action::Commission),
            reason: None,
            outcome: &outcome,
            image: None,
            decides_power: true,
            erase_mode: None,
        };
        let error = store.commit(&machine, &commit).await.unwrap_err();
        assert!(
            matches!(&error, StoreError::Conflict(name) if name == "node-1"),
            "{error}"
        );
        assert_eq!(store.machine("node-1").await.unwrap(), Some(first.clone()));
        assert_eq!(events_of(&store, "node-1").await, events_before);

        // A stale delete conflicts too, and deletes nothing.
        let delete = decide(
            &machine.lifecycle,
            &ActionRequest::new(Action::Delete, "bob"),
        )
        .unwrap();
        let commit = Commit {
            actor: "bob",
            action: Some(Action::Delete),
            reason: None,
            outcome: &delete,
            image: None,
            decides_power: false,
            erase_mode: None,
        };
        assert!(matches!(
            store.commit(&machine, &commit).await,
            Err(StoreError::Conflict(_))
        ));
        assert_eq!(store.machine("node-1").await.unwrap(), Some(first));
    }
);

both_backends!(
    a_releases_erase_mode_commits_with_its_status_or_not_at_all,
    |store| async move {
        created(&store, "node-1", &[]).await;
        let machine = force_status(&store, "node-1", Status::Allocated).await;
        let mut request = ActionRequest::new(Action::Release, "alice");
        request.options.erase = Some(EraseMode::Secure);
        let outcome = decide(&machine.lifecycle, &request).unwrap();
        let commit = Commit {
            actor: "alice",
            action: Some(Action::Release),
            reason: None,
            outcome: &outcome,
            image: None,
            decides_power: true,
            erase_mode: Some(EraseMode::Secure),
        };
        // From a stale read: refused, and the erase mode not written either.
        let mut stale = machine.clone();
        stale.generation -= 1;
        assert!(matches!(
            store.commit(&stale, &commit).await,
            Err(StoreError::Conflict(_))
        ));
        assert_eq!(store.erase_mode("node-1").await.unwrap(), None);
        // Committed: the status and the erase the machine will run, in one transaction.
        let after = store.commit(&machine, &commit).await.unwrap().unwrap();
        assert_eq!(after.lifecycle.status, Status::DiskErasing);
        assert_eq!(
            store.erase_mode("node-1").await.unwrap(),
            Some(EraseMode::Secure)
        );
    }
);

both_backends!(
    delete_keeps_the_events_and_frees_the_macs,
    |store| async move {
        let machine = created(&store, "node-1", &["52:54:00:00:00:01"]).await;
        let lease = Lease {
            mac: mac("52:54:00:00:00:01"),
            ip: Ipv4Addr::new(10, 0, 0, 20),
            subnet: "10.0.0.0/24".into(),
            hostname: Some("node-1".into()),
            machine: Some("node-1".into()),
            expires_at: 1,
        };
        store.upsert_lease(&lease).await.unwrap();
        let script = script_result(machine.id, "00-cpu", "passed");
        store.add_script_result(&script).await.unwrap();

        let deleted = act(
            &store,
            &machine,
            &ActionRequest::new(Action::Delete, "alice"),
        )
        .await;
        assert_eq!(deleted, None);
        assert_eq!(store.machine("node-1").await.unwrap(), None);
        assert_eq!(
            store
                .machine_by_mac(mac("52:54:00:00:00:01"))
                .await
                .unwrap(),
            None
        );
        assert_eq!(store.lease_by_mac(lease.mac).await.unwrap(), None);
        assert!(store.script_results(machine.id).await.unwrap().is_empty());
        let kinds: Vec<String> = events_of(&store, "node-1")
            .await
            .into_iter()
            .map(|event| event.kind)
            .collect();
        assert_eq!(kinds, ["created", "action", "deleted"]);

        // The MAC and the name are free again.
        let again = created(&store, "node-1", &["52:54:00:00:00:01"]).await;
        assert_ne!(again.id, machine.id);
        assert_eq!(
            events_of(&store, "node-1").await.len(),
            4,
            "the old history stays beside the new"
        );
    }
);

both_backends!(
    refusals_and_forced_changes_are_recorded,
    |store| async move {
        created(&store, "node-1", &[]).await;
        store
            .record_refusal(
                "node-1",
                Action::Deploy,
                "bob",
                "deploy is accepted only in: ready, allocated",
            )
            .await
            .unwrap();
        store
            .record_refusal(
                "ghost",
                Action::Commission,
                "bob",
                "no machine named `ghost`",
            )
            .await
            .unwrap();
        let forced = force_status(&store, "node-1", Status::Broken).await;
        assert_eq!(forced.lifecycle.status, Status::Broken);
        assert_eq!(forced.status_reason.as_deref(), Some("set up"));

        let events = events_of(&store, "node-1").await;
        let refused = &events[1];
        assert_eq!(
            (refused.kind.as_str(), refused.actor.as_str()),
            ("refused", "bob")
        );
        assert_eq!(refused.action.as_deref(), Some("deploy"));
        assert_eq!(refused.from_status, Some(Status::New));
        assert_eq!(
            refused.reason.as_deref(),
            Some("deploy is accepted only in: ready, allocated")
        );
        assert_eq!(events[2].kind, "forced");
        assert_eq!(
            (events[2].from_status, events[2].to_status),
            (Some(Status::New), Some(Status::Broken))
        );
        let ghost = events_of(&store, "ghost").await;
        assert_eq!((ghost.len(), ghost[0].from_status), (1, None));
    }
);

both_backends!(
    power_changes_are_recorded_only_when_they_change,
    |store| async move {
        created(&store, "node-1", &[]).await;
        store
            .set_power("node-1", PowerState::Off, "poller", None)
            .await
            .unwrap();
        store
            .set_power("node-1", PowerState::Off, "poller", None)
            .await
            .unwrap();
        store
            .set_power("node-1", PowerState::On, "alice", Some("bios update"))
            .await
            .unwrap();
        let record = store.machine("node-1").await.unwrap().unwrap();
        assert_eq!(record.lifecycle.power, PowerState::On);
        assert_eq!(record.generation, 3);
        let power: Vec<_> = events_of(&store, "node-1")
            .await
            .into_iter()
            .filter(|event| event.kind == "power")
            .collect();
        assert_eq!(power.len(), 2);
        assert_eq!(power[0].detail, json!({ "from": "unknown", "to": "off" }));
        assert_eq!(power[1].reason.as_deref(), Some("bios update"));
        let error = store
            .set_power("ghost", PowerState::On, "alice", None)
            .await
            .unwrap_err();
        assert!(matches!(error, StoreError::UnknownMachine(_)));
    }
);

both_backends!(settings_first_writer_wins, |store| async move {
    assert_eq!(store.setting("secret").await.unwrap(), None);
    assert_eq!(
        store.setting_or_insert("secret", "first").await.unwrap(),
        "first"
    );
    assert_eq!(
        store.setting_or_insert("secret", "second").await.unwrap(),
        "first"
    );
    assert_eq!(
        store.setting("secret").await.unwrap().as_deref(),
        Some("first")
    );

    // Racing writers all see the same winner.
    one_winner(|index| {
        let store = store.clone();
        async move {
            store
                .setting_or_insert("race", &format!("value-{index}"))
                .await
                .unwrap()
        }
    })
    .await;
});

both_backends!(
    machine_state_is_per_machine_and_deleted_with_it,
    |store| async move {
        let machine = created(&store, "node-1", &["52:54:00:00:00:01"]).await;
        created(&store, "node-2", &["52:54:00:00:00:02"]).await;
        assert_eq!(
            store.machine_state("node-1").await.unwrap(),
            Some(MachineState::default())
        );
        assert_eq!(store.machine_state("ghost").await.unwrap(), None);

        let run = MachineRun {
            id: "commissioning-1".into(),
            role: "commissioning".into(),
        };
        store
            .start_machine_run("node-1", &run, "hash-1")
            .await
            .unwrap();
        store
            .set_erase_mode("node-1", EraseMode::Secure)
            .await
            .unwrap();
        store
            .end_machine_run("node-1", "commissioning-1")
            .await
            .unwrap();
        // Writing one part keeps the others; a new run replaces the token and is not ended.
        let later = MachineRun {
            id: "testing-2".into(),
            role: "testing".into(),
        };
        store
            .start_machine_run("node-1", &later, "hash-2")
            .await
            .unwrap();
        store
            .end_machine_run("node-1", "commissioning-1")
            .await
            .unwrap();
        assert_eq!(
            store.machine_state("node-1").await.unwrap(),
            Some(MachineState {
                run: Some(later.clone()),
                run_token_hash: Some("hash-2".into()),
                erase_mode: Some(EraseMode::Secure),
                ..MachineState::default()
            })
        );
        assert_eq!(store.machine_run("node-1").await.unwrap(), Some(later));
        assert_eq!(
            store
                .machine_of_run_token("hash-2")
                .await
                .unwrap()
                .as_deref(),
            Some("node-1")
        );
        assert_eq!(store.machine_of_run_token("hash-1").await.unwrap(), None);
        // Per machine.
        store
            .start_machine_run("node-2", &run, "hash-3")
            .await
            .unwrap();
        assert_eq!(
            store
                .machine_of_run_token("hash-3")
                .await
                .unwrap()
                .as_deref(),
            Some("node-2")
        );
        // A machine that does not exist has no state and gets none.
        for error in [
            store
                .start_machine_run("ghost", &run, "h")
                .await
                .unwrap_err(),
            store.add_boot_secret("ghost", "h", None).await.unwrap_err(),
            store.set_registration("ghost", "h", 1).await.unwrap_err(),
            store
                .set_erase_mode("ghost", EraseMode::Quick)
                .await
                .unwrap_err(),
        ] {
            assert!(matches!(error, StoreError::UnknownMachine(_)), "{error}");
        }

        // Deleted with its machine: a machine re-added under the same name starts afresh.
        let deleted = act(
            &store,
            &machine,
            &ActionRequest::new(Action::Delete, "alice"),
        )
        .await;
        assert_eq!(deleted, None);
        assert_eq!(store.machine_state("node-1").await.unwrap(), None);
        let rows = sqlx::query("SELECT machine_id FROM machine_state")
            .fetch_all(store.pool())
            .await
            .unwrap();
        assert_eq!(rows.len(), 1, "only node-2's state is left");
        created(&store, "node-1", &["52:54:00:00:00:01"]).await;
        assert_eq!(
            store.machine_state("node-1").await.unwrap(),
            Some(MachineState::default())
        );
        assert_eq!(store.machine_of_run_token("hash-2").await.unwrap(), None);
        assert_eq!(store.machine_run("node-2").await.unwrap(), Some(run));
    }
);

// One boot: every secret handed out may make the one exchange, the first wins; the next
// exchange of any of them is refused naming the first address; a new power command (a new
// boot_started) after the exchange starts a new boot; a full boot counts as exchanged.
both_backends!(
    boot_secrets_allow_one_exchange_per_boot,
    |store| async move {
        use fleet::store::{SecretUse, BOOT_OVERFLOW, BOOT_SECRETS_PER_BOOT};
        created(&store, "node-1", &["52:54:00:00:00:01"]).await;
        let hash = |n: usize| format!("{n:064x}");
        store
            .add_boot_secret("node-1", &hash(1), Some(10))
            .await
            .unwrap();
        store
            .add_boot_secret("node-1", &hash(2), Some(10))
            .await
            .unwrap();
        assert_eq!(
            store
                .use_boot_secret("node-1", &hash(9), "10.0.0.9", Some(10))
                .await
                .unwrap(),
            SecretUse::Unknown
        );
        assert_eq!(
            store
                .use_boot_secret("node-1", &hash(1), "10.0.0.5", Some(10))
                .await
                .unwrap(),
            SecretUse::Won
        );
        for again in [1, 2] {
            assert_eq!(
                store
                    .use_boot_secret("node-1", &hash(again), "10.0.0.6", Some(10))
                    .await
                    .unwrap(),
                SecretUse::AlreadyUsed {
                    first_from: "10.0.0.5".into()
                }
            );
        }
        // Another script in the same boot: still the same boot (exchanged).
        store
            .add_boot_secret("node-1", &hash(3), Some(10))
            .await
            .unwrap();
        assert!(matches!(
            store
                .use_boot_secret("node-1", &hash(3), "10.0.0.6", Some(10))
                .await
                .unwrap(),
            SecretUse::AlreadyUsed { .. }
        ));
        // A power command later: a new boot, the old secrets gone.
        store
            .add_boot_secret("node-1", &hash(4), Some(20))
            .await
            .unwrap();
        let state = store.machine_state("node-1").await.unwrap().unwrap();
        assert_eq!(state.boot_secrets, [hash(4)]);
        assert_eq!(state.boot_exchanged_from, None);
        assert_eq!(
            store
                .use_boot_secret("node-1", &hash(1), "10.0.0.6", Some(20))
                .await
                .unwrap(),
            SecretUse::Unknown
        );
        // Racing exchanges of one boot: one wins.
        let winners = one_winner_count(|index| {
            let store = store.clone();
            let secret = hash(4);
            async move {
                store
                    .use_boot_secret("node-1", &secret, &format!("10.0.1.{index}"), Some(20))
                    .await
                    .unwrap()
                    == SecretUse::Won
            }
        })
        .await;
        assert_eq!(winners, 1);
        // More scripts than a boot fetches: the boot counts as exchanged.
        store
            .add_boot_secret("node-1", &hash(100), Some(30))
            .await
            .unwrap();
        for n in 101..100 + BOOT_SECRETS_PER_BOOT + 3 {
            store
                .add_boot_secret("node-1", &hash(n), Some(30))
                .await
                .unwrap();
        }
        let state = store.machine_state("node-1").await.unwrap().unwrap();
        assert_eq!(state.boot_secrets.len(), BOOT_SECRETS_PER_BOOT);
        assert_eq!(state.boot_exchanged_from.as_deref(), Some(BOOT_OVERFLOW));
        assert!(matches!(
            store
                .use_boot_secret("node-1", &hash(100), "10.0.0.5", Some(30))
                .await
                .unwrap(),
            SecretUse::AlreadyUsed { .. }
        ));
    }
);

both_backends!(
    registration_secrets_are_one_shot_and_expire,
    |store| async move {
        use fleet::store::SecretUse;
        created(&store, "node-1", &["52:54:00:00:00:01"]).await;
        let future = fleet::store::now_ms() + 60_000;
        store
            .set_registration("node-1", "r1", future)
            .await
            .unwrap();
        assert_eq!(
            store
                .use_registration("node-1", "r2", "10.0.0.5")
                .await
                .unwrap(),
            SecretUse::Unknown
        );
        assert_eq!(
            store
                .use_registration("node-1", "r1", "10.0.0.5")
                .await
                .unwrap(),
            SecretUse::Won
        );
        assert_eq!(
            store
                .use_registration("node-1", "r1", "10.0.0.6")
                .await
                .unwrap(),
            SecretUse::AlreadyUsed {
                first_from: "10.0.0.5".into()
            }
        );
        store.set_registration("node-1", "r3", 1000).await.unwrap();
        assert_eq!(
            store
                .use_registration("node-1", "r3", "10.0.0.5")
                .await
                .unwrap(),
            SecretUse::Expired { at: 1000 }
        );
    }
);

/// How many of 8 racers report winning.
async fn one_winner_count<Race, Raced>(race: Race) -> usize
where
    Race: Fn(usize) -> Raced,
    Raced: std::future::Future<Output = bool> + Send + 'static,
{
    let racers: Vec<_> = (0..8).map(|index| tokio::spawn(race(index))).collect();
    let mut won = 0;
    for racer in racers {
        won += usize::from(racer.await.unwrap());
    }
    won
}

/// The migrations of fleet before `machine_state` (0001-0003), in a directory of their own.
async fn migrations_before_machine_state(
    backend: &str,
) -> (sqlx::migrate::Migrator, tempfile::TempDir) {
    let source = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("migrations")
        .join(backend);
    let directory = tempfile::tempdir().unwrap();
    let mut copied = 0;
    for entry in std::fs::read_dir(&source).unwrap() {
        let path = entry.unwrap().path();
        let file = path.file_name().unwrap().to_string_lossy().to_string();
        if ["0001_", "0002_", "0003_"]
            .iter()
            .any(|prefix| file.starts_with(prefix))
        {
            std::fs::copy(&path, directory.path().join(&file)).unwrap();
            copied += 1;
        }
    }
    assert_eq!(copied, 3, "migrations 0001-0003 in {}", source.display());
    let migrator = sqlx::migrate::Migrator::new(directory.path())
        .await
        .unwrap();
    (migrator, directory)
}

/// Writes, at `url`, a database as fleet wrote it before `machine_state`: its schema, two
/// machines, their keys in `settings` (and those of a machine deleted since), another setting.
async fn write_store_of_main(url: &str, backend: &str) {
    sqlx::any::install_default_drivers();
    let (migrator, _directory) = migrations_before_machine_state(backend).await;
    let mut connection = <sqlx::AnyConnection as sqlx::Connection>::connect(url)
        .await
        .unwrap();
    migrator.run(&mut connection).await.unwrap();
    for machine in ["node-1", "node-2"] {
        sqlx::query(
            "INSERT INTO machines (name, status, status_since, created_at, updated_at) \
             VALUES ($1, 'commissioning', 1, 1, 1)",
        )
        .bind(machine)
        .execute(&mut connection)
        .await
        .unwrap();
    }
    let settings = [
        ("machine-token/node-1", "token-1"),
        (
            "machine-run/node-1",
            "disk_erasing-1700000000000 disk_erasing",
        ),
        ("machine-erase/node-1", "full"),
        ("machine-token/node-2", "token-2"),
        ("machine-run/node-2", "unreadable"),
        ("machine-token/gone", "token-of-a-deleted-machine"),
        ("machine-run/gone", "commissioning-1 commissioning"),
        ("machine-erase/gone", "quick"),
        ("operator-token", "operator"),
    ];
    for (key, value) in settings {
        sqlx::query("INSERT INTO settings (key, value) VALUES ($1, $2)")
            .bind(key)
            .bind(value)
            .execute(&mut connection)
            .await
            .unwrap();
    }
    sqlx::Connection::close(connection).await.unwrap();
}

/// Opens (and so migrates) the store written by [`write_store_of_main`] and checks that the
/// machines' keys moved to `machine_state` and left `settings`.
async fn check_machine_state_moved(url: &str) -> Store {
    let store = Store::open(url).await.unwrap();
    assert_eq!(
        store.machine_state("node-1").await.unwrap(),
        Some(MachineState {
            run: Some(MachineRun {
                id: "disk_erasing-1700000000000".into(),
                role: "disk_erasing".into(),
            }),
            erase_mode: Some(EraseMode::Full),
            ..MachineState::default()
        }),
        "the plain token is not kept (0006)"
    );
    assert_eq!(
        store.machine_state("node-2").await.unwrap(),
        Some(MachineState::default()),
        "an unreadable run is no run"
    );
    for key in [
        "machine-token/node-1",
        "machine-run/node-1",
        "machine-erase/node-1",
        "machine-token/node-2",
        "machine-run/node-2",
        "machine-token/gone",
        "machine-run/gone",
        "machine-erase/gone",
    ] {
        assert_eq!(store.setting(key).await.unwrap(), None, "{key}");
    }
    assert_eq!(
        store.setting("operator-token").await.unwrap().as_deref(),
        Some("operator")
    );
    let rows = sqlx::query("SELECT machine_id FROM machine_state")
        .fetch_all(store.pool())
        .await
        .unwrap();
    assert_eq!(rows.len(), 2, "no state for the machine deleted before");
    store
}

mod machine_state_moves_out_of_settings {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite() {
        let directory = tempfile::tempdir().unwrap();
        let url = format!(
            "sqlite://{}?mode=rwc",
            directory.path().join("fleet.db").display()
        );
        write_store_of_main(&url, "sqlite").await;
        let store = check_machine_state_moved(&url).await;
        store.close().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        let url = crate::support::db::empty_postgres_database().await;
        write_store_of_main(&url, "postgres").await;
        let store = check_machine_state_moved(&url).await;
        crate::support::db::drop_postgres_store(store).await;
    }
}

both_backends!(leases_crud, |store| async move {
    let lease = |mac_text: &str, last_octet: u8| Lease {
        mac: mac(mac_text),
        ip: Ipv4Addr::new(10, 0, 0, last_octet),
        subnet: "10.0.0.0/24".into(),
        hostname: None,
        machine: None,
        expires_at: 1_700_000_000_000,
    };
    let first = lease("52:54:00:00:00:01", 10);
    let second = Lease {
        hostname: Some("node-2".into()),
        machine: Some("node-2".into()),
        ..lease("52:54:00:00:00:02", 9)
    };
    store.upsert_lease(&first).await.unwrap();
    store.upsert_lease(&second).await.unwrap();
    assert_eq!(
        store.lease_by_mac(first.mac).await.unwrap(),
        Some(first.clone())
    );
    assert_eq!(
        store.lease_by_ip(second.ip).await.unwrap(),
        Some(second.clone())
    );
    assert_eq!(
        store
            .lease_by_ip(Ipv4Addr::new(10, 0, 0, 99))
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store.leases().await.unwrap(),
        [second.clone(), first.clone()],
        "sorted by address"
    );

    let renewed = Lease {
        ip: Ipv4Addr::new(10, 0, 0, 11),
        expires_at: 1_800_000_000_000,
        ..first.clone()
    };
    store.upsert_lease(&renewed).await.unwrap();
    assert_eq!(
        store.lease_by_mac(first.mac).await.unwrap(),
        Some(renewed.clone())
    );
    assert_eq!(store.lease_by_ip(first.ip).await.unwrap(), None);

    let taken = Lease {
        ip: second.ip,
        ..lease("52:54:00:00:00:03", 0)
    };
    let error = store.upsert_lease(&taken).await.unwrap_err();
    assert!(
        matches!(error, StoreError::DuplicateIp { holder, .. } if holder == second.mac),
        "{error}"
    );

    assert!(store.delete_lease(first.mac).await.unwrap());
    assert!(!store.delete_lease(first.mac).await.unwrap());
    assert_eq!(store.leases().await.unwrap(), [second]);
});

fn script_result(machine_id: i64, script: &str, status: &str) -> ScriptResult {
    ScriptResult {
        id: 0,
        machine_id,
        run_id: "run-1".into(),
        name: script.into(),
        kind: "commissioning".into(),
        status: status.into(),
        exit_code: Some(0),
        runtime_ms: Some(1250),
        stdout: "ok\n".into(),
        stderr: String::new(),
        results: json!({ "cpus": 64 }),
        at: 1_700_000_000_000,
    }
}

both_backends!(script_results_are_kept_in_order, |store| async move {
    let machine = created(&store, "node-1", &[]).await;
    let first = script_result(machine.id, "00-maas-cpuinfo", "passed");
    let second = ScriptResult {
        exit_code: None,
        runtime_ms: None,
        ..script_result(machine.id, "10-smartctl", "failed")
    };
    let first_id = store.add_script_result(&first).await.unwrap();
    let second_id = store.add_script_result(&second).await.unwrap();
    assert!(second_id > first_id);
    let results = store.script_results(machine.id).await.unwrap();
    assert_eq!(
        results,
        [
            ScriptResult {
                id: first_id,
                ..first
            },
            ScriptResult {
                id: second_id,
                ..second
            }
        ]
    );
    assert!(store
        .script_results(machine.id + 1)
        .await
        .unwrap()
        .is_empty());
});

both_backends!(plans_are_saved_and_updated, |store| async move {
    let plan = StoredPlan {
        id: "p-20250101-1".into(),
        created_at: 1_700_000_000_000,
        status: "pending".into(),
        body: json!({ "steps": [{ "machine": "node-1", "action": "commission" }] }),
    };
    store.save_plan(&plan).await.unwrap();
    assert_eq!(store.plan(&plan.id).await.unwrap(), Some(plan.clone()));
    store.set_plan_status(&plan.id, "applied").await.unwrap();
    assert_eq!(
        store.plan(&plan.id).await.unwrap().unwrap().status,
        "applied"
    );
    let replaced = StoredPlan {
        body: json!({ "steps": [] }),
        ..plan.clone()
    };
    store.save_plan(&replaced).await.unwrap();
    assert_eq!(store.plan(&plan.id).await.unwrap(), Some(replaced));
    assert_eq!(store.plan("nope").await.unwrap(), None);
    assert!(matches!(
        store.set_plan_status("nope", "applied").await,
        Err(StoreError::UnknownPlan(_))
    ));
});

both_backends!(locks_are_exclusive_until_stale, |store| async move {
    const STALE_AFTER_MS: i64 = 60_000;
    let taken: LockHolder = store
        .try_lock("apply", "controller-a", STALE_AFTER_MS)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (taken.holder.as_str(), taken.since),
        ("controller-a", taken.heartbeat)
    );

    let refused = store
        .try_lock("apply", "controller-b", STALE_AFTER_MS)
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(
        (refused.holder.as_str(), refused.since),
        ("controller-a", taken.since)
    );
    // The holder asking again keeps it (and its `since`).
    let again = store
        .try_lock("apply", "controller-a", STALE_AFTER_MS)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(again.since, taken.since);
    assert!(store.refresh_lock("apply", "controller-a").await.unwrap());
    assert!(!store.refresh_lock("apply", "controller-b").await.unwrap());
    // Other names are independent.
    assert!(store
        .try_lock("other", "controller-b", STALE_AFTER_MS)
        .await
        .unwrap()
        .is_ok());

    // A holder silent for longer than `stale_after_ms` is taken over.
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let takeover = store
        .try_lock("apply", "controller-b", 5)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(takeover.holder, "controller-b");
    assert!(takeover.since > taken.since);
    assert!(
        !store.refresh_lock("apply", "controller-a").await.unwrap(),
        "the old holder learns it lost the lock"
    );
    assert!(!store.unlock("apply", "controller-a").await.unwrap());
    assert!(store.unlock("apply", "controller-b").await.unwrap());
    assert!(store
        .try_lock("apply", "controller-a", STALE_AFTER_MS)
        .await
        .unwrap()
        .is_ok());
});

both_backends!(
    events_filter_by_machine_after_id_and_limit,
    |store| async move {
        let mut ids = Vec::new();
        for index in 0..6 {
            let event = NewEvent {
                machine: Some(if index % 2 == 0 { "node-a" } else { "node-b" }.into()),
                kind: "boot".into(),
                actor: "node".into(),
                action: None,
                from_status: None,
                to_status: None,
                reason: None,
                detail: json!({ "n": index }),
            };
            ids.push(store.append_event(&event).await.unwrap());
        }
        let all = store.events(&EventFilter::default()).await.unwrap();
        assert_eq!(all.iter().map(|event| event.id).collect::<Vec<_>>(), ids);
        assert!(all.iter().all(|event| event.at > 0));

        let node_a = events_of(&store, "node-a").await;
        assert_eq!(
            node_a
                .iter()
                .map(|event| event.detail["n"].clone())
                .collect::<Vec<_>>(),
            [json!(0), json!(2), json!(4)]
        );

        let after = store
            .events(&EventFilter {
                after_id: Some(ids[3]),
                ..EventFilter::default()
            })
            .await
            .unwrap();
        assert_eq!(
            after.iter().map(|event| event.id).collect::<Vec<_>>(),
            ids[4..]
        );

        let newest = store
            .events(&EventFilter {
                limit: Some(2),
                ..EventFilter::default()
            })
            .await
            .unwrap();
        assert_eq!(
            newest.iter().map(|event| event.id).collect::<Vec<_>>(),
            ids[4..],
            "the newest, oldest first"
        );

        let all_three = EventFilter {
            machine: Some("node-b".into()),
            after_id: Some(ids[1]),
            limit: Some(1),
        };
        let last_b = store.events(&all_three).await.unwrap();
        assert_eq!(
            last_b.iter().map(|event| event.id).collect::<Vec<_>>(),
            [ids[5]]
        );
    }
);

both_backends!(
    summaries_are_sorted_with_storage_summed,
    |store| async move {
        for machine in ["node-10", "node-2", "a-1", "node-1"] {
            created(&store, machine, &[]).await;
        }
        let hardware = Hardware {
            cpus: Some(8),
            memory_mib: Some(16_384),
            ..Hardware::default()
        };
        let disks = [
            disk("sda", 1_000_000_000_000),
            disk("sdb", 2_000_000_000_000),
        ];
        store
            .replace_hardware("node-2", None, &hardware, &[], &disks)
            .await
            .unwrap();
        store
            .set_power("node-2", PowerState::On, "poller", None)
            .await
            .unwrap();

        let summaries = store.machine_summaries().await.unwrap();
        let names: Vec<&str> = summaries
            .iter()
            .map(|summary| summary.name.as_str())
            .collect();
        assert_eq!(names, ["a-1", "node-1", "node-10", "node-2"]);
        let node_2 = &summaries[3];
        assert_eq!(node_2.storage_bytes, Some(3_000_000_000_000));
        assert_eq!((node_2.cpus, node_2.memory_mib), (Some(8), Some(16_384)));
        assert_eq!(
            (node_2.status, node_2.power, node_2.locked),
            (Status::New, PowerState::On, false)
        );
        assert_eq!(summaries[0].storage_bytes, None);

        // Text that needs escaping, flags and NULLs come back as they went in.
        let mut lifecycle = store.machine("a-1").await.unwrap().unwrap().lifecycle;
        lifecycle.owner = Some("o'brien \"ops\" \\ zoë 🚀".into());
        lifecycle.locked = true;
        store
            .write_lifecycle("a-1", &lifecycle, "test", "set up")
            .await
            .unwrap();
        let a_1 = &store.machine_summaries().await.unwrap()[0];
        assert_eq!(a_1.owner, lifecycle.owner);
        assert!(a_1.locked);
        assert_eq!((a_1.cpus, a_1.memory_mib), (None, None));
    }
);

both_backends!(backend_is_reported, |store| async move {
    let expected = match store.pool().connect_options().database_url.scheme() {
        "sqlite" => Backend::Sqlite,
        _ => Backend::Postgres,
    };
    assert_eq!(store.backend(), expected);
});

#[tokio::test]
async fn sqlite_file_is_created_in_a_missing_directory_in_wal_mode() {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("state/deeper/fleet.db");
    let store = Store::open(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    assert!(path.exists());
    let mode: String = sqlx::Row::get(
        &sqlx::query("PRAGMA journal_mode")
            .fetch_one(store.pool())
            .await
            .unwrap(),
        0,
    );
    assert_eq!(mode, "wal");
    let synchronous: i64 = sqlx::Row::get(
        &sqlx::query("PRAGMA synchronous")
            .fetch_one(store.pool())
            .await
            .unwrap(),
        0,
    );
    assert_eq!(synchronous, 1, "NORMAL");
    let foreign_keys: i64 = sqlx::Row::get(
        &sqlx::query("PRAGMA foreign_keys")
            .fetch_one(store.pool())
            .await
            .unwrap(),
        0,
    );
    assert_eq!(foreign_keys, 1);
    created(&store, "node-1", &[]).await;
    store.close().await;

    // Reopening (a plain path this time) keeps the data and runs no migration twice.
    let reopened = Store::open(path.to_str().unwrap()).await.unwrap();
    assert!(reopened.machine("node-1").await.unwrap().is_some());
    reopened.close().await;
}

#[tokio::test]
async fn unsupported_urls_are_refused() {
    let error = Store::open("mysql://root:hunter2@db/fleet")
        .await
        .unwrap_err();
    assert!(matches!(error, StoreError::UnsupportedUrl(_)));
    assert!(!error.to_string().contains("hunter2"), "{error}");
}

/// Eight writers race to write a value only the first may set; they must all read back one
/// winner, which is returned.
async fn one_winner<Write, Written>(write: Write) -> String
where
    Write: Fn(usize) -> Written,
    Written: std::future::Future<Output = String> + Send + 'static,
{
    let racers: Vec<_> = (0..8).map(|index| tokio::spawn(write(index))).collect();
    let mut winners = Vec::new();
    for racer in racers {
        winners.push(racer.await.unwrap());
    }
    winners.dedup();
    assert_eq!(winners.len(), 1, "{winners:?}");
    winners.remove(0)
}

both_backends!(
    the_planning_snapshot_carries_disk_identities_and_the_firmware,
    |store| async move {
        store
            .create_machine(&new_machine("node-1", &["52:54:00:00:09:01"]), "test")
            .await
            .unwrap();
        let hardware = Hardware {
            cpus: Some(4),
            cpu_model: Some("EPYC".into()),
            cpu_speed_mhz: None,
            memory_mib: Some(8192),
            facts: json!({ "arch": { "name": "amd64", "firmware": "uefi" }, "pci": [] }),
        };
        let interfaces = [Interface {
            name: "eth0".into(),
            mac: mac("52:54:00:00:09:01"),
            link_up: Some(true),
            speed_mbps: None,
            driver: None,
        }];
        let disks = [Disk {
            name: "nvme0n1".into(),
            model: Some("QEMU NVMe Ctrl".into()),
            serial: Some("SN-0001".into()),
            id_path: Some("/dev/disk/by-id/nvme-QEMU_SN-0001".into()),
            bus: Some("nvme".into()),
            size_bytes: 64 << 30,
            block_size: Some(512),
            rotational: Some(false),
        }];
        store
            .replace_hardware("node-1", Some("amd64"), &hardware, &interfaces, &disks)
            .await
            .unwrap();
        let observed = fleet::apply::observe(&store).await.unwrap();
        let machine = observed.machine("node-1").unwrap();
        assert_eq!(machine.hardware.firmware, Some(fleet::plan::Firmware::Uefi));
        let disk = &machine.hardware.disks[0];
        assert_eq!(disk.serial.as_deref(), Some("SN-0001"));
        assert_eq!(
            disk.id_path.as_deref(),
            Some("/dev/disk/by-id/nvme-QEMU_SN-0001")
        );
        assert_eq!(disk.rotational, Some(false));
        assert_eq!(disk.tags(), vec!["nvme".to_string(), "ssd".to_string()]);
        assert_eq!(machine.hardware.interfaces[0].name, "eth0");
    }
);

/// Records a migration this fleet does not have, as a newer fleet would have left it.
async fn pretend_a_newer_fleet_migrated(store: &Store) {
    let checksum = match store.backend() {
        fleet::store::Backend::Sqlite => "X'00'",
        fleet::store::Backend::Postgres => "'\\x00'::bytea",
    };
    sqlx::query(&format!(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (9999, 'from a newer fleet', TRUE, {checksum}, 0)"
    ))
    .execute(store.pool())
    .await
    .unwrap();
}

/// Opening `url` is refused with both versions named, and changes nothing.
async fn assert_refused_as_newer(url: &str, store: &Store) {
    let count = || async {
        let row = sqlx::query("SELECT COUNT(*) FROM _sqlx_migrations")
            .fetch_one(store.pool())
            .await
            .unwrap();
        sqlx::Row::get::<i64, _>(&row, 0)
    };
    let before = count().await;
    let error = Store::open(url)
        .await
        .expect_err("a database a newer fleet migrated is refused");
    let message = error.to_string();
    assert!(
        matches!(error, fleet::store::StoreError::NewerSchema { found: 9999, known, .. } if known >= 14),
        "{message}"
    );
    assert!(
        message.contains("version 9999") && message.contains("newer"),
        "{message}"
    );
    assert_eq!(count().await, before, "nothing migrated");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sqlite_database_a_newer_fleet_migrated_is_refused() {
    let (store, directory) = crate::support::db::sqlite_store().await;
    pretend_a_newer_fleet_migrated(&store).await;
    let url = format!("sqlite://{}", directory.path().join("fleet.db").display());
    assert_refused_as_newer(&url, &store).await;
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_database_a_newer_fleet_migrated_is_refused() {
    let url = crate::support::db::empty_postgres_database().await;
    let store = Store::open(&url).await.unwrap();
    pretend_a_newer_fleet_migrated(&store).await;
    assert_refused_as_newer(&url, &store).await;
    crate::support::db::drop_postgres_store(store).await;
}
