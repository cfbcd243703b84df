//! One integration-test binary (keeps link time low); one module per concern.

mod support;

mod actions;
mod addresses;
mod apply;
mod bench_cli;
mod bounded_growth;
mod clone;
mod config;
mod controllers;
mod crash;
mod db_ops;
mod deploy_api;
mod dhcp;
mod dhcp_controllers;
mod endpoints;
mod ephemeral;
mod events_api;
mod events_follow;
mod failover_deploy;
mod fuzz;
mod images;
mod layers;
mod leader_applies;
mod leadership;
mod lifecycle;
mod machine_api;
mod metrics;
mod netplan;
mod peer_images;
mod plan;
mod plan_deployment;
mod plan_simulate;
mod power;
mod power_apply;
mod power_queue;
mod power_redfish;
mod power_webhook;
mod private_store;
mod profiles;
mod secrets;
mod serve;
mod sim;
mod store;
mod stored_secrets;
mod tftp;
mod tls;
mod tokens;
// The tests that run real QEMU virtual machines (TCG): `.ci/test` runs them on their own, one at
// a time, after the others (`vm::` filters them in or out).
mod vm;
mod watch;
