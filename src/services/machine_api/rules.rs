//! The machine API's rule book (pure): what a machine in some status is told to run, what a
//! script result or a final signal does to its life-cycle, and the text answers the busybox
//! runner reads. No IO, no clock.

use crate::config::ScriptKind;
use crate::model::{DeployProgress, Settlement, Status};

pub use crate::model::Role;

/// A script a machine may be told to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScriptEntry {
    pub name: String,
    pub kind: ScriptKind,
    pub timeout_seconds: u32,
    pub destructive: bool,
    /// Reads only, so it may run on a machine that carries a workload.
    pub safe_on_live_host: bool,
    pub builtin: bool,
    pub text: String,
}

/// The built-in script that erases disks in `mode` (quick, secure, full).
pub fn erase_script_name(mode: &str) -> String {
    format!("fleet-erase-{mode}")
}

/// The scripts of a run, in order: commissioning ones (built-in first, then the operator's,
/// each group by name), then the tests; for an erase, the erase of `erase_mode` alone.
pub fn scripts_for<'a>(
    role: Role,
    all: &'a [ScriptEntry],
    erase_mode: &str,
) -> Vec<&'a ScriptEntry> {
    let erase = erase_script_name(erase_mode);
    let wanted = |script: &&ScriptEntry| match role {
        Role::Enlist => script.kind == ScriptKind::Commissioning && script.builtin,
        Role::Commissioning => {
            matches!(script.kind, ScriptKind::Commissioning | ScriptKind::Testing)
        }
        Role::Testing => script.kind == ScriptKind::Testing,
        Role::DiskErasing => script.kind == ScriptKind::Erase && script.name == erase,
        Role::RegisterLive => {
            script.kind == ScriptKind::Commissioning
                && script.safe_on_live_host
                && !script.destructive
        }
        Role::Deploying => script.kind == ScriptKind::Deploy && script.builtin,
        Role::Rescue | Role::Releasing | Role::None => false,
    };
    let mut chosen: Vec<&ScriptEntry> = all.iter().filter(wanted).collect();
    chosen.sort_by(|a, b| {
        (a.kind, !a.builtin, a.name.as_str()).cmp(&(b.kind, !b.builtin, b.name.as_str()))
    });
    chosen
}

/// The instructions, as the runner reads them: one `key value...` line each.
pub fn render_instructions(
    machine: &str,
    role: Role,
    run: &str,
    heartbeat_seconds: u32,
    scripts: &[&ScriptEntry],
) -> String {
    let mut text = format!(
        "machine {machine}\nrole {}\nrun {run}\nheartbeat {heartbeat_seconds}\n",
        role.as_str()
    );
    for script in scripts {
        text.push_str(&format!(
            "script {} {} {}\n",
            script.name,
            script.kind.as_str(),
            script.timeout_seconds
        ));
    }
    text.push_str(&format!("after {}\n", role.after()));
    text
}

/// How a script ended (or that it started), as a machine reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScriptStatus {
    Running,
    Passed,
    Failed,
    TimedOut,
    Skipped,
    Degraded,
}

impl ScriptStatus {
    pub fn parse(text: &str) -> Option<ScriptStatus> {
        Some(match text {
            "running" => ScriptStatus::Running,
            "passed" => ScriptStatus::Passed,
            "failed" => ScriptStatus::Failed,
            "timed_out" => ScriptStatus::TimedOut,
            "skipped" => ScriptStatus::Skipped,
            "degraded" => ScriptStatus::Degraded,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ScriptStatus::Running => "running",
            ScriptStatus::Passed => "passed",
            ScriptStatus::Failed => "failed",
            ScriptStatus::TimedOut => "timed_out",
            ScriptStatus::Skipped => "skipped",
            ScriptStatus::Degraded => "degraded",
        }
    }

    fn is_failure(self) -> bool {
        matches!(self, ScriptStatus::Failed | ScriptStatus::TimedOut)
    }
}

/// One script's report, decoded.
#[derive(Debug, Clone, PartialEq)]
pub struct ScriptReport {
    pub run: String,
    pub name: String,
    pub kind: ScriptKind,
    pub status: ScriptStatus,
    pub exit_code: Option<i64>,
    pub runtime_ms: Option<i64>,
    pub stdout: String,
    pub stderr: String,
    pub results: serde_json::Value,
}

/// What a script report does to the machine's life-cycle.
pub fn settlement_for_report(status: Status, report: &ScriptReport) -> Option<Settlement> {
    let failed = report.status.is_failure();
    match (status, report.kind) {
        (Status::Commissioning, ScriptKind::Commissioning) if failed => Some(Settlement::Failed {
            reason: failure_reason("commissioning script", report),
        }),
        // The first test to start moves a commissioning machine to testing (same boot).
        (Status::Commissioning, ScriptKind::Testing) if report.status == ScriptStatus::Running => {
            Some(Settlement::StartTesting)
        }
        (Status::Commissioning, ScriptKind::Testing) if failed => Some(Settlement::Failed {
            reason: failure_reason("test", report),
        }),
        (Status::Testing, ScriptKind::Testing) if failed => Some(Settlement::Failed {
            reason: failure_reason("test", report),
        }),
        (Status::DiskErasing, ScriptKind::Erase) if failed => Some(Settlement::Failed {
            reason: failure_reason("disk erase", report),
        }),
        (Status::Deploying, ScriptKind::Deploy) if failed => Some(Settlement::Failed {
            reason: deploy_failure_reason(report),
        }),
        _ => None,
    }
}

/// "commissioning script 50-check failed (exit 3): no RAID controller" — the name, how it
/// ended, and the last line it wrote to stderr (else stdout).
pub fn failure_reason(what: &str, report: &ScriptReport) -> String {
    let ending = match (report.status, report.exit_code) {
        (ScriptStatus::TimedOut, _) => "timed out".to_string(),
        (_, Some(code)) => format!("failed (exit {code})"),
        (_, None) => "failed".to_string(),
    };
    let last_line = [&report.stderr, &report.stdout]
        .into_iter()
        .find_map(|text| text.lines().rev().find(|line| !line.trim().is_empty()))
        .map(|line| {
            let line: String = line.trim().chars().take(200).collect();
            format!(": {line}")
        })
        .unwrap_or_default();
    format!("{what} {} {ending}{last_line}", report.name)
}

/// "deployment failed in phase write-image: sha256 mismatch ..." from the script's last stderr
/// line `fleet-deploy: PHASE: message`; without such a line, the last line it wrote.
pub fn deploy_failure_reason(report: &ScriptReport) -> String {
    let ending = match report.status {
        ScriptStatus::TimedOut => "timed out",
        _ => "failed",
    };
    let last_line = [&report.stderr, &report.stdout]
        .into_iter()
        .find_map(|text| text.lines().rev().find(|line| !line.trim().is_empty()))
        .map(|line| line.trim().chars().take(300).collect::<String>());
    let tagged = last_line.as_deref().and_then(|line| {
        let rest = line.strip_prefix(&format!("{}: ", report.name))?;
        let (phase, message) = rest.split_once(": ")?;
        is_plain_name(phase).then(|| (phase.to_string(), message.trim().to_string()))
    });
    match (tagged, last_line) {
        (Some((phase, message)), _) => format!("deployment {ending} in phase {phase}: {message}"),
        (None, Some(line)) => format!(
            "deployment {ending} ({} exit {}): {line}",
            report.name,
            exit_text(report)
        ),
        (None, None) => format!(
            "deployment {ending} ({} exit {})",
            report.name,
            exit_text(report)
        ),
    }
}

fn exit_text(report: &ScriptReport) -> String {
    report
        .exit_code
        .map_or_else(|| "unknown".to_string(), |code| code.to_string())
}

/// A deployment's time-out (status, boot, heartbeat) names the phase of its last progress:
/// "operation deploying timed out after 60 minutes (last progress: write-image 40/100 (40%))".
pub fn with_progress(settlement: Settlement, progress: Option<&DeployProgress>) -> Settlement {
    let timed_out = matches!(
        settlement,
        Settlement::TimedOut { .. } | Settlement::NotHeardFrom { .. }
    );
    match (progress, settlement.reason()) {
        (Some(progress), Some(reason)) if timed_out => Settlement::Failed {
            reason: format!("{reason} (last progress: {})", progress.describe()),
        },
        _ => settlement,
    }
}

/// What the final signal does: `Ok` ends the run's in-progress status well, a failure fails it.
pub fn settlement_for_signal(
    role: Role,
    status: Status,
    failure: Option<&str>,
) -> Option<Settlement> {
    if let Some(reason) = failure {
        return status.is_in_progress().then(|| Settlement::Failed {
            reason: format!("the ephemeral environment reported a failure: {reason}"),
        });
    }
    let ends_well = match role {
        Role::Commissioning => matches!(status, Status::Commissioning | Status::Testing),
        Role::Testing => status == Status::Testing,
        Role::Rescue => status == Status::EnteringRescueMode,
        Role::DiskErasing => status == Status::DiskErasing,
        Role::Enlist | Role::RegisterLive | Role::Releasing | Role::Deploying | Role::None => false,
    };
    ends_well.then_some(Settlement::Succeeded)
}

/// Whether the final signal of a run records a deployment's install as done: an `ok` from the
/// deploying run of a machine still deploying.
pub fn installs_done(role: Role, status: Status, failure: Option<&str>) -> bool {
    role == Role::Deploying && status == Status::Deploying && failure.is_none()
}

/// Names of machines, scripts and runs travel in URLs and in the runner's lines.
pub fn is_plain_name(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 128
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn script(name: &str, kind: ScriptKind, builtin: bool, live: bool) -> ScriptEntry {
        ScriptEntry {
            name: name.into(),
            kind,
            timeout_seconds: 60,
            destructive: false,
            safe_on_live_host: live,
            builtin,
            text: "true".into(),
        }
    }

    fn report(kind: ScriptKind, status: ScriptStatus) -> ScriptReport {
        ScriptReport {
            run: "r1".into(),
            name: "50-check".into(),
            kind,
            status,
            exit_code: Some(3),
            runtime_ms: Some(10),
            stdout: "checking\n".into(),
            stderr: "warming up\nno RAID controller\n\n".into(),
            results: serde_json::json!({}),
        }
    }

    #[test]
    fn each_role_runs_its_scripts_builtin_first() {
        let all = vec![
            script("zz-operator", ScriptKind::Commissioning, false, false),
            script("fleet-memtest", ScriptKind::Testing, true, false),
            script("10-fleet-cpu", ScriptKind::Commissioning, true, true),
            script("30-fleet-disks", ScriptKind::Commissioning, true, false),
            script("aa-burn", ScriptKind::Testing, false, false),
            script("fleet-erase-quick", ScriptKind::Erase, true, false),
            script("fleet-erase-full", ScriptKind::Erase, true, false),
        ];
        let names = |role| {
            scripts_for(role, &all, "quick")
                .iter()
                .map(|s| s.name.as_str())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            names(Role::Commissioning),
            [
                "10-fleet-cpu",
                "30-fleet-disks",
                "zz-operator",
                "fleet-memtest",
                "aa-burn"
            ]
        );
        assert_eq!(names(Role::Enlist), ["10-fleet-cpu", "30-fleet-disks"]);
        assert_eq!(names(Role::Testing), ["fleet-memtest", "aa-burn"]);
        assert_eq!(names(Role::RegisterLive), ["10-fleet-cpu"]);
        assert!(names(Role::Rescue).is_empty());
        assert_eq!(names(Role::DiskErasing), ["fleet-erase-quick"]);
    }

    #[test]
    fn instructions_are_lines_the_runner_reads() {
        let all = [script(
            "10-fleet-cpu",
            ScriptKind::Commissioning,
            true,
            true,
        )];
        let chosen: Vec<&ScriptEntry> = all.iter().collect();
        assert_eq!(
            render_instructions("node-1", Role::Commissioning, "c-1", 5, &chosen),
            "machine node-1\nrole commissioning\nrun c-1\nheartbeat 5\n\
             script 10-fleet-cpu commissioning 60\nafter poweroff\n"
        );
    }

    #[test]
    fn reports_move_the_life_cycle_as_lifecycle_md_says() {
        use ScriptKind::{Commissioning as C, Testing as T};
        use ScriptStatus::*;
        let failed_reason = |settlement: Option<Settlement>| match settlement {
            Some(Settlement::Failed { reason }) => reason,
            other => panic!("expected a failure, got {other:?}"),
        };
        assert_eq!(
            failed_reason(settlement_for_report(
                Status::Commissioning,
                &report(C, Failed)
            )),
            "commissioning script 50-check failed (exit 3): no RAID controller"
        );
        assert_eq!(
            failed_reason(settlement_for_report(
                Status::Commissioning,
                &report(C, TimedOut)
            )),
            "commissioning script 50-check timed out: no RAID controller"
        );
        assert_eq!(
            settlement_for_report(Status::Commissioning, &report(T, Running)),
            Some(Settlement::StartTesting)
        );
        assert!(
            failed_reason(settlement_for_report(Status::Testing, &report(T, Failed)))
                .starts_with("test 50-check failed (exit 3)")
        );
        for quiet in [
            (Status::Commissioning, report(C, Passed)),
            (Status::Commissioning, report(C, Running)),
            (Status::Testing, report(T, Degraded)),
            (Status::New, report(C, Failed)),
            (Status::Deployed, report(C, Failed)),
        ] {
            assert_eq!(settlement_for_report(quiet.0, &quiet.1), None, "{quiet:?}");
        }
    }

    #[test]
    fn the_final_signal_ends_only_the_run_it_belongs_to() {
        use Role::{Commissioning, Enlist, RegisterLive, Rescue};
        let ok = |role, status| settlement_for_signal(role, status, None);
        assert_eq!(
            ok(Commissioning, Status::Commissioning),
            Some(Settlement::Succeeded)
        );
        assert_eq!(
            ok(Commissioning, Status::Testing),
            Some(Settlement::Succeeded)
        );
        assert_eq!(
            ok(Rescue, Status::EnteringRescueMode),
            Some(Settlement::Succeeded)
        );
        assert_eq!(ok(Enlist, Status::New), None);
        assert_eq!(ok(Commissioning, Status::New), None);
        assert_eq!(ok(RegisterLive, Status::Deployed), None);
        assert!(matches!(
            settlement_for_signal(Commissioning, Status::Commissioning, Some("no disk")),
            Some(Settlement::Failed { .. })
        ));
        assert_eq!(settlement_for_signal(Enlist, Status::New, Some("x")), None);
    }

    #[test]
    fn runs_stop_when_the_machine_moved_on() {
        assert!(Role::Commissioning.still_running_in(Status::Testing));
        assert!(!Role::Commissioning.still_running_in(Status::New));
        assert!(!Role::Enlist.still_running_in(Status::Commissioning));
        assert!(Role::RegisterLive.still_running_in(Status::Deployed));
    }

    fn deploy_report(status: ScriptStatus, stderr: &str) -> ScriptReport {
        ScriptReport {
            name: "fleet-deploy".into(),
            kind: ScriptKind::Deploy,
            stderr: stderr.into(),
            stdout: "laying out sda\n".into(),
            ..report(ScriptKind::Deploy, status)
        }
    }

    #[test]
    fn a_deploying_run_gets_fleet_deploy_alone() {
        let all = vec![
            script("10-fleet-cpu", ScriptKind::Commissioning, true, true),
            script("fleet-deploy", ScriptKind::Deploy, true, false),
            script("fleet-memtest", ScriptKind::Testing, true, false),
        ];
        let names = |role| {
            scripts_for(role, &all, "quick")
                .iter()
                .map(|s| s.name.as_str())
                .collect::<Vec<_>>()
        };
        assert_eq!(names(Role::Deploying), ["fleet-deploy"]);
        assert_eq!(
            names(Role::Commissioning),
            ["10-fleet-cpu", "fleet-memtest"]
        );
        assert!(names(Role::RegisterLive)
            .iter()
            .all(|n| *n != "fleet-deploy"));
    }

    #[test]
    fn a_failed_deployment_names_its_phase() {
        let failed = |status, stderr: &str| match settlement_for_report(
            Status::Deploying,
            &deploy_report(status, stderr),
        ) {
            Some(Settlement::Failed { reason }) => reason,
            other => panic!("expected a failure, got {other:?}"),
        };
        assert_eq!(
            failed(
                ScriptStatus::Failed,
                "writing\nfleet-deploy: write-image: sha256 mismatch: expected A, got B\n"
            ),
            "deployment failed in phase write-image: sha256 mismatch: expected A, got B"
        );
        assert_eq!(
            failed(ScriptStatus::Failed, "mkfs.ext4: no space\n"),
            "deployment failed (fleet-deploy exit 3): mkfs.ext4: no space"
        );
        assert_eq!(
            failed(
                ScriptStatus::TimedOut,
                "fleet-deploy: verify: reading back\n"
            ),
            "deployment timed out in phase verify: reading back"
        );
        assert_eq!(
            settlement_for_report(Status::Deploying, &deploy_report(ScriptStatus::Passed, "")),
            None
        );
    }

    #[test]
    fn a_deployment_that_times_out_says_how_far_it_got() {
        let progress = DeployProgress {
            phase: "write-image".into(),
            done: Some(40),
            total: Some(100),
        };
        let timed_out = Settlement::TimedOut {
            operation: "deploying".into(),
            seconds: 3600,
        };
        assert_eq!(
            with_progress(timed_out.clone(), Some(&progress)).reason().as_deref(),
            Some("operation deploying timed out after 60 minutes (last progress: write-image 40/100 (40%))")
        );
        assert_eq!(with_progress(timed_out.clone(), None), timed_out);
        let called_back = Settlement::DidNotCallBack { seconds: 60 };
        assert_eq!(
            with_progress(called_back.clone(), Some(&progress)),
            called_back
        );
    }
}
