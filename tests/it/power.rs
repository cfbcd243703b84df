//! The `ipmi` power driver against OpenIPMI's BMC simulator `ipmi_sim` on 127.0.0.1 (one per
//! test, on a free port, with its own state directory), through the driver and through a real
//! controller and the CLI. The simulator's chassis is tests/fixtures/power/chassis-control.sh,
//! which keeps the power state in files and logs every command it is given.

use crate::support::controller::{stderr, stdout, TestController};
use crate::support::ipmi_sim::{free_udp_port, Bmc};
use fleet::model::{PowerCommand, PowerOffMode, PowerState};
use fleet::power::{PowerDrivers, PowerError, PowerTarget};
use serde_json::json;
use std::time::{Duration, Instant};

const PASSWORD: &str = "fleet-S3cret-4711";

fn target(params: serde_json::Value) -> PowerTarget {
    PowerTarget {
        machine: "bmc-1".into(),
        power_type: "ipmi".into(),
        params,
        stored: Default::default(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn ipmi_driver_queries_and_switches_the_simulator() {
    let bmc = Bmc::start(PASSWORD);
    let drivers = PowerDrivers::standard();
    assert!(drivers.power_types().contains(&"ipmi"));
    let password = bmc.password_file("password", PASSWORD);
    let machine = target(json!({
        "address": bmc.address(), "user": "admin", "password": {"file": password},
        "netboot": "true"
    }));
    let started = Instant::now();

    let report = drivers.query(&machine).await.expect("query");
    assert_eq!(report.state, PowerState::Off);

    let report = drivers.execute(&machine, PowerCommand::On).await.unwrap();
    assert_eq!(report.state, PowerState::On);
    assert_eq!(bmc.power(), "1");
    assert_eq!(drivers.query(&machine).await.unwrap().state, PowerState::On);
    assert_eq!(bmc.commands(), ["set boot pxe", "set power 1"]);

    let report = drivers
        .execute(&machine, PowerCommand::Cycle)
        .await
        .unwrap();
    assert_eq!(report.state, PowerState::On);
    assert_eq!(
        bmc.commands()[2..],
        ["set boot pxe", "set power 0"],
        "a cycle netboots too; the simulator powers back on by itself"
    );

    let report = drivers
        .execute(&machine, PowerCommand::Off(PowerOffMode::Soft))
        .await
        .unwrap();
    assert_eq!(report.state, PowerState::Off, "{report:?}");
    assert_eq!(bmc.commands().last().unwrap(), "set shutdown 1");
    assert_eq!(
        drivers.query(&machine).await.unwrap().state,
        PowerState::Off
    );

    drivers.execute(&machine, PowerCommand::On).await.unwrap();
    let report = drivers
        .execute(&machine, PowerCommand::Off(PowerOffMode::Hard))
        .await
        .unwrap();
    assert_eq!(report.state, PowerState::Off);
    assert_eq!(bmc.commands().last().unwrap(), "set power 0");
    assert_eq!(bmc.power(), "0");
    assert_eq!(
        drivers.query(&machine).await.unwrap().state,
        PowerState::Off
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );

    // Without `netboot` the boot device is left alone.
    let plain = target(json!({
        "address": bmc.address(), "user": "admin", "password": {"file": password}
    }));
    let before = bmc.commands().len();
    drivers.execute(&plain, PowerCommand::On).await.unwrap();
    assert_eq!(bmc.commands()[before..], ["set power 1"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn ipmi_wrong_password_and_unreachable_bmc_say_so_without_the_secret() {
    let bmc = Bmc::start(PASSWORD);
    let drivers = PowerDrivers::standard();
    let wrong = "not-the-Password-9";
    let file = bmc.password_file("wrong", wrong);
    let machine = target(json!({
        "address": bmc.address(), "user": "admin", "password": {"file": file}
    }));
    let started = Instant::now();
    let error = drivers
        .execute(&machine, PowerCommand::On)
        .await
        .expect_err("a wrong password is refused");
    let text = error.to_string();
    assert_eq!(
        text,
        format!(
            "ipmi {}: authentication failed (wrong user or password)",
            bmc.address()
        )
    );
    assert!(!text.contains(wrong) && !text.contains(PASSWORD));
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(bmc.commands().is_empty(), "nothing reached the chassis");

    // A wrong user is an authentication failure too.
    let good = bmc.password_file("good", PASSWORD);
    let stranger = target(json!({
        "address": bmc.address(), "user": "mallory", "password": {"file": good}
    }));
    let text = drivers.query(&stranger).await.unwrap_err().to_string();
    assert!(
        text.ends_with("authentication failed (wrong user or password)"),
        "{text}"
    );

    // An inline password is refused before anything runs, and not repeated.
    let inline = target(json!({
        "address": bmc.address(), "user": "admin", "password": PASSWORD
    }));
    let text = drivers.query(&inline).await.unwrap_err().to_string();
    assert!(text.contains("must be a reference"), "{text}");
    assert!(!text.contains(PASSWORD), "{text}");

    // A missing secret names the reference only.
    let missing = target(json!({
        "address": bmc.address(), "user": "admin",
        "password": {"env": "FLEET_TEST_NO_SUCH_BMC_PASSWORD"}
    }));
    let text = drivers.query(&missing).await.unwrap_err().to_string();
    assert!(text.contains("FLEET_TEST_NO_SUCH_BMC_PASSWORD"), "{text}");

    // Nothing on the port: unreachable, within the retry time.
    let port = free_udp_port();
    let silent = target(json!({
        "address": format!("127.0.0.1:{port}"), "user": "admin", "password": {"file": good}
    }));
    let started = Instant::now();
    let error = drivers.query(&silent).await.unwrap_err();
    let elapsed = started.elapsed();
    assert!(matches!(error, PowerError::Driver { .. }), "{error:?}");
    assert_eq!(
        error.to_string(),
        format!("ipmi 127.0.0.1:{port}: no answer from the BMC (unreachable)")
    );
    assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn ipmi_power_through_the_controller_and_the_cli() {
    // `fleet serve` inherits the test's environment, and with it the password.
    std::env::set_var("FLEET_TEST_BMC_PASSWORD", PASSWORD);
    let bmc = Bmc::start(PASSWORD);
    let controller = TestController::start();
    let address = format!("address={}", bmc.address());
    let output = controller.fleet(&[
        "machine",
        "add",
        "bmc-1",
        "--power-type",
        "ipmi",
        "--power-param",
        &address,
        "--power-param",
        "user=admin",
        "--power-param",
        "password=env:FLEET_TEST_BMC_PASSWORD",
        "--no-commission",
    ]);
    assert!(output.status.success(), "add: {}", stderr(&output));
    let store = controller.store().await;
    controller.make_deployed(&store, "bmc-1").await;

    let show_power = || {
        let output = controller.fleet(&["machine", "show", "bmc-1", "--json"]);
        assert!(output.status.success(), "show: {}", stderr(&output));
        let detail: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        assert!(!stdout(&output).contains(PASSWORD));
        detail["machine"]["power"].clone()
    };

    for (action, power, last) in [
        ("power-on", "1", "set power 1"),
        ("power-cycle", "1", "set power 0"),
        ("power-off", "0", "set power 0"),
    ] {
        let before = bmc.commands().len();
        let output = controller.fleet(&["machine", action, "bmc-1"]);
        assert!(
            output.status.success(),
            "{action}: {}{}",
            stdout(&output),
            stderr(&output)
        );
        assert!(!stdout(&output).contains(PASSWORD) && !stderr(&output).contains(PASSWORD));
        assert_eq!(bmc.commands()[before..], [last], "{action}");
        // The simulator carries out a cycle as off, then on again about a second later.
        let deadline = Instant::now() + Duration::from_secs(3);
        while bmc.power() != power && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(bmc.power(), power, "{action}");
        let expected = if power == "1" { "on" } else { "off" };
        assert_eq!(show_power(), json!(expected), "{action}");
    }

    // A wrong password through the controller: the action fails with the driver's message,
    // and the machine shows it, never the secret.
    let wrong = bmc.password_file("wrong", "wrong-Password-7");
    let output = controller.fleet(&[
        "machine",
        "add",
        "bmc-2",
        "--power-type",
        "ipmi",
        "--power-param",
        &address,
        "--power-param",
        "user=admin",
        "--power-param",
        &format!("password=file:{}", wrong.display()),
        "--no-commission",
    ]);
    assert!(output.status.success(), "add: {}", stderr(&output));
    controller.make_deployed(&store, "bmc-2").await;
    let started = Instant::now();
    let output = controller.fleet(&["machine", "power-on", "bmc-2"]);
    assert!(!output.status.success());
    assert!(started.elapsed() < Duration::from_secs(5));
    let text = format!("{}{}", stdout(&output), stderr(&output));
    assert!(
        text.contains(&format!(
            "ipmi {}: authentication failed (wrong user or password)",
            bmc.address()
        )),
        "{text}"
    );
    assert!(!text.contains("wrong-Password-7") && !text.contains(PASSWORD));
    let output = controller.fleet(&["machine", "show", "bmc-2", "--json"]);
    let detail: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(detail["machine"]["power"], "error", "{detail}");
    assert!(!stdout(&output).contains("wrong-Password-7"));

    // The history has the power changes, never the password.
    for name in ["bmc-1", "bmc-2"] {
        let events = controller.fleet(&["events", name, "--json"]);
        let text = stdout(&events);
        assert!(!text.contains(PASSWORD) && !text.contains("wrong-Password-7"));
    }
}

/// The power poll judges what it finds against fleet's power intent, not a quiet time: fleet's
/// own power-off and its cycle of a machine that was off (the simulator goes off, then on about
/// a second later) are never "changed outside fleet", while a power-off behind fleet's back at
/// once after them is, and a machine told to power itself off after its run is found off "as
/// fleet expected".
#[tokio::test(flavor = "multi_thread")]
async fn the_power_poll_tells_fleets_own_changes_from_outside_ones() {
    use fleet::services::actions::carry_out_power;
    use fleet::services::power_poll::poll_once;
    let bmc = Bmc::start(PASSWORD);
    let password = bmc.password_file("poll-password", PASSWORD);
    let params = json!({
        "address": bmc.address(), "user": "admin", "password": {"file": password},
    });
    let (store, _directory) = crate::support::db::sqlite_store().await;
    let new = fleet::store::NewMachine {
        name: fleet::model::MachineName::parse("bmc-poll").unwrap(),
        status: fleet::model::Status::New,
        macs: Vec::new(),
        arch: None,
        power_type: "ipmi".into(),
        power_params: params.clone(),
        bmc_address: None,
        image: None,
        tags: Vec::new(),
        deployed_os: None,
    };
    store.create_machine(&new, "test").await.unwrap();
    let drivers = PowerDrivers::standard();
    let decided = fleet::services::actions::MadeFor::decision(
        &store.machine("bmc-poll").await.unwrap().unwrap(),
    );
    let reasons = || async {
        let filter = fleet::store::EventFilter {
            machine: Some("bmc-poll".into()),
            ..Default::default()
        };
        let mut events = store.events(&filter).await.unwrap();
        events.sort_by_key(|event| event.id);
        events
            .into_iter()
            .filter(|event| event.kind == "power")
            .filter_map(|event| event.reason)
            .collect::<Vec<String>>()
    };
    let wait_for = |power: &str| {
        let deadline = Instant::now() + Duration::from_secs(5);
        while bmc.power() != power && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(bmc.power(), power);
    };

    let run = |command| carry_out_power(&store, &drivers, "bmc-poll", command, decided, "test");
    run(PowerCommand::Off(PowerOffMode::Hard)).await.unwrap();
    poll_once(&store, &drivers).await.unwrap();
    // Cycled while off: polled in the middle of the cycle and after it.
    run(PowerCommand::Cycle).await.unwrap();
    poll_once(&store, &drivers).await.unwrap();
    wait_for("1");
    poll_once(&store, &drivers).await.unwrap();
    let power = |record: Option<fleet::store::MachineRecord>| record.unwrap().lifecycle.power;
    assert_eq!(
        power(store.machine("bmc-poll").await.unwrap()),
        PowerState::On
    );
    let own = reasons().await;
    assert!(
        !own.iter().any(|reason| reason.contains("outside fleet")),
        "{own:?}"
    );

    // Switched off behind fleet's back right after fleet's cycle: drift.
    drivers
        .execute(
            &target(params.clone()),
            PowerCommand::Off(PowerOffMode::Hard),
        )
        .await
        .unwrap();
    poll_once(&store, &drivers).await.unwrap();
    let after = reasons().await;
    assert_eq!(
        after[own.len()..],
        ["power found off (was on), changed outside fleet"]
    );
    assert_eq!(
        power(store.machine("bmc-poll").await.unwrap()),
        PowerState::Off
    );

    // The machine is told to power itself off at the end of its run (as the runner's signal
    // answers `after poweroff`): still on at the next poll, then off.
    run(PowerCommand::On).await.unwrap();
    wait_for("1");
    store
        .set_power_intent(
            "bmc-poll",
            Some(&fleet::store::PowerIntent {
                target: PowerState::Off,
                passing: None,
                why: "the machine powered itself off at the end of its run".into(),
            }),
        )
        .await
        .unwrap();
    poll_once(&store, &drivers).await.unwrap();
    drivers
        .execute(&target(params), PowerCommand::Off(PowerOffMode::Hard))
        .await
        .unwrap();
    poll_once(&store, &drivers).await.unwrap();
    let last = reasons().await;
    assert_eq!(
        last.last().map(String::as_str),
        Some(
            "power found off (was on), as fleet expected: the machine powered itself off at \
             the end of its run"
        ),
        "{last:?}"
    );
}
