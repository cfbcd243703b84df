//! fleet: declarative bare-metal provisioning.
//!
//! The core (`config`, `model`, `plan`) is pure; IO lives at the edges (`store`, `api`, `power`,
//! `cli`). See ARCHITECTURE.md for the code map and each part's invariants.

pub mod api;
pub mod apply;
pub mod boot;
pub mod commissioning;
pub mod config;
pub mod controller;
pub mod metrics;
pub mod model;
pub mod plan;
pub mod power;
pub mod services;
pub mod sim;
pub mod store;
