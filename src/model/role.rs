//! What a booted machine does: one role, named on the kernel command line by the iPXE script
//! (`fleet.role=`) and in the machine API's instructions (`role ...`), recorded with each run so
//! that later calls can be checked. Pure.

use super::Status;

/// Why a machine runs the ephemeral environment (or a live host runs the runner) now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// An unknown machine registers itself and reports what it is.
    Enlist,
    Commissioning,
    Testing,
    Rescue,
    /// Released with an erase: the disks are erased, then the release goes on.
    DiskErasing,
    Releasing,
    Deploying,
    /// `register-live.sh` on a machine that already runs a workload.
    RegisterLive,
    /// Nothing to do in the ephemeral environment.
    None,
}

impl Role {
    const ALL: [Role; 9] = [
        Role::Enlist,
        Role::Commissioning,
        Role::Testing,
        Role::Rescue,
        Role::DiskErasing,
        Role::Releasing,
        Role::Deploying,
        Role::RegisterLive,
        Role::None,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Enlist => "enlist",
            Role::Commissioning => "commissioning",
            Role::Testing => "testing",
            Role::Rescue => "rescue",
            Role::DiskErasing => "disk_erasing",
            Role::Releasing => "releasing",
            Role::Deploying => "deploying",
            Role::RegisterLive => "register-live",
            Role::None => "none",
        }
    }

    pub fn parse(text: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|role| role.as_str() == text)
    }

    /// The role a known machine in `status` netboots the ephemeral environment with (the iPXE
    /// script's `fleet.role=`); `None` where its status gives it nothing to do there.
    pub fn booted_for(status: Status) -> Role {
        match status {
            Status::Commissioning => Role::Commissioning,
            Status::Testing => Role::Testing,
            Status::EnteringRescueMode | Status::RescueMode => Role::Rescue,
            Status::DiskErasing => Role::DiskErasing,
            Status::Releasing => Role::Releasing,
            Status::Deploying => Role::Deploying,
            _ => Role::None,
        }
    }

    /// The role of a run a machine in `status` starts by asking for its instructions (`live`:
    /// `register-live.sh` on a live host). A new machine asking is enlisting. Releasing has no
    /// scripts in the ephemeral environment, so its runs are `None`.
    pub fn for_run(status: Status, live: bool) -> Role {
        if live {
            return Role::RegisterLive;
        }
        match (status, Role::booted_for(status)) {
            (Status::New, _) => Role::Enlist,
            (_, Role::Releasing) => Role::None,
            (_, role) => role,
        }
    }

    /// Whether a machine in `status` is still doing this run (else it is told to stop).
    pub fn still_running_in(self, status: Status) -> bool {
        match self {
            Role::Enlist => status == Status::New,
            // Commissioning turns into testing in the same boot when the tests start.
            Role::Commissioning => matches!(status, Status::Commissioning | Status::Testing),
            Role::Testing => status == Status::Testing,
            Role::Rescue => matches!(status, Status::EnteringRescueMode | Status::RescueMode),
            Role::DiskErasing => status == Status::DiskErasing,
            Role::Releasing => status == Status::Releasing,
            Role::Deploying => status == Status::Deploying,
            Role::RegisterLive => true,
            Role::None => false,
        }
    }

    /// What the machine does once its scripts are done.
    pub fn after(self) -> &'static str {
        match self {
            Role::Rescue => "wait",
            Role::RegisterLive => "exit",
            // The installer is done: the machine boots its installed system from the disk.
            Role::Deploying => "reboot",
            _ => "poweroff",
        }
    }
}

/// How far a deploying run has got, as its heartbeats report it: a phase of `fleet-deploy`
/// (fetch, check, clear, partition, format, mount, write-image, verify, bootloader, configure)
/// and, where the phase counts, how much of how much is done (bytes, for write-image).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DeployProgress {
    pub phase: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub done: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total: Option<u64>,
}

impl DeployProgress {
    /// `write-image 40/100 (40%)`, `partition`.
    pub fn describe(&self) -> String {
        match (self.done, self.total) {
            (Some(done), Some(total)) if total > 0 => format!(
                "{} {done}/{total} ({}%)",
                self.phase,
                done.saturating_mul(100) / total
            ),
            (Some(done), _) => format!("{} {done}", self.phase),
            _ => self.phase.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_role_reads_back_from_its_name() {
        for role in Role::ALL {
            assert_eq!(Role::parse(role.as_str()), Some(role));
        }
        assert_eq!(Role::parse("dancing"), None);
    }

    #[test]
    fn the_boot_and_the_run_of_a_status_agree_where_both_have_work() {
        for status in Status::ALL {
            let run = Role::for_run(status, false);
            if run != Role::None && run != Role::Enlist {
                assert_eq!(Role::booted_for(status), run, "{status}");
                assert!(run.still_running_in(status), "{status}");
            }
        }
        assert_eq!(Role::for_run(Status::New, false), Role::Enlist);
        assert_eq!(Role::for_run(Status::Deploying, false), Role::Deploying);
        assert_eq!(Role::Deploying.after(), "reboot");
        assert_eq!(Role::for_run(Status::Releasing, false), Role::None);
        assert_eq!(Role::booted_for(Status::Deploying), Role::Deploying);
        assert_eq!(Role::for_run(Status::Ready, true), Role::RegisterLive);
    }
}
