//! `--results` / `--db`: where a sweep's files and its database live, shared by every command
//! that reads or writes the store.

use std::path::PathBuf;

use clap::Args;

use crate::store::Store;

#[derive(Args, Debug, Clone)]
pub struct StoreArgs {
    /// Results root: job folders, reports and (by default) the database `ranksweep.db`.
    #[arg(long, default_value = "results")]
    pub results: PathBuf,
    /// The SQLite database (default `<results>/ranksweep.db`; keep it on a local disk).
    #[arg(long)]
    pub db: Option<PathBuf>,
}

impl StoreArgs {
    pub fn db_path(&self) -> PathBuf {
        self.db
            .clone()
            .unwrap_or_else(|| self.results.join("ranksweep.db"))
    }

    /// Opens the database if it exists.
    pub fn open_if_exists(&self) -> anyhow::Result<Option<Store>> {
        let db = self.db_path();
        Ok(if db.exists() {
            Some(Store::open(&db)?)
        } else {
            None
        })
    }

    /// Opens the database, which must exist.
    pub fn open_existing(&self) -> anyhow::Result<Store> {
        let db = self.db_path();
        self.open_if_exists()?.ok_or_else(|| {
            anyhow::anyhow!(
                "{}: no database (run a sweep first, or pass --db)",
                db.display()
            )
        })
    }
}
