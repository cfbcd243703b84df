//! `fleet controllers [--json]`: the controllers sharing the store of the one asked.

use super::client::Client;
use super::output::{new_table, print_json};
use super::Connection;
use fleet::api::views::ControllerView;
use fleet::model::describe_seconds;
use std::process::ExitCode;

pub async fn run(connection: &Connection, json: bool) -> anyhow::Result<ExitCode> {
    let client = Client::new(connection)?;
    let rows: Vec<ControllerView> = client.get("/controllers").await??;
    if json {
        print_json(&rows)?;
    } else {
        print_controllers(&rows);
    }
    Ok(ExitCode::SUCCESS)
}

fn print_controllers(rows: &[ControllerView]) {
    let mut table = new_table(&[
        "ID",
        "HOST",
        "API",
        "BOOT",
        "DHCP SERVES",
        "VERSION",
        "LAST HEARTBEAT",
        "STATE",
        "ROLE",
    ]);
    for row in rows {
        let networks = if row.networks.is_empty() {
            "-".to_string()
        } else {
            row.networks.join("\n")
        };
        let state = match (row.silent, row.this_one) {
            (true, _) => "silent",
            (false, true) => "alive (this one)",
            (false, false) => "alive",
        };
        table.add_row(vec![
            row.id.clone(),
            row.hostname.clone(),
            row.api_url.clone(),
            row.boot_url.clone(),
            networks,
            row.version.clone(),
            format!(
                "{} ago",
                describe_seconds(u64::try_from(row.heartbeat_age_seconds).unwrap_or(0))
            ),
            state.to_string(),
            match row.leader_term {
                Some(term) if row.leader => format!("leader (term {term})"),
                _ => "follower".to_string(),
            },
        ]);
    }
    println!("{table}");
}
