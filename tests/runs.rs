//! Run references and `compare` from the database, through the real binary: a tiny sweep run
//! twice, `SWEEP@latest` / `SWEEP@previous`, a run's report, a planted regression in a copy of
//! the database, and the usage errors (exit 2).

use std::path::Path;

use crate::util::{ranksweep, stderr, stdout};

/// Two cells (none, lora-c r2) × 2 folds on 32×32×8 phantoms, a few steps each.
const SPEC: &str = "\
name: tiny
data: {source: tbi, target: sah, folds: 2, target_labels: [1]}
model: {features: [4, 8, 16], in_channels: 1, views: [axial]}
pretrain: {steps: 4, lr: 1.0e-3, batch: 2, val_every: 2, select: last}
finetune: {steps: 3, lr: 1.0e-3, batch: 2, val_every: 3, select: last}
grid:
  - kind: none
  - kind: lora-c
    module: decoder
    rank: [2]
seeds: [0]
resources: {timeout: 5m, no_progress: 2m, retries: 0, threads: 1}
";

fn ok(dir: &Path, args: &[&str]) -> String {
    let out = ranksweep(dir, args);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{args:?}: {}{}",
        stdout(&out),
        stderr(&out)
    );
    stdout(&out)
}

/// Runs `args` and expects exit 2 with every needle in stderr.
fn usage_error(dir: &Path, args: &[&str], needles: &[&str]) {
    let out = ranksweep(dir, args);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
    for n in needles {
        assert!(err.contains(n), "{args:?}: `{n}` not in: {err}");
    }
}

fn setup(dir: &Path) {
    for (cohort, out, seed) in [("tbi", "tbi", "1"), ("sah", "sah", "2")] {
        ok(
            dir,
            &[
                "synth",
                "--cohort",
                cohort,
                "--cases",
                "4",
                "--seed",
                seed,
                "--out",
                out,
                "--shape",
                "32,32,8",
                "--spacing",
                "6,6,6",
            ],
        );
    }
    std::fs::write(dir.join("tiny.yaml"), SPEC).unwrap();
}

/// The `run` line of a Markdown header table: `| run | 1 | 2 |`.
fn header_row<'a>(md: &'a str, name: &str) -> &'a str {
    md.lines()
        .find(|l| l.starts_with(&format!("| {name} |")))
        .unwrap_or_else(|| panic!("no `{name}` row in {md}"))
}

#[test]
fn two_runs_resolve_compare_and_report_and_a_planted_regression_fails() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    setup(dir);
    ok(dir, &["run", "tiny.yaml"]);

    // One run: `@previous` has nothing to point at.
    usage_error(
        dir,
        &["compare", "tiny@previous", "tiny@latest"],
        &["`tiny@previous`", "only one run (1)", "no previous run"],
    );
    ok(dir, &["run", "tiny.yaml"]);

    let md = ok(dir, &["compare", "tiny@previous", "tiny@latest"]);
    assert!(
        md.contains("no regression") && md.contains("**No regression.**"),
        "{md}"
    );
    assert_eq!(header_row(&md, "run"), "| run | 1 | 2 |");
    assert!(header_row(&md, "reference").contains("tiny@previous | tiny@latest"));
    assert!(md.contains("| lora-c decoder r2 α2 |"), "{md}");
    let json: serde_json::Value = serde_json::from_str(&ok(
        dir,
        &[
            "compare",
            "tiny@previous",
            "tiny@latest",
            "--format",
            "json",
        ],
    ))
    .unwrap();
    assert_eq!(json["regressed"], false);
    assert_eq!(json["baseline_source"]["run"], 1);
    assert_eq!(json["current_source"]["run"], 2);
    // Run 2 did nothing new: every job it covered was cached and shows run 1's results.
    assert_eq!(json["cells"].as_array().unwrap().len(), 2);
    for c in json["cells"].as_array().unwrap() {
        assert_eq!(c["delta"], 0.0, "{c}");
        assert!(c["n_paired"].as_u64().unwrap() > 0, "{c}");
    }
    // Run ids work too, and `status` lists both runs.
    ok(dir, &["compare", "tiny@1", "tiny@2"]);
    let status = ok(dir, &["status", "tiny"]);
    assert!(
        status.contains("recent runs (`tiny@ID`)") && status.contains("5 jobs (5 cached)"),
        "{status}"
    );

    // A run's report goes to its own folder.
    ok(dir, &["report", "tiny@latest", "--format", "md", "--quiet"]);
    let report = std::fs::read_to_string(dir.join("results/tiny/runs/2/report/report.md")).unwrap();
    assert!(report.contains("lora-c decoder r2 α2"), "{report}");

    // Plant a regression in a copy of the database: lora-c loses 0.3 Dice on every case.
    {
        let db = rusqlite::Connection::open(dir.join("results/ranksweep.db")).unwrap();
        let copy = dir.join("worse.db");
        db.execute("VACUUM INTO ?1", [copy.to_str().unwrap()])
            .unwrap();
        let worse = rusqlite::Connection::open(&copy).unwrap();
        let n = worse
            .execute(
                "UPDATE case_metrics SET dice = dice - 0.3 WHERE dice IS NOT NULL AND job IN \
                 (SELECT id FROM jobs WHERE kind = 'lora-c')",
                [],
            )
            .unwrap();
        assert!(n > 0, "no lora-c case has a defined Dice");
    }
    let out = ranksweep(dir, &["compare", "tiny@latest", "./worse.db:tiny@latest"]);
    let md = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{md}{}", stderr(&out));
    assert!(
        md.contains("REGRESSION") && md.contains("## Regressions (1)"),
        "{md}"
    );
    let regressions = md.split("## Regressions").nth(1).unwrap();
    let first = regressions.lines().nth(2).unwrap();
    assert!(
        first.starts_with("- lora-c decoder r2 α2: Dice") && first.contains("Δ -0.300"),
        "{first}"
    );
    assert!(header_row(&md, "database").contains("./worse.db"), "{md}");
    // The same file's only sweep, current state: the same regression.
    let out = ranksweep(dir, &["compare", "tiny", "./worse.db"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));

    usage_error(
        dir,
        &["compare", "nope@latest", "tiny@latest"],
        &["no sweep named `nope`", "its sweeps: tiny"],
    );
    // A bare name is always a sweep; the error points at the file form.
    std::fs::write(dir.join("a.json"), "{}").unwrap();
    usage_error(
        dir,
        &["compare", "a.json", "tiny"],
        &[
            "no sweep named `a.json`",
            "to read the file `a.json`, write ./a.json",
        ],
    );
    usage_error(
        dir,
        &["compare", "tiny@9", "tiny@latest"],
        &["`tiny@9`", "has no run 9", "its runs: 1 (", "2 ("],
    );
    usage_error(
        dir,
        &["compare", "./missing.db:tiny", "tiny"],
        &["./missing.db: no such database file"],
    );
    usage_error(
        dir,
        &["report", "tiny@last"],
        &["run reference `tiny@last`", "`@last`: expected `@latest`"],
    );
}

#[test]
fn references_without_a_database_are_usage_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    usage_error(
        dir,
        &["compare", "tiny@previous", "tiny@latest"],
        &["results/ranksweep.db: no such database file", "--db"],
    );
    // A bare name is a sweep, never a file, even when a file of that name exists.
    std::fs::write(dir.join("a.json"), "{}").unwrap();
    usage_error(
        dir,
        &["compare", "a.json", "tiny", "--db", "x.db"],
        &["x.db: no such database file"],
    );
    // Nothing was created.
    assert!(!dir.join("x.db").exists() && !dir.join("results").exists());
}
