//! The machine API over HTTP (`/metadata/v1/...`), for booted machines: busybox shells, so the
//! answers are plain text lines (`key value`), the bodies JSON with text in base64. The rules
//! and the store work are in `services::machine_api`; this is the HTTP edge: limits, tokens,
//! decoding, status codes. Every error is one line `error REASON` (or `stop REASON` for a run
//! that is over), with 400 / 403 / 404 / 409 / 413.

use super::ApiState;
use crate::model::MacAddr;
use crate::services::machine_api::enlist::{
    enlist, EnlistBody, EnlistRequest, Enlisted, PasswordKept,
};
use crate::services::machine_api::rules::{is_plain_name, ScriptReport, ScriptStatus};
use crate::services::machine_api::{self, MachineApiError, Verdict};
use crate::services::token::tokens_match;
use crate::store::MachineRecord;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use base64::Engine;
use serde::Deserialize;

/// The largest enlistment body.
pub const ENLIST_LIMIT_BYTES: usize = 1024 * 1024;
/// The largest script result (stdout + stderr + results, in base64): larger ones get 413.
pub const RESULT_LIMIT_BYTES: usize = 4 * 1024 * 1024;
/// Heartbeats and signals are small.
const SMALL_LIMIT_BYTES: usize = 64 * 1024;

/// The runner every ephemeral boot fetches, and the script operators run on live machines.
const RUNNER_SCRIPT: &str = include_str!("../commissioning/fleet-runner.sh");
const REGISTER_LIVE_SCRIPT: &str = include_str!("../commissioning/register-live.sh");

pub fn router() -> Router<ApiState> {
    let results = post(results).layer(DefaultBodyLimit::max(RESULT_LIMIT_BYTES));
    let small = DefaultBodyLimit::max(SMALL_LIMIT_BYTES);
    Router::new()
        .route("/metadata/v1/known", get(known))
        .route(
            "/metadata/v1/enlist",
            post(enlist_machine).layer(DefaultBodyLimit::max(ENLIST_LIMIT_BYTES)),
        )
        .route(
            "/metadata/v1/machines/{name}/instructions",
            get(instructions),
        )
        .route("/metadata/v1/machines/{name}/scripts/{script}", get(script))
        .route("/metadata/v1/machines/{name}/results", results)
        .route(
            "/metadata/v1/machines/{name}/heartbeat",
            post(heartbeat).layer(small),
        )
        .route(
            "/metadata/v1/machines/{name}/signal",
            post(signal).layer(DefaultBodyLimit::max(SMALL_LIMIT_BYTES)),
        )
        .route(
            "/scripts/fleet-runner.sh",
            get(|| async { text(StatusCode::OK, RUNNER_SCRIPT) }),
        )
        .route(
            "/scripts/register-live.sh",
            get(|| async { text(StatusCode::OK, REGISTER_LIVE_SCRIPT) }),
        )
}

/// A machine API failure, as a line of text.
#[derive(Debug)]
pub struct MachineApiResponse {
    status: StatusCode,
    line: String,
}

impl MachineApiResponse {
    fn error(status: StatusCode, reason: impl AsRef<str>) -> Self {
        MachineApiResponse {
            status,
            line: format!("error {}\n", single_line(reason.as_ref())),
        }
    }

    fn stop(reason: &str) -> Self {
        MachineApiResponse {
            status: StatusCode::CONFLICT,
            line: Verdict::Stop(reason.to_string()).as_line(),
        }
    }
}

impl IntoResponse for MachineApiResponse {
    fn into_response(self) -> Response {
        text(self.status, self.line)
    }
}

impl From<crate::store::StoreError> for MachineApiResponse {
    fn from(error: crate::store::StoreError) -> Self {
        tracing::warn!("machine API: {error}");
        MachineApiResponse::error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the controller's store failed",
        )
    }
}

impl From<MachineApiError> for MachineApiResponse {
    fn from(error: MachineApiError) -> Self {
        match error {
            MachineApiError::BadRequest(reason) => {
                MachineApiResponse::error(StatusCode::BAD_REQUEST, reason)
            }
            MachineApiError::Stop(reason) => MachineApiResponse::stop(&reason),
            MachineApiError::Store(error) => error.into(),
            MachineApiError::Action(error) => {
                tracing::warn!("machine API: {error}");
                MachineApiResponse::error(StatusCode::INTERNAL_SERVER_ERROR, error.to_string())
            }
        }
    }
}

fn text(status: StatusCode, body: impl Into<String>) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body.into(),
    )
        .into_response()
}

fn single_line(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

type Answer = Result<Response, MachineApiResponse>;

/// A JSON body, or the reason for a 400 that says what `what` should have looked like.
fn json_body<T: serde::de::DeserializeOwned>(what: &str, body: &[u8]) -> Result<T, String> {
    serde_json::from_slice(body)
        .map_err(|error| format!("the {what} is not valid JSON of the expected shape: {error}"))
}

// ---------------------------------------------------------------------------------------------
// Anonymous

/// `?mac=A&mac=B`: `known NAME` for the first MAC the store knows, else `unknown`.
async fn known(State(state): State<ApiState>, RawQuery(query): RawQuery) -> Answer {
    let query = query.unwrap_or_default();
    let macs: Vec<MacAddr> = query
        .split('&')
        .filter_map(|pair| pair.strip_prefix("mac="))
        .map(|text| {
            let text = text.replace("%3A", ":").replace("%3a", ":");
            MacAddr::parse(&text).map_err(|error| {
                MachineApiResponse::error(StatusCode::BAD_REQUEST, format!("mac: {error}"))
            })
        })
        .collect::<Result<_, _>>()?;
    if macs.is_empty() {
        return Err(MachineApiResponse::error(
            StatusCode::BAD_REQUEST,
            "give the machine's MACs: ?mac=52:54:00:..&mac=...",
        ));
    }
    for mac in macs {
        if let Some(record) = state.store.machine_by_mac(mac).await? {
            return Ok(text(StatusCode::OK, format!("known {}\n", record.name)));
        }
    }
    Ok(text(StatusCode::OK, "unknown\n"))
}

/// An enlistment body as the handler reads it, or the reason for its 400 (public for the fuzz
/// tests).
pub fn decode_enlist(body: &[u8]) -> Result<EnlistRequest, String> {
    serde_json::from_slice::<EnlistBody>(body)
        .map_err(|error| format!("the enlistment is not valid JSON of the expected shape: {error}"))
        .and_then(EnlistBody::check)
}

async fn enlist_machine(State(state): State<ApiState>, body: Bytes) -> Answer {
    let request = decode_enlist(&body)
        .map_err(|reason| MachineApiResponse::error(StatusCode::BAD_REQUEST, reason))?;
    let secrets_dir = state.machine_api.current().secrets_dir();
    let (enlisted, password) = enlist(&state.store, &request, secrets_dir.as_deref()).await?;
    let (record, status) = match enlisted {
        Enlisted::Created(record) => (record, StatusCode::CREATED),
        Enlisted::Matched(record) => (record, StatusCode::OK),
        Enlisted::Known(record) => {
            return Err(MachineApiResponse::stop(&format!(
                "this machine is already known as {} ({}): it does not enlist again",
                record.name, record.lifecycle.status
            )))
        }
    };
    let name = record.name.as_str();
    let token = crate::boot::http::machine_token(&state.store, name).await?;
    // The password itself is never in an event or a log line: only where it is kept.
    let user = |bmc: &crate::services::machine_api::enlist::Bmc| {
        bmc.user
            .as_ref()
            .map(|user| format!(" user {user}"))
            .unwrap_or_default()
    };
    let bmc_note = match (&request.bmc, &password) {
        (Some(bmc), PasswordKept::Kept(path)) => format!(
            "; BMC {} {}{} (its password kept in {})",
            bmc.kind,
            bmc.address,
            user(bmc),
            path.display()
        ),
        (Some(bmc), PasswordKept::NotKept(why)) => {
            eprintln!("  enlist {name}: the BMC password it reported is not kept: {why}");
            format!(
                "; BMC {} {}{} (its password is not kept: {why})",
                bmc.kind,
                bmc.address,
                user(bmc)
            )
        }
        (Some(bmc), PasswordKept::NotGiven) => {
            format!("; BMC {} {}{}", bmc.kind, bmc.address, user(bmc))
        }
        (None, _) => String::new(),
    };
    machine_api::record_event(
        &state.store,
        name,
        "enlist",
        format!(
            "{} by {} ({} MACs){bmc_note}",
            if status == StatusCode::CREATED {
                "enlisted"
            } else {
                "enlistment matched"
            },
            request.boot_mac,
            request.macs.len()
        ),
        serde_json::json!({
            "boot_mac": request.boot_mac.to_string(),
            "macs": request.macs.iter().map(|mac| mac.to_string()).collect::<Vec<_>>(),
            "architecture": request.architecture,
            "bmc": request.bmc.as_ref().map(|bmc| serde_json::json!({
                "type": bmc.kind,
                "address": bmc.address,
                "user": bmc.user,
                "password_file": match &password {
                    PasswordKept::Kept(path) => Some(path.display().to_string()),
                    _ => None,
                },
            })),
        }),
    )
    .await;
    Ok(text(
        status,
        format!(
            "machine {name}\ntoken {token}\nstatus {}\n",
            record.lifecycle.status
        ),
    ))
}

// ---------------------------------------------------------------------------------------------
// One machine's calls

/// The machine, if the bearer token is its own (or the operator's).
async fn authorize(
    state: &ApiState,
    name: &str,
    headers: &HeaderMap,
) -> Result<MachineRecord, MachineApiResponse> {
    if !is_plain_name(name) {
        return Err(MachineApiResponse::error(
            StatusCode::BAD_REQUEST,
            format!("`{name}` is not a machine name"),
        ));
    }
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .map(str::trim)
        .ok_or_else(|| {
            MachineApiResponse::error(
                StatusCode::UNAUTHORIZED,
                "no token: send `Authorization: Bearer TOKEN` (fleet.token on the kernel command line)",
            )
        })?;
    let record = state.store.machine(name).await?.ok_or_else(|| {
        MachineApiResponse::error(StatusCode::NOT_FOUND, format!("no machine named {name}"))
    })?;
    let own = state
        .store
        .machine_token(name)
        .await?
        .is_some_and(|token| tokens_match(&token, given));
    if own || tokens_match(&state.operator_token, given) {
        Ok(record)
    } else {
        Err(MachineApiResponse::error(
            StatusCode::FORBIDDEN,
            format!("this token is not machine {name}'s"),
        ))
    }
}

async fn instructions(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Answer {
    let record = authorize(&state, &name, &headers).await?;
    let live = query.is_some_and(|query| query.split('&').any(|pair| pair == "live=1"));
    let settings = state.machine_api.current();
    let body = machine_api::instructions(&state.store, &settings, &record, live).await?;
    Ok(text(StatusCode::OK, body))
}

async fn script(
    State(state): State<ApiState>,
    Path((name, script)): Path<(String, String)>,
    headers: HeaderMap,
) -> Answer {
    authorize(&state, &name, &headers).await?;
    let settings = state.machine_api.current();
    let entry = settings.script(&script).ok_or_else(|| {
        MachineApiResponse::error(StatusCode::NOT_FOUND, format!("no script named {script}"))
    })?;
    Ok(text(StatusCode::OK, entry.text.clone()))
}

/// A result as the runner sends it: text as base64 (`*_b64`) or plain.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ResultBody {
    run: String,
    name: String,
    kind: String,
    status: String,
    exit_code: Option<i64>,
    runtime_ms: Option<i64>,
    stdout: Option<String>,
    stderr: Option<String>,
    results: Option<serde_json::Value>,
    stdout_b64: Option<String>,
    stderr_b64: Option<String>,
    results_b64: Option<String>,
}

impl ResultBody {
    fn decode(self) -> Result<ScriptReport, String> {
        let kind = crate::config::ScriptKind::parse(&self.kind).ok_or_else(|| {
            format!(
                "`kind` {:?} is not commissioning, testing or erase",
                self.kind
            )
        })?;
        let status = ScriptStatus::parse(&self.status).ok_or_else(|| {
            format!(
                "`status` {:?} is not running, passed, failed, timed_out, skipped or degraded",
                self.status
            )
        })?;
        if !is_plain_name(&self.name) || !is_plain_name(&self.run) {
            return Err("`name` and `run` may hold only letters, digits, `-`, `_` and `.`".into());
        }
        let stdout = text_field("stdout", self.stdout, self.stdout_b64)?;
        let stderr = text_field("stderr", self.stderr, self.stderr_b64)?;
        let results = match (self.results, self.results_b64) {
            (Some(value), _) => value,
            (None, Some(b64)) if !b64.trim().is_empty() => {
                let bytes = decode_b64("results_b64", &b64)?;
                serde_json::from_slice(&bytes)
                    .map_err(|error| format!("`results_b64` is not a JSON document: {error}"))?
            }
            (None, _) => serde_json::json!({}),
        };
        if !results.is_object() {
            return Err("`results` must be a JSON object".into());
        }
        Ok(ScriptReport {
            run: self.run,
            name: self.name,
            kind,
            status,
            exit_code: self.exit_code,
            runtime_ms: self.runtime_ms,
            stdout,
            stderr,
            results,
        })
    }
}

fn text_field(field: &str, plain: Option<String>, b64: Option<String>) -> Result<String, String> {
    match (plain, b64) {
        (Some(text), _) => Ok(text),
        (None, Some(b64)) => {
            let bytes = decode_b64(&format!("{field}_b64"), &b64)?;
            Ok(String::from_utf8_lossy(&bytes).into_owned())
        }
        (None, None) => Ok(String::new()),
    }
}

fn decode_b64(field: &str, text: &str) -> Result<Vec<u8>, String> {
    let compact: String = text.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    base64::engine::general_purpose::STANDARD
        .decode(compact)
        .map_err(|error| format!("`{field}` is not base64: {error}"))
}

/// A result body as the handler reads it, or the reason for its 400 (public for the fuzz tests).
pub fn decode_result(body: &[u8]) -> Result<ScriptReport, String> {
    serde_json::from_slice::<ResultBody>(body)
        .map_err(|error| format!("the result is not valid JSON of the expected shape: {error}"))
        .and_then(ResultBody::decode)
}

async fn results(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Answer {
    let record = authorize(&state, &name, &headers).await?;
    let report = decode_result(&body)
        .map_err(|reason| MachineApiResponse::error(StatusCode::BAD_REQUEST, reason))?;
    let verdict = machine_api::report_script(
        &state.store,
        &state.drivers,
        &state.machine_api.current(),
        &record,
        &report,
    )
    .await?;
    Ok(text(StatusCode::OK, verdict.as_line()))
}

#[derive(Debug, Default, Deserialize)]
struct HeartbeatBody {
    stage: Option<String>,
}

/// A heartbeat body (empty, or JSON with an optional `stage`) as the handler reads it: the
/// stage, or the reason for its 400 (public for the fuzz tests).
pub fn decode_heartbeat(body: &[u8]) -> Result<Option<String>, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let beat: HeartbeatBody = json_body("heartbeat", body)?;
    Ok(beat.stage)
}

async fn heartbeat(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Answer {
    let record = authorize(&state, &name, &headers).await?;
    let stage = decode_heartbeat(&body)
        .map_err(|reason| MachineApiResponse::error(StatusCode::BAD_REQUEST, reason))?;
    let verdict = machine_api::heartbeat(&state.store, &record, stage.as_deref()).await?;
    Ok(text(StatusCode::OK, verdict.as_line()))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SignalBody {
    run: String,
    result: String,
    reason: Option<String>,
}

/// A signal body as the handler reads it: the run and, for `failed`, the reason; or the reason
/// for its 400 (public for the fuzz tests).
pub fn decode_signal(body: &[u8]) -> Result<(String, Option<String>), String> {
    let signal: SignalBody = json_body("signal", body)?;
    let failure = match signal.result.as_str() {
        "ok" => None,
        "failed" => Some(signal.reason.unwrap_or_else(|| "no reason given".into())),
        other => return Err(format!("`result` {other:?} is not ok or failed")),
    };
    Ok((signal.run, failure))
}

async fn signal(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Answer {
    let record = authorize(&state, &name, &headers).await?;
    let (run, failure) = decode_signal(&body)
        .map_err(|reason| MachineApiResponse::error(StatusCode::BAD_REQUEST, reason))?;
    let after = machine_api::signal(
        &state.store,
        &state.drivers,
        &record,
        &run,
        failure.as_deref(),
    )
    .await?;
    Ok(text(StatusCode::OK, format!("after {after}\n")))
}
