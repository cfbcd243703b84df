//! `fleet events --follow`: the newest events as `fleet events` lists them, then each new one as
//! the controller's store gets it — from any controller on the same database — read from
//! `GET /api/v1/events/stream` (server-sent events). A dropped connection is opened again with
//! `Last-Event-ID`, so nothing is missed or printed twice; Ctrl-C ends it (exit 0). With `--json`
//! each event is one line of JSON (the view `fleet events --json` lists).

use super::client::Client;
use super::machine::describe_event;
use anyhow::Context;
use fleet::api::views::EventView;
use std::process::ExitCode;
use std::time::Duration;

/// The controller sends a keep-alive comment every 15 s: a connection silent for three of them
/// is taken as dead and opened again.
const IDLE_LIMIT: Duration = Duration::from_secs(45);
/// The first wait before opening a dropped stream again; it doubles up to [`RECONNECT_MOST`]
/// while the controller stays away.
const RECONNECT_FIRST: Duration = Duration::from_millis(500);
const RECONNECT_MOST: Duration = Duration::from_secs(10);

/// How one connection ended.
enum Ended {
    /// The controller closed the stream (it stops) or the connection dropped: open it again.
    Dropped {
        error: Option<String>,
        got_events: bool,
    },
    /// The controller refused the stream (a token, a bad argument): no point trying again.
    Refused(String),
}

pub async fn run(
    client: &Client,
    machine: Option<&str>,
    limit: i64,
    json: bool,
) -> anyhow::Result<ExitCode> {
    // The newest event of all first, then the machine's newest: the stream starts after both,
    // so an event written meanwhile is in one of them or comes from the stream.
    let newest: Vec<EventView> = client.get("/events?limit=1").await??;
    let mut path = format!("/events?limit={limit}");
    if let Some(machine) = machine {
        path.push_str(&format!("&machine={machine}"));
    }
    let listed: Vec<EventView> = client.get(&path).await??;
    for event in &listed {
        print_event(event, json)?;
    }
    let mut last = newest
        .iter()
        .chain(listed.iter())
        .map(|event| event.id)
        .max()
        .unwrap_or(0);
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    let mut delay = RECONNECT_FIRST;
    loop {
        let ended = tokio::select! {
            _ = &mut interrupted => return Ok(ExitCode::SUCCESS),
            ended = follow_once(client, machine, &mut last, json) => ended?,
        };
        match ended {
            Ended::Refused(message) => {
                eprintln!("error: the controller refused the event stream: {message}");
                return Ok(ExitCode::FAILURE);
            }
            Ended::Dropped { error, got_events } => {
                if got_events {
                    delay = RECONNECT_FIRST;
                }
                match error {
                    Some(error) => eprintln!(
                        "the event stream broke ({error}); opening it again after event {last} in {} ms",
                        delay.as_millis()
                    ),
                    None => eprintln!(
                        "the controller ended the event stream; opening it again after event {last} in {} ms",
                        delay.as_millis()
                    ),
                }
            }
        }
        tokio::select! {
            _ = &mut interrupted => return Ok(ExitCode::SUCCESS),
            () = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(RECONNECT_MOST);
    }
}

/// Opens the stream after `last` and prints its events until it ends, moving `last` along. The
/// listing before reached the controller: a stream it cannot open is a drop to retry (the
/// controller restarts), a refusal is final.
async fn follow_once(
    client: &Client,
    machine: Option<&str>,
    last: &mut i64,
    json: bool,
) -> anyhow::Result<Ended> {
    let mut path = "/events/stream".to_string();
    if let Some(machine) = machine {
        path.push_str(&format!("?machine={machine}"));
    }
    let response = match client.open_stream(&path, Some(*last), IDLE_LIMIT).await {
        Ok(Ok(response)) => response,
        Ok(Err(failure)) => return Ok(Ended::Refused(failure.message)),
        Err(error) => {
            return Ok(Ended::Dropped {
                error: Some(format!("{error:#}")),
                got_events: false,
            })
        }
    };
    let mut response = response;
    let mut parser = SseParser::default();
    let mut got_events = false;
    loop {
        let chunk = match response.chunk().await {
            Ok(Some(chunk)) => chunk,
            Ok(None) => {
                return Ok(Ended::Dropped {
                    error: None,
                    got_events,
                })
            }
            Err(error) => {
                return Ok(Ended::Dropped {
                    error: Some(error.to_string()),
                    got_events,
                })
            }
        };
        for message in parser.push(&chunk) {
            let event: EventView = serde_json::from_str(&message.data).with_context(|| {
                format!(
                    "the controller streamed an event this fleet cannot read: {}",
                    message.data
                )
            })?;
            print_event(&event, json)?;
            *last = message.id.unwrap_or(event.id).max(*last);
            got_events = true;
        }
    }
}

fn print_event(event: &EventView, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(event)?);
    } else {
        println!("{}", describe_event(event));
    }
    Ok(())
}

/// One server-sent event: its `id` and its `data` lines joined.
struct Message {
    id: Option<i64>,
    data: String,
}

/// Reads server-sent events (the WHATWG format) from chunks that may split anywhere.
#[derive(Default)]
struct SseParser {
    /// Bytes after the last complete line.
    partial: Vec<u8>,
    id: Option<i64>,
    data: Option<String>,
}

impl SseParser {
    fn push(&mut self, chunk: &[u8]) -> Vec<Message> {
        self.partial.extend_from_slice(chunk);
        let mut messages = Vec::new();
        while let Some(end) = self.partial.iter().position(|byte| *byte == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line);
            let line = line.trim_end_matches(['\n', '\r']);
            if line.is_empty() {
                if let Some(data) = self.data.take() {
                    messages.push(Message { id: self.id, data });
                }
                continue;
            }
            // A comment (the keep-alive).
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "id" => self.id = value.parse().ok(),
                "data" => match &mut self.data {
                    Some(data) => {
                        data.push('\n');
                        data.push_str(value);
                    }
                    None => self.data = Some(value.to_string()),
                },
                _ => {}
            }
        }
        messages
    }
}
