//! `ranksweep ingest DIR --sweep NAME`: record result files made elsewhere (a cluster's shared
//! file system) in the database. Idempotent: ingesting twice gives the same database. Each
//! result is checked against its job first; exit 1 when a file is unreadable or refused (the
//! others are ingested all the same).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

#[derive(Args, Debug)]
pub struct IngestArgs {
    /// A folder searched recursively for `<job key>/result.json`.
    pub dir: PathBuf,
    /// The sweep the results belong to (planned by `run --dry-run` or `submit`).
    #[arg(long)]
    pub sweep: String,
    #[command(flatten)]
    pub store: super::store_args::StoreArgs,
}

pub fn run(args: IngestArgs) -> anyhow::Result<ExitCode> {
    let db = args.store.db_path();
    let mut store = args.store.open_existing()?;
    let sweep = store
        .sweep_id(&args.sweep)?
        .ok_or_else(|| anyhow::anyhow!("no sweep named `{}` in {}", args.sweep, db.display()))?;
    let s = crate::exec::ingest::ingest_tree(&mut store, sweep, &args.dir)?;
    println!(
        "ingested {} result(s); {} unknown job(s); {} unreadable; {} refused",
        s.ingested,
        s.unknown.len(),
        s.errors.len(),
        s.refused.len()
    );
    for e in s.errors.iter().chain(&s.refused) {
        eprintln!("ranksweep: {e}");
    }
    Ok(if s.errors.is_empty() && s.refused.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
