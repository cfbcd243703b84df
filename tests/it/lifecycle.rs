//! The life-cycle core against lifecycle.md: every row of the whitelist and of the action table
//! (read from a verbatim copy of those tables), plus a property test that no sequence of actions
//! and settlements ever changes status outside the whitelist.

use fleet::model::{
    decide, settle, Action, ActionOptions, ActionRequest, EraseMode, Lifecycle, PowerState,
    Settlement, Status,
};
use proptest::prelude::*;
use std::collections::BTreeSet;

const TABLES: &str = include_str!("../fixtures/lifecycle-tables.md");

/// The rows of the markdown table that follows `heading`, as cells.
fn table_rows(heading: &str) -> Vec<Vec<String>> {
    let section = TABLES.split(heading).nth(1).expect("the section exists");
    section
        .lines()
        .skip_while(|line| !line.starts_with('|'))
        .take_while(|line| line.starts_with('|'))
        .skip(2) // header and separator
        .map(|line| {
            line.trim_matches('|')
                .split('|')
                .map(|cell| cell.trim().to_string())
                .collect()
        })
        .collect()
}

/// The status names that appear in `text`, with parenthesised remarks removed.
fn statuses_in(text: &str) -> BTreeSet<Status> {
    let mut plain = String::new();
    let mut depth = 0;
    for character in text.chars() {
        match character {
            '(' => depth += 1,
            ')' => depth -= 1,
            _ if depth == 0 => plain.push(character),
            _ => {}
        }
    }
    let mut found: BTreeSet<Status> = plain
        .split(|c: char| !(c.is_ascii_lowercase() || c == '_'))
        .filter_map(|word| word.parse().ok())
        .collect();
    if plain.contains("every failed status") {
        found.extend(Status::FAILED);
    }
    found
}

#[test]
fn the_whitelist_is_lifecycle_md_row_by_row() {
    let rows = table_rows("## Allowed status changes");
    assert_eq!(rows.len(), 24, "the (created) row and one row per status");
    for row in rows {
        let (from, to) = (&row[0], &row[1]);
        let mut expected = statuses_in(to);
        if let Some(except) = to.strip_prefix("any status except") {
            let excluded = statuses_in(except);
            expected = Status::ALL
                .into_iter()
                .filter(|status| !excluded.contains(status))
                .collect();
        }
        if from == "(created)" {
            let actual: BTreeSet<Status> = Status::INITIAL.into_iter().collect();
            assert_eq!(actual, expected, "created");
            continue;
        }
        let from: Status = from.parse().expect("a status name");
        let actual: BTreeSet<Status> = from.allowed_next().iter().copied().collect();
        assert_eq!(actual, expected, "whitelist row {from}");
        for to in Status::ALL {
            assert_eq!(
                from.check_change_to(to).is_ok(),
                expected.contains(&to),
                "{from} -> {to}"
            );
        }
    }
}

#[test]
fn an_invalid_transition_is_named_as_lifecycle_md_says() {
    let error = Status::New.check_change_to(Status::Deployed).unwrap_err();
    assert_eq!(error.to_string(), "invalid transition: new -> deployed");
}

#[test]
fn each_in_progress_status_fails_to_exactly_one_failed_status() {
    let expected = [
        (Status::Commissioning, Status::FailedCommissioning),
        (Status::Deploying, Status::FailedDeployment),
        (Status::Releasing, Status::FailedReleasing),
        (Status::DiskErasing, Status::FailedDiskErasing),
        (Status::EnteringRescueMode, Status::FailedEnteringRescueMode),
        (Status::ExitingRescueMode, Status::FailedExitingRescueMode),
        (Status::Testing, Status::FailedTesting),
    ];
    for status in Status::ALL {
        let failed = expected
            .iter()
            .find(|(from, _)| *from == status)
            .map(|(_, to)| *to);
        assert_eq!(status.failed_status(), failed, "{status}");
        assert_eq!(status.is_in_progress(), failed.is_some(), "{status}");
    }
    assert_eq!(
        Status::ALL
            .iter()
            .filter(|status| status.is_failed())
            .count(),
        7
    );
}

#[test]
fn statuses_have_maas_numbers_names_labels_and_kinds() {
    let rows = table_rows("## Statuses (23)");
    assert_eq!(rows.len(), 23);
    for row in rows {
        let number: usize = row[0].parse().expect("a number");
        let status = Status::ALL[number];
        assert_eq!(status.number() as usize, number);
        assert_eq!(status.as_str(), row[1], "name of {number}");
        assert_eq!(status.as_str().parse::<Status>().unwrap(), status);
        assert_eq!(status.label(), row[2], "label of {status}");
        let kind = match status.kind() {
            fleet::model::StatusKind::Resting => "resting",
            fleet::model::StatusKind::InProgress => "in progress",
            fleet::model::StatusKind::Failed => "failed",
        };
        assert_eq!(kind, row[3], "kind of {status}");
    }
}

fn action_named(cell: &str) -> Vec<Action> {
    cell.split('/')
        .map(|name| Action::parse(name.trim()).expect("an action name"))
        .collect()
}

/// The "accepted in" column, read per action.
fn accepted_in_table() -> Vec<(Action, BTreeSet<Status>)> {
    let mut accepted = Vec::new();
    for row in table_rows("## Actions a person") {
        let (actions, cell) = (action_named(&row[0]), &row[1]);
        for action in actions {
            let statuses = match action {
                Action::Lock => statuses_in(cell.split(';').next().unwrap()),
                Action::Unlock | Action::Delete => Status::ALL.into_iter().collect(),
                Action::PowerOn | Action::PowerCycle => {
                    statuses_in(cell.split(';').next().unwrap())
                }
                Action::PowerOff => Status::ALL
                    .into_iter()
                    .filter(|status| !status.is_in_progress())
                    .collect(),
                _ => statuses_in(cell),
            };
            accepted.push((action, statuses));
        }
    }
    accepted
}

#[test]
fn every_action_accepts_exactly_the_statuses_lifecycle_md_lists() {
    let table = accepted_in_table();
    assert_eq!(table.len(), Action::ALL.len(), "every action has a row");
    for (action, expected) in table {
        let actual: BTreeSet<Status> = action.accepted_in().into_iter().collect();
        assert_eq!(actual, expected, "accepted in, {action}");
    }
}

/// A machine in `status` that meets every extra condition (owner, commissioned, power on).
fn able_machine(status: Status) -> Lifecycle {
    Lifecycle {
        status,
        previous_status: Some(Status::Ready),
        locked: false,
        power: PowerState::On,
        owner: Some("alice".into()),
        commissioned: true,
        deployed_os: None,
        power_configured: true,
    }
}

#[test]
fn an_able_machine_is_refused_only_outside_the_accepted_statuses() {
    for status in Status::ALL {
        for action in Action::ALL {
            let mut machine = able_machine(status);
            machine.locked = action == Action::Unlock;
            let result = decide(&machine, &ActionRequest::new(action, "alice"));
            let documented_exception =
                action == Action::EnterRescue && status == Status::FailedExitingRescueMode;
            let expected = action.accepts_status(status) && !documented_exception;
            assert_eq!(result.is_ok(), expected, "{action} in {status}: {result:?}");
            if let Err(refusal) = result {
                let message = refusal.to_string();
                assert!(
                    message.contains(status.as_str()) && message.contains(action.cli_name()),
                    "{message}"
                );
            }
        }
    }
}

/// Data-driven: (status, action, the status it ends in once the action's own steps are done).
#[test]
fn actions_lead_where_lifecycle_md_says() {
    use Status::*;
    let cases = [
        (New, Action::Commission, vec![Commissioning]),
        (Ready, Action::Allocate, vec![Allocated]),
        (Ready, Action::Deploy, vec![Allocated, Deploying]),
        (Allocated, Action::Deploy, vec![Deploying]),
        (Deployed, Action::Release, vec![Releasing]),
        (Deployed, Action::MarkBroken, vec![Broken]),
        (Broken, Action::MarkFixed, vec![Ready]),
        (FailedTesting, Action::OverrideFailedTesting, vec![Ready]),
        (Ready, Action::EnterRescue, vec![EnteringRescueMode]),
        (RescueMode, Action::ExitRescue, vec![ExitingRescueMode]),
        (Commissioning, Action::Abort, vec![New]),
        (Deploying, Action::Abort, vec![Allocated]),
        (DiskErasing, Action::Abort, vec![FailedDiskErasing]),
        (Ready, Action::Test, vec![Testing]),
    ];
    for (status, action, expected) in cases {
        let outcome = decide(&able_machine(status), &ActionRequest::new(action, "alice")).unwrap();
        let reached: Vec<Status> = outcome.changes.iter().map(|change| change.to).collect();
        assert_eq!(reached, expected, "{action} from {status}");
    }
}

#[test]
fn the_extra_conditions_of_the_action_table_hold() {
    let request = |action| ActionRequest::new(action, "alice");
    // A locked machine refuses everything but unlock.
    let mut locked = able_machine(Status::Deployed);
    locked.locked = true;
    for action in Action::ALL {
        assert_eq!(
            decide(&locked, &request(action)).is_ok(),
            action == Action::Unlock,
            "{action}"
        );
    }
    // lock twice / unlock an unlocked machine.
    assert!(decide(&locked, &request(Action::Lock))
        .unwrap_err()
        .reason
        .contains("locked"));
    let unlocked = able_machine(Status::Deployed);
    assert!(decide(&unlocked, &request(Action::Unlock))
        .unwrap_err()
        .reason
        .contains("not locked"));
    // test a new machine only once commissioned.
    let mut fresh = able_machine(Status::New);
    fresh.commissioned = false;
    assert!(decide(&fresh, &request(Action::Test)).is_err());
    // destructive tests refused on a deployed machine.
    let mut destructive = request(Action::Test);
    destructive.options.destructive_tests = true;
    assert!(decide(&able_machine(Status::Deployed), &destructive)
        .unwrap_err()
        .reason
        .contains("destructive"));
    // commission needs a power type unless the machine is on.
    let mut unpowered = able_machine(Status::New);
    unpowered.power_configured = false;
    unpowered.power = PowerState::Off;
    assert!(decide(&unpowered, &request(Action::Commission))
        .unwrap_err()
        .reason
        .contains("unconfigured power type"));
    unpowered.power = PowerState::On;
    assert!(decide(&unpowered, &request(Action::Commission)).is_ok());
    // power on needs an owner (a broken machine may be powered on for repair).
    let mut ownerless = able_machine(Status::Deployed);
    ownerless.owner = None;
    assert!(decide(&ownerless, &request(Action::PowerOn)).is_err());
    // power off refused when power is already off.
    let mut off = able_machine(Status::Ready);
    off.power = PowerState::Off;
    assert!(decide(&off, &request(Action::PowerOff))
        .unwrap_err()
        .reason
        .contains("already off"));
    // mark fixed refused when commissioning never passed; to deployed when it had an OS.
    let mut never = able_machine(Status::Broken);
    never.commissioned = false;
    assert!(decide(&never, &request(Action::MarkFixed)).is_err());
    let mut was_deployed = able_machine(Status::Broken);
    was_deployed.deployed_os = Some("ubuntu-24.04".into());
    assert_eq!(
        decide(&was_deployed, &request(Action::MarkFixed))
            .unwrap()
            .after
            .status,
        Status::Deployed
    );
}

#[test]
fn release_clears_the_owner_and_ends_ready_or_new() {
    let outcome = decide(
        &able_machine(Status::Deployed),
        &ActionRequest::new(Action::Release, "alice"),
    )
    .unwrap();
    assert_eq!(outcome.after.owner, None);
    let done = settle(&outcome.after, &Settlement::Succeeded).unwrap();
    assert_eq!(done.after.status, Status::Ready);
    let mut never = outcome.after.clone();
    never.commissioned = false;
    assert_eq!(
        settle(&never, &Settlement::Succeeded).unwrap().after.status,
        Status::New
    );
    let mut erase = ActionRequest::new(Action::Release, "alice");
    erase.options.erase = Some(EraseMode::Secure);
    let erasing = decide(&able_machine(Status::Deployed), &erase).unwrap();
    assert_eq!(erasing.after.status, Status::DiskErasing);
    assert_eq!(
        settle(&erasing.after, &Settlement::Succeeded)
            .unwrap()
            .after
            .status,
        Status::Releasing
    );
}

#[test]
fn failures_and_timeouts_go_to_the_failed_status_with_the_reason() {
    for status in Status::ALL
        .into_iter()
        .filter(|status| status.is_in_progress())
    {
        let timed_out = Settlement::TimedOut {
            operation: status.as_str().into(),
            seconds: 30 * 60,
        };
        let outcome = settle(&able_machine(status), &timed_out).unwrap();
        assert_eq!(Some(outcome.after.status), status.failed_status());
        assert_eq!(
            outcome.notes,
            vec![format!("operation {status} timed out after 30 minutes")]
        );
    }
    let silent = settle(
        &able_machine(Status::Commissioning),
        &Settlement::NotHeardFrom { seconds: 5 * 60 },
    )
    .unwrap();
    assert_eq!(
        silent.notes,
        vec!["not heard from for 5 minutes".to_string()]
    );
    // Marking a new or already-failed machine failed is a no-op; any other resting status is an error.
    let failed = Settlement::Failed { reason: "x".into() };
    assert!(settle(&able_machine(Status::New), &failed)
        .unwrap()
        .changes
        .is_empty());
    assert!(settle(&able_machine(Status::FailedTesting), &failed)
        .unwrap()
        .changes
        .is_empty());
    assert!(settle(&able_machine(Status::Ready), &failed).is_err());
}

/// One step of a random history.
#[derive(Debug, Clone)]
enum Step {
    Act(Action, bool),
    Settle(Settlement),
}

fn step_strategy() -> impl Strategy<Value = Step> {
    let action = (0..Action::ALL.len(), any::<bool>())
        .prop_map(|(index, erase)| Step::Act(Action::ALL[index], erase));
    let settlement = prop_oneof![
        Just(Settlement::Succeeded),
        Just(Settlement::StartTesting),
        Just(Settlement::Failed {
            reason: "script failed".into()
        }),
        Just(Settlement::TimedOut {
            operation: "x".into(),
            seconds: 60
        }),
        Just(Settlement::NotHeardFrom { seconds: 20 }),
    ]
    .prop_map(Step::Settle);
    prop_oneof![3 => action, 2 => settlement]
}

fn initial_strategy() -> impl Strategy<Value = Lifecycle> {
    (0..Status::INITIAL.len(), any::<bool>()).prop_map(|(index, manual)| {
        let mut machine = Lifecycle::created(Status::INITIAL[index]).unwrap();
        machine.power_configured = manual;
        if machine.status == Status::Deployed {
            machine.deployed_os = Some("live".into());
        }
        machine
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// No sequence of actions and settlements produces a transition outside the whitelist, and
    /// the recorded changes always chain from the status the machine had.
    #[test]
    fn no_sequence_leaves_the_whitelist(initial in initial_strategy(), steps in proptest::collection::vec(step_strategy(), 1..60)) {
        let mut machine = initial;
        for step in steps {
            let is_action = matches!(step, Step::Act(..));
            let result = match step {
                Step::Act(action, erase) => {
                    let mut request = ActionRequest::new(action, "prop");
                    if erase { request.options = ActionOptions { erase: Some(EraseMode::Quick), ..ActionOptions::default() }; }
                    decide(&machine, &request).map_err(|refusal| refusal.to_string())
                }
                Step::Settle(settlement) => settle(&machine, &settlement).map_err(|error| error.to_string()),
            };
            match result {
                Ok(outcome) => {
                    let mut status = machine.status;
                    for change in &outcome.changes {
                        prop_assert_eq!(change.from, status);
                        prop_assert!(change.from.can_change_to(change.to), "{} -> {}", change.from, change.to);
                        status = change.to;
                    }
                    prop_assert_eq!(outcome.after.status, status);
                    if outcome.delete { break; }
                    machine = outcome.after;
                }
                // An action is refused by its accepted statuses and conditions, never by producing
                // a change the whitelist forbids.
                Err(message) => prop_assert!(!is_action || !message.contains("invalid transition"), "{}", message),
            }
        }
    }
}

/// Regression: a machine deployed through fleet remembers that its disk holds an OS, so that
/// mark-fixed after mark-broken returns it to deployed.
#[test]
fn a_deployed_machine_marked_broken_and_fixed_is_deployed_again() {
    let mut machine = able_machine(Status::Allocated);
    machine.deployed_os = None;
    let deploying = decide(&machine, &ActionRequest::new(Action::Deploy, "alice"))
        .unwrap()
        .after;
    let deployed = settle(&deploying, &Settlement::Succeeded).unwrap().after;
    assert_eq!(deployed.status, Status::Deployed);
    assert!(deployed.deployed_os.is_some());
    let broken = decide(&deployed, &ActionRequest::new(Action::MarkBroken, "alice"))
        .unwrap()
        .after;
    let fixed = decide(&broken, &ActionRequest::new(Action::MarkFixed, "alice"))
        .unwrap()
        .after;
    assert_eq!(fixed.status, Status::Deployed);
}
