//! The code fingerprint: crate version, git commit and a digest of uncommitted changes, as
//! embedded by build.rs. It is part of every job key and recorded with every result.

/// What job keys hash: the version, the git tree of `src` and the lock file, and a digest of
/// uncommitted changes to them (`ranksweep 0.1.0 src:0123456789ab.01234567+dirty.…`), or the
/// version alone outside a git checkout. Commits that do not touch the code keep the keys.
pub fn code_fingerprint() -> String {
    let tree = env!("RANKSWEEP_SRC_TREE");
    let dirty = env!("RANKSWEEP_GIT_DIRTY");
    let mut s = format!("{} {}", env!("CARGO_PKG_NAME"), env!("CARGO_PKG_VERSION"));
    if !tree.is_empty() {
        s.push_str(" src:");
        s.push_str(tree);
        if !dirty.is_empty() {
            s.push_str("+dirty.");
            s.push_str(dirty);
        }
    }
    s
}

/// The code version recorded with results: the fingerprint plus the commit it was built from.
pub fn code_version() -> String {
    let commit = env!("RANKSWEEP_GIT_COMMIT");
    if commit.is_empty() {
        code_fingerprint()
    } else {
        format!("{} (commit {commit})", code_fingerprint())
    }
}
