//! fleet's TFTP server on its own, for side-by-side benchmarks (peer-baselines.sh's
//! TFTP_EXTRA_CMD):
//!
//!     tftp-bench-server --root "$PB_TFTP_ROOT" [--listen 0.0.0.0:69]
//!
//! Serves the directory read-only until SIGINT/SIGTERM.

use fleet::boot::tftp::{serve_with, TftpConfig};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

struct Arguments {
    root: PathBuf,
    listen: SocketAddr,
}

fn parse_arguments() -> Result<Arguments, String> {
    let mut root = None;
    let mut listen = SocketAddr::from(([0, 0, 0, 0], 69));
    let mut arguments = std::env::args().skip(1);
    while let Some(argument) = arguments.next() {
        let value = arguments
            .next()
            .ok_or(format!("{argument} needs a value"))?;
        match argument.as_str() {
            "--root" => root = Some(PathBuf::from(value)),
            "--listen" => {
                listen = value
                    .parse()
                    .map_err(|error| format!("--listen {value}: {error}"))?
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(Arguments {
        root: root.ok_or("--root DIR is required")?,
        listen,
    })
}

#[tokio::main]
async fn main() -> ExitCode {
    let arguments = match parse_arguments() {
        Ok(arguments) => arguments,
        Err(message) => {
            eprintln!("tftp-bench-server: {message}\nusage: tftp-bench-server --root DIR [--listen ADDR:PORT]");
            return ExitCode::from(2);
        }
    };
    let socket = match tokio::net::UdpSocket::bind(arguments.listen).await {
        Ok(socket) => socket,
        Err(error) => {
            eprintln!(
                "tftp-bench-server: cannot bind {}: {error}",
                arguments.listen
            );
            return ExitCode::FAILURE;
        }
    };
    eprintln!(
        "tftp-bench-server: serving {} on {}",
        arguments.root.display(),
        arguments.listen
    );
    let config = TftpConfig::new(arguments.root);
    match serve_with(socket, config, None, shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("tftp-bench-server: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn shutdown_signal() {
    let Ok(mut terminate) =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
    else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
}
