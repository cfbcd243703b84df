//! fleet's DHCP server on its own, for the side-by-side benchmark with Kea
//! (`../shared/bench/peer-baselines.sh`, DHCP_EXTRA_CMD):
//!
//! ```text
//! cargo build --release --example dhcp-bench-server
//! DHCP_EXTRA_NAME=fleet DHCP_EXTRA_CMD='exec target/release/examples/dhcp-bench-server \
//!   --interface "$PB_IFACE" --server-ip "$PB_SRV_IP" --prefix "$PB_PREFIX" \
//!   --pool-start "$PB_POOL_START" --pool-end "$PB_POOL_END" --state-dir "$PB_STATE_DIR"' \
//!   bash peer-baselines.sh
//! ```
//!
//! Leases go to a SQLite store in the state directory in batches, each ACK sent once its lease's
//! batch has committed (durable before the ACK, as in `fleet serve`);
//! `--in-memory` keeps them in memory only. Runs on one thread, as Kea does.

use clap::Parser;
use fleet::boot::dhcp::{bind_dhcp_socket, serve, DhcpConfig, DhcpLeases, DhcpSubnet};
use fleet::store::Store;
use ipnet::Ipv4Net;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;

#[derive(Parser)]
struct Arguments {
    /// Serve this interface (SO_BINDTODEVICE); relayed requests are answered whatever it is.
    #[arg(long)]
    interface: Option<String>,
    /// Our address: the server identifier.
    #[arg(long)]
    server_ip: Ipv4Addr,
    #[arg(long, default_value_t = 16)]
    prefix: u8,
    #[arg(long)]
    pool_start: Ipv4Addr,
    #[arg(long)]
    pool_end: Ipv4Addr,
    #[arg(long, default_value_t = 3600)]
    lease_seconds: u32,
    #[arg(long, default_value_t = 67)]
    port: u16,
    /// The SQLite store goes here (fleet.db).
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Keep leases in memory only.
    #[arg(long)]
    in_memory: bool,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let arguments = Arguments::parse();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run(arguments))
}

async fn run(arguments: Arguments) -> anyhow::Result<()> {
    let network = Ipv4Net::new(arguments.server_ip, arguments.prefix)?.trunc();
    let mut subnet = DhcpSubnet::new("bench", network);
    subnet.pool = Some((arguments.pool_start, arguments.pool_end));
    subnet.lease_seconds = arguments.lease_seconds;
    let mut config = DhcpConfig::new(Default::default());
    config.subnets.push(subnet);
    let interface = arguments.interface.as_deref().unwrap_or("any");
    let config = config.on_interface(interface, arguments.server_ip);
    let leases = match (&arguments.state_dir, arguments.in_memory) {
        (Some(state_dir), false) => {
            let url = format!("sqlite://{}", state_dir.join("fleet.db").display());
            DhcpLeases::load(Store::open(&url).await?, &config).await?
        }
        _ => DhcpLeases::in_memory(),
    };
    let address = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, arguments.port);
    let socket = bind_dhcp_socket(arguments.interface.as_deref(), address)?;
    let socket = tokio::net::UdpSocket::from_std(socket)?;
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    // Counted as in the controller (its `/metrics`), so the bench pays what a controller pays.
    let metrics = std::sync::Arc::new(fleet::metrics::Metrics::new());
    tokio::select! {
        result = serve(socket, config, leases.clone(), metrics, shutdown) => result?,
        _ = terminate.recv() => {}
    }
    leases.close().await?;
    Ok(())
}
