//! Simulated machines (`fleet sim`, `fleet demo`, the tests): N machines, each with its own MACs
//! and hardware and a BMC, whose traffic crosses the controller's real sockets as a real
//! machine's does — DHCP through a relay address to `[controller] dhcp_listen`, TFTP of the
//! loader, the iPXE script, kernel and initrd over HTTP, then the machine API exactly as
//! `commissioning/fleet-runner.sh` calls it. Their BMCs are one HTTP server that the
//! controller's `webhook` power driver calls. Nothing here is called by the controller: this is
//! a client, like the CLI (only `cli` and the tests use it).
//!
//! - `hardware`: [`SimHardware`] per machine index and the fact lines commissioning prints.
//! - `faults`: [`Faults`] per machine, or a share of the fleet.
//! - `wire`: the DHCP and TFTP client side.
//! - `runner`: the machine API calls of `fleet-runner.sh`.
//! - `machine`: [`SimMachine`], its power and its boots.
//! - `bmc`: the BMCs' HTTP server.

mod bmc;
mod faults;
mod hardware;
mod machine;
mod runner;
mod wire;

pub use faults::{share_of_fleet, FaultError, Faults};
pub use hardware::{fact_line, recorded_disks, sim_mac, SimDisk, SimHardware, SimNic};
pub use machine::{ReportedBmc, SimMachine, SimNetwork};
pub use wire::{dhcp_lease, tftp_get, DhcpAnswer, DhcpClient};

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        source: std::io::Error,
    },
    #[error("{0}")]
    Protocol(String),
}

impl SimError {
    fn io(what: &'static str, source: std::io::Error) -> SimError {
        SimError::Io { what, source }
    }
}

/// What a simulated fleet is made of.
#[derive(Debug, Clone)]
pub struct SimOptions {
    pub count: u32,
    /// The first machine's index (its MACs and serials derive from it): two simulated fleets
    /// with distinct ranges never share a MAC.
    pub first_index: u32,
    pub network: SimNetwork,
    /// Where the BMC server listens (port 0: any).
    pub bmc_listen: SocketAddr,
    /// Faults by machine index.
    pub faults: HashMap<u32, Faults>,
}

/// A running simulated fleet. Dropping it stops the BMC server and powers every machine off.
pub struct SimFleet {
    pub machines: Vec<Arc<SimMachine>>,
    /// `http://ADDRESS:PORT` of the BMC server.
    pub bmc_url: String,
    server: tokio::task::JoinHandle<()>,
}

impl SimFleet {
    pub async fn start(options: SimOptions) -> Result<SimFleet, SimError> {
        let machines: Vec<Arc<SimMachine>> = (options.first_index
            ..options.first_index + options.count)
            .map(|index| {
                let faults = options.faults.get(&index).cloned().unwrap_or_default();
                Arc::new(SimMachine::new(
                    index,
                    SimHardware::for_index(index),
                    faults,
                    options.network,
                ))
            })
            .collect();
        SimFleet::serve(machines, options.bmc_listen).await
    }

    /// A simulated fleet of the hardware given (machine `n` gets index `n`): stand-ins for
    /// machines whose hardware is known, as `fleet plan --simulate` seeds them from a snapshot.
    pub async fn start_with_hardware(
        hardware: Vec<SimHardware>,
        network: SimNetwork,
        bmc_listen: SocketAddr,
    ) -> Result<SimFleet, SimError> {
        let machines = hardware
            .into_iter()
            .zip(0..)
            .map(|(hardware, index)| {
                Arc::new(SimMachine::new(index, hardware, Faults::default(), network))
            })
            .collect();
        SimFleet::serve(machines, bmc_listen).await
    }

    /// Starts the BMC server for `machines`.
    async fn serve(
        machines: Vec<Arc<SimMachine>>,
        bmc_listen: SocketAddr,
    ) -> Result<SimFleet, SimError> {
        let by_mac: bmc::ByMac = Arc::new(
            machines
                .iter()
                .map(|machine| (bmc::bmc_key(machine), Arc::clone(machine)))
                .collect(),
        );
        let listener = tokio::net::TcpListener::bind(bmc_listen)
            .await
            .map_err(|source| SimError::io("binding the BMC server", source))?;
        let address = listener
            .local_addr()
            .map_err(|source| SimError::io("the BMC server's address", source))?;
        let router = bmc::router(by_mac);
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Ok(SimFleet {
            machines,
            bmc_url: format!("http://{address}"),
            server,
        })
    }

    /// The machine of index `index`.
    pub fn machine(&self, index: u32) -> Option<&Arc<SimMachine>> {
        self.machines.iter().find(|machine| machine.index == index)
    }

    /// The fleet file's `power = {...}` of `machine`: the webhook driver on its BMC.
    pub fn power_toml(&self, machine: &SimMachine) -> String {
        let base = format!("{}/bmc/{}", self.bmc_url, bmc::bmc_key(machine));
        format!(
            "{{ type = \"webhook\", on_url = \"{base}/on\", off_url = \"{base}/off\", cycle_url = \"{base}/cycle\", query_url = \"{base}/status\" }}"
        )
    }

    /// A `[[machine]]` table for `machine` under `name` (its MACs and its BMC), with `extra`
    /// lines (`state = "ready"`...).
    pub fn machine_toml(&self, machine: &SimMachine, name: &str, extra: &str) -> String {
        let macs: Vec<String> = machine
            .hardware
            .macs()
            .iter()
            .map(|mac| format!("\"{mac}\""))
            .collect();
        format!(
            "[[machine]]\nname = \"{name}\"\nmacs = [{}]\npower = {}\n{extra}\n",
            macs.join(", "),
            self.power_toml(machine)
        )
    }
}

impl Drop for SimFleet {
    fn drop(&mut self) {
        self.server.abort();
        for machine in &self.machines {
            machine.power_off();
        }
    }
}
