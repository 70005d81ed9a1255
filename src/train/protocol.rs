//! The worker protocol, versioned in one place: the progress events a worker prints as JSON
//! lines on stdout, and the classified exit codes it ends with.
//!
//! Key types: [`Event`] (one JSON object per line, tagged by `"event"`), [`ExitClass`] (the
//! exit-code table), [`PROTOCOL_VERSION`].
//!
//! Design (orchestration.md, nextest's stable exit codes): the orchestrator never parses logs.
//! It reads the exit code, then `result.json` — written last, by atomic rename, and only on
//! success — and uses the event stream only for progress, ETA and the no-progress watchdog. A
//! change to the events or codes that an older orchestrator would misread bumps
//! [`PROTOCOL_VERSION`].

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::job::Stage;
use crate::data::preprocess::View;

/// Version of the event stream, exit codes and `result.json` layout.
pub const PROTOCOL_VERSION: u32 = 1;

/// How a worker ended, and the process exit code that says so.
///
/// | class | code | meaning |
/// |---|---|---|
/// | `ok` | 0 | finished; `result.json` is written |
/// | `failed` | 1 | an error: bad job file, missing data, unreadable checkpoint, I/O |
/// | `nan` | 3 | a non-finite training loss; stopped at that step |
/// | `oom` | 4 | the device (or host) ran out of memory |
/// | `timeout` | 5 | the job's own `timeout_s` ran out |
/// | `interrupted` | 6 | SIGTERM, SIGINT or SIGUSR1: stopped at the next step |
///
/// Code 2 stays the CLI's usage error (clap). Only `ok` leaves a `result.json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ExitClass {
    Ok,
    Failed,
    Nan,
    Oom,
    Timeout,
    Interrupted,
}

impl ExitClass {
    pub const ALL: [ExitClass; 6] = [
        ExitClass::Ok,
        ExitClass::Failed,
        ExitClass::Nan,
        ExitClass::Oom,
        ExitClass::Timeout,
        ExitClass::Interrupted,
    ];

    /// The process exit code of this class.
    pub fn code(self) -> u8 {
        match self {
            ExitClass::Ok => 0,
            ExitClass::Failed => 1,
            ExitClass::Nan => 3,
            ExitClass::Oom => 4,
            ExitClass::Timeout => 5,
            ExitClass::Interrupted => 6,
        }
    }

    /// The class of a worker's exit code; `None` for a code no worker gives (e.g. a crash).
    pub fn from_code(code: i32) -> Option<ExitClass> {
        ExitClass::ALL
            .into_iter()
            .find(|c| i32::from(c.code()) == code)
    }

    pub fn name(self) -> &'static str {
        match self {
            ExitClass::Ok => "ok",
            ExitClass::Failed => "failed",
            ExitClass::Nan => "nan",
            ExitClass::Oom => "oom",
            ExitClass::Timeout => "timeout",
            ExitClass::Interrupted => "interrupted",
        }
    }
}

impl std::fmt::Display for ExitClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One progress event. Serialized as one JSON object per line with an `"event"` tag, e.g.
/// `{"event":"step","view":"axial","step":10,"steps":250,"loss":0.61,"lr":0.001,...}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum Event {
    /// The job is validated, its data indexed and its device open.
    Start {
        protocol: u32,
        stage: Stage,
        views: Vec<View>,
        device: String,
        /// What runs the job (added in place: older readers ignore it).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ran_on: Option<crate::nn::device::RanOn>,
        train_cases: usize,
        val_cases: usize,
        test_cases: usize,
        /// Optimisation steps per view (0 for `evaluate`).
        steps: usize,
    },
    /// After a training step (every `train.log_every` steps and the last one).
    Step {
        view: View,
        /// 1-based steps done for this view.
        step: usize,
        steps: usize,
        loss: f32,
        lr: f64,
        /// Wall time of this step.
        step_s: f64,
        /// Estimated seconds left for the training of all views.
        eta_s: f64,
    },
    /// A validation pass (`selection: best-val`): mean 3D Dice over the validation cases.
    Val {
        view: View,
        step: usize,
        /// `None` when every validation case has empty truth and prediction.
        dice: Option<f64>,
        /// This is the best so far, and its weights are kept.
        best: bool,
    },
    /// A checkpoint was written (relative to the job's output folder).
    Checkpoint { view: View, path: PathBuf },
    /// One test case was predicted and measured.
    Case {
        case: String,
        index: usize,
        count: usize,
        dice: Option<f64>,
    },
    /// The last line: how the worker ends. `result` is set for `ok` only.
    End {
        class: ExitClass,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        result: Option<PathBuf>,
    },
}

impl Event {
    /// The event as one line of JSON (no newline).
    pub fn to_json_line(&self) -> String {
        serde_json::to_string(self).expect("events serialize")
    }
}

/// A finite f64, or `None`: events carry `null` rather than NaN.
pub(crate) fn finite(x: f64) -> Option<f64> {
    x.is_finite().then_some(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_are_distinct_and_round_trip() {
        let mut codes: Vec<u8> = ExitClass::ALL.iter().map(|c| c.code()).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), ExitClass::ALL.len());
        assert!(!codes.contains(&2), "2 is the CLI's usage error");
        for c in ExitClass::ALL {
            assert_eq!(ExitClass::from_code(i32::from(c.code())), Some(c));
        }
        assert_eq!(ExitClass::from_code(101), None);
        assert_eq!(ExitClass::Ok.code(), 0);
    }

    #[test]
    fn events_are_tagged_json_lines() {
        let e = Event::Step {
            view: View::Coronal,
            step: 3,
            steps: 10,
            loss: 0.5,
            lr: 0.001,
            step_s: 0.25,
            eta_s: 1.75,
        };
        let line = e.to_json_line();
        assert!(
            line.starts_with(r#"{"event":"step","view":"coronal","step":3"#),
            "{line}"
        );
        assert!(!line.contains('\n'));
        assert_eq!(serde_json::from_str::<Event>(&line).unwrap(), e);
        let end = Event::End {
            class: ExitClass::Interrupted,
            error: Some("stopped".into()),
            result: None,
        };
        let line = end.to_json_line();
        assert_eq!(
            line,
            r#"{"event":"end","class":"interrupted","error":"stopped"}"#
        );
        let v = Event::Val {
            view: View::Axial,
            step: 5,
            dice: finite(f64::NAN),
            best: false,
        };
        assert!(v.to_json_line().contains(r#""dice":null"#));
    }
}
