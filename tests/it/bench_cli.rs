//! `fleet bench lifecycle`, small: the command the benchmark suite runs at 1,000 and 10,000
//! machines must keep working (simulated machines from an empty store to ready, on SQLite, on
//! PostgreSQL, and through three controllers on one PostgreSQL database, and the figures it
//! prints).

use crate::support::controller::{stderr, stdout, FLEET};
use crate::support::db::test_postgres_url;
use std::process::{Command, Output};
use std::sync::Mutex;

/// The PostgreSQL benches run one after the other: three controllers hold some 56 of the
/// server's 100 connections (16 each, 8 more for the leader, listeners), and with the
/// one-controller bench and other tests' controllers beside them the server ran out, refused
/// new sessions and both benches waited until their time limit.
static ONE_POSTGRES_BENCH_AT_A_TIME: Mutex<()> = Mutex::new(());

fn bench_lifecycle(extra: &[&str]) -> Output {
    bench_lifecycle_of(&[&["--machines", "20"], extra].concat())
}

/// `fleet bench lifecycle ARGUMENTS`, its output.
fn bench_lifecycle_of(arguments: &[&str]) -> Output {
    Command::new(FLEET)
        .args(["bench", "lifecycle"])
        .args(arguments)
        .env_remove("FLEET_DATABASE")
        // The controllers the bench starts share the PostgreSQL server with other tests.
        .env(
            "FLEET_DATABASE_MAX_CONNECTIONS",
            crate::support::controller::TEST_DATABASE_MAX_CONNECTIONS,
        )
        .env("NO_COLOR", "1")
        .output()
        .expect("fleet runs")
}

fn assert_twenty_ready_with_figures(output: &Output) {
    let shown = format!("{}\n{}", stdout(output), stderr(output));
    assert!(output.status.success(), "{shown}");
    let printed = stdout(output);
    for expected in [
        "result: 20 of 20 ready, 0 failed",
        "machines per second to ready",
        "peak memory (VmHWM)",
        "load average",
        "all enlisted",
        "parallelism = 20",
    ] {
        assert!(printed.contains(expected), "no `{expected}` in:\n{shown}");
    }
}

#[test]
fn bench_lifecycle_brings_twenty_simulated_machines_to_ready_on_sqlite() {
    let output = bench_lifecycle(&[]);
    assert_twenty_ready_with_figures(&output);
    assert!(stdout(&output).contains("on SQLite"), "{}", stdout(&output));
}

#[test]
fn bench_lifecycle_brings_twenty_simulated_machines_to_ready_on_a_fresh_postgres_database() {
    let _one_at_a_time = ONE_POSTGRES_BENCH_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let output = bench_lifecycle(&["--database", &test_postgres_url()]);
    assert_twenty_ready_with_figures(&output);
    assert!(
        stdout(&output).contains("on PostgreSQL (fresh database fleet_bench_"),
        "{}",
        stdout(&output)
    );
}

/// Issue 16: the benchmark's row for three controllers on one database. Thirty machines, ten
/// booted by each controller; the figures name all three, each one's share, and the leader.
#[test]
fn bench_lifecycle_brings_thirty_machines_to_ready_through_three_controllers_on_one_postgres_database(
) {
    let _one_at_a_time = ONE_POSTGRES_BENCH_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    // A time limit far above the 10-20 s it takes on a loaded machine, below the default 900 s:
    // a stuck run fails with how far the machines got, in a third of the time.
    let url = test_postgres_url();
    let output = bench_lifecycle_of(&[
        "--machines",
        "30",
        "--controllers",
        "3",
        "--time-limit",
        "300",
        "--database",
        &url,
    ]);
    let shown = format!("{}\n{}", stdout(&output), stderr(&output));
    assert!(output.status.success(), "{shown}");
    let printed = stdout(&output);
    for expected in [
        "30 machines, cold (empty store)",
        "on PostgreSQL (fresh database fleet_bench_",
        ", 3 controllers (each the boot server of a share of the machines)",
        "result: 30 of 30 ready, 0 failed",
        "machines per second to ready",
        "3 controllers summed to ready: peak memory (VmHWM)",
        "    controller 1 (boot server of 10 machines",
        "    controller 2 (boot server of 10 machines",
        "    controller 3 (boot server of 10 machines",
        "  led by: controller ",
        "parallelism = 30",
    ] {
        assert!(printed.contains(expected), "no `{expected}` in:\n{shown}");
    }
    assert!(
        !printed.contains("controller 4"),
        "a fourth controller in:\n{shown}"
    );
    // One of the three is named the leader on its line (two if the leadership moved during
    // the run, which a loaded machine may cause; never none).
    let leaders = printed
        .lines()
        .filter(|line| line.starts_with("    controller ") && line.contains(", leader"))
        .count();
    assert!(
        (1..=2).contains(&leaders),
        "{leaders} controller lines name a leader:\n{shown}"
    );
    assert!(!printed.contains("led by: none"), "{shown}");
}

#[test]
fn bench_lifecycle_refuses_several_controllers_without_postgres() {
    let output = bench_lifecycle(&["--controllers", "3"]);
    assert!(!output.status.success(), "{}", stdout(&output));
    let said = stderr(&output);
    assert!(
        said.contains("--controllers 3 needs --database postgres://")
            && said.contains("SQLite is one controller's store"),
        "{said}"
    );
}
