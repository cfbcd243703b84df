//! Operator endpoints for machines and their history.

use super::views::{
    ActionBody, ActionView, AddMachine, AddedView, AddressView, ClockView, CloneBody, CloneView,
    EventView, MachineDetail, MachineRow, MachineView, ProgressView, ScriptResultView,
};
use super::{Actor, ApiError, ApiState};
use crate::model::{Action, ActionRequest, MacAddr, MachineName, Status};
use crate::services::actions::{perform, ActionError};
use crate::services::clone::{clone_machines, CloneError, CloneRequest};
use crate::store::{EventFilter, NewMachine};
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;

/// How many events `machine show` includes.
const RECENT_EVENTS: i64 = 20;

pub async fn list(State(state): State<ApiState>) -> Result<Json<Vec<MachineRow>>, ApiError> {
    let rows = state.store.machine_summaries().await?;
    Ok(Json(rows.into_iter().map(MachineRow::from).collect()))
}

pub async fn show(
    State(state): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Json<MachineDetail>, ApiError> {
    let record = state.store.machine(&name).await?.ok_or_else(|| {
        ApiError::not_found(format!("no machine named `{name}`")).with("machine", &name)
    })?;
    let script_results = state.store.script_results(record.id).await?;
    let addresses = state.store.machine_addresses(record.name.as_str()).await?;
    let filter = EventFilter {
        machine: Some(name),
        after_id: None,
        limit: Some(RECENT_EVENTS),
    };
    let events = state.store.events(&filter).await?;
    let limits = state
        .machine_api
        .current()
        .timeouts
        .watch_limits(record.lifecycle.status);
    let now = crate::store::now_ms();
    let state_kept = state.store.machine_state(record.name.as_str()).await?;
    let mut watched = record.watched();
    watched.install_done = state_kept.as_ref().and_then(|kept| kept.install_done_at);
    let progress = state_kept.and_then(|kept| kept.progress);
    Ok(Json(MachineDetail {
        machine: MachineView::from(&record),
        progress: progress.map(ProgressView::from),
        clocks: watched
            .clocks(&limits)
            .iter()
            .map(|clock| ClockView::new(clock, now))
            .collect(),
        script_results: script_results
            .into_iter()
            .map(ScriptResultView::from)
            .collect(),
        recent_events: events.into_iter().map(EventView::from).collect(),
        addresses: addresses.into_iter().map(AddressView::from).collect(),
    }))
}

#[derive(Debug, Deserialize)]
pub struct EventQuery {
    machine: Option<String>,
    after: Option<i64>,
    limit: Option<i64>,
}

/// Events one listing returns when it names no limit (the newest ones).
pub const EVENTS_DEFAULT_LIMIT: i64 = 100;
/// The most one listing returns: a store of millions of events is never read whole into the
/// controller's memory (the newest come first; `after=ID` narrows to those after an event).
pub const EVENTS_MAX_LIMIT: i64 = 10_000;

pub async fn events(
    State(state): State<ApiState>,
    Query(query): Query<EventQuery>,
) -> Result<Json<Vec<EventView>>, ApiError> {
    let limit = query.limit.unwrap_or(EVENTS_DEFAULT_LIMIT);
    if !(1..=EVENTS_MAX_LIMIT).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit must be a whole number from 1 to {EVENTS_MAX_LIMIT} (got {limit})"
        )));
    }
    if let Some(after) = query.after.filter(|after| *after < 0) {
        return Err(ApiError::bad_request(format!(
            "after must be an event id, 0 or more (got {after})"
        )));
    }
    let filter = EventFilter {
        machine: query.machine,
        after_id: query.after,
        limit: Some(limit),
    };
    let events = state.store.events(&filter).await?;
    Ok(Json(events.into_iter().map(EventView::from).collect()))
}

fn json_body<T>(body: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    body.map(|Json(value)| value).map_err(|rejection| {
        ApiError::bad_request(format!(
            "the request body is not valid: {}",
            rejection.body_text()
        ))
    })
}

pub async fn action(
    State(state): State<ApiState>,
    Actor(actor): Actor,
    Path((name, action_name)): Path<(String, String)>,
    body: Result<Json<ActionBody>, JsonRejection>,
) -> Result<Json<ActionView>, ApiError> {
    let action = Action::parse(&action_name).ok_or_else(|| {
        let known: Vec<&str> = Action::ALL.iter().map(|action| action.as_str()).collect();
        ApiError::bad_request(format!(
            "unknown action `{action_name}`; actions: {}",
            known.join(", ")
        ))
    })?;
    // An empty body is the same as `{}`.
    let body = match body {
        Err(JsonRejection::MissingJsonContentType(_)) => ActionBody::default(),
        other => json_body(other)?,
    };
    let request = ActionRequest {
        action,
        actor,
        comment: body.comment,
        options: body.options,
    };
    let done = perform(&state.store, &state.drivers, &name, &request).await?;
    if action == Action::Delete && done.record.is_none() {
        forget_bmc_password(&state, &name);
    }
    Ok(Json(ActionView::from(done)))
}

/// Clones the source's storage and/or interfaces onto each destination: one result each,
/// cloned or refused with every reason (a 200 either way; a request that names no
/// destination, chooses neither part or names an unknown source is refused whole).
pub async fn clone(
    State(state): State<ApiState>,
    Actor(actor): Actor,
    Path(source): Path<String>,
    body: Result<Json<CloneBody>, JsonRejection>,
) -> Result<Json<CloneView>, ApiError> {
    let body = json_body(body)?;
    let request = CloneRequest {
        source: source.clone(),
        destinations: body.destinations,
        storage: body.storage,
        interfaces: body.interfaces,
        dry_run: body.dry_run,
    };
    let results = clone_machines(&state.store, &request, &actor)
        .await
        .map_err(|error| match error {
            CloneError::UnknownSource(ref name) => {
                ApiError::not_found(error.to_string()).with("machine", name)
            }
            CloneError::Store(error) => error.into(),
            CloneError::NothingChosen | CloneError::NoDestinations => {
                ApiError::bad_request(error.to_string())
            }
        })?;
    Ok(Json(CloneView {
        source,
        storage: request.storage,
        interfaces: request.interfaces,
        dry_run: request.dry_run,
        results: results.into_iter().map(Into::into).collect(),
    }))
}

/// A deleted machine's BMC password (reported at enlistment) goes with it.
fn forget_bmc_password(state: &ApiState, name: &str) {
    let Some(directory) = state.machine_api.current().secrets_dir() else {
        return;
    };
    let path = directory.join(format!("{name}.bmc-password"));
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => tracing::warn!("cannot remove {}: {error}", path.display()),
    }
}

pub async fn add(
    State(state): State<ApiState>,
    Actor(actor): Actor,
    body: Result<Json<AddMachine>, JsonRejection>,
) -> Result<(StatusCode, Json<AddedView>), ApiError> {
    let body = json_body(body)?;
    let new = new_machine(&body, &state)?;
    let record = state.store.create_machine(&new, &actor).await?;
    let wants_commission = body.commission.unwrap_or(true) && !body.deployed;
    let (commission, commission_refused) = if wants_commission {
        let request = ActionRequest::new(Action::Commission, &actor);
        match perform(&state.store, &state.drivers, record.name.as_str(), &request).await {
            Ok(done) => (Some(ActionView::from(done)), None),
            Err(ActionError::Refused { refusal, .. }) => (None, Some(refusal.to_string())),
            Err(other) => return Err(other.into()),
        }
    } else {
        (None, None)
    };
    let record = state
        .store
        .machine(record.name.as_str())
        .await?
        .unwrap_or(record);
    Ok((
        StatusCode::CREATED,
        Json(AddedView {
            machine: MachineView::from(&record),
            commission,
            commission_refused,
        }),
    ))
}

/// Checks an add request and turns it into a store record; every problem at once.
fn new_machine(body: &AddMachine, state: &ApiState) -> Result<NewMachine, ApiError> {
    let mut problems = Vec::new();
    let name = MachineName::parse(&body.name)
        .map_err(|error| problems.push(error.to_string()))
        .ok();
    let mut macs = Vec::new();
    for text in &body.macs {
        match MacAddr::parse(text) {
            Ok(mac) if macs.contains(&mac) => problems.push(format!("MAC {mac} is given twice")),
            Ok(mac) => macs.push(mac),
            Err(error) => problems.push(error.to_string()),
        }
    }
    let (power_type, power_params) = power_of(body.power.as_ref(), state, &mut problems);
    if body.deployed_os.is_some() && !body.deployed {
        problems.push("deployed_os is only for a machine added live (deployed = true)".into());
    }
    match name {
        Some(name) if problems.is_empty() => Ok(NewMachine {
            name,
            status: if body.deployed {
                Status::Deployed
            } else {
                Status::New
            },
            macs,
            arch: body.arch.clone(),
            power_type,
            power_params,
            bmc_address: body.bmc_address.clone(),
            image: body.image.clone(),
            tags: body.tags.clone(),
            deployed_os: body
                .deployed
                .then(|| body.deployed_os.clone().unwrap_or_else(|| "unknown".into())),
        }),
        _ => Err(ApiError::bad_request(problems.join("; ")).with("problems", problems)),
    }
}

/// Parameters whose values are secrets: they must be references, never inline.
const SECRET_KEYS: [&str; 4] = ["password", "token", "secret", "key"];

fn power_of(
    power: Option<&serde_json::Value>,
    state: &ApiState,
    problems: &mut Vec<String>,
) -> (String, serde_json::Value) {
    let Some(power) = power else {
        return ("unconfigured".to_string(), serde_json::json!({}));
    };
    let Some(object) = power.as_object() else {
        problems.push("power must be an object such as {\"type\": \"manual\"}".into());
        return ("unconfigured".to_string(), serde_json::json!({}));
    };
    let power_type = object
        .get("type")
        .and_then(|value| value.as_str())
        .unwrap_or("")
        .to_string();
    let known = state.drivers.power_types();
    if !known.contains(&power_type.as_str()) {
        problems.push(format!(
            "unknown power type `{power_type}`; this controller has: {}",
            known.join(", ")
        ));
    }
    let mut params = object.clone();
    params.remove("type");
    for (key, value) in &params {
        let is_secret = SECRET_KEYS.iter().any(|secret| key.contains(secret));
        if is_secret && !is_secret_reference(value) {
            problems.push(format!(
                "power parameter `{key}` is a secret: give it as a reference, {{\"env\": \"NAME\"}} or {{\"file\": \"PATH\"}}"
            ));
        }
    }
    if let Err(problem) = crate::config::PowerSpec::canonical_params(&power_type, &mut params) {
        problems.push(problem);
    }
    (power_type, serde_json::Value::Object(params))
}

fn is_secret_reference(value: &serde_json::Value) -> bool {
    crate::config::SecretRef::from_json(value).is_some()
}
