//! Cloning a machine's storage and/or interfaces onto others (`fleet clone`,
//! `POST /api/v1/machines/{source}/clone`): the rules are `plan::clone::check_clone`'s; this
//! runs them per destination on the store's fresh records, inside the transaction that records
//! the clone (`Store::clone_machine`).
//!
//! Each destination is judged and written on its own: the valid ones are cloned even when
//! others are refused, and a dry run checks every one and writes nothing.

use crate::plan::clone::{check_clone_in, CloneMapping, NOTHING_CHOSEN};
use crate::plan::Observed;
use crate::store::{CloneOrder, ClonePair, CloneVerdict, Store, StoreError};

/// How many times one destination is tried again when another writer changed it between the
/// check and the write (PostgreSQL; SQLite's write transactions take the lock first).
const CONFLICT_RETRIES: usize = 5;

/// A clone request: one source, its destinations in the order given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloneRequest {
    pub source: String,
    pub destinations: Vec<String>,
    pub storage: bool,
    pub interfaces: bool,
    pub dry_run: bool,
}

/// What became of one destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloneResult {
    pub destination: String,
    pub verdict: CloneVerdict,
}

/// A request refused as a whole, before any destination is looked at.
#[derive(Debug, thiserror::Error)]
pub enum CloneError {
    #[error("{NOTHING_CHOSEN} Ask for storage and/or interfaces.")]
    NothingChosen,
    #[error("no destination: name at least one machine to clone to")]
    NoDestinations,
    #[error("no machine named `{0}`")]
    UnknownSource(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Checks every destination and, unless `dry_run`, clones each valid one; one result each, in
/// the request's order (a name given twice is judged once).
pub async fn clone_machines(
    store: &Store,
    request: &CloneRequest,
    actor: &str,
) -> Result<Vec<CloneResult>, CloneError> {
    if !request.storage && !request.interfaces {
        return Err(CloneError::NothingChosen);
    }
    if request.destinations.is_empty() {
        return Err(CloneError::NoDestinations);
    }
    if store.machine(&request.source).await?.is_none() {
        return Err(CloneError::UnknownSource(request.source.clone()));
    }
    let mut results: Vec<CloneResult> = Vec::new();
    for destination in &request.destinations {
        if results.iter().any(|done| &done.destination == destination) {
            continue;
        }
        let order = CloneOrder {
            source: &request.source,
            destination,
            storage: request.storage,
            interfaces: request.interfaces,
            actor,
            dry_run: request.dry_run,
        };
        let verdict = clone_one(store, &order).await?;
        results.push(CloneResult {
            destination: destination.clone(),
            verdict,
        });
    }
    Ok(results)
}

/// One destination, tried again while another writer keeps changing it.
async fn clone_one(store: &Store, order: &CloneOrder<'_>) -> Result<CloneVerdict, StoreError> {
    let mut attempt = 0;
    loop {
        match store
            .clone_machine(order, |pair| check_pair(order, pair))
            .await
        {
            Err(StoreError::Conflict(_)) if attempt < CONFLICT_RETRIES => attempt += 1,
            other => return other,
        }
    }
}

/// `check_clone` on the records the transaction read (a missing machine is a reason).
fn check_pair(order: &CloneOrder<'_>, pair: ClonePair<'_>) -> Result<CloneMapping, Vec<String>> {
    let records: Vec<_> = [pair.source, pair.destination]
        .into_iter()
        .flatten()
        .cloned()
        .collect();
    let observed = Observed::from_records(&records);
    check_clone_in(
        &observed,
        order.source,
        order.destination,
        order.storage,
        order.interfaces,
    )
}
