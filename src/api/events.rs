//! `GET /api/v1/events/stream`: the history as it is written, as server-sent events. Each event
//! is one SSE event whose `id` is the event's id and whose data is its JSON (`EventView`, as
//! `GET /events` gives it). A client resumes with `Last-Event-ID` (what SSE clients send when
//! they reconnect) or `?after=ID`: the stream starts after that event, without gap or duplicate
//! (`store/feed.rs`); with neither, after the newest event. `?machine=NAME` keeps that machine's
//! events only. Comments keep an idle connection alive; the streams end when the controller
//! stops.

use super::views::EventView;
use super::{ApiError, ApiState};
use crate::store::{Event, FeedStart};
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::Extension;
use futures_util::stream::{self, Stream, StreamExt};
use serde::Deserialize;
use std::convert::Infallible;
use std::time::Duration;
use tokio::sync::watch;

/// How often an idle stream sends a comment, so proxies and clients keep the connection.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// Set to `true` when the controller stops: the open streams end, so the graceful shutdown
/// does not wait for them (a request extension `serve_api` adds).
#[derive(Debug, Clone)]
pub struct Stopping(pub watch::Receiver<bool>);

#[derive(Debug, Deserialize)]
pub struct StreamQuery {
    machine: Option<String>,
    after: Option<i64>,
}

pub async fn stream(
    State(state): State<ApiState>,
    stopping: Option<Extension<Stopping>>,
    headers: HeaderMap,
    Query(query): Query<StreamQuery>,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    // A reconnecting client's Last-Event-ID is newer than the `after` of the URL it reuses.
    let start = match last_event_id(&headers)?.or(query.after) {
        Some(after) if after < 0 => {
            return Err(ApiError::bad_request(format!(
                "after must be an event id, 0 or more (got {after})"
            )))
        }
        Some(after) => FeedStart::After(after),
        None => FeedStart::Now,
    };
    let feed = state.store.event_feed(start, query.machine).await?;
    let events = stream::unfold(feed, |mut feed| async move {
        match feed.next().await {
            Ok(events) => Some((stream::iter(events.into_iter().map(sse_event)), feed)),
            Err(error) => {
                // The client reconnects with the last id it got.
                tracing::warn!("an event stream ends: {error}");
                None
            }
        }
    })
    .flatten();
    let stopped = async move {
        match stopping {
            Some(Extension(Stopping(mut stopping))) => {
                let _ = stopping.wait_for(|stopped| *stopped).await;
            }
            None => std::future::pending().await,
        }
    };
    Ok(Sse::new(events.take_until(stopped)).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)))
}

/// The `Last-Event-ID` header, when sent: an event id.
fn last_event_id(headers: &HeaderMap) -> Result<Option<i64>, ApiError> {
    let Some(value) = headers.get("last-event-id") else {
        return Ok(None);
    };
    let text = value.to_str().unwrap_or("").trim();
    if text.is_empty() {
        return Ok(None);
    }
    text.parse().map(Some).map_err(|_| {
        ApiError::bad_request(format!(
            "Last-Event-ID must be an event id, a whole number (got `{text}`)"
        ))
    })
}

fn sse_event(event: Event) -> Result<SseEvent, Infallible> {
    let id = event.id.to_string();
    let view = EventView::from(event);
    // A view of strings, numbers and a JSON value always serialises.
    let data = serde_json::to_string(&view).unwrap_or_else(|_| "{}".to_string());
    Ok(SseEvent::default().id(id).data(data))
}
