//! `fleet machines`, `fleet machine show|add|ACTION`, `fleet events`.

use super::client::Client;
use super::output::{bytes, colour_enabled, new_table, or_dash, print_json, status_cell};
use super::Connection;
use anyhow::bail;
use clap::{Args, Subcommand};
use comfy_table::Cell;
use fleet::api::views::{
    ActionBody, ActionView, AddMachine, AddedView, EventView, MachineDetail, MachineRow,
    ScriptResultView,
};
use fleet::model::{Action, ActionOptions, ClockKind, EraseMode, PowerOffMode};
use std::process::ExitCode;

#[derive(Debug, Subcommand)]
pub enum MachineCommand {
    /// One machine in full: identity, hardware, config, script results, recent events
    Show {
        name: String,
        #[arg(long)]
        json: bool,
        /// Print this script's output (stdout, then stderr) from its latest run instead
        #[arg(long, value_name = "SCRIPT")]
        script: Option<String>,
    },
    /// Add a machine by hand (commissioned at once unless --no-commission or --deployed)
    Add(AddArgs),
    /// Boot into the ephemeral environment and inventory the hardware
    Commission(ActionArgs),
    /// Run the tests
    Test(ActionArgs),
    /// Stop commissioning, testing, deploying or disk erasing
    Abort(ActionArgs),
    /// Take ownership of a ready machine
    Allocate(ActionArgs),
    /// Install the image (allocates a ready machine first)
    Deploy(ActionArgs),
    /// Give the machine back (optionally erasing its disks)
    Release(ActionArgs),
    /// Mark the machine broken (the comment is kept as the reason)
    MarkBroken(ActionArgs),
    /// Mark a broken machine fixed
    MarkFixed(ActionArgs),
    /// Accept a machine whose tests failed
    OverrideFailedTesting(ActionArgs),
    /// Boot into the ephemeral environment for repair
    Rescue(ActionArgs),
    /// Leave rescue mode
    ExitRescue(ActionArgs),
    /// Protect a deployed machine from every action but unlock
    Lock(ActionArgs),
    Unlock(ActionArgs),
    PowerOn(ActionArgs),
    PowerOff(ActionArgs),
    /// Reboot
    PowerCycle(ActionArgs),
    /// Remove the machine (its history stays)
    Delete(ActionArgs),
    /// Print a one-shot registration secret (valid an hour) for register-live.sh on a machine
    /// added live (--deployed); on stdout alone, so it can go straight to a file
    Registration {
        name: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Clone, Args)]
pub struct ActionArgs {
    /// The machines to act on
    #[arg(required = true, num_args = 1..)]
    pub names: Vec<String>,
    /// Why (kept in the history; the reason of mark-broken)
    #[arg(long)]
    pub comment: Option<String>,
    /// release: erase the disks first
    #[arg(long, value_enum)]
    pub erase: Option<EraseArg>,
    /// allocate/deploy: the owner [default: you]
    #[arg(long)]
    pub owner: Option<String>,
    /// deploy: the image to install
    #[arg(long)]
    pub image: Option<String>,
    /// power-off: ask the OS to shut down instead of cutting power
    #[arg(long)]
    pub soft: bool,
    /// test: include destructive tests (refused on deployed machines)
    #[arg(long)]
    pub destructive_tests: bool,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum EraseArg {
    Quick,
    Secure,
    Full,
}

#[derive(Debug, Clone, Args)]
pub struct AddArgs {
    pub name: String,
    /// A MAC of the machine (repeat for several)
    #[arg(long = "mac")]
    pub macs: Vec<String>,
    #[arg(long)]
    pub arch: Option<String>,
    /// Power type: manual, ipmi, redfish, webhook, qemu [default: unconfigured]
    #[arg(long)]
    pub power_type: Option<String>,
    /// A power parameter KEY=VALUE; secrets as KEY=env:NAME or KEY=file:PATH
    #[arg(long = "power-param")]
    pub power_params: Vec<String>,
    #[arg(long)]
    pub tag: Vec<String>,
    #[arg(long)]
    pub image: Option<String>,
    /// Do not commission at once
    #[arg(long)]
    pub no_commission: bool,
    /// The machine is already running a workload: add it deployed, never netbooted
    #[arg(long)]
    pub deployed: bool,
    /// For --deployed: the OS it runs
    #[arg(long)]
    pub os: Option<String>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Args)]
pub struct EventsArgs {
    /// Only this machine's history
    pub name: Option<String>,
    /// Only this machine's history (the same as NAME)
    #[arg(long, value_name = "NAME", conflicts_with = "name")]
    pub machine: Option<String>,
    /// At most this many (the newest), from 1 to 10000
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(i64).range(1..=10_000))]
    pub limit: i64,
    /// Then print each new event as the controller's store gets it (from any controller on
    /// its database), until Ctrl-C; with --json, one JSON object per line
    #[arg(long)]
    pub follow: bool,
    #[arg(long)]
    pub json: bool,
}

pub async fn machines(connection: &Connection, json: bool) -> anyhow::Result<ExitCode> {
    let client = Client::new(connection)?;
    let rows: Vec<MachineRow> = client.get("/machines").await??;
    if json {
        print_json(&rows)?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut table = new_table(&[
        "NAME", "STATUS", "POWER", "LOCKED", "ARCH", "CPUS", "MEMORY", "STORAGE", "OWNER",
    ]);
    for row in &rows {
        table.add_row(vec![
            Cell::new(&row.name),
            status_cell(row.status),
            Cell::new(row.power),
            Cell::new(if row.locked { "yes" } else { "no" }),
            Cell::new(or_dash(row.arch.as_ref())),
            Cell::new(or_dash(row.cpus)),
            Cell::new(or_dash(row.memory_mib.map(|mib| bytes(mib * 1024 * 1024)))),
            Cell::new(or_dash(row.storage_bytes.map(bytes))),
            Cell::new(or_dash(row.owner.as_ref())),
        ]);
    }
    println!("{}", table.trim_fmt());
    println!(
        "{} machine{}",
        rows.len(),
        if rows.len() == 1 { "" } else { "s" }
    );
    Ok(ExitCode::SUCCESS)
}

pub async fn machine(connection: &Connection, command: MachineCommand) -> anyhow::Result<ExitCode> {
    let client = Client::new(connection)?;
    let (action, args) = match command {
        MachineCommand::Show { name, json, script } => {
            return show(&client, &name, json, script.as_deref()).await
        }
        MachineCommand::Add(args) => return add(&client, &args).await,
        MachineCommand::Registration { name, json } => {
            return registration(&client, &name, json).await
        }
        MachineCommand::Commission(args) => (Action::Commission, args),
        MachineCommand::Test(args) => (Action::Test, args),
        MachineCommand::Abort(args) => (Action::Abort, args),
        MachineCommand::Allocate(args) => (Action::Allocate, args),
        MachineCommand::Deploy(args) => (Action::Deploy, args),
        MachineCommand::Release(args) => (Action::Release, args),
        MachineCommand::MarkBroken(args) => (Action::MarkBroken, args),
        MachineCommand::MarkFixed(args) => (Action::MarkFixed, args),
        MachineCommand::OverrideFailedTesting(args) => (Action::OverrideFailedTesting, args),
        MachineCommand::Rescue(args) => (Action::EnterRescue, args),
        MachineCommand::ExitRescue(args) => (Action::ExitRescue, args),
        MachineCommand::Lock(args) => (Action::Lock, args),
        MachineCommand::Unlock(args) => (Action::Unlock, args),
        MachineCommand::PowerOn(args) => (Action::PowerOn, args),
        MachineCommand::PowerOff(args) => (Action::PowerOff, args),
        MachineCommand::PowerCycle(args) => (Action::PowerCycle, args),
        MachineCommand::Delete(args) => (Action::Delete, args),
    };
    act(&client, action, &args).await
}

fn action_body(args: &ActionArgs) -> ActionBody {
    ActionBody {
        comment: args.comment.clone(),
        options: ActionOptions {
            erase: args.erase.map(|erase| match erase {
                EraseArg::Quick => EraseMode::Quick,
                EraseArg::Secure => EraseMode::Secure,
                EraseArg::Full => EraseMode::Full,
            }),
            destructive_tests: args.destructive_tests,
            owner: args.owner.clone(),
            image: args.image.clone(),
            power_off_mode: args.soft.then_some(PowerOffMode::Soft),
        },
    }
}

/// Acts on each machine in turn; one line per machine; exit 1 if any was refused or failed.
async fn act(client: &Client, action: Action, args: &ActionArgs) -> anyhow::Result<ExitCode> {
    let body = action_body(args);
    let mut results = Vec::new();
    let mut any_failed = false;
    for name in &args.names {
        let path = format!("/machines/{name}/actions/{}", action.as_str());
        match client.post::<_, ActionView>(&path, &body).await? {
            Ok(done) => {
                if !args.json {
                    println!("{}", describe_done(&done));
                }
                results.push(serde_json::json!({ "machine": name, "ok": true, "result": done }));
            }
            Err(failure) => {
                any_failed = true;
                if !args.json {
                    eprintln!("{}: {}", refused_word(&failure.code), failure.message);
                }
                results.push(serde_json::json!({
                    "machine": name, "ok": false, "code": failure.code, "error": failure.message
                }));
            }
        }
    }
    if args.json {
        print_json(&results)?;
    }
    Ok(if any_failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn refused_word(code: &str) -> &'static str {
    match code {
        "refused" => "refused",
        "not_found" => "unknown",
        _ => "failed",
    }
}

fn describe_done(done: &ActionView) -> String {
    let mut line = format!("{}: {}", done.machine, done.action.cli_name());
    if done.statuses.len() > 1 {
        let path: Vec<&str> = done.statuses.iter().map(|status| status.as_str()).collect();
        line.push_str(&format!(" — {}", path.join(" → ")));
    } else if done.after.is_none() {
        line.push_str(" — deleted (its history stays)");
    }
    for note in &done.notes {
        line.push_str(&format!("\n  {note}"));
    }
    line
}

async fn show(
    client: &Client,
    name: &str,
    json: bool,
    script: Option<&str>,
) -> anyhow::Result<ExitCode> {
    let detail: MachineDetail = match client.get(&format!("/machines/{name}")).await? {
        Ok(detail) => detail,
        Err(failure) => {
            eprintln!("error: {}", failure.message);
            return Ok(ExitCode::FAILURE);
        }
    };
    if let Some(script) = script {
        return print_script_output(&detail, script);
    }
    if json {
        print_json(&detail)?;
        return Ok(ExitCode::SUCCESS);
    }
    print!("{}", render_detail(&detail));
    Ok(ExitCode::SUCCESS)
}

/// The latest result of `script`: its outcome on stderr's first line, then its stdout and
/// stderr as the machine sent them (for reading a failure in full).
fn print_script_output(detail: &MachineDetail, script: &str) -> anyhow::Result<ExitCode> {
    let latest = |matches: &dyn Fn(&ScriptResultView) -> bool| {
        detail
            .script_results
            .iter()
            .rev()
            .find(|result| matches(result))
    };
    // The name as given, else the built-in `fleet-NAME` (`--script deploy`), else the latest of
    // that kind.
    let built_in = format!("fleet-{script}");
    let Some(result) = latest(&|result| result.name == script)
        .or_else(|| latest(&|result| result.name == built_in))
        .or_else(|| latest(&|result| result.kind == script))
    else {
        let mut names: Vec<&str> = detail
            .script_results
            .iter()
            .map(|result| result.name.as_str())
            .collect();
        names.sort_unstable();
        names.dedup();
        eprintln!(
            "error: machine {} has no result of a script named `{script}`; it has: {}",
            detail.machine.name,
            if names.is_empty() {
                "none".to_string()
            } else {
                names.join(", ")
            }
        );
        return Ok(ExitCode::FAILURE);
    };
    eprintln!(
        "{} run {}: {} {}, exit {}",
        detail.machine.name,
        result.run_id,
        result.name,
        result.status,
        or_dash(result.exit_code)
    );
    print!("{}", result.stdout);
    eprint!("{}", result.stderr);
    Ok(ExitCode::SUCCESS)
}

/// `75` → `1m15s`.
fn short_duration(seconds: i64) -> String {
    match (seconds / 3600, seconds % 3600 / 60, seconds % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, s) => format!("{m}m{s:02}s"),
        (h, m, s) => format!("{h}h{m:02}m{s:02}s"),
    }
}

fn render_detail(detail: &MachineDetail) -> String {
    let machine = &detail.machine;
    let mut out = String::new();
    let mut line = |key: &str, value: String| out.push_str(&format!("{key:<16}{value}\n"));
    line("name", machine.name.clone());
    let reason = machine
        .status_reason
        .as_ref()
        .map(|r| format!(" — {r}"))
        .unwrap_or_default();
    line(
        "status",
        format!(
            "{} ({}) since {}{reason}",
            machine.status, machine.status_label, machine.status_since
        ),
    );
    line("last heard", or_dash(machine.last_heard.as_ref()));
    if let Some(rescue) = &detail.rescue {
        line("rescue", rescue.summary.clone());
    }
    for clock in &detail.clocks {
        let (label, what) = match clock.kind {
            ClockKind::Status => ("status clock", "the status's own limit"),
            ClockKind::Boot => (
                "boot clock",
                "from the power command to the machine's first call",
            ),
            ClockKind::Heartbeat => ("heartbeat clock", "silence since the machine's last call"),
            ClockKind::Callback => (
                "call-back clock",
                "from the installer's done signal to the installed system's call-back",
            ),
        };
        line(
            label,
            format!(
                "{} of {}: {what}; runs out at {}",
                short_duration(clock.elapsed_seconds),
                fleet::config::describe_seconds(u64::from(clock.limit_seconds)),
                clock.runs_out_at
            ),
        );
    }
    if let Some(progress) = &detail.progress {
        let shown = fleet::model::DeployProgress {
            phase: progress.phase.clone(),
            done: progress.done,
            total: progress.total,
        };
        line(
            "progress",
            format!("{} at {}", shown.describe(), progress.at),
        );
    }
    line(
        "power",
        format!("{} (type {})", machine.power, machine.power_type),
    );
    line(
        "locked",
        if machine.locked {
            "yes".into()
        } else {
            "no".into()
        },
    );
    line("owner", or_dash(machine.owner.as_ref()));
    line("arch", or_dash(machine.arch.as_ref()));
    line(
        "commissioned",
        if machine.commissioned {
            "yes".into()
        } else {
            "never".into()
        },
    );
    line("deployed os", or_dash(machine.deployed_os.as_ref()));
    line("image", or_dash(machine.image.as_ref()));
    line(
        "tags",
        if machine.tags.is_empty() {
            "-".into()
        } else {
            machine.tags.join(", ")
        },
    );
    let macs: Vec<String> = machine.macs.iter().map(|mac| mac.to_string()).collect();
    line(
        "macs",
        if macs.is_empty() {
            "-".into()
        } else {
            macs.join(", ")
        },
    );
    let hardware = &machine.hardware;
    line("cpus", or_dash(hardware.cpus));
    line(
        "memory",
        or_dash(hardware.memory_mib.map(|mib| bytes(mib * 1024 * 1024))),
    );
    line("storage", or_dash(hardware.storage_bytes.map(bytes)));
    line("power params", machine.power_params.to_string());
    for interface in &machine.interfaces {
        let link = match interface.link_up {
            Some(true) => "up",
            Some(false) => "down",
            None => "-",
        };
        out.push_str(&format!(
            "interface       {} {} link {link} {} {}\n",
            interface.name,
            interface.mac,
            or_dash(interface.speed_mbps.map(|speed| format!("{speed} Mb/s"))),
            or_dash(interface.driver.as_ref())
        ));
    }
    for address in &detail.addresses {
        out.push_str(&format!(
            "address         {} on {} (subnet {}) since {}\n",
            address.ip, address.interface, address.subnet, address.since
        ));
    }
    for disk in &machine.disks {
        out.push_str(&format!(
            "disk            {} {} {} serial {}\n",
            disk.name,
            bytes(disk.size_bytes),
            or_dash(disk.model.as_ref()),
            or_dash(disk.serial.as_ref())
        ));
    }
    out.push_str(&render_script_results(&detail.script_results));
    out.push_str("recent events\n");
    for event in &detail.recent_events {
        out.push_str(&format!("  {}\n", describe_event(event)));
    }
    out
}

/// The latest run's scripts one per line (a failure with the last line it wrote), and one
/// summary line per earlier run.
fn render_script_results(results: &[ScriptResultView]) -> String {
    let mut runs: Vec<&str> = Vec::new();
    for result in results {
        if !runs.contains(&result.run_id.as_str()) {
            runs.push(&result.run_id);
        }
    }
    let Some((latest, earlier)) = runs.split_last() else {
        return String::new();
    };
    let mut out = format!("scripts         run {latest}\n");
    for result in results.iter().filter(|result| result.run_id == *latest) {
        let runtime = result
            .runtime_ms
            .map(|ms| format!(" {:.1} s", ms as f64 / 1000.0))
            .unwrap_or_default();
        let last_line = if matches!(result.status.as_str(), "failed" | "timed_out") {
            [&result.stderr, &result.stdout]
                .into_iter()
                .find_map(|text| text.lines().rev().find(|line| !line.trim().is_empty()))
                .map(|line| format!(" — {}", line.trim()))
                .unwrap_or_default()
        } else {
            String::new()
        };
        out.push_str(&format!(
            "  {:<24}{:<15}{:<10}exit {}{runtime}{last_line}\n",
            result.name,
            result.kind,
            result.status,
            or_dash(result.exit_code)
        ));
    }
    for run in earlier.iter().rev() {
        let of_run: Vec<&ScriptResultView> = results
            .iter()
            .filter(|result| result.run_id == *run)
            .collect();
        let passed = of_run
            .iter()
            .filter(|result| result.status == "passed")
            .count();
        out.push_str(&format!(
            "earlier run     {run}: {passed} of {} passed\n",
            of_run.len()
        ));
    }
    out
}

pub fn describe_event(event: &EventView) -> String {
    let mut text = format!("{} {}", event.at, event.kind);
    if let Some(machine) = &event.machine {
        text = format!("{} {machine} {}", event.at, event.kind);
    }
    if let Some(action) = &event.action {
        text.push_str(&format!(" {action}"));
    }
    match (event.from, event.to) {
        (Some(from), Some(to)) if from != to => text.push_str(&format!(" {from} → {to}")),
        (None, Some(to)) => text.push_str(&format!(" → {to}")),
        _ => {}
    }
    if event.kind == "power" {
        text.push_str(&describe_power(&event.detail));
    }
    text.push_str(&format!(" by {}", event.actor));
    if let Some(reason) = &event.reason {
        text.push_str(&format!(": {reason}"));
    }
    text
}

/// ` cycle, power on → on`: the command sent and the power state before and after, as the
/// store records them in a power event's detail.
fn describe_power(detail: &serde_json::Value) -> String {
    let mut text = String::new();
    match detail.get("command") {
        Some(serde_json::Value::String(command)) => text.push_str(&format!(" {command}")),
        Some(serde_json::Value::Object(command)) => {
            for (name, mode) in command {
                text.push_str(&format!(" {name} ({})", mode.as_str().unwrap_or("?")));
            }
        }
        _ => {}
    }
    let state = |key: &str| detail.get(key).and_then(|value| value.as_str());
    if detail.get("requested").is_some() {
        text.push_str(&format!(
            " requested (power was {})",
            state("from").unwrap_or("?")
        ));
        return text;
    }
    if let (Some(from), Some(to)) = (state("from"), state("to")) {
        let separator = if text.is_empty() { " " } else { ", " };
        text.push_str(&format!("{separator}power {from} → {to}"));
    }
    text
}

pub async fn events(connection: &Connection, args: &EventsArgs) -> anyhow::Result<ExitCode> {
    let client = Client::new(connection)?;
    let machine = args.machine.as_deref().or(args.name.as_deref());
    if args.follow {
        return super::follow::run(&client, machine, args.limit, args.json).await;
    }
    let mut path = format!("/events?limit={}", args.limit);
    if let Some(name) = machine {
        path.push_str(&format!("&machine={name}"));
    }
    let events: Vec<EventView> = client.get(&path).await??;
    if args.json {
        print_json(&events)?;
        return Ok(ExitCode::SUCCESS);
    }
    for event in &events {
        println!("{}", describe_event(event));
    }
    let _ = colour_enabled();
    Ok(ExitCode::SUCCESS)
}

/// `fleet machine registration NAME`: the secret on stdout, how to use it on stderr (the secret
/// never goes on a command line: register-live.sh reads it from a file or the environment).
async fn registration(client: &Client, name: &str, json: bool) -> anyhow::Result<ExitCode> {
    let path = format!("/machines/{name}/registration");
    let made: serde_json::Value = match client.post(&path, &serde_json::json!({})).await? {
        Ok(made) => made,
        Err(failure) => {
            eprintln!(
                "error: no registration secret for {name}: {}",
                failure.message
            );
            return Ok(ExitCode::FAILURE);
        }
    };
    if json {
        print_json(&made)?;
        return Ok(ExitCode::SUCCESS);
    }
    let secret = made["registration"].as_str().unwrap_or_default();
    println!("{secret}");
    eprintln!(
        "one-shot registration secret for {name}, valid until {} (used once, then refused).\n\
         On {name}, as root, with the secret in a file (or in FLEET_REGISTRATION), URL being \
         where machines reach the controller (its boot HTTP address):\n  \
         curl -fsS URL/scripts/register-live.sh | sh -s -- --url URL --machine {name} \
         --registration-file FILE",
        made["expires_at"].as_str().unwrap_or("?")
    );
    Ok(ExitCode::SUCCESS)
}

async fn add(client: &Client, args: &AddArgs) -> anyhow::Result<ExitCode> {
    let request = AddMachine {
        name: args.name.clone(),
        macs: args.macs.clone(),
        arch: args.arch.clone(),
        power: power_object(args)?,
        image: args.image.clone(),
        tags: args.tag.clone(),
        commission: Some(!args.no_commission),
        deployed: args.deployed,
        deployed_os: args.os.clone(),
        ..AddMachine::default()
    };
    let added: AddedView = match client.post("/machines", &request).await? {
        Ok(added) => added,
        Err(failure) => {
            eprintln!("error: cannot add {}: {}", args.name, failure.message);
            return Ok(ExitCode::FAILURE);
        }
    };
    if args.json {
        print_json(&added)?;
        return Ok(ExitCode::SUCCESS);
    }
    println!("{}: added, {}", added.machine.name, added.machine.status);
    if let Some(commission) = &added.commission {
        println!("{}", describe_done(commission));
    }
    if let Some(refused) = &added.commission_refused {
        println!("  not commissioned: {refused}");
    }
    Ok(ExitCode::SUCCESS)
}

/// `--power-type ipmi --power-param address=10.0.0.5 --power-param password=env:BMC_PASS`.
fn power_object(args: &AddArgs) -> anyhow::Result<Option<serde_json::Value>> {
    let Some(power_type) = &args.power_type else {
        if !args.power_params.is_empty() {
            bail!("--power-param needs --power-type");
        }
        return Ok(None);
    };
    let mut object = serde_json::Map::new();
    object.insert("type".into(), power_type.clone().into());
    for param in &args.power_params {
        let Some((key, value)) = param.split_once('=') else {
            bail!("--power-param `{param}` is not KEY=VALUE");
        };
        let value = if let Some(name) = value.strip_prefix("env:") {
            serde_json::json!({ "env": name })
        } else if let Some(path) = value.strip_prefix("file:") {
            serde_json::json!({ "file": path })
        } else {
            serde_json::Value::String(value.to_string())
        };
        object.insert(key.to_string(), value);
    }
    Ok(Some(serde_json::Value::Object(object)))
}
