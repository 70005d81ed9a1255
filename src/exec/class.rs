//! How a worker attempt ended: the one place that maps a process exit (code, signal, our own
//! kill, the `result.json` sentinel) to an [`ExitClass`], and which classes are retried.
//!
//! The exit-code table itself is the worker protocol's ([`crate::train::protocol::ExitClass`]:
//! ok 0, failed 1, nan 3, oom 4, timeout 5, interrupted 6; code 2 stays clap's usage error). The
//! scheduler depends only on those codes, never on the worker's other types, so any program
//! that keeps the table can be a worker (the tests use a bash script).

use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use crate::train::protocol::ExitClass;

/// Whether another attempt may succeed: out of memory (another slot, less contention), a
/// timeout (a slow or stuck device) and an interruption from outside. A failure or a NaN loss
/// is deterministic for a job, so running it again only wastes a slot.
pub fn is_retryable(class: ExitClass) -> bool {
    matches!(
        class,
        ExitClass::Oom | ExitClass::Timeout | ExitClass::Interrupted
    )
}

/// Which limit a timed-out attempt ran into (nextest types its timeouts the same way).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum TimeoutKind {
    /// The attempt ran longer than the per-job wall-clock limit.
    WallClock { limit_s: f64 },
    /// The worker printed no line on stdout for this long.
    NoProgress { limit_s: f64 },
}

impl TimeoutKind {
    pub fn wall_clock(limit: Duration) -> Self {
        TimeoutKind::WallClock {
            limit_s: limit.as_secs_f64(),
        }
    }

    pub fn no_progress(limit: Duration) -> Self {
        TimeoutKind::NoProgress {
            limit_s: limit.as_secs_f64(),
        }
    }
}

impl std::fmt::Display for TimeoutKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TimeoutKind::WallClock { limit_s } => {
                write!(f, "ran past the wall-clock limit of {limit_s}s")
            }
            TimeoutKind::NoProgress { limit_s } => {
                write!(f, "printed no progress line for {limit_s}s")
            }
        }
    }
}

/// Why the scheduler itself stopped a worker's process group.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum KillReason {
    Timeout(TimeoutKind),
    /// Ctrl-C or a cancellation: the run is stopping.
    Cancelled,
}

/// What is known when an attempt's process is gone.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProcessEnd {
    /// The exit code, when the process exited.
    pub code: Option<i32>,
    /// The signal that ended it, when it did not exit.
    pub signal: Option<i32>,
    /// Set when the scheduler killed it.
    pub killed: Option<KillReason>,
    /// Whether `result.json` exists in the job's folder after the exit.
    pub result_present: bool,
}

/// Classifies an ended attempt; the string says why, for anything but a plain `ok`.
///
/// Our own kill decides first (a worker that handles SIGTERM may still exit 6 or 0 after a
/// timeout kill, but the cause was the timeout). A signal death, an exit code outside the table
/// and a code 0 without `result.json` are all `failed`: only the sentinel proves success.
pub fn classify(end: &ProcessEnd) -> (ExitClass, Option<String>) {
    match end.killed {
        Some(KillReason::Timeout(kind)) => return (ExitClass::Timeout, Some(kind.to_string())),
        Some(KillReason::Cancelled) => {
            return (
                ExitClass::Interrupted,
                Some("stopped by the scheduler (run cancelled)".into()),
            );
        }
        None => {}
    }
    match (end.code, end.signal) {
        (Some(0), _) if end.result_present => (ExitClass::Ok, None),
        (Some(0), _) => (
            ExitClass::Failed,
            Some("exited 0 without writing result.json".into()),
        ),
        (Some(code), _) => match ExitClass::from_code(code) {
            Some(class) => (class, Some(format!("exit code {code} ({class})"))),
            None => (
                ExitClass::Failed,
                Some(format!("exit code {code}, which is not a worker class")),
            ),
        },
        (None, Some(sig)) => (ExitClass::Failed, Some(format!("killed by signal {sig}"))),
        (None, None) => (ExitClass::Failed, Some("ended without a status".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exited(code: i32, result_present: bool) -> ProcessEnd {
        ProcessEnd {
            code: Some(code),
            signal: None,
            killed: None,
            result_present,
        }
    }

    /// The table the scheduler relies on, written out: a change in the protocol breaks here.
    #[test]
    fn codes_match_the_worker_protocol() {
        let table = [
            ("ok", 0),
            ("failed", 1),
            ("nan", 3),
            ("oom", 4),
            ("timeout", 5),
            ("interrupted", 6),
        ];
        for (class, (name, code)) in ExitClass::ALL.into_iter().zip(table) {
            assert_eq!((class.name(), class.code()), (name, code));
            assert_eq!(ExitClass::from_code(code.into()), Some(class));
        }
        assert_eq!(ExitClass::from_code(2), None, "2 is clap's usage error");
        assert_eq!(ExitClass::from_code(101), None);
    }

    #[test]
    fn only_oom_timeout_and_interrupted_are_retried() {
        let retried: Vec<_> = ExitClass::ALL
            .into_iter()
            .filter(|&c| is_retryable(c))
            .collect();
        assert_eq!(
            retried,
            [ExitClass::Oom, ExitClass::Timeout, ExitClass::Interrupted]
        );
    }

    #[test]
    fn exit_codes_classify_by_the_table() {
        assert_eq!(classify(&exited(0, true)), (ExitClass::Ok, None));
        for class in &ExitClass::ALL[1..] {
            let (got, why) = classify(&exited(class.code().into(), false));
            assert_eq!(got, *class);
            assert!(
                why.unwrap()
                    .contains(&format!("exit code {}", class.code()))
            );
        }
        // A non-zero code wins over a stray result file.
        assert_eq!(classify(&exited(3, true)).0, ExitClass::Nan);
    }

    #[test]
    fn success_needs_the_sentinel() {
        let (class, why) = classify(&exited(0, false));
        assert_eq!(class, ExitClass::Failed);
        assert!(why.unwrap().contains("without writing result.json"));
    }

    #[test]
    fn crashes_and_unknown_codes_are_failures() {
        let (class, why) = classify(&exited(101, false));
        assert_eq!(class, ExitClass::Failed);
        assert!(why.unwrap().contains("101"));
        let segv = ProcessEnd {
            code: None,
            signal: Some(11),
            killed: None,
            result_present: false,
        };
        let (class, why) = classify(&segv);
        assert_eq!(class, ExitClass::Failed);
        assert_eq!(why.unwrap(), "killed by signal 11");
    }

    #[test]
    fn our_kill_decides_the_class() {
        let timeout = KillReason::Timeout(TimeoutKind::no_progress(Duration::from_millis(1500)));
        // The worker caught SIGTERM and exited "interrupted", or even 0 with a result.
        for end in [exited(6, false), exited(0, true)] {
            let end = ProcessEnd {
                killed: Some(timeout),
                ..end
            };
            let (class, why) = classify(&end);
            assert_eq!(class, ExitClass::Timeout);
            assert_eq!(why.unwrap(), "printed no progress line for 1.5s");
        }
        let end = ProcessEnd {
            code: None,
            signal: Some(15),
            killed: Some(KillReason::Cancelled),
            result_present: false,
        };
        assert_eq!(classify(&end).0, ExitClass::Interrupted);
    }
}
