//! The code fingerprint: crate version, git commit and a digest of uncommitted changes, as
//! embedded by build.rs. It is part of every job key and recorded with every result.

/// `ranksweep 0.1.0 abc123def456` or `ranksweep 0.1.0 abc123def456+dirty.0123456789abcdef`, or
/// the version alone outside a git checkout.
pub fn code_fingerprint() -> String {
    let commit = env!("RANKSWEEP_GIT_COMMIT");
    let dirty = env!("RANKSWEEP_GIT_DIRTY");
    let mut s = format!("{} {}", env!("CARGO_PKG_NAME"), env!("CARGO_PKG_VERSION"));
    if !commit.is_empty() {
        s.push(' ');
        s.push_str(commit);
        if !dirty.is_empty() {
            s.push_str("+dirty.");
            s.push_str(dirty);
        }
    }
    s
}
