//! The reporter: turns [`SweepEvent`]s into what a person watches. On a terminal, one indicatif
//! bar per slot (job, step, loss) under an overall bar with an ETA; elsewhere (a pipe, a log
//! file, CI) plain lines, one per start, failure and finish, with no progress noise.
//!
//! It only consumes events (nextest's reporter does the same): the caller receives each event,
//! records it, and hands it to [`Reporter::handle`].

use std::io::{IsTerminal, Write};
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::class::ExitClass;
use super::event::{CancelReason, JobStatus, SweepEvent};

enum Output {
    Bars {
        multi: MultiProgress,
        overall: ProgressBar,
        slots: Vec<ProgressBar>,
        target: Option<ProgressDrawTarget>,
    },
    Lines(Box<dyn Write + Send>),
}

/// Draws a run. Create it before the run, feed it every event, in order.
pub struct Reporter {
    out: Output,
    total: usize,
    done: usize,
    /// The label of the job on each slot, for progress lines.
    on_slot: Vec<String>,
}

impl Reporter {
    /// Bars on stderr when it is a terminal, plain lines on stderr otherwise.
    pub fn stderr() -> Self {
        if std::io::stderr().is_terminal() {
            Reporter::bars(ProgressDrawTarget::stderr())
        } else {
            Reporter::lines(std::io::stderr())
        }
    }

    /// Plain lines to `w`.
    pub fn lines(w: impl Write + Send + 'static) -> Self {
        Reporter {
            out: Output::Lines(Box::new(w)),
            total: 0,
            done: 0,
            on_slot: Vec::new(),
        }
    }

    /// Bars drawn to `target` (created at the run's first event).
    pub fn bars(target: ProgressDrawTarget) -> Self {
        Reporter {
            out: Output::Bars {
                multi: MultiProgress::with_draw_target(ProgressDrawTarget::hidden()),
                overall: ProgressBar::hidden(),
                slots: Vec::new(),
                target: Some(target),
            },
            total: 0,
            done: 0,
            on_slot: Vec::new(),
        }
    }

    /// Updates the display for one event.
    pub fn handle(&mut self, event: &SweepEvent) {
        match event {
            SweepEvent::RunStarted { jobs, slots, .. } => {
                self.total = *jobs;
                self.on_slot = vec![String::new(); slots.len()];
                let devices: Vec<String> = slots.iter().map(|s| s.device.to_string()).collect();
                match &mut self.out {
                    Output::Bars {
                        multi,
                        overall,
                        slots: bars,
                        target,
                    } => {
                        if let Some(t) = target.take() {
                            multi.set_draw_target(t);
                        }
                        *overall = multi.add(ProgressBar::new(*jobs as u64));
                        overall.set_style(style(
                            "{prefix:>12.bold} [{bar:30}] {pos}/{len} jobs {msg} (eta {eta})",
                        ));
                        overall.set_prefix("sweep");
                        overall.enable_steady_tick(Duration::from_millis(500));
                        *bars = slots
                            .iter()
                            .map(|s| {
                                let bar = multi.add(ProgressBar::new(0));
                                bar.set_prefix(format!("{} #{}", s.device, s.index));
                                set_idle(&bar);
                                bar
                            })
                            .collect();
                    }
                    Output::Lines(w) => {
                        let _ = writeln!(
                            w,
                            "running {jobs} jobs on {} slots ({})",
                            slots.len(),
                            devices.join(", ")
                        );
                    }
                }
            }
            SweepEvent::AttemptStarted {
                label,
                job,
                attempt,
                slot,
                device,
                ..
            } => {
                let label = if label.is_empty() { job } else { label };
                if let Some(s) = self.on_slot.get_mut(*slot) {
                    s.clone_from(label);
                }
                match &mut self.out {
                    Output::Bars { slots, .. } => {
                        if let Some(bar) = slots.get(*slot) {
                            bar.reset();
                            bar.set_length(0);
                            bar.set_style(style(SLOT_BUSY));
                            bar.set_message(attempt_label(label, *attempt));
                        }
                    }
                    Output::Lines(w) => {
                        let _ = writeln!(
                            w,
                            "start    {} on {device} (slot {slot})",
                            attempt_label(label, *attempt)
                        );
                    }
                }
            }
            SweepEvent::Progress {
                slot,
                attempt,
                progress,
                ..
            } => {
                if let Output::Bars { slots, .. } = &self.out
                    && let Some(bar) = slots.get(*slot)
                {
                    if let Some(n) = progress.steps {
                        bar.set_length(n);
                    }
                    if let Some(n) = progress.step {
                        bar.set_position(n);
                    }
                    let mut msg = attempt_label(&self.on_slot[*slot], *attempt);
                    if let Some(loss) = progress.loss {
                        msg.push_str(&format!(" loss {loss:.4}"));
                    }
                    if let Some(eta) = progress.eta_s {
                        msg.push_str(&format!(" eta {}", short_duration(eta)));
                    }
                    bar.set_message(msg);
                }
            }
            SweepEvent::AttemptFinished {
                label,
                job,
                attempt,
                class,
                detail,
                slot,
                retry,
                ..
            } => {
                let label = if label.is_empty() { job } else { label };
                let mut line = format!("{:<8} {}", class.name(), attempt_label(label, *attempt));
                if let Some(d) = detail {
                    line.push_str(&format!(": {d}"));
                }
                if *retry {
                    line.push_str(" (retrying)");
                }
                match &mut self.out {
                    Output::Bars { multi, slots, .. } => {
                        if let Some(bar) = slots.get(*slot) {
                            set_idle(bar);
                        }
                        // Successes show in the overall bar; only problems get a line.
                        if *class != ExitClass::Ok {
                            let _ = multi.println(line);
                        }
                    }
                    Output::Lines(w) => {
                        let _ = writeln!(w, "{line}");
                    }
                }
            }
            SweepEvent::JobFinished { job, label, status } => {
                self.done += 1;
                let label = if label.is_empty() { job } else { label };
                let what = match status {
                    JobStatus::Finished { class, .. } => class.to_string(),
                    JobStatus::Blocked { by } => format!("blocked (by {by})"),
                    JobStatus::NotRun => "not run".into(),
                    JobStatus::Elsewhere { detail, .. } => format!("elsewhere ({detail})"),
                };
                match &mut self.out {
                    Output::Bars { multi, overall, .. } => {
                        overall.set_position(self.done as u64);
                        if matches!(status, JobStatus::Blocked { .. }) {
                            let _ = multi.println(format!("blocked  {label}: {what}"));
                        }
                    }
                    Output::Lines(w) => {
                        let width = self.total.to_string().len();
                        let _ =
                            writeln!(w, "[{:>width$}/{}] {what} {label}", self.done, self.total);
                    }
                }
            }
            SweepEvent::Cancelling { reason } => {
                let line = match reason {
                    CancelReason::Stop => {
                        "cancelling: no new jobs; stopping workers (Ctrl-C again to kill them)"
                    }
                    CancelReason::Kill => "cancelling: killing workers",
                };
                match &mut self.out {
                    Output::Bars { multi, overall, .. } => {
                        overall.set_message("cancelling");
                        let _ = multi.println(line);
                    }
                    Output::Lines(w) => {
                        let _ = writeln!(w, "{line}");
                    }
                }
            }
            SweepEvent::RunFinished { summary } => {
                let mut line = format!(
                    "finished {} jobs in {}: {} ok, {} failed, {} blocked, {} not run",
                    summary.jobs.len(),
                    short_duration(summary.elapsed.as_secs_f64()),
                    summary.ok(),
                    summary.failed(),
                    summary.blocked(),
                    summary.not_run()
                );
                if summary.elsewhere() > 0 {
                    line += &format!(", {} another run's", summary.elsewhere());
                }
                match &mut self.out {
                    Output::Bars {
                        multi,
                        overall,
                        slots,
                        ..
                    } => {
                        for bar in slots.iter() {
                            bar.finish_and_clear();
                        }
                        overall.finish_and_clear();
                        let _ = multi.println(line);
                    }
                    Output::Lines(w) => {
                        let _ = writeln!(w, "{line}");
                        let _ = w.flush();
                    }
                }
            }
        }
    }
}

/// A slot running a job: its steps as a bar.
const SLOT_BUSY: &str = "{prefix:>12} [{bar:30}] {pos}/{len} {wide_msg}";
/// A free slot: no bar (an empty one would draw as full).
const SLOT_IDLE: &str = "{prefix:>12} {wide_msg}";

fn set_idle(bar: &ProgressBar) {
    bar.reset();
    bar.set_length(0);
    bar.set_style(style(SLOT_IDLE));
    bar.set_message("idle");
}

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template)
        .expect("the reporter's templates are valid")
        .progress_chars("=> ")
}

fn attempt_label(label: &str, attempt: u32) -> String {
    if attempt > 1 {
        format!("{label} (attempt {attempt})")
    } else {
        label.to_string()
    }
}

/// `42s`, `3m05s`, `1h02m`.
fn short_duration(s: f64) -> String {
    let s = s.max(0.0).round() as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};
    use std::time::SystemTime;

    use super::*;
    use crate::exec::class::ExitClass;
    use crate::exec::device::{Device, Slot};
    use crate::exec::event::{Progress, RunSummary};

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn events() -> Vec<SweepEvent> {
        let now = SystemTime::now();
        let slot = |index, device| Slot {
            index,
            device,
            threads: 1,
        };
        let mut summary = RunSummary::default();
        summary.jobs.insert(
            "a".into(),
            JobStatus::Finished {
                class: ExitClass::Nan,
                attempts: 2,
            },
        );
        summary
            .jobs
            .insert("b".into(), JobStatus::Blocked { by: "a".into() });
        vec![
            SweepEvent::RunStarted {
                jobs: 2,
                slots: vec![slot(0, Device::Cpu), slot(1, Device::Cuda(1))],
                host: "h".into(),
            },
            SweepEvent::AttemptStarted {
                job: "a".into(),
                label: "lora-c r4".into(),
                attempt: 2,
                slot: 1,
                device: Device::Cuda(1),
                pid: 1,
                log: "a/attempt-2.log".into(),
                started: now,
            },
            SweepEvent::Progress {
                job: "a".into(),
                slot: 1,
                attempt: 2,
                progress: Progress {
                    event: Some("step".into()),
                    step: Some(7),
                    steps: Some(20),
                    loss: Some(0.25),
                    eta_s: Some(75.0),
                },
            },
            SweepEvent::AttemptFinished {
                job: "a".into(),
                label: "lora-c r4".into(),
                attempt: 2,
                slot: 1,
                device: Device::Cuda(1),
                host: "h".into(),
                class: ExitClass::Nan,
                detail: Some("exit code 3 (nan)".into()),
                exit_code: Some(3),
                signal: None,
                started: now,
                ended: now,
                retry: false,
                ran_on: None,
                peak_gpu_mb: None,
            },
            SweepEvent::JobFinished {
                job: "a".into(),
                label: "lora-c r4".into(),
                status: JobStatus::Finished {
                    class: ExitClass::Nan,
                    attempts: 2,
                },
            },
            SweepEvent::JobFinished {
                job: "b".into(),
                label: String::new(),
                status: JobStatus::Blocked { by: "a".into() },
            },
            SweepEvent::RunFinished { summary },
        ]
    }

    #[test]
    fn plain_lines_name_each_start_failure_and_finish() {
        let buf = Buf::default();
        let mut r = Reporter::lines(buf.clone());
        for e in events() {
            r.handle(&e);
        }
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines,
            [
                "running 2 jobs on 2 slots (cpu, cuda:1)",
                "start    lora-c r4 (attempt 2) on cuda:1 (slot 1)",
                "nan      lora-c r4 (attempt 2): exit code 3 (nan)",
                "[1/2] nan lora-c r4",
                "[2/2] blocked (by a) b",
                "finished 2 jobs in 0s: 0 ok, 1 failed, 1 blocked, 0 not run",
            ]
        );
    }

    #[test]
    fn bars_follow_slots_and_jobs() {
        let mut r = Reporter::bars(ProgressDrawTarget::hidden());
        let evs = events();
        for e in &evs[..3] {
            r.handle(e);
        }
        let Output::Bars { slots, overall, .. } = &r.out else {
            panic!("bar mode")
        };
        assert_eq!(slots.len(), 2);
        assert_eq!((slots[1].position(), slots[1].length()), (7, Some(20)));
        assert_eq!(
            slots[1].message(),
            "lora-c r4 (attempt 2) loss 0.2500 eta 1m15s"
        );
        assert_eq!(slots[0].message(), "idle");
        assert_eq!(overall.length(), Some(2));
        for e in &evs[3..6] {
            r.handle(e);
        }
        let Output::Bars { slots, overall, .. } = &r.out else {
            panic!("bar mode")
        };
        assert_eq!(slots[1].message(), "idle");
        assert_eq!(overall.position(), 2);
    }

    #[test]
    fn durations_are_short() {
        assert_eq!(short_duration(4.4), "4s");
        assert_eq!(short_duration(185.0), "3m05s");
        assert_eq!(short_duration(3720.0), "1h02m");
        assert_eq!(short_duration(-1.0), "0s");
    }
}
