//! The `manual` power type: fleet cannot touch the machine, so it tells a person what to do.

use super::{PowerDriver, PowerFuture, PowerReport, PowerTarget};
use crate::model::{PowerCommand, PowerOffMode, PowerState};

/// No control: every command becomes an instruction for the operator; the state stays unknown.
pub struct ManualDriver;

impl PowerDriver for ManualDriver {
    fn power_type(&self) -> &'static str {
        "manual"
    }

    fn execute<'a>(
        &'a self,
        target: &'a PowerTarget,
        command: PowerCommand,
    ) -> PowerFuture<'a, PowerReport> {
        let instruction = match command {
            PowerCommand::On => "switch it on",
            PowerCommand::Off(PowerOffMode::Soft) => "shut it down",
            PowerCommand::Off(PowerOffMode::Hard) => "switch it off",
            PowerCommand::Cycle => "reset it (or switch it off and on)",
        };
        let note = format!("manual power: {instruction} now ({})", target.machine);
        Box::pin(async move {
            Ok(PowerReport {
                state: PowerState::Unknown,
                note: Some(note),
            })
        })
    }

    fn query<'a>(&'a self, _target: &'a PowerTarget) -> PowerFuture<'a, PowerReport> {
        Box::pin(async {
            Ok(PowerReport {
                state: PowerState::Unknown,
                note: None,
            })
        })
    }
}
