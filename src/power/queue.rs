//! One queue per machine: the power commands (and queries) for one machine run one at a time, in
//! the order they asked for their turn, never side by side. Two commands for one machine that
//! overlap can undo each other halfway (QEMU's "stop, reset" landing inside "reset, cont"; an
//! IPMI off racing an on), and a later command must never be overtaken by an earlier one.
//!
//! A turn is a fair (first come, first served) lock per machine name. The map of locks holds only
//! machines with a command in flight or waiting: the last turn to leave removes its entry, so
//! the map does not grow with the fleet's history.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::OwnedMutexGuard;

type MachineLock = Arc<tokio::sync::Mutex<()>>;

/// The machines' queues, shared by every clone of [`crate::power::PowerDrivers`].
#[derive(Default)]
pub struct MachineQueues {
    machines: Mutex<HashMap<String, MachineLock>>,
}

/// A machine's turn: while it is held, no other command or query for that machine runs.
pub struct PowerTurn {
    machine: String,
    queues: Arc<MachineQueues>,
    guard: Option<OwnedMutexGuard<()>>,
}

impl MachineQueues {
    fn lock_of(&self, machine: &str) -> MachineLock {
        let mut machines = self
            .machines
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        machines.entry(machine.to_string()).or_default().clone()
    }

    /// How many machines have a command in flight or waiting.
    pub fn busy_machines(&self) -> usize {
        self.machines
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .len()
    }
}

/// Waits for `machine`'s turn, after every turn asked for before this one.
pub async fn turn(queues: &Arc<MachineQueues>, machine: &str) -> PowerTurn {
    let guard = queues.lock_of(machine).lock_owned().await;
    PowerTurn {
        machine: machine.to_string(),
        queues: queues.clone(),
        guard: Some(guard),
    }
}

/// `machine`'s turn if nobody holds or awaits it now.
pub fn try_turn(queues: &Arc<MachineQueues>, machine: &str) -> Option<PowerTurn> {
    let guard = queues.lock_of(machine).try_lock_owned().ok();
    let turn = PowerTurn {
        machine: machine.to_string(),
        queues: queues.clone(),
        guard,
    };
    // Dropping an empty turn still tidies the map.
    turn.guard.is_some().then_some(turn)
}

impl PowerTurn {
    pub fn machine(&self) -> &str {
        &self.machine
    }
}

impl Drop for PowerTurn {
    fn drop(&mut self) {
        // Let the next waiter in first, then tidy: a machine whose lock only the map still
        // holds has nobody running or waiting (this also takes the entry a waiter left behind
        // when it was cancelled before its turn came).
        self.guard.take();
        let mut machines = self
            .queues
            .machines
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        machines.retain(|_, lock| Arc::strong_count(lock) > 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn turns_for_one_machine_follow_the_order_they_were_asked_in() {
        let queues = Arc::new(MachineQueues::default());
        let order = Arc::new(Mutex::new(Vec::new()));
        let first = turn(&queues, "node-1").await;
        let mut waiting = Vec::new();
        for index in 0..5 {
            let (queues, order) = (queues.clone(), order.clone());
            waiting.push(tokio::spawn(async move {
                let _turn = turn(&queues, "node-1").await;
                order.lock().unwrap().push(index);
            }));
            // Each task asks for its turn before the next one is started.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // Another machine's turn is not held up by node-1's queue.
        assert!(try_turn(&queues, "node-2").is_some());
        assert!(try_turn(&queues, "node-1").is_none());
        drop(first);
        for task in waiting {
            task.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), [0, 1, 2, 3, 4]);
        assert_eq!(queues.busy_machines(), 0, "the map keeps no idle machine");
    }

    #[tokio::test]
    async fn a_waiter_cancelled_before_its_turn_leaves_nothing_behind() {
        let queues = Arc::new(MachineQueues::default());
        let held = turn(&queues, "node-1").await;
        let waiter = {
            let queues = queues.clone();
            tokio::spawn(async move { turn(&queues, "node-1").await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        // The holder leaves while the waiter waits; the waiter is cancelled before it runs
        // again (one thread: it has not been polled since), so no turn of its own tidies up.
        drop(held);
        waiter.abort();
        let _ = waiter.await;
        // The next turn that ends, for any machine, takes the entry left behind.
        drop(turn(&queues, "node-2").await);
        assert_eq!(queues.busy_machines(), 0);
    }
}
