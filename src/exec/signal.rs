//! Cancellation: a [`Cancel`] handle that only goes up (none → stop → kill), and the Ctrl-C
//! handler that drives it.
//!
//! Design (nextest's `SignalCount`): the first SIGINT or SIGTERM stops dispatching and sends
//! SIGTERM to every worker's process group, which then gets the grace period; the second sends
//! SIGKILL at once. Workers run in their own process groups, so a terminal's Ctrl-C reaches only
//! the orchestrator, and the orchestrator decides what the workers get. Tests drive the same
//! handle directly, without signals.

use std::sync::Arc;

use tokio::sync::watch;

use super::event::CancelReason;

/// A cancellation request shared by the caller, the signal handler and every supervisor.
#[derive(Debug, Clone)]
pub struct Cancel {
    tx: Arc<watch::Sender<Option<CancelReason>>>,
}

impl Default for Cancel {
    fn default() -> Self {
        Cancel::new()
    }
}

impl Cancel {
    pub fn new() -> Self {
        Cancel {
            tx: Arc::new(watch::channel(None).0),
        }
    }

    /// Stop dispatching; workers get SIGTERM, then SIGKILL after the grace period.
    pub fn stop(&self) {
        self.raise(CancelReason::Stop);
    }

    /// Kill every worker now.
    pub fn kill(&self) {
        self.raise(CancelReason::Kill);
    }

    /// The next level: stop, then kill.
    pub fn escalate(&self) -> CancelReason {
        let next = match self.level() {
            None => CancelReason::Stop,
            Some(_) => CancelReason::Kill,
        };
        self.raise(next);
        next
    }

    pub fn level(&self) -> Option<CancelReason> {
        *self.tx.borrow()
    }

    /// A receiver that wakes on every raise.
    pub fn subscribe(&self) -> watch::Receiver<Option<CancelReason>> {
        self.tx.subscribe()
    }

    fn raise(&self, to: CancelReason) {
        // Never lowered: a kill stays a kill.
        self.tx.send_if_modified(|level| {
            if level.is_none_or(|l| l < to) {
                *level = Some(to);
                true
            } else {
                false
            }
        });
    }
}

/// Listens for SIGINT and SIGTERM and escalates `cancel` on each, until aborted. Must be called
/// inside a tokio runtime; an error means the handlers could not be installed.
pub fn spawn_signal_handler(cancel: Cancel) -> std::io::Result<tokio::task::JoinHandle<()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    Ok(tokio::spawn(async move {
        loop {
            tokio::select! {
                s = int.recv() => if s.is_none() { break },
                s = term.recv() => if s.is_none() { break },
            }
            let level = cancel.escalate();
            tracing::warn!(?level, "signal received: cancelling the run");
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cancel_only_goes_up() {
        let c = Cancel::new();
        let mut rx = c.subscribe();
        assert_eq!(c.level(), None);
        assert_eq!(c.escalate(), CancelReason::Stop);
        assert!(rx.has_changed().unwrap());
        rx.borrow_and_update();
        c.stop();
        assert!(!rx.has_changed().unwrap(), "a repeated stop wakes nobody");
        assert_eq!(c.escalate(), CancelReason::Kill);
        c.stop();
        assert_eq!(c.level(), Some(CancelReason::Kill));
        let clone = c.clone();
        assert_eq!(clone.level(), Some(CancelReason::Kill));
    }
}
