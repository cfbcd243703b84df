//! One leader among the controllers on a database. Every controller serves the API, the machine
//! API and the boot services; only the leader runs the duties that decide on their own: the
//! reconcile loop (`--watch`) and the executor (the applies any controller queued, and the
//! resumption of one an earlier term left unfinished), the timeout watch, the
//! power poll and event retention. The term lives in the store (`store/leadership.rs`), judged
//! by the database's clock: a follower claims every [`CLAIM_EVERY`], the leader renews every
//! [`RENEW_EVERY`], and a term not renewed for [`LEADER_TERM`] is free to the next claim.
//!
//! The duties of a term write through a store fenced with that term (`Store::fenced`): once a
//! newer term exists, each of their writes is refused by PostgreSQL itself, so an old leader
//! that was paused (SIGSTOP, a long GC-like stall, a partition) cannot act on stale decisions
//! when it wakes. It also stops its duties itself as soon as it learns its term is over, or when
//! it could not renew before the term would end.
//!
//! SQLite serves one controller: there the controller leads from the start and never steps
//! down (a failed renewal on a busy file is retried; nobody else can take over).

use crate::services::failpoint;
use crate::store::{Backend, LeaderTerm, Store, StoreError, LEADER_TERM};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// How often a follower tries to take a free term.
const CLAIM_EVERY: Duration = Duration::from_secs(1);
/// How often the leader renews its term: three renewals fit in one term.
const RENEW_EVERY: Duration = Duration::from_secs(2);
/// A leader stops its duties this long before its term would end unrenewed (its clock and the
/// database's may differ a little; the fence is the guarantee, this is manners).
const STEP_DOWN_MARGIN: Duration = Duration::from_secs(1);

/// Starts the leader's duties with the store fenced for the term (and the term, whose holder
/// names the leader in the locks it takes); returns what to abort when the term ends.
pub type Duties = Arc<dyn Fn(Store, &LeaderTerm) -> Vec<JoinHandle<()>> + Send + Sync>;

/// The running election: the loop, and the term this controller holds (if any).
pub struct Election {
    task: JoinHandle<()>,
    state: Arc<tokio::sync::Mutex<Term>>,
    store: Store,
}

/// This controller's side of the leadership.
#[derive(Default)]
struct Term {
    held: Option<LeaderTerm>,
    fenced: Option<Store>,
    duties: Vec<JoinHandle<()>>,
}

/// What the election needs: the store, the database URL (a fenced store opens its own pool)
/// and who this controller is.
pub struct Candidate {
    pub store: Store,
    pub database: String,
    pub controller_id: String,
}

impl Election {
    /// Claims once at once (a controller alone on its database leads before it serves), then
    /// keeps claiming or renewing in the background.
    pub async fn start(candidate: Candidate, duties: Duties) -> Election {
        let holder = format!("{}/{:08x}", candidate.controller_id, rand::random::<u32>());
        let state = Arc::new(tokio::sync::Mutex::new(Term::default()));
        let round = Round {
            candidate: Arc::new(candidate),
            holder: Arc::new(holder),
            duties,
            state: state.clone(),
        };
        let mut deadline = round.once(None).await;
        let store = round.candidate.store.clone();
        let task = tokio::spawn(async move {
            loop {
                let leading = round.state.lock().await.held.is_some();
                tokio::time::sleep(if leading { RENEW_EVERY } else { CLAIM_EVERY }).await;
                deadline = round.once(deadline).await;
            }
        });
        Election { task, state, store }
    }

    /// Stops the election and the duties, and resigns the term so a follower need not wait
    /// for it to expire.
    pub async fn stop(self) {
        self.task.abort();
        let mut term = self.state.lock().await;
        let held = term.held.clone();
        stop_duties(&mut term).await;
        if let Some(held) = held {
            if let Err(error) = self
                .store
                .resign_leadership(&held.holder, held.generation)
                .await
            {
                eprintln!("  leader  could not resign the term: {error}");
            }
        }
    }
}

/// One claim or renewal and what follows from it.
struct Round {
    candidate: Arc<Candidate>,
    holder: Arc<String>,
    duties: Duties,
    state: Arc<tokio::sync::Mutex<Term>>,
}

impl Round {
    /// Claims (or renews) once; returns the instant by which the next renewal must succeed
    /// while this controller leads.
    async fn once(&self, deadline: Option<Instant>) -> Option<Instant> {
        let mut term = self.state.lock().await;
        let held = term.held.as_ref().map(|held| held.generation);
        let sent = Instant::now();
        let store = &self.candidate.store;
        let claimed = store
            .claim_leadership(
                &self.holder,
                &self.candidate.controller_id,
                held,
                LEADER_TERM,
            )
            .await;
        match claimed {
            Ok(Some(granted)) if Some(granted.generation) == held => {
                term.held = Some(granted);
                Some(sent + LEADER_TERM - STEP_DOWN_MARGIN)
            }
            Ok(Some(granted)) => {
                self.begin_term(&mut term, granted).await;
                Some(sent + LEADER_TERM - STEP_DOWN_MARGIN)
            }
            Ok(None) => {
                if let Some(old) = term.held.as_ref() {
                    let generation = old.generation;
                    late_step_down(generation, "another controller leads").await;
                    eprintln!(
                        "  leader  term {generation} is over: another controller leads; duties stopped"
                    );
                    stop_duties(&mut term).await;
                }
                None
            }
            Err(error) => self.renewal_failed(&mut term, deadline, &error).await,
        }
    }

    /// A new term (the first, or one after this controller lost the previous): the old duties
    /// stop, new ones start on a store fenced with the new term.
    async fn begin_term(&self, term: &mut Term, granted: LeaderTerm) {
        stop_duties(term).await;
        let store = &self.candidate.store;
        let fenced = match store.fenced(&self.candidate.database, &granted).await {
            Ok(fenced) => fenced,
            Err(error) => {
                eprintln!(
                    "  leader  won term {} but cannot open its store: {error}; resigning",
                    granted.generation
                );
                let _ = store
                    .resign_leadership(&granted.holder, granted.generation)
                    .await;
                return;
            }
        };
        eprintln!(
            "  leader  this controller leads (term {}): reconcile, executor, timeouts, power poll, retention",
            granted.generation
        );
        term.duties = (self.duties)(fenced.clone(), &granted);
        term.fenced = Some(fenced);
        term.held = Some(granted);
    }

    /// A claim that failed (the database unreachable, busy): the leader keeps its duties until
    /// its term would end unrenewed, then stops them (PostgreSQL); on SQLite it carries on.
    async fn renewal_failed(
        &self,
        term: &mut Term,
        deadline: Option<Instant>,
        error: &StoreError,
    ) -> Option<Instant> {
        tracing::warn!(%error, "cannot claim or renew the leadership");
        let held = term.held.as_ref()?;
        let alone = self.candidate.store.backend() == Backend::Sqlite;
        match deadline {
            Some(deadline) if alone || Instant::now() < deadline => Some(deadline),
            _ => {
                late_step_down(held.generation, "it could not be renewed in time").await;
                eprintln!(
                    "  leader  could not renew term {} in time ({error}); duties stopped",
                    held.generation
                );
                stop_duties(term).await;
                None
            }
        }
    }
}

/// With the failpoint `leader-steps-down-late` armed (tests), the duties of a term that is over
/// run [`failpoint::LATE_STEP_DOWN_FOR`] longer before they are stopped.
async fn late_step_down(generation: i64, why: &str) {
    if failpoint::is_armed(failpoint::LATE_STEP_DOWN) {
        let late = failpoint::LATE_STEP_DOWN_FOR;
        eprintln!(
            "  leader  term {generation} is over: {why}; duties stop in {} s (failpoint {})",
            late.as_secs(),
            failpoint::LATE_STEP_DOWN
        );
        tokio::time::sleep(late).await;
    }
}

/// Aborts the duties of the term held and closes its fenced store (in the background: the
/// pool waits for its connections to come back).
async fn stop_duties(term: &mut Term) {
    for duty in term.duties.drain(..) {
        duty.abort();
    }
    term.held = None;
    // On SQLite the fenced store is the controller's own: it stays open.
    if let Some(fenced) = term.fenced.take() {
        if fenced.backend() == Backend::Postgres {
            tokio::spawn(async move { fenced.close().await });
        }
    }
}
