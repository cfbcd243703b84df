//! `fleet clone SOURCE --to DEST... [--storage] [--interfaces] [--dry-run] [--json]`.

use super::client::Client;
use super::output::print_json;
use super::Connection;
use anyhow::bail;
use clap::Args;
use fleet::api::views::{CloneBody, CloneOutcome, CloneResultView, CloneView};
use fleet::plan::clone::{reasons_line, NOTHING_CHOSEN};
use std::collections::BTreeMap;
use std::process::ExitCode;

#[derive(Debug, Clone, Args)]
#[command(
    after_help = "Neither --storage nor --interfaces is assumed: give one or both. \
    Destinations must be ready or failed_testing. Each destination gets one line, cloned or \
    refused with every reason; the valid ones are cloned even when others are refused, and the \
    exit code is 1 if any was refused."
)]
pub struct CloneArgs {
    /// The machine whose storage and/or interfaces are copied (any status)
    pub source: String,
    /// The machines to copy onto (ready or failed_testing)
    #[arg(long = "to", value_name = "DEST", required = true, num_args = 1..)]
    pub destinations: Vec<String>,
    /// Copy the storage layout (same architecture and boot method, disks at least as large)
    #[arg(long)]
    pub storage: bool,
    /// Copy the interfaces (matched by name; static addresses are allocated afresh)
    #[arg(long)]
    pub interfaces: bool,
    /// Check every destination and change nothing
    #[arg(long)]
    pub dry_run: bool,
    /// Machine-readable output: the source, the parts chosen and one result per destination
    #[arg(long)]
    pub json: bool,
}

pub async fn run(connection: &Connection, args: &CloneArgs) -> anyhow::Result<ExitCode> {
    if !args.storage && !args.interfaces {
        bail!("{NOTHING_CHOSEN} Add --storage and/or --interfaces (neither is assumed).");
    }
    let client = Client::new(connection)?;
    let body = CloneBody {
        destinations: args.destinations.clone(),
        storage: args.storage,
        interfaces: args.interfaces,
        dry_run: args.dry_run,
    };
    let path = format!("/machines/{}/clone", args.source);
    let view: CloneView = match client.post(&path, &body).await? {
        Ok(view) => view,
        Err(failure) => bail!(failure),
    };
    if args.json {
        print_json(&view)?;
    } else {
        for result in &view.results {
            println!("{}", describe(&view, result));
        }
        if view.dry_run {
            eprintln!("dry run: nothing was changed");
        }
    }
    let refused = view
        .results
        .iter()
        .any(|result| result.outcome == CloneOutcome::Refused);
    Ok(if refused {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// `web-2: cloned storage and interfaces from web-1 (disks sda→vda, sdb→vdb; interfaces eth0,
/// eth1)` or `web-3: refused: REASON; REASON`.
fn describe(view: &CloneView, result: &CloneResultView) -> String {
    let verb = match result.outcome {
        CloneOutcome::Refused => {
            return format!(
                "{}: refused: {}",
                result.destination,
                reasons_line(&result.reasons)
            )
        }
        CloneOutcome::Cloned => "cloned",
        CloneOutcome::WouldClone => "would clone",
    };
    let parts = fleet::store::cloned_parts(view.storage, view.interfaces);
    let mut mapped = Vec::new();
    if let Some(disks) = &result.disks {
        mapped.push(format!("disks {}", pairs(disks)));
    }
    if let Some(interfaces) = &result.interfaces {
        let names: Vec<&str> = interfaces.keys().map(String::as_str).collect();
        mapped.push(format!("interfaces {}", names.join(", ")));
    }
    format!(
        "{}: {verb} {parts} from {} ({})",
        result.destination,
        view.source,
        mapped.join("; ")
    )
}

fn pairs(map: &BTreeMap<String, String>) -> String {
    let pairs: Vec<String> = map
        .iter()
        .map(|(from, to)| format!("{from}→{to}"))
        .collect();
    pairs.join(", ")
}
