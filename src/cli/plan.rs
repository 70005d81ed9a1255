//! `ranksweep plan SPEC`: the exact jobs a run would make, with totals and, with `--explain`,
//! why each would run or is already done.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};

use crate::exec::estimate::{Estimate, estimate, format_seconds};
use crate::exec::sweep_run::{Decision, Reason, fingerprints, reasons};
use crate::sweep::plan::{Fingerprints, plan, totals};

#[derive(Args, Debug)]
pub struct PlanArgs {
    /// The sweep spec (YAML).
    pub spec: PathBuf,
    /// Print one JSON object (totals and every job).
    #[arg(long)]
    pub json: bool,
    /// List every job with the reason it would run (new, config-changed, code-changed,
    /// data-changed, needs-changed, pending, failed-before) or not (done, with the sweep and
    /// run for a job done in another sweep; blocked, with the dependency and its class).
    #[arg(long)]
    pub explain: bool,
    #[command(flatten)]
    pub store: super::store_args::StoreArgs,
}

pub fn run(args: PlanArgs) -> anyhow::Result<ExitCode> {
    let spec = crate::sweep::load(&args.spec)?;
    // Before the first run the phantom data may not exist yet: plan with an `absent` data
    // fingerprint (keys then change once the data is written).
    let fp = if spec.data.synthesize.is_some()
        && (!spec.data.source.join("dataset.json").exists()
            || !spec.data.target.join("dataset.json").exists())
    {
        Fingerprints {
            code: crate::version::code_fingerprint(),
            source: "absent".into(),
            target: "absent".into(),
        }
    } else {
        fingerprints(&spec)?
    };
    let plan = plan(&spec, &fp, &args.store.results);
    let store = args.store.open_if_exists()?;
    let sweep = match &store {
        Some(s) => s.sweep_id(&spec.name)?,
        None => None,
    };
    let why = match &store {
        Some(s) => reasons(s, sweep, &plan, false)?,
        None => plan
            .jobs
            .iter()
            .map(|j| Decision {
                key: j.key.clone(),
                reason: Reason::New,
                runs: true,
                blocked_by: None,
                done_in: None,
            })
            .collect(),
    };
    let totals = totals(&plan);
    let runs: Vec<bool> = why.iter().map(|d| d.runs).collect();
    let history = match &store {
        Some(s) => s.finished_attempts()?,
        None => Vec::new(),
    };
    let estimate = estimate(&history, &plan, &runs);
    if args.json {
        let jobs: Vec<serde_json::Value> = plan
            .jobs
            .iter()
            .zip(&why)
            .map(|(j, d)| {
                serde_json::json!({"key": j.key, "label": j.label, "stage": j.stage, "needs": j.needs,
                                   "reason": d.reason, "runs": d.runs, "blocked_by": d.blocked_by,
                                   "done_in": d.done_in, "config": j.config})
            })
            .collect();
        let out = serde_json::json!({"sweep": plan.sweep, "fingerprints": plan.fingerprints,
                                     "totals": totals, "estimate": estimate, "jobs": jobs});
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(ExitCode::SUCCESS);
    }
    let counts = crate::sweep::counts(&spec.cells);
    println!(
        "{}: {} cells, {} jobs ({} folds × {} seeds × cells, plus {} pretrain)",
        spec.name,
        counts.total,
        plan.jobs.len(),
        spec.data.folds,
        spec.seeds.len(),
        totals.get("pretrain").copied().unwrap_or(0)
    );
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED);
    t.set_header(["jobs by kind", "count"]);
    for (k, n) in &totals {
        t.add_row(vec![k.clone(), n.to_string()]);
    }
    println!("{t}");
    let count = |r: Reason| why.iter().filter(|d| !d.runs && d.reason == r).count();
    let runs = why.iter().filter(|d| d.runs).count();
    let (done, failed, blocked) = (
        count(Reason::Done),
        count(Reason::FailedBefore),
        count(Reason::Blocked),
    );
    let mut line = format!("{runs} would run, {done} already done");
    if failed > 0 {
        line += &format!(", {failed} failed before (run again with `run --rerun-failed`)");
    }
    if blocked > 0 {
        line += &format!(", {blocked} blocked by a failed dependency");
    }
    println!("{line}");
    print_estimate(&estimate);
    if args.explain {
        let mut t = Table::new();
        t.load_preset(UTF8_FULL_CONDENSED);
        t.set_header(["job", "label", "needs", "reason"]);
        for (j, d) in plan.jobs.iter().zip(&why) {
            t.add_row(vec![
                j.key.clone(),
                j.label.clone(),
                j.needs.join(","),
                d.explain(),
            ]);
        }
        println!("{t}");
    }
    Ok(ExitCode::SUCCESS)
}

/// `estimated job time: …` with one line per kind, or "no history".
fn print_estimate(e: &Estimate) {
    if e.total.jobs == 0 {
        println!("estimated job time: nothing to run");
        return;
    }
    let Some(total) = e.total.seconds else {
        println!("estimated job time: no history");
        return;
    };
    let left_out = e.total.jobs - e.total.estimated;
    let note = if left_out > 0 {
        format!(" ({left_out} job(s) without history left out)")
    } else {
        String::new()
    };
    println!(
        "estimated job time: {} for {} job(s){note}",
        format_seconds(total),
        e.total.estimated
    );
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED);
    t.set_header(["kind", "jobs to run", "estimated"]);
    for (k, ke) in &e.by_kind {
        let est = ke
            .seconds
            .map_or_else(|| "no history".to_string(), format_seconds);
        t.add_row(vec![k.clone(), ke.jobs.to_string(), est]);
    }
    println!("{t}");
}
