//! Run references: one command-line string naming what to report or compare, resolved to a
//! [`ReportInput`] and a [`Source`] that says where it came from.
//!
//! # Syntax
//! | reference | meaning |
//! |---|---|
//! | `SWEEP` | the sweep's current state: all its planned jobs, latest status (as `report SWEEP`) |
//! | `SWEEP@latest` | the jobs the sweep's latest run covered, as that run left them |
//! | `SWEEP@previous` | the same for the run before the latest |
//! | `SWEEP@12` | run 12 (a run id, as `status` lists them) |
//! | `PATH/FILE.db` | the only sweep of another database file (current state) |
//! | `PATH/FILE.db:SWEEP[@RUN]` | a sweep (or one of its runs) of another database file |
//! | `PATH/FILE.json` | a `ReportInput` JSON file |
//!
//! A file is recognized by its `/` (`./other.db` for one in the current folder). Sweep names
//! are letters, digits, `-`, `_` and `.`, so they never hold a `/`, `:` or `@`, and a sweep can
//! never be mistaken for a file. A name without `/` is always a sweep of the default database
//! (`--db`, or `<results>/ranksweep.db`).
//!
//! Key types: [`RunRef`] (parsed, pure), [`RunSel`], [`Resolved`]; [`resolve`] reads the store.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use super::compare::Source;
use super::from_store::{FromStoreError, load_input, load_run_input};
use super::{ReportError, ReportInput};
use crate::store::{RunId, RunRecord, Store, StoreError};

/// Which state of a sweep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunSel {
    /// All planned jobs, latest status.
    Current,
    Latest,
    Previous,
    /// A run id.
    Id(i64),
}

/// A parsed run reference (see the module docs for the syntax).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunRef {
    /// A `ReportInput` JSON file.
    Json(PathBuf),
    /// A sweep of a database: the default one (`db: None`, then `sweep` is set) or a file
    /// (`sweep: None`: its only sweep).
    Store {
        db: Option<PathBuf>,
        sweep: Option<String>,
        run: RunSel,
    },
}

/// What the reference syntax expects, repeated in every syntax error.
pub const EXPECTED: &str = "expected SWEEP, SWEEP@latest, SWEEP@previous, SWEEP@RUN_ID, \
     or a file with a `/`: ./other.db, ./other.db:SWEEP[@RUN], ./input.json";

/// Why a reference cannot be parsed or resolved; each message names what was given.
#[derive(Debug, thiserror::Error)]
pub enum RunRefError {
    #[error("run reference `{input}`: {reason}; {EXPECTED}")]
    Syntax { input: String, reason: String },
    #[error("{}: no such database file{hint}", path.display())]
    NoDatabase { path: PathBuf, hint: &'static str },
    #[error("no sweep named `{sweep}` in {}; {available}", db.display())]
    UnknownSweep {
        sweep: String,
        db: PathBuf,
        available: String,
    },
    #[error("{} holds no sweep", db.display())]
    NoSweep { db: PathBuf },
    #[error("{} holds several sweeps ({available}); name one: {}:SWEEP", db.display(), db.display())]
    SeveralSweeps { db: PathBuf, available: String },
    #[error("`{reference}`: sweep `{sweep}` has no recorded run in {}", db.display())]
    NoRun {
        reference: String,
        sweep: String,
        db: PathBuf,
    },
    #[error(
        "`{reference}`: sweep `{sweep}` has only one run ({latest}), so there is no previous run"
    )]
    NoPrevious {
        reference: String,
        sweep: String,
        latest: i64,
    },
    #[error("`{reference}`: sweep `{sweep}` has no run {id}; its runs: {available}")]
    UnknownRun {
        reference: String,
        sweep: String,
        id: i64,
        available: String,
    },
    #[error(
        "`{reference}`: run {id} of sweep `{sweep}` records no jobs (it predates run tracking); use `{sweep}` for the sweep's current state"
    )]
    Untracked {
        reference: String,
        sweep: String,
        id: i64,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    FromStore(#[from] FromStoreError),
    #[error(transparent)]
    Report(#[from] ReportError),
}

fn syntax(input: &str, reason: impl Into<String>) -> RunRefError {
    RunRefError::Syntax {
        input: input.to_string(),
        reason: reason.into(),
    }
}

/// A sweep name as `spec.name` allows it (letters, digits, `-`, `_`, `.`; not starting `.`).
fn valid_sweep(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Parses `SWEEP[@RUN]`.
fn parse_sweep_run(input: &str, text: &str) -> Result<(String, RunSel), RunRefError> {
    let (sweep, run) = match text.split_once('@') {
        Some((s, r)) => (s, Some(r)),
        None => (text, None),
    };
    if !valid_sweep(sweep) {
        return Err(syntax(
            input,
            if sweep.is_empty() {
                "the sweep name is empty".to_string()
            } else {
                format!(
                    "`{sweep}` is not a sweep name (letters, digits, `-`, `_`, `.`; a database file needs a `/`)"
                )
            },
        ));
    }
    let run = match run {
        None => RunSel::Current,
        Some("latest") => RunSel::Latest,
        Some("previous") => RunSel::Previous,
        Some(r) => match r.parse::<i64>() {
            Ok(id) if id > 0 && r.bytes().all(|b| b.is_ascii_digit()) => RunSel::Id(id),
            _ => {
                return Err(syntax(
                    input,
                    format!(
                        "`@{r}`: expected `@latest`, `@previous` or a run id (a positive integer)"
                    ),
                ));
            }
        },
    };
    Ok((sweep.to_string(), run))
}

impl FromStr for RunRef {
    type Err = RunRefError;

    fn from_str(input: &str) -> Result<RunRef, RunRefError> {
        if input.is_empty() {
            return Err(syntax(input, "it is empty"));
        }
        let Some(slash) = input.rfind('/') else {
            let (sweep, run) = parse_sweep_run(input, input)?;
            return Ok(RunRef::Store {
                db: None,
                sweep: Some(sweep),
                run,
            });
        };
        // `:` splits only in the file name, so folders may hold one.
        let (file, rest) = match input[slash..].find(':') {
            Some(i) => (&input[..slash + i], Some(&input[slash + i + 1..])),
            None => (input, None),
        };
        if file.ends_with('/') {
            return Err(syntax(input, format!("`{file}` is a folder, not a file")));
        }
        let is_json = file.ends_with(".json");
        match rest {
            None if is_json => Ok(RunRef::Json(PathBuf::from(file))),
            None => Ok(RunRef::Store {
                db: Some(PathBuf::from(file)),
                sweep: None,
                run: RunSel::Current,
            }),
            Some(_) if is_json => Err(syntax(
                input,
                "a ReportInput JSON file holds one sweep; drop the `:…`",
            )),
            Some(text) => {
                let (sweep, run) = parse_sweep_run(input, text)?;
                Ok(RunRef::Store {
                    db: Some(PathBuf::from(file)),
                    sweep: Some(sweep),
                    run,
                })
            }
        }
    }
}

/// A resolved reference: the report input and where it came from.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub input: ReportInput,
    pub source: Source,
}

impl Resolved {
    /// The run this resolved to (None for a sweep's current state or a JSON file).
    pub fn run(&self) -> Option<i64> {
        self.source.run
    }
}

fn list_runs(runs: &[RunRecord]) -> String {
    const SHOWN: usize = 10;
    let mut parts: Vec<String> = runs
        .iter()
        .rev()
        .take(SHOWN)
        .rev()
        .map(|r| format!("{} ({})", r.id.0, r.started_at))
        .collect();
    if runs.len() > SHOWN {
        parts.insert(0, format!("… {} older", runs.len() - SHOWN));
    }
    parts.join(", ")
}

fn list_sweeps(names: &[String]) -> String {
    if names.is_empty() {
        "it holds no sweep".into()
    } else {
        format!("its sweeps: {}", names.join(", "))
    }
}

/// Resolves `reference` (as typed: `text`) against the default database `default_db` (used
/// only by references without a file). Never creates a database file.
pub fn resolve(reference: &RunRef, text: &str, default_db: &Path) -> Result<Resolved, RunRefError> {
    let (db, sweep, run) = match reference {
        RunRef::Json(path) => {
            let input = ReportInput::from_json_file(path)?;
            let source = Source {
                reference: text.to_string(),
                database: None,
                sweep: input.sweep.clone(),
                run: None,
                started_at: None,
                ended_at: None,
                code_version: None,
                exit_code: None,
            };
            return Ok(Resolved { input, source });
        }
        RunRef::Store { db, sweep, run } => (db, sweep, *run),
    };
    let (db_path, hint) = match db {
        Some(p) => (p.clone(), ""),
        None => (
            default_db.to_path_buf(),
            " (run a sweep first, or pass --db or --results)",
        ),
    };
    // Store::open would create a missing file: check first.
    if !db_path.is_file() {
        return Err(RunRefError::NoDatabase {
            path: db_path,
            hint,
        });
    }
    let store = Store::open(&db_path)?;
    let names = store.sweep_names()?;
    let sweep = match sweep {
        Some(s) => s.clone(),
        None => match names.as_slice() {
            [] => return Err(RunRefError::NoSweep { db: db_path }),
            [one] => one.clone(),
            _ => {
                return Err(RunRefError::SeveralSweeps {
                    db: db_path,
                    available: names.join(", "),
                });
            }
        },
    };
    let Some(sweep_id) = store.sweep_id(&sweep)? else {
        let mut available = list_sweeps(&names);
        if db.is_none() && Path::new(&sweep).is_file() {
            available.push_str(&format!("; to read the file `{sweep}`, write ./{sweep}"));
        }
        return Err(RunRefError::UnknownSweep {
            sweep,
            db: db_path,
            available,
        });
    };
    let mut source = Source {
        reference: text.to_string(),
        database: Some(db_path.display().to_string()),
        sweep: sweep.clone(),
        run: None,
        started_at: None,
        ended_at: None,
        code_version: None,
        exit_code: None,
    };
    if run == RunSel::Current {
        let input = load_input(&store, &sweep)?;
        return Ok(Resolved { input, source });
    }
    let runs = store.runs(sweep_id)?;
    let chosen = match run {
        RunSel::Current => unreachable!("handled above"),
        RunSel::Latest => runs.last(),
        RunSel::Previous => {
            if runs.len() == 1 {
                return Err(RunRefError::NoPrevious {
                    reference: text.to_string(),
                    sweep,
                    latest: runs[0].id.0,
                });
            }
            runs.len().checked_sub(2).map(|i| &runs[i])
        }
        RunSel::Id(id) => {
            let found = runs.iter().find(|r| r.id == RunId(id));
            if found.is_none() && !runs.is_empty() {
                return Err(RunRefError::UnknownRun {
                    reference: text.to_string(),
                    sweep,
                    id,
                    available: list_runs(&runs),
                });
            }
            found
        }
    };
    let Some(chosen) = chosen else {
        return Err(RunRefError::NoRun {
            reference: text.to_string(),
            sweep,
            db: db_path,
        });
    };
    if chosen.jobs == 0 {
        return Err(RunRefError::Untracked {
            reference: text.to_string(),
            sweep,
            id: chosen.id.0,
        });
    }
    source.run = Some(chosen.id.0);
    source.started_at = Some(chosen.started_at.clone());
    source.ended_at = chosen.ended_at.clone();
    source.code_version = Some(chosen.code_version.clone());
    source.exit_code = chosen.exit_code;
    let input = load_run_input(&store, &sweep, chosen.id)?;
    Ok(Resolved { input, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(db: Option<&str>, sweep: Option<&str>, run: RunSel) -> RunRef {
        RunRef::Store {
            db: db.map(PathBuf::from),
            sweep: sweep.map(String::from),
            run,
        }
    }

    #[test]
    fn sweeps_and_runs_parse() {
        let p = |s: &str| s.parse::<RunRef>().unwrap();
        assert_eq!(p("nightly"), store(None, Some("nightly"), RunSel::Current));
        assert_eq!(
            p("nightly@latest"),
            store(None, Some("nightly"), RunSel::Latest)
        );
        assert_eq!(
            p("night.ly-2_x@previous"),
            store(None, Some("night.ly-2_x"), RunSel::Previous)
        );
        assert_eq!(
            p("nightly@12"),
            store(None, Some("nightly"), RunSel::Id(12))
        );
        // A name with a dot is still a sweep: files need a `/`.
        assert_eq!(p("old.db"), store(None, Some("old.db"), RunSel::Current));
        assert_eq!(p("a.json"), store(None, Some("a.json"), RunSel::Current));
    }

    #[test]
    fn files_parse() {
        let p = |s: &str| s.parse::<RunRef>().unwrap();
        assert_eq!(
            p("./other.db"),
            store(Some("./other.db"), None, RunSel::Current)
        );
        assert_eq!(
            p("/x/y.db:nightly"),
            store(Some("/x/y.db"), Some("nightly"), RunSel::Current)
        );
        assert_eq!(
            p("../old/ranksweep.db:nightly@3"),
            store(Some("../old/ranksweep.db"), Some("nightly"), RunSel::Id(3))
        );
        // A `:` in a folder name is part of the path.
        assert_eq!(
            p("/mnt/a:b/r.db:s@latest"),
            store(Some("/mnt/a:b/r.db"), Some("s"), RunSel::Latest)
        );
        assert_eq!(
            p("/mnt/a:b/r.db"),
            store(Some("/mnt/a:b/r.db"), None, RunSel::Current)
        );
        assert_eq!(p("./a.json"), RunRef::Json("./a.json".into()));
        assert_eq!(p("/tmp/x/a.json"), RunRef::Json("/tmp/x/a.json".into()));
    }

    #[test]
    fn bad_references_say_what_was_given_and_what_is_expected() {
        let e = |s: &str| s.parse::<RunRef>().unwrap_err().to_string();
        for (input, needle) in [
            ("", "it is empty"),
            (
                "nightly@",
                "`@`: expected `@latest`, `@previous` or a run id",
            ),
            ("nightly@last", "`@last`: expected"),
            ("nightly@0", "`@0`: expected"),
            ("nightly@-3", "`@-3`: expected"),
            ("nightly@+3", "`@+3`: expected"),
            ("@latest", "the sweep name is empty"),
            ("a:b", "`a:b` is not a sweep name"),
            (".hidden", "`.hidden` is not a sweep name"),
            ("./x.db:", "the sweep name is empty"),
            ("./x.db:a b", "`a b` is not a sweep name"),
            ("./x.json:s", "drop the `:…`"),
            ("dir/", "is a folder"),
        ] {
            let msg = e(input);
            assert!(
                msg.starts_with(&format!("run reference `{input}`: ")) && msg.contains(needle),
                "{input}: {msg}"
            );
            assert!(msg.contains("SWEEP@previous"), "{msg}");
        }
    }
}
