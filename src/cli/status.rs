//! `ranksweep status SWEEP`: per-cell completeness, running jobs, failures, recent runs; for a
//! sweep sent to SLURM (`submit`), each submitted job's SLURM state reconciled with its result
//! file.

use std::process::ExitCode;

use clap::Args;
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};

use crate::exec::slurm;

#[derive(Args, Debug)]
pub struct StatusArgs {
    /// The sweep's name.
    pub sweep: String,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub store: super::store_args::StoreArgs,
}

pub fn run(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let db = args.store.db_path();
    let store = args.store.open_existing()?;
    let name = args.sweep.clone();
    let sweep = store
        .sweep_id(&name)?
        .ok_or_else(|| anyhow::anyhow!("no sweep named `{name}` in {}", db.display()))?;
    let cells = store.cell_status(sweep)?;
    let runs = recent_runs(&store, sweep)?;
    let counts = store.status_counts(sweep)?;
    let ran_on = store.ran_on_counts(sweep)?;
    let failures: Vec<(String, String, String)> = store
        .jobs(sweep)?
        .into_iter()
        .filter(|j| j.status == crate::store::JobStatus::Failed)
        .map(|j| {
            let last = store
                .attempts(sweep, &j.key)
                .ok()
                .and_then(|a| a.into_iter().last());
            let class = last
                .as_ref()
                .and_then(|a| a.class)
                .map(|c| c.to_string())
                .unwrap_or_default();
            let err = last.and_then(|a| a.error).unwrap_or_default();
            (
                j.key,
                class,
                err.lines().last().unwrap_or_default().to_string(),
            )
        })
        .collect();
    let blocked = crate::exec::sweep_run::blocked_in_store(&store, sweep)?;
    let slurm = slurm_views(&args.store.results, &name)?;
    if args.json {
        let cells: Vec<serde_json::Value> = cells
            .iter()
            .map(|c| serde_json::json!({"cell": c.cell.as_str(), "label": c.label, "jobs": c.jobs, "done": c.done,
                                       "failed": c.failed, "running": c.running, "pending": c.pending,
                                       "complete": c.is_complete()}))
            .collect();
        let failures: Vec<_> = failures
            .iter()
            .map(|(k, c, e)| serde_json::json!({"job": k, "class": c, "error": e}))
            .collect();
        let blocked: Vec<_> = blocked
            .iter()
            .map(|(k, b)| serde_json::json!({"job": k, "blocked_by": b}))
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({"sweep": name, "pending": counts.pending,
                "running": counts.running, "done": counts.done, "failed": counts.failed,
                "cells": cells, "failures": failures, "blocked": blocked, "runs": runs_json(&runs),
                "ran_on": ran_on.iter().map(|(r, n)| serde_json::json!({"ran_on": r, "jobs": n})).collect::<Vec<_>>(),
                "slurm": slurm.as_ref().map(|(views, source)| serde_json::json!({"source": source, "tasks": views}))})
            )?
        );
    } else {
        let mut t = Table::new();
        t.load_preset(UTF8_FULL_CONDENSED);
        t.set_header(["cell", "done / jobs", "running", "failed", "complete"]);
        for c in &cells {
            t.add_row(vec![
                c.label.clone(),
                format!("{} / {}", c.done, c.jobs),
                c.running.to_string(),
                c.failed.to_string(),
                if c.is_complete() {
                    "yes".into()
                } else {
                    "no".into()
                },
            ]);
        }
        println!("{t}");
        println!(
            "{name}: {} done, {} running, {} pending ({} blocked), {} failed",
            counts.done,
            counts.running,
            counts.pending,
            blocked.len(),
            counts.failed
        );
        for (what, n) in &ran_on {
            println!("ran on {what}: {n} job(s)");
        }
        for (k, c, e) in &failures {
            println!("failed {k} ({c}): {e}");
        }
        for (k, b) in &blocked {
            println!(
                "blocked {k}: needs {} ({}), which is {}",
                b.job, b.label, b.class
            );
        }
        if let Some((views, _)) = &slurm {
            print_slurm(views);
        }
        print_runs(&name, &runs);
    }
    let slurm_problems = slurm
        .as_ref()
        .is_some_and(|(views, _)| views.iter().any(|v| v.verdict.is_problem()));
    Ok(
        if counts.failed > 0 || !blocked.is_empty() || slurm_problems {
            ExitCode::from(1)
        } else {
            ExitCode::SUCCESS
        },
    )
}

/// The SLURM section: only for a sweep with submissions under `<results>/<sweep>/submissions`.
fn slurm_views(
    results: &std::path::Path,
    sweep: &str,
) -> anyhow::Result<Option<(Vec<slurm::TaskView>, slurm::StateSource)>> {
    let dir = crate::sweep::plan::sweep_dir(results, sweep);
    if !dir.join("submissions").is_dir() {
        return Ok(None);
    }
    // SLURM may be unreachable from here (another host, daemons down): the database part of
    // the status still stands, so say why and go on.
    match slurm::slurm_status(&dir) {
        Ok(v) => Ok(Some(v)),
        Err(e) => {
            eprintln!("ranksweep: cannot reconcile {sweep} with SLURM: {e}");
            Ok(None)
        }
    }
}

/// Counts per verdict, then one line per job that ended without a result or was never sent.
fn print_slurm(views: &[slurm::TaskView]) {
    let counts = slurm::reconcile::verdict_counts(views);
    let parts: Vec<String> = counts.iter().map(|(v, n)| format!("{n} {v}")).collect();
    println!(
        "slurm: {} submitted job(s): {}",
        views.len(),
        parts.join(", ")
    );
    for v in views
        .iter()
        .filter(|v| v.verdict.is_problem() || v.verdict == slurm::Verdict::NotSubmitted)
    {
        let state = v.slurm_state.as_deref().unwrap_or("unknown to SLURM");
        let exit = v
            .exit
            .map(|e| format!(", exit {}:{}", e.code, e.signal))
            .unwrap_or_default();
        println!(
            "{} {} (task {} of submission {}, {state}{exit}): no result",
            v.verdict,
            v.job,
            v.slurm_name(),
            v.submission
        );
    }
}

/// How many of a sweep's runs `status` lists (newest last).
const RECENT_RUNS: usize = 5;

fn recent_runs(
    store: &crate::store::Store,
    sweep: crate::store::SweepId,
) -> anyhow::Result<Vec<crate::store::RunRecord>> {
    let mut runs = store.runs(sweep)?;
    let skip = runs.len().saturating_sub(RECENT_RUNS);
    runs.drain(..skip);
    Ok(runs)
}

fn runs_json(runs: &[crate::store::RunRecord]) -> Vec<serde_json::Value> {
    runs.iter()
        .map(|r| {
            serde_json::json!({"run": r.id.0, "started_at": r.started_at, "ended_at": r.ended_at,
                               "code_version": r.code_version, "host": r.host,
                               "exit_code": r.exit_code, "jobs": r.jobs, "cached": r.cached,
                               "killed": r.ended_at.is_some() && r.exit_code.is_none()})
        })
        .collect()
}

/// One line per recent run: the id to use as `SWEEP@ID`.
fn print_runs(name: &str, runs: &[crate::store::RunRecord]) {
    if runs.is_empty() {
        return;
    }
    println!("recent runs (`{name}@ID`):");
    for r in runs {
        let exit = match (&r.ended_at, r.exit_code) {
            (Some(_), Some(c)) => format!("exit {c}"),
            // Ended by a later run that found its process gone.
            (Some(_), None) => "killed".into(),
            (None, _) => "not ended".into(),
        };
        println!(
            "  {:>4}  {}  {}  {} jobs ({} cached)  code {}",
            r.id.0, r.started_at, exit, r.jobs, r.cached, r.code_version
        );
    }
}
