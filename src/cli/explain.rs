//! `fleet explain MACHINE [FIELD]`: each effective value of one machine with the file:line of
//! every layer that gives it. Offline: reads the fleet files, never the controller.

use clap::Args;
use fleet::config::ExplainError;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Clone, Args)]
pub struct ExplainArgs {
    /// The machine's name
    pub machine: String,
    /// One field (kernel_params, vendor_data.http_proxy...; `expect` or `vendor_data` for all
    /// of theirs) [default: every field a profile can give]
    pub field: Option<String>,
    /// Fleet files or directories [default: fleet.toml]
    #[arg(short = 'f', long = "file")]
    pub files: Vec<PathBuf>,
    /// Machine-readable output
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: &ExplainArgs) -> anyhow::Result<ExitCode> {
    let mut files = args.files.clone();
    if files.is_empty() {
        files.push(PathBuf::from("fleet.toml"));
    }
    match fleet::config::explain(&files, &args.machine, args.field.as_deref()) {
        Ok(explanation) if args.json => {
            println!("{}", serde_json::to_string_pretty(&explanation)?);
            Ok(ExitCode::SUCCESS)
        }
        Ok(explanation) => {
            print!("{}", explanation.render());
            Ok(ExitCode::SUCCESS)
        }
        Err(ExplainError::Invalid(diagnostics)) => {
            eprint!("{}", diagnostics.render(super::output::colour_enabled()));
            Ok(ExitCode::FAILURE)
        }
        Err(error) => {
            eprintln!("error: {error}");
            Ok(ExitCode::FAILURE)
        }
    }
}
