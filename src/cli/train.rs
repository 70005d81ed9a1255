//! `ranksweep train JOB_FILE`: the worker's job for a person — a progress bar while it runs and
//! a table of per-case metrics at the end. Same exit codes as `worker`.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use comfy_table::{Cell, CellAlignment, Table, presets::UTF8_FULL_CONDENSED};
use indicatif::{ProgressBar, ProgressStyle};

use crate::data::preprocess::View;
use crate::metrics::MeanSd;
use crate::train::job_run::RESULT_FILE;
use crate::train::signal::install_stop_handler;
use crate::train::{Event, JobConfig, JobResult, run_job};

#[derive(Args, Debug)]
pub struct TrainArgs {
    /// The job file (YAML or JSON). Relative paths in it are relative to its folder.
    pub job_file: PathBuf,
}

pub fn run(args: TrainArgs) -> anyhow::Result<ExitCode> {
    let stop = install_stop_handler()?;
    let mut job = match JobConfig::from_file(&args.job_file) {
        Ok(job) => job,
        Err(err) => {
            let _ = writeln!(std::io::stderr(), "ranksweep: {err}");
            return Ok(ExitCode::from(err.class().code()));
        }
    };
    // The same choice as a worker's: a GPU job never trains on the CPU.
    if let Err(e) = crate::train::job_run::choose_device(&mut job, None) {
        eprintln!("ranksweep: `device`: {e}");
        return Ok(ExitCode::from(if e.is_usage() {
            super::EXIT_USAGE
        } else {
            crate::train::ExitClass::Failed.code()
        }));
    }
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{msg:<28} [{bar:30}] {pos}/{len} {elapsed} ETA {eta}")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    let mut views: Vec<View> = Vec::new();
    let mut steps = 0usize;
    let progress = bar.clone();
    let mut emit = move |e: &Event| match e {
        Event::Start {
            views: v,
            steps: s,
            train_cases,
            test_cases,
            ..
        } => {
            views = v.clone();
            steps = *s;
            progress.println(format!(
                "{} view(s), {train_cases} training case(s), {test_cases} test case(s)",
                v.len()
            ));
            progress.set_length((steps * views.len()) as u64);
        }
        Event::Step {
            view, step, loss, ..
        } => {
            let vi = views.iter().position(|v| v == view).unwrap_or(0);
            progress.set_position((vi * steps + step) as u64);
            progress.set_message(format!("{view} loss {loss:.4}"));
        }
        Event::Val {
            view,
            step,
            dice,
            best,
        } => progress.println(format!(
            "{view} step {step}: validation Dice {}{}",
            dice.map_or("n/a".to_string(), |d| format!("{d:.4}")),
            if *best { " (best)" } else { "" }
        )),
        Event::Checkpoint { view, path } => {
            progress.println(format!("{view}: wrote {}", path.display()))
        }
        Event::Case {
            case, index, count, ..
        } => {
            if *index == 0 {
                progress.reset();
                progress.set_length(*count as u64);
            }
            progress.set_position((*index + 1) as u64);
            progress.set_message(format!("predict {case}"));
        }
        Event::End { .. } => {}
    };
    let result = run_job(&job, stop, &mut emit);
    bar.finish_and_clear();
    match result {
        Ok(r) => {
            print_summary(&r);
            println!("wrote {}", job.output.join(RESULT_FILE).display());
            Ok(ExitCode::SUCCESS)
        }
        Err(err) => {
            let class = err.class();
            let _ = writeln!(std::io::stderr(), "ranksweep: {err} (class {class})");
            Ok(ExitCode::from(class.code()))
        }
    }
}

fn num(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.3}")
    } else {
        "–".to_string()
    }
}

fn mean_sd(m: &MeanSd) -> String {
    if m.n == 0 {
        "–".to_string()
    } else if m.sd.is_finite() {
        format!("{:.3} ± {:.3}", m.mean, m.sd)
    } else {
        format!("{:.3}", m.mean)
    }
}

fn print_summary(r: &JobResult) {
    let mut views = Table::new();
    views.load_preset(UTF8_FULL_CONDENSED).set_header([
        "view",
        "trainable / total params",
        "steps",
        "kept step",
        "final loss",
        "median step s",
    ]);
    for v in &r.views {
        views.add_row([
            Cell::new(v.view),
            Cell::new(format!("{} / {}", v.trainable_params, v.total_params)),
            Cell::new(v.steps),
            Cell::new(v.selected_step),
            Cell::new(v.final_loss.map_or("–".into(), |l| format!("{l:.4}"))),
            Cell::new(
                v.step_times
                    .map_or("–".into(), |t| format!("{:.4}", t.median_s)),
            ),
        ]);
    }
    println!("{views}");
    let Some(ev) = &r.evaluation else {
        println!("no test cases (no fold): nothing measured");
        return;
    };
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED)
        .set_header(["case", "Dice", "truth mL", "pred mL", "HD95 mm", "stratum"]);
    for c in &ev.cases {
        let m = &c.metrics;
        t.add_row([
            Cell::new(&c.case),
            Cell::new(num(m.dice)).set_alignment(CellAlignment::Right),
            Cell::new(num(m.truth_ml)).set_alignment(CellAlignment::Right),
            Cell::new(num(m.pred_ml)).set_alignment(CellAlignment::Right),
            Cell::new(num(m.hd95_mm)).set_alignment(CellAlignment::Right),
            Cell::new(&m.stratum),
        ]);
    }
    let s = &ev.summary;
    t.add_row([
        Cell::new(format!("mean ± SD (n={})", s.n_cases)),
        Cell::new(mean_sd(&s.dice)),
        Cell::new(mean_sd(&s.truth_ml)),
        Cell::new(mean_sd(&s.pred_ml)),
        Cell::new(mean_sd(&s.hd95_mm)),
        Cell::new(""),
    ]);
    println!("{t}");
    println!(
        "{} {}: {:.1} s ({:.1} s training, {:.1} s predicting), peak RSS {}",
        r.stage,
        r.device,
        r.durations.total_s,
        r.durations.train_s,
        r.durations.predict_s,
        r.peak_rss_mb.map_or("–".into(), |m| format!("{m:.0} MB"))
    );
}
