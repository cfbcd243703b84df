//! `fleet sim`: simulated machines against a running controller, through its real sockets
//! (DHCP via `[controller] dhcp_listen`, TFTP, boot HTTP, the machine API), each with a BMC the
//! `webhook` power driver drives. It prints the `[[machine]]` tables to put in a fleet file, and
//! runs until interrupted.

use anyhow::Context;
use clap::Args;
use fleet::sim::{share_of_fleet, Faults, SimFleet, SimNetwork, SimOptions};
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::ExitCode;

#[derive(Debug, Clone, Args)]
pub struct SimArgs {
    /// How many machines
    #[arg(long, default_value_t = 10)]
    pub machines: u32,
    /// The first machine's index: its MACs and serials derive from it
    #[arg(long, default_value_t = 0)]
    pub first_index: u32,
    /// The controller's `dhcp_listen` address
    #[arg(long, default_value = "127.0.0.1:6767")]
    pub dhcp: SocketAddr,
    /// The controller's `tftp_listen` address
    #[arg(long, default_value = "127.0.0.1:6969")]
    pub tftp: SocketAddr,
    /// The relay address the machines' DHCP goes through (giaddr; a subnet of the fleet file
    /// must contain it)
    #[arg(long, default_value = "127.0.0.1")]
    pub relay: Ipv4Addr,
    /// Where the simulated BMCs listen
    #[arg(long, default_value = "127.0.0.1:0")]
    pub bmc_listen: SocketAddr,
    /// A fault for one machine: INDEX:FAULT (fail-script=NAME, silent, bmc-refuses, bmc-hangs,
    /// slow-disk=SECONDS, lost-dhcp=COUNT); repeatable
    #[arg(long = "fault")]
    pub faults: Vec<String>,
    /// A fault for a share of the fleet: PERCENT:FAULT; repeatable
    #[arg(long = "fault-share")]
    pub fault_shares: Vec<String>,
    /// Power every machine on at start (they enlist themselves)
    #[arg(long)]
    pub power_on: bool,
}

/// The faults of `--fault INDEX:FAULT` and `--fault-share PERCENT:FAULT`, by machine index.
pub fn faults_by_index(
    first_index: u32,
    count: u32,
    faults: &[String],
    shares: &[String],
) -> anyhow::Result<HashMap<u32, Faults>> {
    let mut by_index: HashMap<u32, Faults> = HashMap::new();
    for written in faults {
        let (index, fault) = written
            .split_once(':')
            .context("--fault is INDEX:FAULT, e.g. 3:silent")?;
        let index: u32 = index.parse().context("--fault's INDEX is a number")?;
        by_index.entry(index).or_default().add(fault)?;
    }
    for written in shares {
        let (percent, fault) = written
            .split_once(':')
            .context("--fault-share is PERCENT:FAULT, e.g. 10:silent")?;
        let percent: u32 = percent
            .parse()
            .context("--fault-share's PERCENT is a number")?;
        for offset in share_of_fleet(count, percent) {
            by_index
                .entry(first_index + offset)
                .or_default()
                .add(fault)?;
        }
    }
    Ok(by_index)
}

pub async fn run(args: &SimArgs) -> anyhow::Result<ExitCode> {
    let options = SimOptions {
        count: args.machines,
        first_index: args.first_index,
        network: SimNetwork {
            dhcp: args.dhcp,
            tftp: args.tftp,
            relay: args.relay,
        },
        bmc_listen: args.bmc_listen,
        faults: faults_by_index(
            args.first_index,
            args.machines,
            &args.faults,
            &args.fault_shares,
        )?,
    };
    let fleet = SimFleet::start(options).await?;
    eprintln!(
        "fleet sim: {} machines, BMCs at {}; DHCP via relay {} to {}, TFTP {}",
        fleet.machines.len(),
        fleet.bmc_url,
        args.relay,
        args.dhcp,
        args.tftp
    );
    println!("# simulated machines: put these in a fleet file");
    for machine in &fleet.machines {
        // Powered on, they enlist under the name enlistment gives: the tables adopt them.
        let name = if args.power_on {
            let mac = machine.hardware.boot_mac().to_string().replace(':', "");
            format!("enlisted-{mac}")
        } else {
            format!("sim-{:03}", machine.index)
        };
        let faults = if machine.faults.is_none() {
            String::new()
        } else {
            format!("# faults: {}", machine.faults.describe())
        };
        println!("{}", fleet.machine_toml(machine, &name, &faults));
    }
    if args.power_on {
        for machine in &fleet.machines {
            machine.power_on();
        }
    }
    tokio::signal::ctrl_c().await?;
    eprintln!("fleet sim: stopped");
    Ok(ExitCode::SUCCESS)
}
