//! `[policy]`: timeouts, parallelism, protection and defaults for the plan and the executor.

use super::{reference, Reference};
use crate::config::diagnostics::{Problem, Problems};
use crate::config::model::{EnlistedPolicy, EventPolicy, Policy, RateLimits, Timeouts};
use crate::config::read::{Spanned, TableReader};
use crate::config::syntax::{Span, Value};
use crate::model::{MacAddr, MachineName};

pub const KEYS: &[&str] = &[
    "timeouts",
    "parallelism",
    "enlisted",
    "protected",
    "max_destructive_per_apply",
    "default_image",
    "power_poll_seconds",
    "ignore_macs",
    "rate_limits",
    "events",
];
pub const PROTECTED_KEYS: &[&str] = &["machines", "tags"];

#[derive(Debug)]
pub struct PolicyDecl {
    pub span: Span,
    pub policy: Policy,
    pub default_image: Option<Reference>,
    /// Protected machine names, checked against the declared machines.
    pub protected_machines: Vec<Spanned<MachineName>>,
    /// `ignore_macs` as written (duplicates kept), checked against the machines' MACs.
    pub ignore_macs: Vec<Spanned<MacAddr>>,
}

pub fn read(reader: TableReader<'_, '_>, problems: &mut Problems) -> PolicyDecl {
    reader.check_keys(KEYS, problems);
    let defaults = Policy::default();
    let protected_machines = protected_machines(&reader, problems);
    let ignore_macs = ignore_macs(&reader, problems);
    let mut policy = Policy {
        timeouts: timeouts(&reader, problems),
        parallelism: count(&reader, "parallelism", 1, problems).unwrap_or(defaults.parallelism),
        enlisted: enlisted(&reader, problems).unwrap_or_default(),
        protected: Default::default(),
        max_destructive_per_apply: count(&reader, "max_destructive_per_apply", 0, problems),
        default_image: None,
        power_poll_seconds: count(&reader, "power_poll_seconds", 0, problems)
            .unwrap_or(defaults.power_poll_seconds),
        ignore_macs: Vec::new(),
        rate_limits: rate_limits(&reader, problems),
        events: events(&reader, problems),
    };
    policy.protected.machines = protected_machines
        .iter()
        .map(|name| name.value.clone())
        .collect();
    policy.protected.tags = protected_tags(&reader, problems);
    policy.ignore_macs = ignore_macs.iter().map(|mac| mac.value).collect();
    policy.ignore_macs.sort_unstable();
    policy.ignore_macs.dedup();
    PolicyDecl {
        span: reader.span,
        policy,
        default_image: reference(&reader, "default_image", problems),
        protected_machines,
        ignore_macs,
    }
}

fn count(
    reader: &TableReader<'_, '_>,
    key: &str,
    minimum: i64,
    problems: &mut Problems,
) -> Option<u32> {
    reader
        .integer(key, minimum, u32::MAX as i64, problems)
        .map(|value| value.value as u32)
}

/// `[policy.timeouts]`: whole minutes (`30`) or a duration (`"90s"`), stored in seconds; 0 would
/// fail every operation at once, so the minimum is 1 second.
fn timeouts(reader: &TableReader<'_, '_>, problems: &mut Problems) -> Timeouts {
    let mut timeouts = Timeouts::default();
    let Some(table) = reader.table("timeouts", "[policy.timeouts]", problems) else {
        return timeouts;
    };
    table.check_keys(Timeouts::KEYS, problems);
    for key in Timeouts::KEYS {
        let Some(item) = table.item(key) else {
            continue;
        };
        let Some(seconds) = duration_seconds(key, &item.value, item.span, problems) else {
            continue;
        };
        if let Some(field) = timeouts.field_mut(key) {
            *field = seconds;
        }
    }
    timeouts
}

/// A duration value in seconds: an integer is minutes, a string has units. Reports and returns
/// `None` for anything else, for 0, and for more than `u32::MAX` seconds.
pub fn duration_seconds(
    key: &str,
    value: &Value<'_, '_>,
    span: Span,
    problems: &mut Problems,
) -> Option<u32> {
    let seconds = match value {
        Value::Integer(minutes) => u64::try_from(*minutes).unwrap_or(0).checked_mul(60),
        Value::String(text) => match crate::config::parse_duration_seconds(text) {
            Ok(seconds) => Some(seconds),
            Err(error) => {
                problems.error(span, format!("the `{key}` timeout: {error}"));
                return None;
            }
        },
        other => {
            problems.error(
                span,
                format!(
                    "the `{key}` timeout must be whole minutes or a duration such as \"90s\", found {}",
                    other.type_name()
                ),
            );
            return None;
        }
    };
    match seconds.and_then(|seconds| u32::try_from(seconds).ok()) {
        Some(0) => {
            let problem = Problem::new(
                span,
                format!("the `{key}` timeout must be at least 1 second"),
            );
            problems
                .push(problem.help("a timeout of 0 would fail the operation as soon as it starts"));
            None
        }
        Some(seconds) => Some(seconds),
        None => {
            problems.error(span, format!("the `{key}` timeout is too long"));
            None
        }
    }
}

/// `[policy.rate_limits]`: every value at least 1 (a bucket of 0 would refuse every machine);
/// a key left out keeps its default.
fn rate_limits(reader: &TableReader<'_, '_>, problems: &mut Problems) -> RateLimits {
    let mut limits = RateLimits::default();
    let Some(table) = reader.table("rate_limits", "[policy.rate_limits]", problems) else {
        return limits;
    };
    table.check_keys(RateLimits::KEYS, problems);
    let per_second_at_most = 1_000_000 * 60;
    let read = |key: &str, minimum: i64, maximum: i64, problems: &mut Problems| {
        table
            .integer(key, minimum, maximum, problems)
            .map(|value| value.value as u32)
    };
    if let Some(value) = read("anonymous_burst", 1, 1_000_000, problems) {
        limits.anonymous_burst = value;
    }
    if let Some(value) = read("anonymous_per_minute", 1, per_second_at_most, problems) {
        limits.anonymous_per_minute = value;
    }
    if let Some(value) = read("enlist_burst", 1, 1_000_000, problems) {
        limits.enlist_burst = value;
    }
    if let Some(value) = read("enlist_per_minute", 1, per_second_at_most, problems) {
        limits.enlist_per_minute = value;
    }
    if let Some(value) = read("tracked_addresses", 16, 10_000_000, problems) {
        limits.tracked_addresses = value;
    }
    limits
}

/// `[policy.events]`: retention by age and count, how often it runs, and the summary interval.
fn events(reader: &TableReader<'_, '_>, problems: &mut Problems) -> EventPolicy {
    let mut events = EventPolicy::default();
    let Some(table) = reader.table("events", "[policy.events]", problems) else {
        return events;
    };
    table.check_keys(EventPolicy::KEYS, problems);
    if let Some(days) = table.integer("max_age_days", 1, 36_500, problems) {
        events.max_age_days = days.value as u32;
    }
    if let Some(count) = table.integer("max_count", 1, i64::MAX, problems) {
        events.max_count = count.value as u64;
    }
    if let Some(seconds) = table.integer("prune_every_seconds", 1, 86_400, problems) {
        events.prune_every_seconds = seconds.value as u32;
    }
    if let Some(seconds) = table.integer("summary_seconds", 1, 3_600, problems) {
        events.summary_seconds = seconds.value as u32;
    }
    events
}

fn enlisted(reader: &TableReader<'_, '_>, problems: &mut Problems) -> Option<EnlistedPolicy> {
    let choice = reader.choice("enlisted", &["leave", "commission"], problems)?;
    Some(if choice.value == "commission" {
        EnlistedPolicy::Commission
    } else {
        EnlistedPolicy::Leave
    })
}

/// `ignore_macs = ["52:54:00:..", ...]`: MACs the DHCP server stays silent to. A MAC listed twice
/// is harmless and kept once.
fn ignore_macs(reader: &TableReader<'_, '_>, problems: &mut Problems) -> Vec<Spanned<MacAddr>> {
    let list = reader.string_list("ignore_macs", problems);
    list.into_iter()
        .filter_map(|mac| crate::config::read::parse_spanned(mac, problems))
        .collect()
}

fn protected_machines(
    reader: &TableReader<'_, '_>,
    problems: &mut Problems,
) -> Vec<Spanned<MachineName>> {
    let Some(table) = reader.table("protected", "[policy.protected]", problems) else {
        return Vec::new();
    };
    table.check_keys(PROTECTED_KEYS, problems);
    let names = table.string_list("machines", problems);
    names
        .into_iter()
        .filter_map(|name| crate::config::read::parse_spanned(name, problems))
        .collect()
}

fn protected_tags(reader: &TableReader<'_, '_>, problems: &mut Problems) -> Vec<String> {
    let Some(item) = reader.item("protected") else {
        return Vec::new();
    };
    let Value::Table(table) = &item.value else {
        return Vec::new();
    };
    let table = TableReader::new(*table, item.span, "[policy.protected]");
    super::tags(&table, problems)
}
