//! Named crash points for tests: `FLEET_FAILPOINTS=NAME[,NAME...]` in a controller's
//! environment makes it abort (as a SIGKILL would: no destructor, no flush) when it reaches
//! one of them, so a test can kill it at an exact place instead of after a guessed sleep.
//! One point is a delay instead ([`LATE_STEP_DOWN`]). Read once; absent (as in every real
//! deployment) each point costs one branch.
//!
//! Written here rather than with the `fail` crate: that crate compiles its points in only with a
//! cargo feature, and the tests drive the very `fleet` binary that ships.

use std::sync::OnceLock;

/// The environment variable that names the points.
pub const FAILPOINTS_VARIABLE: &str = "FLEET_FAILPOINTS";

/// Between an action's committed decision (status, erase mode, power decision) and its power
/// command.
pub const AFTER_DECISION: &str = "action-after-commit";
/// After the power driver carried a command out, before its result is stored.
pub const AFTER_POWER_COMMAND: &str = "power-after-command";

/// A leader that steps down (told that its term is over, or unable to renew it in time) keeps
/// its duties running [`LATE_STEP_DOWN_FOR`] longer before it stops them, as one whose election
/// learns of the takeover after its duties have acted would: a test then sees the fence alone refuse every write they attempt (without it,
/// whether a resumed leader's duties or its election act first is a race).
pub const LATE_STEP_DOWN: &str = "leader-steps-down-late";
/// How long [`LATE_STEP_DOWN`] keeps the duties of a term that is over.
pub const LATE_STEP_DOWN_FOR: std::time::Duration = std::time::Duration::from_secs(10);

fn armed() -> &'static [String] {
    static ARMED: OnceLock<Vec<String>> = OnceLock::new();
    ARMED.get_or_init(|| {
        std::env::var(FAILPOINTS_VARIABLE)
            .map(|text| {
                text.split(',')
                    .map(|name| name.trim().to_string())
                    .filter(|name| !name.is_empty())
                    .collect()
            })
            .unwrap_or_default()
    })
}

/// Whether the point `name` is armed.
pub fn is_armed(name: &str) -> bool {
    armed().iter().any(|armed| armed == name)
}

/// Aborts the process if the point `name` is armed.
pub fn reached(name: &str) {
    if is_armed(name) {
        eprintln!("failpoint {name}: aborting the process");
        std::process::abort();
    }
}
