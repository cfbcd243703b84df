//! The clocks that watch a machine at work (lifecycle.md, "Timeouts"). Pure: the time is passed in.
//!
//! - The **status clock** runs from the moment the machine entered its in-progress status; past
//!   the policy's limit it fails with "operation X timed out after N".
//! - The **boot clock** runs from the power command that booted the machine (or from the status's
//!   start, when nobody powered it) to the machine's first call to the controller; past the boot
//!   limit it fails with "did not boot within N". Booting (firmware, netboot, kernel, modules)
//!   takes minutes on real iron and on a loaded emulator alike, so it has its own, longer, limit.
//! - The **heartbeat clock** runs from each call to the next once the machine has called; past the
//!   heartbeat limit it fails with "not heard from for N".
//! - The **call-back clock** replaces the boot and heartbeat clocks of a deploying machine once its
//!   installer signalled done (netboot off, the machine reboots into its installed system): past
//!   the call-back limit it fails with "the installed system did not call back within N".
//!
//! Boot and heartbeat clocks run only where the machine itself works (the ephemeral environment);
//! releasing and exiting rescue end when the controller's power command has run.

use super::{Settlement, Status};
use serde::{Deserialize, Serialize};

/// The limits that apply to a machine in one status, in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WatchLimits {
    /// The in-progress status's own limit (`None`: the status is not watched).
    pub status: Option<u32>,
    pub boot: u32,
    pub heartbeat: u32,
    pub callback: u32,
}

/// What the watch knows of a machine. Times are Unix milliseconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watched {
    pub status: Status,
    pub status_since: i64,
    /// When the latest power command that boots the machine (on, cycle) ran.
    pub boot_started: Option<i64>,
    /// The machine's latest call to the controller.
    pub last_heard: Option<i64>,
    /// When a deploying machine's installer signalled done (it counts only when it came after
    /// the status began: an earlier deployment's does not).
    pub install_done: Option<i64>,
    /// A power command decided for the machine has not been carried out yet (the power
    /// outbox): it cannot boot before it, so only the status clock runs meanwhile. A controller
    /// that died with hundreds of power-ons decided left them to the leader's courier, and the
    /// last of them would otherwise be failed for not booting before anyone powered them.
    pub power_pending: bool,
}

/// Which clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClockKind {
    Status,
    Boot,
    Heartbeat,
    Callback,
}

/// A clock that is running: it started at `since` (Unix ms) and fails the machine once
/// `limit_seconds` have passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunningClock {
    pub kind: ClockKind,
    pub since: i64,
    pub limit_seconds: u32,
}

impl RunningClock {
    /// Unix ms at which the clock runs out.
    pub fn deadline(&self) -> i64 {
        self.since + i64::from(self.limit_seconds) * 1000
    }

    fn settlement(&self, status: Status) -> Settlement {
        let seconds = u64::from(self.limit_seconds);
        match self.kind {
            ClockKind::Status => Settlement::TimedOut {
                operation: status.as_str().to_string(),
                seconds,
            },
            ClockKind::Boot => Settlement::DidNotBoot { seconds },
            ClockKind::Heartbeat => Settlement::NotHeardFrom { seconds },
            ClockKind::Callback => Settlement::DidNotCallBack { seconds },
        }
    }
}

/// Statuses in which the machine itself runs the ephemeral environment and calls the controller.
pub fn machine_works_in(status: Status) -> bool {
    matches!(
        status,
        Status::Commissioning
            | Status::Testing
            | Status::Deploying
            | Status::DiskErasing
            | Status::EnteringRescueMode
    )
}

impl Watched {
    /// When the machine's current boot began: the latest boot command, if it came after the
    /// status began, else the status's start.
    pub fn boot_since(&self) -> i64 {
        self.boot_started.unwrap_or(i64::MIN).max(self.status_since)
    }

    /// Whether the machine has called since its current boot began.
    pub fn has_called(&self) -> bool {
        self.last_heard
            .is_some_and(|heard| heard >= self.boot_since())
    }

    /// When the installer of the current deployment signalled done, if it did.
    pub fn install_done_at(&self) -> Option<i64> {
        self.install_done
            .filter(|done| self.status == Status::Deploying && *done >= self.status_since)
    }

    /// The clocks running now: the status clock (when the status has a limit) and, where the
    /// machine works, the boot clock until its first call, the heartbeat clock after it, and
    /// for a deployment whose installer is done, the call-back clock instead of both.
    pub fn clocks(&self, limits: &WatchLimits) -> Vec<RunningClock> {
        let Some(status_limit) = limits.status else {
            return Vec::new();
        };
        let mut clocks = vec![RunningClock {
            kind: ClockKind::Status,
            since: self.status_since,
            limit_seconds: status_limit,
        }];
        if self.power_pending {
            return clocks;
        }
        if let Some(done) = self.install_done_at() {
            clocks.push(RunningClock {
                kind: ClockKind::Callback,
                since: done,
                limit_seconds: limits.callback,
            });
        } else if machine_works_in(self.status) {
            clocks.push(match self.last_heard {
                Some(heard) if self.has_called() => RunningClock {
                    kind: ClockKind::Heartbeat,
                    since: heard,
                    limit_seconds: limits.heartbeat,
                },
                _ => RunningClock {
                    kind: ClockKind::Boot,
                    since: self.boot_since(),
                    limit_seconds: limits.boot,
                },
            });
        }
        clocks
    }

    /// What the watch does at `now`: the settlement of the first clock that ran out, if any.
    pub fn verdict(&self, limits: &WatchLimits, now: i64) -> Option<Settlement> {
        self.clocks(limits)
            .into_iter()
            .find(|clock| now > clock.deadline())
            .map(|clock| clock.settlement(self.status))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: WatchLimits = WatchLimits {
        status: Some(600),
        boot: 120,
        heartbeat: 20,
        callback: 300,
    };

    fn machine(status: Status, boot: Option<i64>, heard: Option<i64>) -> Watched {
        Watched {
            status,
            status_since: 10_000,
            boot_started: boot,
            last_heard: heard,
            install_done: None,
            power_pending: false,
        }
    }

    fn reason(machine: Watched, now: i64) -> Option<String> {
        machine
            .verdict(&LIMITS, now)
            .and_then(|settlement| settlement.reason())
    }

    #[test]
    fn a_booting_machine_has_the_boot_limit_until_its_first_call() {
        let booting = machine(Status::Commissioning, Some(12_000), None);
        // Silent for longer than the heartbeat limit, but still within the boot limit.
        assert_eq!(reason(booting.clone(), 100_000), None);
        assert_eq!(
            reason(booting, 132_001).as_deref(),
            Some("did not boot within 2 minutes")
        );
        // Nobody powered it (no power type): the boot clock starts with the status.
        assert_eq!(
            reason(machine(Status::Commissioning, None, None), 130_001).as_deref(),
            Some("did not boot within 2 minutes")
        );
    }

    #[test]
    fn after_its_first_call_the_heartbeat_limit_applies() {
        let called = machine(Status::Commissioning, Some(12_000), Some(50_000));
        assert_eq!(reason(called.clone(), 70_000), None);
        assert_eq!(
            reason(called, 70_001).as_deref(),
            Some("not heard from for 20 seconds")
        );
    }

    #[test]
    fn a_call_from_before_the_current_boot_does_not_count() {
        // Heard from at 11 s, power-cycled at 30 s: booting again, on the boot clock.
        let rebooted = machine(Status::DiskErasing, Some(30_000), Some(11_000));
        assert!(!rebooted.has_called());
        assert_eq!(reason(rebooted.clone(), 60_000), None);
        assert_eq!(
            reason(rebooted, 150_001).as_deref(),
            Some("did not boot within 2 minutes")
        );
        // A boot command from an earlier status is older than the status: the status's start counts.
        let earlier = machine(Status::Testing, Some(1_000), None);
        assert_eq!(earlier.boot_since(), 10_000);
    }

    #[test]
    fn a_power_command_not_carried_out_yet_holds_the_boot_and_heartbeat_clocks() {
        // Decided at 10 s (the status began), left in the power outbox by a controller that
        // died: not failed for not booting while nobody has powered it.
        let waiting = Watched {
            power_pending: true,
            ..machine(Status::Commissioning, None, None)
        };
        let kinds: Vec<ClockKind> = waiting.clocks(&LIMITS).iter().map(|c| c.kind).collect();
        assert_eq!(kinds, [ClockKind::Status]);
        assert_eq!(reason(waiting.clone(), 300_000), None);
        assert_eq!(
            reason(waiting, 610_001).as_deref(),
            Some("operation commissioning timed out after 10 minutes")
        );
        // Once carried out (its boot clock restarted), the boot limit applies again.
        assert_eq!(
            reason(machine(Status::Commissioning, Some(300_000), None), 420_001).as_deref(),
            Some("did not boot within 2 minutes")
        );
    }

    #[test]
    fn the_status_limit_applies_however_chatty_the_machine() {
        let chatty = machine(Status::Commissioning, Some(12_000), Some(609_000));
        assert_eq!(
            reason(chatty, 610_001).as_deref(),
            Some("operation commissioning timed out after 10 minutes")
        );
    }

    #[test]
    fn only_the_status_clock_runs_where_the_controller_works() {
        let releasing = machine(Status::Releasing, None, None);
        let kinds: Vec<ClockKind> = releasing
            .clocks(&LIMITS)
            .iter()
            .map(|clock| clock.kind)
            .collect();
        assert_eq!(kinds, [ClockKind::Status]);
        assert_eq!(reason(releasing, 300_000), None);
        // Resting statuses have no limit and no clock.
        let resting = WatchLimits {
            status: None,
            ..LIMITS
        };
        assert!(machine(Status::Ready, None, None)
            .clocks(&resting)
            .is_empty());
    }

    #[test]
    fn a_deployment_whose_installer_is_done_waits_on_the_call_back_clock() {
        let done = Watched {
            install_done: Some(60_000),
            ..machine(Status::Deploying, Some(12_000), Some(59_000))
        };
        let kinds: Vec<ClockKind> = done.clocks(&LIMITS).iter().map(|c| c.kind).collect();
        assert_eq!(kinds, [ClockKind::Status, ClockKind::Callback]);
        // Silent while it reboots: no heartbeat limit any more.
        assert_eq!(reason(done.clone(), 300_000), None);
        assert_eq!(
            reason(done, 360_001).as_deref(),
            Some("the installed system did not call back within 5 minutes")
        );
        // An earlier deployment's done signal does not count for this one.
        let earlier = Watched {
            install_done: Some(5_000),
            ..machine(Status::Deploying, Some(12_000), Some(50_000))
        };
        assert_eq!(earlier.install_done_at(), None);
        assert_eq!(
            reason(earlier, 70_001).as_deref(),
            Some("not heard from for 20 seconds")
        );
    }
}
