//! The 23 machine statuses of the life-cycle, the transition whitelist and the failure map.
//!
//! Everything here is data read off `lifecycle.md`; the tests in `tests/it/lifecycle.rs` check
//! every row against a copy of that table.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// A machine's status. The discriminants are MAAS's numbers.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    New = 0,
    Commissioning = 1,
    FailedCommissioning = 2,
    Missing = 3,
    Ready = 4,
    Reserved = 5,
    Deployed = 6,
    Retired = 7,
    Broken = 8,
    Deploying = 9,
    Allocated = 10,
    FailedDeployment = 11,
    Releasing = 12,
    FailedReleasing = 13,
    DiskErasing = 14,
    FailedDiskErasing = 15,
    RescueMode = 16,
    EnteringRescueMode = 17,
    FailedEnteringRescueMode = 18,
    ExitingRescueMode = 19,
    FailedExitingRescueMode = 20,
    Testing = 21,
    FailedTesting = 22,
}

/// What kind of status it is: one a machine rests in, one that is under way, or a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StatusKind {
    Resting,
    InProgress,
    Failed,
}

use Status::*;

impl Status {
    /// Every status, in MAAS's numbering.
    pub const ALL: [Status; 23] = [
        New,
        Commissioning,
        FailedCommissioning,
        Missing,
        Ready,
        Reserved,
        Deployed,
        Retired,
        Broken,
        Deploying,
        Allocated,
        FailedDeployment,
        Releasing,
        FailedReleasing,
        DiskErasing,
        FailedDiskErasing,
        RescueMode,
        EnteringRescueMode,
        FailedEnteringRescueMode,
        ExitingRescueMode,
        FailedExitingRescueMode,
        Testing,
        FailedTesting,
    ];

    /// The statuses a machine may be created in.
    pub const INITIAL: [Status; 4] = [New, Missing, Retired, Deployed];

    /// The number MAAS gives this status.
    pub fn number(self) -> u8 {
        self as u8
    }

    /// The snake_case name used on the wire, in TOML and in the store.
    pub fn as_str(self) -> &'static str {
        match self {
            New => "new",
            Commissioning => "commissioning",
            FailedCommissioning => "failed_commissioning",
            Missing => "missing",
            Ready => "ready",
            Reserved => "reserved",
            Deployed => "deployed",
            Retired => "retired",
            Broken => "broken",
            Deploying => "deploying",
            Allocated => "allocated",
            FailedDeployment => "failed_deployment",
            Releasing => "releasing",
            FailedReleasing => "failed_releasing",
            DiskErasing => "disk_erasing",
            FailedDiskErasing => "failed_disk_erasing",
            RescueMode => "rescue_mode",
            EnteringRescueMode => "entering_rescue_mode",
            FailedEnteringRescueMode => "failed_entering_rescue_mode",
            ExitingRescueMode => "exiting_rescue_mode",
            FailedExitingRescueMode => "failed_exiting_rescue_mode",
            Testing => "testing",
            FailedTesting => "failed_testing",
        }
    }

    /// What a person reads.
    pub fn label(self) -> &'static str {
        match self {
            New => "New",
            Commissioning => "Commissioning",
            FailedCommissioning => "Failed commissioning",
            Missing => "Missing",
            Ready => "Ready",
            Reserved => "Reserved",
            Deployed => "Deployed",
            Retired => "Retired",
            Broken => "Broken",
            Deploying => "Deploying",
            Allocated => "Allocated",
            FailedDeployment => "Failed deployment",
            Releasing => "Releasing",
            FailedReleasing => "Releasing failed",
            DiskErasing => "Disk erasing",
            FailedDiskErasing => "Failed disk erasing",
            RescueMode => "Rescue mode",
            EnteringRescueMode => "Entering rescue mode",
            FailedEnteringRescueMode => "Failed to enter rescue mode",
            ExitingRescueMode => "Exiting rescue mode",
            FailedExitingRescueMode => "Failed to exit rescue mode",
            Testing => "Testing",
            FailedTesting => "Failed testing",
        }
    }

    pub fn kind(self) -> StatusKind {
        if self.failed_status().is_some() {
            StatusKind::InProgress
        } else if Self::FAILED.contains(&self) {
            StatusKind::Failed
        } else {
            StatusKind::Resting
        }
    }

    pub fn is_in_progress(self) -> bool {
        self.kind() == StatusKind::InProgress
    }

    pub fn is_failed(self) -> bool {
        self.kind() == StatusKind::Failed
    }

    /// The seven failed statuses.
    pub const FAILED: [Status; 7] = [
        FailedCommissioning,
        FailedDeployment,
        FailedReleasing,
        FailedDiskErasing,
        FailedEnteringRescueMode,
        FailedExitingRescueMode,
        FailedTesting,
    ];

    /// The failure map: the one failed status each in-progress status fails to.
    pub fn failed_status(self) -> Option<Status> {
        match self {
            Commissioning => Some(FailedCommissioning),
            Deploying => Some(FailedDeployment),
            Releasing => Some(FailedReleasing),
            DiskErasing => Some(FailedDiskErasing),
            EnteringRescueMode => Some(FailedEnteringRescueMode),
            ExitingRescueMode => Some(FailedExitingRescueMode),
            Testing => Some(FailedTesting),
            _ => None,
        }
    }

    /// The statuses this one may change to (the whitelist).
    pub fn allowed_next(self) -> &'static [Status] {
        match self {
            New => &[
                Commissioning,
                Testing,
                Missing,
                Ready,
                Retired,
                Broken,
                EnteringRescueMode,
            ],
            Commissioning => &[
                FailedCommissioning,
                Ready,
                Retired,
                Missing,
                New,
                Broken,
                Testing,
            ],
            FailedCommissioning => &[
                Commissioning,
                Missing,
                Retired,
                Broken,
                EnteringRescueMode,
                Testing,
            ],
            Ready => &[
                EnteringRescueMode,
                Commissioning,
                Allocated,
                Reserved,
                Retired,
                Missing,
                Broken,
                Testing,
            ],
            Reserved => &[
                Ready,
                Allocated,
                Retired,
                Missing,
                Broken,
                DiskErasing,
                Releasing,
                EnteringRescueMode,
                Testing,
            ],
            Allocated => &[
                Ready,
                Retired,
                Missing,
                Broken,
                Deploying,
                DiskErasing,
                Releasing,
                EnteringRescueMode,
                Testing,
            ],
            Releasing => &[
                New,
                Allocated,
                Reserved,
                Deployed,
                Ready,
                Broken,
                Missing,
                FailedDeployment,
                FailedDiskErasing,
                FailedReleasing,
            ],
            Deploying => &[
                Allocated,
                Missing,
                Broken,
                FailedDeployment,
                Deployed,
                Ready,
                DiskErasing,
                Releasing,
            ],
            FailedDeployment => &[
                Allocated,
                Missing,
                Broken,
                Ready,
                DiskErasing,
                Releasing,
                EnteringRescueMode,
                Testing,
            ],
            Deployed => &[
                Allocated,
                Missing,
                Broken,
                Ready,
                DiskErasing,
                Releasing,
                EnteringRescueMode,
                Testing,
            ],
            Missing => &[
                New,
                Ready,
                Allocated,
                Commissioning,
                Broken,
                EnteringRescueMode,
                Testing,
            ],
            Retired => &[New, Ready, Missing, Broken, EnteringRescueMode, Testing],
            Broken => &[
                Commissioning,
                Ready,
                DiskErasing,
                Releasing,
                EnteringRescueMode,
                Testing,
                Deployed,
            ],
            FailedReleasing => &[Releasing, DiskErasing, Ready, Broken, Testing],
            DiskErasing => &[Broken, DiskErasing, FailedDiskErasing, Ready, Releasing],
            FailedDiskErasing => &[
                DiskErasing,
                Releasing,
                Broken,
                Allocated,
                Ready,
                EnteringRescueMode,
                Testing,
            ],
            EnteringRescueMode => &[
                Ready,
                Broken,
                Deployed,
                RescueMode,
                FailedEnteringRescueMode,
                ExitingRescueMode,
            ],
            FailedEnteringRescueMode => &[Broken, EnteringRescueMode, ExitingRescueMode, Testing],
            RescueMode => &[Broken, ExitingRescueMode, Testing],
            ExitingRescueMode => &[
                New,
                FailedCommissioning,
                Missing,
                Ready,
                Reserved,
                Deployed,
                Retired,
                Broken,
                Allocated,
                FailedDeployment,
                FailedReleasing,
                FailedDiskErasing,
                RescueMode,
                FailedEnteringRescueMode,
                FailedExitingRescueMode,
                FailedTesting,
            ],
            FailedExitingRescueMode => &[Broken, ExitingRescueMode, Testing],
            Testing => &[
                Broken,
                New,
                Ready,
                Reserved,
                Allocated,
                Deployed,
                Commissioning,
                FailedTesting,
                Missing,
                Retired,
                FailedReleasing,
                FailedDiskErasing,
                FailedEnteringRescueMode,
                FailedExitingRescueMode,
                FailedDeployment,
            ],
            FailedTesting => &[
                Commissioning,
                Broken,
                Missing,
                EnteringRescueMode,
                Testing,
                Ready,
                Deployed,
            ],
        }
    }

    /// Whether the whitelist allows `self -> to`.
    pub fn can_change_to(self, to: Status) -> bool {
        self.allowed_next().contains(&to)
    }

    /// Checks `self -> to` against the whitelist.
    pub fn check_change_to(self, to: Status) -> Result<(), InvalidTransition> {
        if self.can_change_to(to) {
            Ok(())
        } else {
            Err(InvalidTransition {
                from: Some(self),
                to,
            })
        }
    }

    /// Checks that a machine may be created in `status`.
    pub fn check_initial(status: Status) -> Result<(), InvalidTransition> {
        if Self::INITIAL.contains(&status) {
            Ok(())
        } else {
            Err(InvalidTransition {
                from: None,
                to: status,
            })
        }
    }
}

/// A status change the whitelist does not allow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct InvalidTransition {
    /// `None` for a machine being created.
    pub from: Option<Status>,
    pub to: Status,
}

impl fmt::Display for InvalidTransition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.from {
            Some(from) => write!(f, "invalid transition: {from} -> {}", self.to),
            None => write!(f, "invalid transition: (created) -> {}", self.to),
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A status name that is not one of the 23.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown status `{0}`")]
pub struct UnknownStatus(pub String);

impl FromStr for Status {
    type Err = UnknownStatus;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Status::ALL
            .into_iter()
            .find(|status| status.as_str() == text)
            .ok_or_else(|| UnknownStatus(text.to_string()))
    }
}
