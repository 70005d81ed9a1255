//! `plan`'s estimated duration: what the jobs that would run should take, from the durations
//! of finished attempts in the store.
//!
//! Key types: [`Estimate`], [`KindEstimate`]; entry point [`estimate`].
//!
//! Design: a job's work is its optimisation steps × views (one unit per view for `evaluate`,
//! which trains nothing). Finished attempts give seconds per unit; a planned job takes the
//! median rate of the most similar history — the same stage, kind, Unet widths and batch size,
//! else the same stage and kind — scaled by its own units. A job with neither has no estimate,
//! and the totals say how many were left out. The figure is job time (the sum over jobs), not
//! wall time: slots run jobs side by side.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use crate::store::history::FinishedAttempt;
use crate::sweep::plan::{Plan, PlannedJob};
use crate::train::JobConfig;
use crate::train::job::Stage;

/// The estimate of one kind (`pretrain`, or an adaptation kind) of the jobs that would run.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct KindEstimate {
    /// Jobs of this kind that would run.
    pub jobs: usize,
    /// Of those, the ones with history to estimate from.
    pub estimated: usize,
    /// Seconds of the estimated jobs; `None` when none has history.
    pub seconds: Option<f64>,
}

/// The estimate of a plan's remaining work.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Estimate {
    /// Every kind together.
    pub total: KindEstimate,
    pub by_kind: BTreeMap<String, KindEstimate>,
}

impl Estimate {
    /// Whether no job had history (`plan` prints "no history").
    pub fn no_history(&self) -> bool {
        self.total.seconds.is_none()
    }
}

/// The kind column of `plan`'s totals: `pretrain` or the adaptation kind.
pub fn kind_label(j: &PlannedJob) -> String {
    match j.stage {
        Stage::Pretrain => "pretrain".to_string(),
        _ => j.config.adaptation.kind.to_string(),
    }
}

/// Work units of a job: steps × views, or views for a job that trains nothing.
fn units(c: &JobConfig) -> f64 {
    let views = c.views.len().max(1) as f64;
    match c.stage {
        Stage::Evaluate => views,
        _ => c.train.steps.max(1) as f64 * views,
    }
}

/// The similarity keys of a job: exact settings, then stage and kind.
fn keys(c: &JobConfig) -> (String, String) {
    let coarse = format!("{}|{}", c.stage, c.adaptation.kind);
    let fine = format!(
        "{coarse}|{:?}|{}|{}",
        c.model.features, c.model.in_channels, c.train.batch_size
    );
    (fine, coarse)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Estimates the jobs of `plan` for which `runs` is true (same order as `plan.jobs`).
pub fn estimate(history: &[FinishedAttempt], plan: &Plan, runs: &[bool]) -> Estimate {
    let mut fine: HashMap<String, Vec<f64>> = HashMap::new();
    let mut coarse: HashMap<String, Vec<f64>> = HashMap::new();
    for a in history {
        // A config this build cannot read (an older layout) is no evidence.
        let Ok(c) = a.config() else {
            continue;
        };
        let rate = a.seconds / units(&c);
        let (f, k) = keys(&c);
        fine.entry(f).or_default().push(rate);
        coarse.entry(k).or_default().push(rate);
    }
    let fine: HashMap<String, f64> = fine.into_iter().map(|(k, v)| (k, median(v))).collect();
    let coarse: HashMap<String, f64> = coarse.into_iter().map(|(k, v)| (k, median(v))).collect();
    let mut out = Estimate::default();
    for (j, _) in plan.jobs.iter().zip(runs).filter(|(_, r)| **r) {
        let (f, k) = keys(&j.config);
        let secs = fine
            .get(&f)
            .or_else(|| coarse.get(&k))
            .map(|rate| rate * units(&j.config));
        for e in [
            &mut out.total,
            out.by_kind.entry(kind_label(j)).or_default(),
        ] {
            e.jobs += 1;
            if let Some(s) = secs {
                e.estimated += 1;
                *e.seconds.get_or_insert(0.0) += s;
            }
        }
    }
    out
}

/// `1h 02m`, `3m 20s`, `12s`: a duration for people.
pub fn format_seconds(s: f64) -> String {
    let s = s.round() as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m {:02}s", s / 60, s % 60),
        _ => format!("{}h {:02}m", s / 3600, (s % 3600) / 60),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::sweep::plan::{Fingerprints, plan};

    fn tiny_plan(pre_steps: usize, ft_steps: usize) -> Plan {
        let text = format!(
            "name: est
data: {{source: tbi, target: sah, folds: 2}}
model: {{features: [4, 8, 16]}}
pretrain: {{steps: {pre_steps}, batch: 2}}
finetune: {{steps: {ft_steps}, batch: 2}}
grid:
  - kind: none
  - kind: lora-c
    module: decoder
    rank: [2, 4]
"
        );
        let spec = crate::sweep::parse(&text, Path::new("/s/est.yaml")).unwrap();
        let fp = Fingerprints {
            code: "c".into(),
            source: "s".into(),
            target: "t".into(),
        };
        plan(&spec, &fp, Path::new("/r"))
    }

    fn finished(j: &PlannedJob, seconds: f64) -> FinishedAttempt {
        FinishedAttempt {
            stage: j.stage,
            kind: Some(j.config.adaptation.kind),
            config_json: serde_json::to_string(&j.config).unwrap(),
            seconds,
        }
    }

    #[test]
    fn no_history_estimates_nothing() {
        let p = tiny_plan(10, 5);
        let e = estimate(&[], &p, &vec![true; p.jobs.len()]);
        assert!(e.no_history());
        assert_eq!((e.total.jobs, e.total.estimated), (7, 0));
        assert_eq!(e.by_kind["lora-c"].jobs, 4);
    }

    #[test]
    fn history_scales_by_steps_and_counts_only_jobs_that_run() {
        let old = tiny_plan(10, 5);
        // Pretrain: 2 s per 10 steps; lora-c 1 s and 3 s per 5 steps (median 2 s); none 0.5 s.
        let hist = vec![
            finished(&old.jobs[0], 2.0),
            finished(&old.jobs[1], 0.5),
            finished(&old.jobs[3], 1.0),
            finished(&old.jobs[4], 3.0),
        ];
        // Twice the steps: twice the time per job; evaluate (`none`) does not scale.
        let new = tiny_plan(20, 10);
        let mut runs = vec![true; new.jobs.len()];
        runs[1] = false; // one `none` job already done
        let e = estimate(&hist, &new, &runs);
        assert_eq!(e.by_kind["pretrain"].seconds, Some(4.0));
        assert_eq!(e.by_kind["none"].seconds, Some(0.5));
        assert_eq!(e.by_kind["none"].jobs, 1);
        assert_eq!(e.by_kind["lora-c"].seconds, Some(4.0 * 4.0));
        assert_eq!(e.total.seconds, Some(4.0 + 0.5 + 16.0));
        assert_eq!((e.total.jobs, e.total.estimated), (6, 6));
    }

    #[test]
    fn durations_read_for_people() {
        assert_eq!(format_seconds(12.4), "12s");
        assert_eq!(format_seconds(200.0), "3m 20s");
        assert_eq!(format_seconds(3720.0), "1h 02m");
    }
}
