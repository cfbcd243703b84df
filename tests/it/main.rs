//! One integration-test binary (keeps link time low); one module per concern.

mod support;

mod actions;
mod apply;
mod bounded_growth;
mod config;
mod crash;
mod dhcp;
mod endpoints;
mod enlist;
mod enlist_bmc;
mod events_api;
mod fuzz;
mod layers;
mod lifecycle;
mod machine_api;
mod netboot;
mod plan;
mod plan_deployment;
mod power;
mod power_apply;
mod power_qemu;
mod power_queue;
mod power_redfish;
mod power_webhook;
mod private_store;
mod secrets;
mod serve;
mod store;
mod tftp;
mod tls;
mod tokens;
mod watch;
