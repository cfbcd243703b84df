//! `fleet bench lifecycle`, small: the command the benchmark suite runs at 1,000 and 10,000
//! machines must keep working (simulated machines from an empty store to ready, on SQLite and
//! on PostgreSQL, and the figures it prints).

use crate::support::controller::{stderr, stdout, FLEET};
use crate::support::db::test_postgres_url;
use std::process::{Command, Output};

fn bench_lifecycle(extra: &[&str]) -> Output {
    Command::new(FLEET)
        .args(["bench", "lifecycle", "--machines", "20"])
        .args(extra)
        .env_remove("FLEET_DATABASE")
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
    let output = bench_lifecycle(&["--database", &test_postgres_url()]);
    assert_twenty_ready_with_figures(&output);
    assert!(
        stdout(&output).contains("on PostgreSQL (fresh database fleet_bench_"),
        "{}",
        stdout(&output)
    );
}
