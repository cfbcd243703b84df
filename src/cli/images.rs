//! `fleet images [--json]` and `fleet images prune [--dry-run]`: the controller's images and
//! its image cache.

use super::client::Client;
use super::output::{bytes, new_table, or_dash, print_json};
use super::Connection;
use clap::Subcommand;
use comfy_table::Cell;
use fleet::api::views::{ImageFileView, PruneImages, PruneReport};
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct ImagesArgs {
    #[command(subcommand)]
    pub command: Option<ImagesCommand>,
    /// Machine-readable output
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum ImagesCommand {
    /// Remove the cached image files no image of the fleet uses, and say how many bytes
    Prune {
        /// Only say what would be removed
        #[arg(long)]
        dry_run: bool,
        /// Machine-readable output
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(connection: &Connection, args: &ImagesArgs) -> anyhow::Result<ExitCode> {
    let client = Client::new(connection)?;
    match &args.command {
        None => {
            let rows: Vec<ImageFileView> = client.get("/images").await??;
            if args.json {
                print_json(&rows)?;
            } else {
                print_images(&rows);
            }
            let failed = rows
                .iter()
                .any(|row| row.state == "failed" || row.state == "changed");
            Ok(if failed {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
        Some(ImagesCommand::Prune { dry_run, json }) => {
            let body = PruneImages { dry_run: *dry_run };
            let report: PruneReport = client.post("/images/prune", &body).await??;
            if *json {
                print_json(&report)?;
            } else {
                print_pruned(&report);
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn print_images(rows: &[ImageFileView]) {
    let mut table = new_table(&[
        "IMAGE",
        "FILE",
        "FORMAT",
        "SOURCE",
        "SIZE",
        "SHA256",
        "RAW SIZE",
        "RAW SHA256",
        "STATE",
        "USED BY",
    ]);
    for row in rows {
        let format = match (row.format, row.served_format) {
            (Some(format), Some(served)) if format != served => {
                format!("{} (served {})", format.as_str(), served.as_str())
            }
            (Some(format), _) => format.as_str().to_string(),
            (None, _) => "-".to_string(),
        };
        let state = match (row.state.as_str(), &row.detail) {
            ("downloading", Some(progress)) => format!("downloading {progress}"),
            (state, _) => state.to_string(),
        };
        table.add_row(vec![
            Cell::new(&row.image),
            Cell::new(&row.file),
            Cell::new(format),
            Cell::new(or_dash(row.url.as_ref().or(row.path.as_ref()))),
            Cell::new(or_dash(row.size.map(|size| bytes(size as i64)))),
            Cell::new(or_dash(row.sha256.as_deref().map(short))),
            Cell::new(or_dash(row.raw_size.map(|size| bytes(size as i64)))),
            Cell::new(or_dash(row.raw_sha256.as_deref().map(short))),
            Cell::new(state),
            Cell::new(row.used_by),
        ]);
    }
    println!("{}", table.trim_fmt());
    let images: std::collections::BTreeSet<&str> =
        rows.iter().map(|row| row.image.as_str()).collect();
    let ready = rows.iter().filter(|row| row.state == "ready").count();
    println!(
        "{} image{}, {} file{} ({ready} ready)",
        images.len(),
        plural(images.len()),
        rows.len(),
        plural(rows.len())
    );
    for row in rows
        .iter()
        .filter(|row| row.state == "failed" || row.state == "changed")
    {
        let detail = row.detail.as_deref().unwrap_or("");
        println!(
            "image `{}` {}: {}: {detail}",
            row.image, row.file, row.state
        );
    }
}

/// The first 12 hex digits: enough to tell images apart (`--json` has them whole).
fn short(digest: &str) -> String {
    digest.chars().take(12).collect()
}

fn plural(count: usize) -> &'static str {
    if count == 1 {
        ""
    } else {
        "s"
    }
}

fn print_pruned(report: &PruneReport) {
    let verb = if report.dry_run {
        "would remove"
    } else {
        "removed"
    };
    for file in &report.removed {
        println!("{verb} {} ({})", file.file, bytes(file.bytes as i64));
    }
    println!(
        "{verb} {} file{} ({}) from {}",
        report.files,
        plural(report.files),
        bytes(report.bytes as i64),
        if report.directory.is_empty() {
            "the image cache"
        } else {
            &report.directory
        }
    );
}
