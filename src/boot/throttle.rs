//! Rate limits per source address for the requests that carry no credential
//! (`[policy.rate_limits]`): every route but the operator API (`/api/v1/...` except `version`)
//! and a machine's own calls (`/metadata/v1/machines/NAME/...`, which need its token) — boot
//! scripts and files, `/boot/booted`, `/metadata/v1/known`, the runner scripts, and anything
//! not found — share one bucket per address; `/metadata/v1/enlist` has a stricter one of its own.
//! A request from an address whose bucket is empty is answered 429 with `Retry-After` and one
//! line saying why; throttled and refused (4xx) requests are counted into the event summaries
//! ([`crate::boot::summary`]), never one event each.
//!
//! The buckets are governor's GCRA (a token bucket without a timer per key); the map of
//! addresses is ours ([`BoundedAddresses`]), because governor's keyed stores grow with every new
//! key until swept: ours holds at most `tracked_addresses`, drops the addresses whose bucket is
//! full again (indistinguishable from a new one) when it fills up or a minute has passed, and
//! puts the new addresses that still find it full into one shared bucket, so that a flood from
//! many addresses costs bounded memory and the addresses already known keep their own buckets.

use crate::boot::summary::{EventSummaries, Occurrence};
use crate::config::RateLimits;
use crate::store::{NewEvent, Store};
use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::nanos::Nanos;
use governor::state::keyed::ShrinkableKeyedStateStore;
use governor::state::{InMemoryState, NotKeyed, StateStore};
use governor::{Quota, RateLimiter};
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Which bucket a request draws from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bucket {
    /// Anything without a credential.
    Anonymous,
    /// `POST /metadata/v1/enlist`: it creates records, so its bucket is smaller.
    Enlist,
}

impl Bucket {
    fn name(self) -> &'static str {
        match self {
            Bucket::Anonymous => "requests without a credential",
            Bucket::Enlist => "enlistments",
        }
    }
}

/// The bucket of a request's path; `None` for routes that take a credential (the operator's
/// token, or a machine's own), which are not limited here.
pub fn bucket_for(path: &str) -> Option<Bucket> {
    if path == "/metadata/v1/enlist" {
        Some(Bucket::Enlist)
    } else if path.starts_with("/metadata/v1/machines/")
        || (path.starts_with("/api/") && path != "/api/v1/version")
    {
        None
    } else {
        Some(Bucket::Anonymous)
    }
}

/// The client's address, when the server was started with connect info.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourceAddress(pub Option<IpAddr>);

impl SourceAddress {
    fn of(parts_extensions: &axum::http::Extensions) -> SourceAddress {
        SourceAddress(
            parts_extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|info| info.0.ip().to_canonical()),
        )
    }
}

impl<S: Send + Sync> FromRequestParts<S> for SourceAddress {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(SourceAddress::of(&parts.extensions))
    }
}

/// Rate-limit states by address, at most `capacity` of them (see the module's text).
#[derive(Debug)]
pub struct BoundedAddresses {
    states: Mutex<HashMap<IpAddr, InMemoryState>>,
    /// The bucket shared by the new addresses that find the map full.
    overflow: InMemoryState,
    capacity: usize,
}

impl BoundedAddresses {
    fn new(capacity: usize) -> BoundedAddresses {
        BoundedAddresses {
            states: Mutex::default(),
            overflow: InMemoryState::default(),
            capacity,
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<IpAddr, InMemoryState>> {
        self.states
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl StateStore for BoundedAddresses {
    type Key = IpAddr;

    fn measure_and_replace<T, F, E>(&self, key: &IpAddr, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        let mut states = self.lock();
        if !states.contains_key(key) && states.len() >= self.capacity {
            drop(states);
            return self.overflow.measure_and_replace(&NotKeyed::NonKey, f);
        }
        states
            .entry(*key)
            .or_default()
            .measure_and_replace(&NotKeyed::NonKey, f)
    }
}

/// The state's theoretical arrival time, read without changing it.
fn arrival_time(state: &InMemoryState) -> Option<Nanos> {
    state
        .measure_and_replace(&NotKeyed::NonKey, |previous| {
            Err::<((), Nanos), Option<Nanos>>(previous)
        })
        .err()
        .flatten()
}

impl ShrinkableKeyedStateStore<IpAddr> for BoundedAddresses {
    fn retain_recent(&self, drop_below: Nanos) {
        self.lock()
            .retain(|_, state| arrival_time(state).is_some_and(|at| at > drop_below));
    }

    fn shrink_to_fit(&self) {
        self.lock().shrink_to_fit();
    }

    fn len(&self) -> usize {
        self.lock().len()
    }

    fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }
}

/// One bucket per address for one kind of request.
#[derive(Debug)]
pub struct AddressLimiter {
    limiter: RateLimiter<IpAddr, BoundedAddresses, DefaultClock>,
    capacity: usize,
    burst: u32,
    per_minute: u32,
    last_sweep: Mutex<Instant>,
}

/// How often the addresses whose bucket is full again are dropped, besides when the map fills.
const SWEEP_EVERY: Duration = Duration::from_secs(60);
/// A full map is swept at most this often (a sweep reads every entry).
const FULL_SWEEP_EVERY: Duration = Duration::from_secs(1);

impl AddressLimiter {
    pub fn new(burst: u32, per_minute: u32, capacity: u32) -> AddressLimiter {
        let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
        let per_minute = per_minute.max(1);
        let period = Duration::from_secs(60) / per_minute;
        let quota = Quota::with_period(period.max(Duration::from_nanos(1)))
            .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
            .allow_burst(burst);
        let capacity = capacity.max(1) as usize;
        AddressLimiter {
            limiter: RateLimiter::new(
                quota,
                BoundedAddresses::new(capacity),
                DefaultClock::default(),
            ),
            capacity,
            burst: burst.get(),
            per_minute,
            last_sweep: Mutex::new(Instant::now()),
        }
    }

    /// Takes one request from `address`'s bucket, or says how long until one is allowed.
    pub fn check(&self, address: IpAddr) -> Result<(), Duration> {
        self.sweep_if_due();
        self.limiter
            .check_key(&address)
            .map_err(|not_until| not_until.wait_time_from(self.limiter.clock().now()))
    }

    /// Addresses remembered now.
    pub fn tracked(&self) -> usize {
        self.limiter.len()
    }

    fn sweep_if_due(&self) {
        let mut last = self
            .last_sweep
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let since = last.elapsed();
        let full = since >= FULL_SWEEP_EVERY && self.limiter.len() >= self.capacity;
        if full || since >= SWEEP_EVERY {
            *last = Instant::now();
            drop(last);
            self.limiter.retain_recent();
            self.limiter.shrink_to_fit();
        }
    }
}

/// The limits and what the boot side records about refused traffic.
#[derive(Debug)]
pub struct RequestGuard {
    anonymous: AddressLimiter,
    enlist: AddressLimiter,
    summaries: EventSummaries,
    store: Store,
}

impl RequestGuard {
    pub fn new(limits: &RateLimits, summaries: EventSummaries, store: Store) -> RequestGuard {
        RequestGuard {
            anonymous: AddressLimiter::new(
                limits.anonymous_burst,
                limits.anonymous_per_minute,
                limits.tracked_addresses,
            ),
            enlist: AddressLimiter::new(
                limits.enlist_burst,
                limits.enlist_per_minute,
                limits.tracked_addresses,
            ),
            summaries,
            store,
        }
    }

    fn limiter(&self, bucket: Bucket) -> &AddressLimiter {
        match bucket {
            Bucket::Anonymous => &self.anonymous,
            Bucket::Enlist => &self.enlist,
        }
    }

    async fn note(&self, what: &'static str, variant: &str, source: IpAddr, reason: String) {
        let occurrence = Occurrence {
            what,
            machine: None,
            variant: Some(variant.to_string()),
            source: Some(source),
            sample: Some(source.to_string()),
            event: NewEvent {
                machine: None,
                kind: "request".to_string(),
                actor: "anonymous".to_string(),
                action: Some(what.split(' ').next_back().unwrap_or(what).to_string()),
                from_status: None,
                to_status: None,
                reason: Some(reason),
                detail: serde_json::json!({ "source": source.to_string(), "variant": variant }),
            },
        };
        self.summaries.record(&self.store, occurrence).await;
    }
}

/// The axum middleware: 429 for an address over its bucket, and refused requests counted.
pub async fn throttle(
    State(guard): State<Arc<RequestGuard>>,
    request: Request,
    next: Next,
) -> Response {
    let Some(bucket) = bucket_for(request.uri().path()) else {
        return next.run(request).await;
    };
    // Without connect info (a router driven in-process) every caller shares one bucket.
    let source = SourceAddress::of(request.extensions())
        .0
        .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    let line = request_line(&request);
    let limiter = guard.limiter(bucket);
    if let Err(wait) = limiter.check(source) {
        let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        let seconds = seconds.max(1);
        let why = format!(
            "too many {} from {source}: at most {} at once, then {} a minute; retry in {seconds} s",
            bucket.name(),
            limiter.burst,
            limiter.per_minute
        );
        guard
            .note(
                "requests throttled",
                bucket.name(),
                source,
                format!("{line} throttled: {why}"),
            )
            .await;
        let mut response =
            (StatusCode::TOO_MANY_REQUESTS, format!("error {why}\n")).into_response();
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        return response;
    }
    let response = next.run(request).await;
    let status = response.status();
    if status.is_client_error() {
        guard
            .note(
                "requests refused",
                bucket.name(),
                source,
                format!("{line} from {source} refused: {status}"),
            )
            .await;
    }
    response
}

/// "GET /boot/x.ipxe", cut short and without control characters (the path is the client's).
fn request_line(request: &Request) -> String {
    let path: String = request
        .uri()
        .path()
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(120)
        .collect();
    format!("{} {path}", request.method())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentialed_routes_are_not_limited_here() {
        assert_eq!(bucket_for("/metadata/v1/enlist"), Some(Bucket::Enlist));
        for anonymous in [
            "/boot/52:54:00:00:00:01.ipxe",
            "/boot/booted",
            "/boot/files/e/kernel",
            "/metadata/v1/known",
            "/scripts/fleet-runner.sh",
            "/api/v1/version",
            "/nothing-here",
        ] {
            assert_eq!(
                bucket_for(anonymous),
                Some(Bucket::Anonymous),
                "{anonymous}"
            );
        }
        for credentialed in ["/api/v1/machines", "/metadata/v1/machines/n1/heartbeat"] {
            assert_eq!(bucket_for(credentialed), None, "{credentialed}");
        }
    }

    #[test]
    fn a_burst_then_refusals_with_a_wait() {
        let limiter = AddressLimiter::new(5, 60, 100);
        let address = IpAddr::from([10, 0, 0, 1]);
        for _ in 0..5 {
            assert_eq!(limiter.check(address), Ok(()));
        }
        let wait = limiter.check(address).expect_err("the sixth is refused");
        assert!(
            wait <= Duration::from_secs(1) && wait > Duration::ZERO,
            "{wait:?}"
        );
        // Another address has its own bucket.
        assert_eq!(limiter.check(IpAddr::from([10, 0, 0, 2])), Ok(()));
    }

    #[test]
    fn the_map_of_addresses_stays_bounded() {
        let limiter = AddressLimiter::new(2, 1, 16);
        for index in 0..1000u32 {
            let address = IpAddr::from((0x0a00_0000 + index).to_be_bytes());
            let _ = limiter.check(address);
        }
        assert!(limiter.tracked() <= 16, "{} tracked", limiter.tracked());
        // The addresses beyond share one bucket, which the flood has emptied.
        assert!(limiter.check(IpAddr::from([192, 0, 2, 1])).is_err());
        // One tracked before the map filled keeps its own bucket (one request left of two).
        assert_eq!(limiter.check(IpAddr::from([10, 0, 0, 0])), Ok(()));
    }
}
