//! The conditions gate: the observed conditions run through the user's policy, as a
//! `watch` channel of [`Decision`]s the engine runner obeys. Observing is
//! `ferry-conditions`'s job and deciding `ferry-core`'s; this only joins them to the engine.

use std::sync::Arc;
use std::time::Duration;

use ferry_conditions::{Observer, ObserverConfig, local_now};
use ferry_core::policy::{Decision, Policy, decide};
use ferry_store::JobStore;
use ferry_transfer::{Engine, EngineError};
use tokio::sync::watch;

/// A running gate; dropping it stops observing.
#[derive(Debug)]
pub struct Gate {
    pub decisions: watch::Receiver<Decision>,
    /// What is observed, when it is (displays show it beside the decision).
    pub conditions: Option<watch::Receiver<ferry_core::Conditions>>,
    _observer: Option<Observer>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for Gate {
    fn drop(&mut self) {
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}

impl Gate {
    /// A gate that always allows (conditions not observed: tests, `--now`).
    pub fn open() -> Gate {
        let (_tx, rx) = watch::channel(Decision::Allow {
            bandwidth_cap_bytes_per_s: None,
            max_file_bytes: None,
        });
        // The sender is dropped: the value never changes, `changed()` reports closed.
        Gate {
            decisions: rx,
            conditions: None,
            _observer: None,
            task: None,
        }
    }

    /// Observes the device and re-decides on every change, and every minute (time windows).
    pub async fn observe(policy: Policy, config: ObserverConfig) -> Gate {
        let observer = Observer::start(config).await;
        let mut conditions = observer.subscribe();
        let first = decide(&policy, &conditions.borrow(), &local_now());
        let (tx, rx) = watch::channel(first);
        // Only time windows change with the clock alone: without them an idle daemon has no
        // reason to wake up every minute.
        let clock_matters = !policy.time_windows.is_empty();
        let task = tokio::spawn(async move {
            loop {
                tokio::select! {
                    r = conditions.changed() => if r.is_err() { return },
                    _ = tokio::time::sleep(Duration::from_secs(60)), if clock_matters => {}
                }
                let d = decide(&policy, &conditions.borrow_and_update(), &local_now());
                tx.send_if_modified(|old| {
                    let changed = *old != d;
                    *old = d;
                    changed
                });
            }
        });
        Gate {
            decisions: rx,
            conditions: Some(observer.subscribe()),
            _observer: Some(observer),
            task: Some(task),
        }
    }
}

/// Runs `engine` while the gate allows, pauses it while it says wait, returns when `stop`
/// turns true. A pause abandons transfers in flight; their sessions resume them later.
/// The policy's bandwidth cap and file-size limit, handed to the engine.
fn apply_limits<J: JobStore + Send + 'static>(engine: &Engine<J>, d: &Decision) {
    if let Decision::Allow {
        bandwidth_cap_bytes_per_s,
        max_file_bytes,
    } = d
    {
        engine.set_policy_limits(*bandwidth_cap_bytes_per_s, *max_file_bytes);
    }
}

pub async fn drive_engine<J: JobStore + Send + 'static>(
    engine: Arc<Engine<J>>,
    mut decisions: watch::Receiver<Decision>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), EngineError> {
    loop {
        if *stop.borrow_and_update() {
            return Ok(());
        }
        if !decisions.borrow_and_update().is_allow() {
            tokio::select! {
                r = decisions.changed() => if r.is_err() {
                    // A closed gate that says wait stays so: wait for stop only.
                    let _ = stop.wait_for(|s| *s).await;
                    return Ok(());
                },
                _ = stop.changed() => {}
            }
            continue;
        }
        apply_limits(&engine, &decisions.borrow());
        let mut d = decisions.clone();
        let mut s = stop.clone();
        let limits = engine.clone();
        let until = async move {
            loop {
                tokio::select! {
                    r = d.changed() => match r {
                        Ok(()) if !d.borrow_and_update().is_allow() => return,
                        // Still allowed, maybe under other limits (a metered network came or
                        // went): the running engine takes them at once.
                        Ok(()) => apply_limits(&limits, &d.borrow()),
                        // Closed while allowing: it allows for good; only stop ends the run.
                        Err(_) => { let _ = s.wait_for(|s| *s).await; return }
                    },
                    r = s.changed() => if r.is_err() || *s.borrow_and_update() { return },
                }
            }
        };
        engine.run(until).await?;
    }
}
