//! Embeds the code fingerprint (git commit + a hash of uncommitted changes) so that job keys
//! change when the code does (orchestration.md: code edited mid-sweep must not leak into queued
//! jobs). Outside a git checkout the crate version alone is the fingerprint.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn main() {
    build_cuda_kernels();
    // In a linked worktree `.git` is a file; ask git where HEAD, the index and the refs are
    // (a path that does not exist would make cargo rerun this script on every build).
    let dir = git(&["rev-parse", "--absolute-git-dir"]);
    let common = git(&["rev-parse", "--path-format=absolute", "--git-common-dir"]);
    let watched = [
        dir.as_ref().map(|d| format!("{d}/HEAD")),
        dir.as_ref().map(|d| format!("{d}/index")),
        common.as_ref().map(|c| format!("{c}/refs")),
        common.as_ref().map(|c| format!("{c}/packed-refs")),
    ];
    for path in watched.into_iter().flatten() {
        if std::path::Path::new(&path).exists() {
            println!("cargo:rerun-if-changed={path}");
        }
    }
    println!("cargo:rerun-if-changed=src");
    let commit = git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_default();
    // The code that computes results: the src tree and the lock file, not the whole commit, so
    // a README edit does not invalidate every finished job.
    let src = git(&["rev-parse", "HEAD:src"]).unwrap_or_default();
    let lock = git(&["rev-parse", "HEAD:Cargo.lock"]).unwrap_or_default();
    let tree = if src.is_empty() {
        String::new()
    } else {
        format!(
            "{}.{}",
            &src[..12.min(src.len())],
            &lock[..8.min(lock.len())]
        )
    };
    println!("cargo:rustc-env=RANKSWEEP_SRC_TREE={tree}");
    // A cheap, stable digest of the dirty diff (FNV-1a): std only, no build dependency.
    let dirty = git(&["diff", "HEAD", "--", "src", "Cargo.toml", "Cargo.lock"])
        .filter(|d| !d.is_empty())
        .map(|d| {
            let mut h: u64 = 0xcbf29ce484222325;
            for b in d.bytes() {
                h ^= u64::from(b);
                h = h.wrapping_mul(0x100000001b3);
            }
            format!("{h:016x}")
        })
        .unwrap_or_default();
    println!("cargo:rustc-env=RANKSWEEP_GIT_COMMIT={commit}");
    println!("cargo:rustc-env=RANKSWEEP_GIT_DIRTY={dirty}");
}

/// With the `cuda` feature: compiles src/nn/cuda/kernels.cu to PTX for `sm_$CUDA_COMPUTE_CAP`
/// with the nvcc on PATH (scripts/build-cuda.sh puts the pinned 13.0 one first).
fn build_cuda_kernels() {
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let src = "src/nn/cuda/kernels.cu";
    println!("cargo:rerun-if-changed={src}");
    println!("cargo:rerun-if-env-changed=CUDA_COMPUTE_CAP");
    let cap = std::env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "90".to_string());
    let out = format!(
        "{}/ranksweep_kernels.ptx",
        std::env::var("OUT_DIR").expect("OUT_DIR")
    );
    let nvcc = std::env::var("CUDA_HOME")
        .map(|h| format!("{h}/bin/nvcc"))
        .unwrap_or_else(|_| "nvcc".to_string());
    let status = Command::new(&nvcc)
        .args([
            "--ptx",
            "-O3",
            "-std=c++17",
            &format!("-arch=sm_{cap}"),
            "-o",
            &out,
            src,
        ])
        .status()
        .unwrap_or_else(|e| panic!("cannot run {nvcc} (see scripts/build-cuda.sh): {e}"));
    assert!(status.success(), "{nvcc} failed on {src}");
}
