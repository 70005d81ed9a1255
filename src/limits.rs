//! Every size a user can type, and its upper bound, in one place.
//!
//! Each limit is checked where the value is read (spec, job file, command line, NIfTI header),
//! before anything of that size is allocated, so that a typo such as `rank: 1000000000` is an
//! error naming the field and the limit instead of an abort. The README's "Limits" table lists
//! them; `tests/limits.rs` runs its hostile examples. The bounds are far above any study we
//! know of (the paper grid has 3,051 jobs, rank ≤ 64, widths ≤ 512).

/// Bytes of a sweep spec file.
pub const MAX_SPEC_BYTES: usize = 1 << 20;
/// Nesting depth of the spec's YAML (flow `[`/`{` and block levels together).
pub const MAX_YAML_DEPTH: usize = 64;
/// Values in one list of the spec (a grid axis, a zip list, seeds, views, labels).
pub const MAX_LIST_LEN: usize = 1_000;
/// Jobs of one sweep: pre-training plus fine-tuning, the grid product computed before expanding.
pub const MAX_JOBS: usize = 100_000;
/// Cross-validation folds (and at most the number of cases).
pub const MAX_FOLDS: usize = 100;
/// Adapter rank.
pub const MAX_RANK: usize = 1_024;
/// Input channels of the Unet.
pub const MAX_IN_CHANNELS: usize = 64;
/// Channel width of one Unet level.
pub const MAX_WIDTH: usize = 4_096;
/// Parameters of the Unet before adaptation (2^28: 1 GiB as f32), estimated from its widths.
pub const MAX_PARAMS: usize = 1 << 28;
/// Unet levels (`features` entries).
pub const MAX_LEVELS: usize = 10;
/// Slices per training or prediction batch.
pub const MAX_BATCH: usize = 4_096;
/// Optimisation steps of one stage (also `val_every`, `warmup_steps`, `log_every`).
pub const MAX_STEPS: usize = 100_000_000;
/// CPU threads per job.
pub const MAX_THREADS: usize = 1_024;
/// Worker slots per device.
pub const MAX_SLOTS: usize = 256;
/// Retries of a failed attempt.
pub const MAX_RETRIES: u32 = 100;
/// Cases of a synthesized cohort.
pub const MAX_CASES: usize = 100_000;
/// Voxels along one axis of an image (NIfTI-1 itself allows 32,767).
pub const MAX_IMAGE_DIM: usize = 4_096;
/// Voxels of one volume (2^28: 1 GiB as f32; a 512×512×1024 CT is a quarter of it).
pub const MAX_VOXELS: usize = 1 << 28;

/// "expected at most {limit} (the limit of `{field}`), got {value}": the one wording of a
/// limit error, so that users and tests see the field and the bound.
pub fn too_large(
    field: &str,
    limit: impl std::fmt::Display,
    value: impl std::fmt::Display,
) -> String {
    format!("expected at most {limit} (the limit of `{field}`), got {value}")
}

/// `Err(message)` when `value > limit`.
pub fn check(field: &str, value: usize, limit: usize) -> Result<(), String> {
    if value > limit {
        Err(too_large(field, limit, value))
    } else {
        Ok(())
    }
}

/// The product of `sizes`, or `None` on overflow.
pub fn product(sizes: impl IntoIterator<Item = usize>) -> Option<usize> {
    sizes.into_iter().try_fold(1usize, |a, b| a.checked_mul(b))
}

/// Fails fast when the text nests deeper than [`MAX_YAML_DEPTH`] (a YAML parser recurses or
/// buffers per level: 100k nested `[` took 31 s). Counts flow brackets outside quotes and
/// comments, plus block levels (indentation steps and `- ` entries opening a line). It may
/// over-count odd but valid YAML; no real spec comes near the bound. Returns the 1-based line.
pub fn yaml_depth_error(text: &str) -> Option<(usize, usize)> {
    let mut flow = 0usize;
    let mut indents: Vec<usize> = Vec::new();
    for (ln, line) in text.lines().enumerate() {
        let body = line.trim_start_matches(' ');
        let indent = line.len() - body.len();
        let mut block = 0;
        if flow == 0 && !body.is_empty() && !body.starts_with('#') {
            while indents.last().is_some_and(|&i| i >= indent) {
                indents.pop();
            }
            indents.push(indent);
            // `- - - x` opens one sequence per dash.
            let mut rest = body;
            while let Some(r) = rest.strip_prefix("- ").or(rest.strip_prefix("? ")) {
                block += 1;
                rest = r.trim_start_matches(' ');
            }
        }
        let mut quote: Option<char> = None;
        let mut prev = ' ';
        for c in body.chars() {
            match quote {
                Some(q) if c == q => quote = None,
                Some(_) => {}
                None => match c {
                    '#' if prev.is_whitespace() => break,
                    '"' | '\'' if prev.is_whitespace() || "[{,:".contains(prev) => quote = Some(c),
                    '[' | '{' => flow += 1,
                    ']' | '}' => flow = flow.saturating_sub(1),
                    _ => {}
                },
            }
            if indents.len() + block + flow > MAX_YAML_DEPTH {
                return Some((ln + 1, indents.len() + block + flow));
            }
            prev = c;
        }
        if indents.len() + block + flow > MAX_YAML_DEPTH {
            return Some((ln + 1, indents.len() + block + flow));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depth_counts_flow_and_block_levels() {
        assert_eq!(yaml_depth_error("a: [1, [2, {b: 3}]]\n"), None);
        let deep = "[".repeat(100_000);
        let t = std::time::Instant::now();
        assert_eq!(yaml_depth_error(&deep), Some((1, MAX_YAML_DEPTH + 1)));
        assert!(t.elapsed().as_millis() < 100);
        // Brackets inside quotes and comments do not count.
        let quoted = format!("a: '{}'\nb: 1 # {}\n", "[".repeat(200), "{".repeat(200));
        assert_eq!(yaml_depth_error(&quoted), None);
        let dashes = format!("a:\n  {}x\n", "- ".repeat(100));
        assert!(yaml_depth_error(&dashes).is_some());
        let mut indented = String::new();
        for i in 0..100 {
            indented.push_str(&format!("{}k{i}:\n", " ".repeat(i)));
        }
        assert!(yaml_depth_error(&indented).is_some());
        // The shipped specs are nowhere near.
        for f in ["paper.yaml", "quickstart.yaml", "nightly.yaml"] {
            let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("sweeps")
                .join(f);
            let text = std::fs::read_to_string(p).unwrap();
            assert_eq!(yaml_depth_error(&text), None, "{f}");
        }
    }

    #[test]
    fn products_do_not_overflow() {
        assert_eq!(product([2, 3, 4]), Some(24));
        assert_eq!(product([usize::MAX, 2]), None);
        assert!(
            check("rank", 5000, MAX_RANK)
                .unwrap_err()
                .contains("`rank`")
        );
    }
}
