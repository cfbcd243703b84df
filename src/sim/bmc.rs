//! The simulated BMCs: one small HTTP server for the whole simulated fleet, which the
//! controller's `webhook` power driver calls (`POST /bmc/MAC/on`, `/off`, `/cycle`; `GET
//! /bmc/MAC/status` answers `on` or `off`). Power goes through this socket, never through a
//! function call from the controller. A BMC given a fault refuses (500) or never answers.

use super::machine::SimMachine;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::Router;
use std::collections::HashMap;
use std::sync::Arc;

/// The machines by boot MAC written without colons (`025e00000001`), as the BMC paths name them.
pub type ByMac = Arc<HashMap<String, Arc<SimMachine>>>;

/// The path segment that names `machine` on the BMC server.
pub fn bmc_key(machine: &SimMachine) -> String {
    machine.hardware.boot_mac().to_string().replace(':', "")
}

pub fn router(machines: ByMac) -> Router {
    Router::new()
        .route("/bmc/{mac}/status", get(status))
        .route("/bmc/{mac}/{command}", post(command))
        .with_state(machines)
}

/// A BMC with a fault answers badly, or not at all.
async fn misbehave(machine: &SimMachine) -> Option<(StatusCode, String)> {
    if machine.faults.bmc_hangs {
        std::future::pending::<()>().await;
    }
    machine.faults.bmc_refuses.then(|| {
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            "BMC refused: simulated fault\n".to_string(),
        )
    })
}

async fn status(State(machines): State<ByMac>, Path(mac): Path<String>) -> (StatusCode, String) {
    let Some(machine) = machines.get(&mac) else {
        return (StatusCode::NOT_FOUND, format!("no machine {mac}\n"));
    };
    if let Some(answer) = misbehave(machine).await {
        return answer;
    }
    let state = if machine.is_on() { "on" } else { "off" };
    (StatusCode::OK, format!("{state}\n"))
}

async fn command(
    State(machines): State<ByMac>,
    Path((mac, command)): Path<(String, String)>,
) -> (StatusCode, String) {
    let Some(machine) = machines.get(&mac) else {
        return (StatusCode::NOT_FOUND, format!("no machine {mac}\n"));
    };
    if let Some(answer) = misbehave(machine).await {
        return answer;
    }
    match command.as_str() {
        "on" => machine.power_on(),
        "off" => machine.power_off(),
        "cycle" => {
            machine.power_off();
            machine.power_on();
        }
        _ => return (StatusCode::NOT_FOUND, format!("no command {command}\n")),
    }
    machine.note(format!("bmc: power {command}"));
    (StatusCode::OK, "ok\n".to_string())
}
