//! Fleet files: parse and validate the TOML that declares a fleet.
//!
//! `load` reads files (and directories, and their `include`s), reports every error at once with
//! file, line, column and a caret ([`Diagnostics`]), or returns the validated [`Fleet`] with every
//! reference resolved. Pure apart from reading the files: no network, no clock.
//!
//! The stages, each in its own module:
//! - `syntax`: TOML 1.1 by `toml-spanner` (conformant, spans kept), seen through small views;
//! - `read` + `sections`: each table into typed declarations, reporting unknown keys (with
//!   did-you-mean), wrong types and bad values;
//! - `check`: duplicates, references, addresses, clone chains, reachable states, across files;
//! - `diagnostics`: positions and miette rendering;
//! - `explain`: where one machine's values come from (its profile chain), found on demand.

mod check;
mod diagnostics;
mod duration;
mod explain;
mod load;
mod model;
mod read;
mod sections;
mod size;
mod syntax;
mod synthetic;

pub use diagnostics::{Diagnostic, Diagnostics, RelatedLocation};
pub use duration::{describe_seconds, parse_duration_seconds, DurationError};
pub use explain::{
    explain, Combine, ExplainError, Explanation, FieldOrigin, Layer, LayerOrigin, Role,
};
pub use load::{decode_toml, load, load_str};
pub use model::*;
pub use sections::json_schema;
pub use size::{human_bytes, parse_bytes, SizeError, SizeSpec};
pub use synthetic::synthetic_fleet_toml;
