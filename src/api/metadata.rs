//! The machine API over HTTP (`/metadata/v1/...`), for booted machines: busybox shells, so the
//! answers are plain text lines (`key value`), the bodies JSON with text in base64. The rules
//! and the store work are in `services::machine_api`; this is the HTTP edge: limits, tokens,
//! decoding, status codes. Every error is one line `error REASON` (or `stop REASON`, 409, when
//! there is nothing more to do), with 400 / 401 / 403 / 404 / 409 / 413, and 503 for a
//! deployment whose image is still on its way to this controller (the runner asks again).
//!
//! Credentials (`services::machine_api::credentials`): a machine's calls carry the token of its
//! current run (`Authorization: Bearer`), which it got once from `POST .../exchange` (a boot
//! secret from its iPXE script, or a registration secret for a live host) or, for a record it
//! just created, from its enlistment. No token: 401; another machine's: 403; the token of a run
//! that ended (or was replaced): 401 `token expired: run R of NAME ended`. The operator token
//! opens nothing here: a machine-API call is the machine's word.

use super::ApiState;
use crate::model::{DeployProgress, MacAddr};
use crate::services::machine_api::credentials::{self, Authorized, CredentialError, Exchanged};
use crate::services::machine_api::enlist::{
    enlist, EnlistBody, EnlistRequest, Enlisted, PasswordKept,
};
use crate::services::machine_api::rules::{is_plain_name, ScriptReport, ScriptStatus};
use crate::services::machine_api::{self, MachineApiError, Verdict};
use crate::store::MachineRecord;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
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
            "/metadata/v1/machines/{name}/exchange",
            post(exchange).layer(DefaultBodyLimit::max(SMALL_LIMIT_BYTES)),
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
        .route("/metadata/v1/machines/{name}/deployment", get(deployment))
        .route(
            "/metadata/v1/machines/{name}/deployed",
            post(deployed).layer(DefaultBodyLimit::max(SMALL_LIMIT_BYTES)),
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

/// `?mac=A&mac=B`: `known` if the store knows one of the MACs, else `unknown` (never the
/// machine's name: anyone may ask).
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
        if state.store.machine_name_by_mac(mac).await?.is_some() {
            return Ok(text(StatusCode::OK, "known\n"));
        }
    }
    Ok(text(StatusCode::OK, "unknown\n"))
}

/// The caller's address, as the listener saw it ("an unknown address" where it is not known).
fn source(connection: &Option<Extension<ConnectInfo<std::net::SocketAddr>>>) -> String {
    connection
        .as_ref()
        .map(|Extension(ConnectInfo(address))| address.ip().to_string())
        .unwrap_or_else(|| "an unknown address".to_string())
}

/// An enlistment body as the handler reads it, or the reason for its 400 (public for the fuzz
/// tests).
pub fn decode_enlist(body: &[u8]) -> Result<EnlistRequest, String> {
    serde_json::from_slice::<EnlistBody>(body)
        .map_err(|error| format!("the enlistment is not valid JSON of the expected shape: {error}"))
        .and_then(EnlistBody::check)
}

/// Anonymous. A record it creates is the caller's own: 201 with the first run's token. Any other
/// outcome gives no credential: 200 `known` and what to do `after` (see [`matched_by_bmc`]).
async fn enlist_machine(
    State(state): State<ApiState>,
    connection: Option<Extension<ConnectInfo<std::net::SocketAddr>>>,
    body: Bytes,
) -> Answer {
    let request = decode_enlist(&body)
        .map_err(|reason| MachineApiResponse::error(StatusCode::BAD_REQUEST, reason))?;
    let settings = state.machine_api.current();
    let (enlisted, password) = enlist(&state.store, &request).await?;
    let from = source(&connection);
    let record = match enlisted {
        Enlisted::Created(record) => record,
        Enlisted::MatchedByBmc { record, filled } => {
            return matched_by_bmc(&state, &request, &record, &filled, &password, &from).await
        }
        Enlisted::Known(_) => return Ok(text(StatusCode::OK, "known\nafter poweroff\n")),
    };
    let name = record.name.as_str();
    let how = format!("enlistment from {from}");
    let started = credentials::start_run(
        &state.store,
        &settings,
        &record,
        machine_api::rules::Role::Enlist,
        &how,
    )
    .await?;
    let bmc_note = bmc_note(name, &request, &password);
    record_enlist_event(
        &state,
        &record,
        &request,
        &password,
        format!(
            "enlisted by {} ({} MACs){bmc_note}",
            request.boot_mac,
            request.macs.len()
        ),
    )
    .await;
    Ok(text(
        StatusCode::CREATED,
        format!(
            "machine {name}\ntoken {}\nrun {}\nstatus {}\n",
            started.token, started.run, record.lifecycle.status
        ),
    ))
}

/// A machine added by hand found by its BMC address: it gets no token (an anonymous caller
/// never gets an existing machine's credentials). It is told it is known; a commissioning one
/// boots again, now as a known MAC with a one-shot boot secret in its script: the controller
/// power-cycles it through its BMC where it has a power driver (the machine waits), else the
/// machine reboots itself. A new one powers off and waits for a person.
async fn matched_by_bmc(
    state: &ApiState,
    request: &crate::services::machine_api::enlist::EnlistRequest,
    record: &MachineRecord,
    filled: &[&'static str],
    password: &PasswordKept,
    from: &str,
) -> Answer {
    let name = record.name.as_str();
    let commissioning = record.lifecycle.status == crate::model::Status::Commissioning;
    let powered = !matches!(record.power_type.as_str(), "" | "unconfigured" | "manual");
    let after = match (commissioning, powered) {
        (true, true) => "wait",
        (true, false) => "reboot",
        (false, _) => "poweroff",
    };
    let filled_note = if filled.is_empty() {
        "nothing filled".to_string()
    } else {
        format!("filled {}", filled.join(", "))
    };
    let bmc_note = bmc_note(name, request, password);
    record_enlist_event(
        state,
        record,
        request,
        password,
        format!(
            "enlistment from {from} by {} matched {name} by its BMC address ({filled_note}){bmc_note}; \
             no token given: the machine boots again as a known MAC (after {after})",
            request.boot_mac
        ),
    )
    .await;
    if commissioning && powered {
        use crate::services::actions::{carry_out_power, MadeFor};
        let (store, drivers) = (state.store.clone(), state.drivers.clone());
        let (name, made_for) = (name.to_string(), MadeFor::decision(record));
        tokio::spawn(async move {
            let command = crate::model::PowerCommand::Cycle;
            if let Err(error) =
                carry_out_power(&store, &drivers, &name, command, made_for, "controller").await
            {
                tracing::warn!("power cycle of {name} after its enlistment: {error}");
            }
        });
    }
    Ok(text(StatusCode::OK, format!("known\nafter {after}\n")))
}

/// What the enlistment said of its BMC, for the event (the password itself never: only where
/// it is kept).
fn bmc_note(
    name: &str,
    request: &crate::services::machine_api::enlist::EnlistRequest,
    password: &PasswordKept,
) -> String {
    let Some(bmc) = &request.bmc else {
        return String::new();
    };
    let user = bmc
        .user
        .as_ref()
        .map(|user| format!(" user {user}"))
        .unwrap_or_default();
    match password {
        PasswordKept::Kept => format!(
            "; BMC {} {}{user} (its password kept in the store, encrypted)",
            bmc.kind, bmc.address,
        ),
        PasswordKept::NotKept(why) => {
            eprintln!("  enlist {name}: the BMC password it reported is not kept: {why}");
            format!(
                "; BMC {} {}{user} (its password is not kept: {why})",
                bmc.kind, bmc.address
            )
        }
        PasswordKept::NotGiven => format!("; BMC {} {}{user}", bmc.kind, bmc.address),
    }
}

async fn record_enlist_event(
    state: &ApiState,
    record: &MachineRecord,
    request: &crate::services::machine_api::enlist::EnlistRequest,
    password: &PasswordKept,
    reason: String,
) {
    machine_api::record_event(
        &state.store,
        record.name.as_str(),
        "enlist",
        reason,
        serde_json::json!({
            "boot_mac": request.boot_mac.to_string(),
            "macs": request.macs.iter().map(|mac| mac.to_string()).collect::<Vec<_>>(),
            "architecture": request.architecture,
            "bmc": request.bmc.as_ref().map(|bmc| serde_json::json!({
                "type": bmc.kind,
                "address": bmc.address,
                "user": bmc.user,
                "password_kept": matches!(password, PasswordKept::Kept),
            })),
        }),
    )
    .await;
}

impl From<CredentialError> for MachineApiResponse {
    fn from(error: CredentialError) -> Self {
        match error {
            CredentialError::Unauthorized(reason) => {
                MachineApiResponse::error(StatusCode::UNAUTHORIZED, reason)
            }
            CredentialError::Forbidden(reason) => {
                MachineApiResponse::error(StatusCode::FORBIDDEN, reason)
            }
            CredentialError::NotFound(reason) => {
                MachineApiResponse::error(StatusCode::NOT_FOUND, reason)
            }
            CredentialError::Conflict(reason) => MachineApiResponse::stop(&reason),
            CredentialError::Store(error) => error.into(),
            CredentialError::Action(error) => MachineApiError::Action(error).into(),
        }
    }
}

/// What the runner trades: `{"boot": SECRET}` (from `fleet.boot=`) or `{"registration": SECRET}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExchangeBody {
    boot: Option<String>,
    registration: Option<String>,
}

/// Anonymous but for the secret: trades a one-shot secret for the token of a new run.
async fn exchange(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    connection: Option<Extension<ConnectInfo<std::net::SocketAddr>>>,
    body: Bytes,
) -> Answer {
    check_name(&name)?;
    let exchange: ExchangeBody = json_body("exchange", &body)
        .map_err(|reason| MachineApiResponse::error(StatusCode::BAD_REQUEST, reason))?;
    let from = source(&connection);
    let settings = state.machine_api.current();
    let exchanged =
        match (exchange.boot, exchange.registration) {
            (Some(secret), None) => {
                credentials::exchange_boot_secret(
                    &state.store,
                    &state.drivers,
                    &settings,
                    &name,
                    secret.trim(),
                    &from,
                )
                .await?
            }
            (None, Some(secret)) => Exchanged::Run(
                credentials::exchange_registration(
                    &state.store,
                    &settings,
                    &name,
                    secret.trim(),
                    &from,
                )
                .await?,
            ),
            _ => return Err(MachineApiResponse::error(
                StatusCode::BAD_REQUEST,
                "give one secret: {\"boot\": SECRET} (fleet.boot= on the kernel command line) or \
                 {\"registration\": SECRET} (fleet machine registration NAME)",
            )),
        };
    let answer = match exchanged {
        Exchanged::Run(run) => format!(
            "machine {name}\nrole {}\nrun {}\ntoken {}\n",
            run.role.as_str(),
            run.run,
            run.token
        ),
        Exchanged::Nothing { status } => {
            format!("machine {name}\nrole none\nstatus {status}\nafter poweroff\n")
        }
    };
    Ok(text(StatusCode::OK, answer))
}

/// `POST /api/v1/machines/{name}/registration` (operator API): a one-shot registration secret
/// for a machine added live, valid an hour, for `register-live.sh`.
pub(super) async fn make_registration(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    super::Actor(actor): super::Actor,
) -> Result<Json<serde_json::Value>, super::ApiError> {
    match credentials::make_registration(&state.store, &name, &actor).await {
        Ok((secret, expires_at)) => Ok(Json(serde_json::json!({
            "machine": name,
            "registration": secret,
            "expires_at": crate::model::words::rfc3339(expires_at),
            "expires_in_seconds": credentials::REGISTRATION_LIFETIME_MS / 1000,
        }))),
        Err(CredentialError::NotFound(message)) => Err(super::ApiError::not_found(message)),
        Err(CredentialError::Conflict(message)) => {
            Err(
                super::ApiError::new(StatusCode::CONFLICT, "conflict", message)
                    .with("machine", &name),
            )
        }
        Err(error) => {
            tracing::warn!("registration secret for {name}: {error}");
            Err(super::ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                format!("the registration secret for {name} could not be made"),
            ))
        }
    }
}

// ---------------------------------------------------------------------------------------------
// One machine's calls

fn check_name(name: &str) -> Result<(), MachineApiResponse> {
    if is_plain_name(name) {
        Ok(())
    } else {
        Err(MachineApiResponse::error(
            StatusCode::BAD_REQUEST,
            format!("`{name}` is not a machine name"),
        ))
    }
}

/// The machine and the run its bearer token opens: the token of the machine's current run,
/// while that run is not over. Never the operator token.
async fn authorize(
    state: &ApiState,
    name: &str,
    headers: &HeaderMap,
) -> Result<Authorized, MachineApiResponse> {
    check_name(name)?;
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .map(str::trim)
        .ok_or_else(|| {
            MachineApiResponse::error(
                StatusCode::UNAUTHORIZED,
                "no token: send `Authorization: Bearer TOKEN`, the token of the machine's run \
                 (from POST /metadata/v1/machines/NAME/exchange)",
            )
        })?;
    Ok(credentials::authorize(&state.store, name, given).await?)
}

async fn instructions(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Answer {
    // `?live=1` (older runners on a live host) changes nothing: the run's role was decided
    // when its token was handed out.
    let _ = query;
    let run = authorize(&state, &name, &headers).await?;
    let settings = state.machine_api.current();
    let body = machine_api::instructions(&state.store, &settings, &run).await?;
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
    let body = machine_api::script_text(&settings, &name, entry);
    Ok(text(StatusCode::OK, body))
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
                "`kind` {:?} is not commissioning, testing, erase or deploy",
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
    let run = authorize(&state, &name, &headers).await?;
    let report = decode_result(&body)
        .map_err(|reason| MachineApiResponse::error(StatusCode::BAD_REQUEST, reason))?;
    let verdict = machine_api::report_script(
        &state.store,
        &state.drivers,
        &state.machine_api.current(),
        &run,
        &report,
    )
    .await?;
    Ok(text(StatusCode::OK, verdict.as_line()))
}

#[derive(Debug, Default, Deserialize)]
struct HeartbeatBody {
    stage: Option<String>,
    progress: Option<DeployProgress>,
}

/// A heartbeat as the handler reads it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Heartbeat {
    pub stage: Option<String>,
    /// A deploying run's `{"phase", "done", "total"}` (done and total optional).
    pub progress: Option<DeployProgress>,
}

/// A heartbeat body (empty, or JSON with an optional `stage` and an optional `progress`) as the
/// handler reads it, or the reason for its 400 (public for the fuzz tests).
pub fn decode_heartbeat(body: &[u8]) -> Result<Heartbeat, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Heartbeat::default());
    }
    let beat: HeartbeatBody = json_body("heartbeat", body)?;
    if let Some(progress) = &beat.progress {
        if progress.phase.len() > 32 || !is_plain_name(&progress.phase) {
            return Err(
                "`progress.phase` must be a short name (letters, digits, `-`, `_`, `.`), \
                 e.g. write-image"
                    .into(),
            );
        }
    }
    Ok(Heartbeat {
        stage: beat.stage,
        progress: beat.progress,
    })
}

async fn heartbeat(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Answer {
    let run = authorize(&state, &name, &headers).await?;
    let beat = decode_heartbeat(&body)
        .map_err(|reason| MachineApiResponse::error(StatusCode::BAD_REQUEST, reason))?;
    let verdict = machine_api::heartbeat(
        &state.store,
        &state.machine_api.current(),
        &run,
        beat.stage.as_deref(),
        beat.progress.as_ref(),
    )
    .await?;
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
    let run = authorize(&state, &name, &headers).await?;
    let (signalled_run, failure) = decode_signal(&body)
        .map_err(|reason| MachineApiResponse::error(StatusCode::BAD_REQUEST, reason))?;
    let after = machine_api::signal(
        &state.store,
        &state.drivers,
        &state.machine_api.current(),
        &run,
        &signalled_run,
        failure.as_deref(),
    )
    .await?;
    Ok(text(StatusCode::OK, format!("after {after}\n")))
}

/// The deployment of the machine's deploying run (CONTRACT.md's JSON); fetching it mints the
/// call-back secret (a later fetch voids the one before). A deployment that cannot be resolved
/// fails at once (409 `stop REASON`).
async fn deployment(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Answer {
    let run = authorize(&state, &name, &headers).await?;
    let settings = state.machine_api.current();
    let base_url = machine_base_url(&state, &headers);
    if let (Some(boot), Some(image)) = (state.boot.as_ref(), run.record.image.as_deref()) {
        wait_for_image(&state, &boot.images, &name, image).await?;
    }
    let image = super::deploy_image::deploy_image_for(
        state.boot.as_ref().map(|boot| boot.images.as_ref()),
        settings.fleet.as_deref(),
        run.record.image.as_deref(),
        &base_url,
        run.record.boot_mac,
    );
    let document = machine_api::deployment::fetch(
        &state.store,
        &state.drivers,
        &settings,
        &run,
        image,
        &base_url,
    )
    .await?;
    let body = serde_json::to_string_pretty(&document).map_err(|error| {
        MachineApiResponse::error(StatusCode::INTERNAL_SERVER_ERROR, error.to_string())
    })?;
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response())
}

/// Holds a deployment fetch while its image is on its way to this controller (see
/// `deploy_image::wait_while_on_its_way`), with an event saying so; still on its way after the
/// wait: 503, which the runner asks again after, and the deployment goes on.
async fn wait_for_image(
    state: &ApiState,
    images: &crate::boot::http::BootImages,
    machine: &str,
    image: &str,
) -> Result<(), MachineApiResponse> {
    use super::deploy_image::{wait_while_on_its_way, IMAGE_WAIT};
    let Some(on_its_way) = wait_while_on_its_way(images, image, std::time::Duration::ZERO).await
    else {
        return Ok(());
    };
    let reason = format!("the deployment waits for its image: {on_its_way}");
    eprintln!("  deploy  {machine}: {reason}");
    let detail = serde_json::json!({ "image": image });
    machine_api::record_event(&state.store, machine, "deployment", reason, detail).await;
    match wait_while_on_its_way(images, image, IMAGE_WAIT).await {
        None => Ok(()),
        Some(still) => Err(MachineApiResponse::error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{still}; ask again"),
        )),
    }
}

/// How machines reach the controller: the boot URL setting, else the request's `Host`.
fn machine_base_url(state: &ApiState, headers: &HeaderMap) -> String {
    if let Some(url) = state.boot.as_ref().and_then(|boot| boot.base_url.as_ref()) {
        return url.trim_end_matches('/').to_string();
    }
    let host = headers
        .get(header::HOST)
        .and_then(|value| value.to_str().ok())
        .filter(|host| {
            host.chars()
                .all(|c| c.is_ascii_alphanumeric() || ".:-[]".contains(c))
        })
        .unwrap_or("127.0.0.1:5248");
    format!("http://{host}")
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeployedBody {
    callback: String,
}

/// The installed system's call-back, with the one-shot secret of its deployment (no token):
/// 200 `deployed` and the machine is deployed; a wrong or used secret 403 (and a security
/// event); a machine not waiting for it 409.
async fn deployed(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    connection: Option<Extension<ConnectInfo<std::net::SocketAddr>>>,
    body: Bytes,
) -> Answer {
    use machine_api::deployment::{call_back, CallbackError};
    check_name(&name)?;
    let body: DeployedBody = json_body("call-back", &body)
        .map_err(|reason| MachineApiResponse::error(StatusCode::BAD_REQUEST, reason))?;
    let from = source(&connection);
    match call_back(
        &state.store,
        &state.drivers,
        &name,
        body.callback.trim(),
        &from,
    )
    .await
    {
        Ok(()) => Ok(text(StatusCode::OK, "deployed\n")),
        Err(CallbackError::Forbidden(reason)) => {
            Err(MachineApiResponse::error(StatusCode::FORBIDDEN, reason))
        }
        Err(CallbackError::NotWaiting(reason)) => Err(MachineApiResponse::stop(&reason)),
        Err(error @ CallbackError::NotFound(_)) => Err(MachineApiResponse::error(
            StatusCode::NOT_FOUND,
            error.to_string(),
        )),
        Err(CallbackError::Api(error)) => Err(error.into()),
    }
}
