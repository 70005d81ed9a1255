//! The README's hostile examples: each `plan` fails fast (< 1 s) with exit 2 and a message
//! naming the field and its limit; `model summary` refuses a huge rank. And a seeded fuzz of the
//! spec parser and the NIfTI reader: no panic, no run over 5 s, no allocation over 1 GB.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::util;

const BASE: &str = "\
name: hostile
data: {source: tbi, target: sah, folds: 3}
model: {features: [4, 8, 16]}
pretrain: {steps: 10, batch: 2}
finetune: {steps: 10, batch: 2}
grid:
  - kind: none
  - kind: lora-c
    module: decoder
    rank: 4
";

fn list(n: usize) -> String {
    let v: Vec<String> = (1..=n).map(|i| i.to_string()).collect();
    format!("[{}]", v.join(", "))
}

/// (name, spec text, words the error must contain).
pub fn hostile_examples() -> Vec<(&'static str, String, Vec<&'static str>)> {
    vec![
        (
            "in_channels 1e9",
            BASE.replace("model: {", "model: {in_channels: 1000000000, "),
            vec!["model.in_channels", "at most 64"],
        ),
        (
            "rank and alpha lists of 1..1000",
            BASE.replace(
                "rank: 4",
                &format!("rank: {}\n    alpha: {}", list(1000), list(1000)),
            ),
            vec!["grid[1]", "jobs", "at most 100000"],
        ),
        (
            "folds 1e6",
            BASE.replace("folds: 3", "folds: 1000000"),
            vec!["data.folds", "at most 100"],
        ),
        (
            "rank 1e9",
            BASE.replace("rank: 4", "rank: 1000000000"),
            vec!["grid[1].rank", "at most 1024"],
        ),
        (
            "batch 1e9",
            BASE.replace("batch: 2}\ngrid", "batch: 1000000000}\ngrid"),
            vec!["finetune.batch", "at most 4096"],
        ),
        (
            "features 1e9",
            BASE.replace("[4, 8, 16]", "[4, 1000000000]"),
            vec!["model.features", "at most 4096"],
        ),
        (
            "steps 1e9",
            BASE.replace(
                "steps: 10, batch: 2}\nfinetune",
                "steps: 1000000000, batch: 2}\nfinetune",
            ),
            vec!["pretrain.steps", "at most 100000000"],
        ),
        (
            "threads 1e6",
            format!("{BASE}resources: {{threads: 1000000}}\n"),
            vec!["resources.threads", "at most 1024"],
        ),
        (
            "100k nested [",
            format!("{BASE}seeds: {}\n", "[".repeat(100_000)),
            vec!["nesting depth", "at most 64"],
        ),
    ]
}

#[test]
fn every_hostile_example_fails_plan_fast_naming_the_field_and_its_limit() {
    let tmp = tempfile::tempdir().unwrap();
    for (name, text, words) in hostile_examples() {
        let spec = tmp.path().join("hostile.yaml");
        std::fs::write(&spec, &text).unwrap();
        let t = Instant::now();
        let o = util::ranksweep(tmp.path(), &["plan", "hostile.yaml"]);
        let took = t.elapsed();
        let err = util::stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{name}: {err}");
        assert!(took < Duration::from_secs(1), "{name}: {took:?}");
        for w in words {
            assert!(err.contains(w), "{name}: `{w}` not in {err}");
        }
        assert_eq!(err.lines().count(), 1, "{name}: {err}");
    }
}

#[test]
fn model_summary_with_a_huge_rank_is_a_usage_error() {
    let tmp = tempfile::tempdir().unwrap();
    let o = util::ranksweep(
        tmp.path(),
        &[
            "model",
            "summary",
            "--kind",
            "lora-c",
            "--module",
            "all",
            "--rank",
            "1000000000",
        ],
    );
    assert_eq!(o.status.code(), Some(2), "{}", util::stderr(&o));
    assert!(
        util::stderr(&o).contains("1 to 1024"),
        "{}",
        util::stderr(&o)
    );
}

#[test]
fn zero_timeouts_are_refused_on_the_command_line() {
    let tmp = tempfile::tempdir().unwrap();
    for args in [
        vec!["run", "x.yaml", "--timeout", "0s"],
        vec!["exec", "jobs.json", "--timeout-s", "0"],
        vec!["exec", "jobs.json", "--watchdog-s", "0"],
        vec!["run", "x.yaml", "--threads-per-job", "100000"],
    ] {
        let o = util::ranksweep(tmp.path(), &args);
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        let e = util::stderr(&o);
        assert!(
            e.contains("above zero") || e.contains("positive") || e.contains("limit"),
            "{args:?}: {e}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Fuzz.

/// xorshift64*: a few lines, seeded, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// One mutant of `seed_bytes`: bit flips, truncations, splices, huge numbers, deep nesting.
fn mutate(rng: &mut Rng, seed_bytes: &[u8], others: &[&[u8]]) -> Vec<u8> {
    let mut b = seed_bytes.to_vec();
    for _ in 0..1 + rng.below(4) {
        if b.is_empty() {
            b.push(b'[');
        }
        let at = rng.below(b.len());
        match rng.below(7) {
            0 => b[at] ^= 1 << rng.below(8),
            1 => b.truncate(at),
            2 => {
                let o = others[rng.below(others.len())];
                let from = rng.below(o.len());
                let len = rng.below(o.len() - from + 1);
                b.splice(at..at, o[from..from + len].iter().copied());
            }
            3 => {
                let huge: &[&[u8]] = &[
                    b"18446744073709551615",
                    b"1000000000",
                    b"-1",
                    b"1e308",
                    b".nan",
                    b"\xff\xff\xff\x7f",
                    b"\x00\x00\x00\x80",
                ];
                let h = huge[rng.below(huge.len())];
                let end = (at + h.len()).min(b.len());
                b.splice(at..end, h.iter().copied());
            }
            4 => {
                let open = [b'[', b'{', b'-', b' '][rng.below(4)];
                let n = 1 + rng.below(5000);
                b.splice(at..at, std::iter::repeat_n(open, n));
            }
            5 => b[at] = rng.next() as u8,
            _ => {
                let len = rng.below(b.len() - at + 1);
                let copy = b[at..at + len].to_vec();
                b.splice(at..at, copy);
            }
        }
    }
    b
}

/// Mutants per target: `RANKSWEEP_FUZZ_MUTANTS`, else `default`.
fn mutants(default: usize) -> usize {
    std::env::var("RANKSWEEP_FUZZ_MUTANTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn seed() -> u64 {
    std::env::var("RANKSWEEP_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5eed)
}

/// Runs `f` on each mutant, asserting no panic and no run over 5 s. Allocation size is bounded
/// by the code under test (see `limits`) and checked here through the peak RSS.
fn fuzz(name: &str, n: usize, seeds: &[Vec<u8>], mut f: impl FnMut(&[u8])) {
    let mut rng = Rng(seed() ^ name.len() as u64);
    let others: Vec<&[u8]> = seeds.iter().map(Vec::as_slice).collect();
    let start = Instant::now();
    for i in 0..n {
        let m = mutate(&mut rng, &seeds[i % seeds.len()], &others);
        let t = Instant::now();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&m)));
        assert!(
            r.is_ok(),
            "{name}: mutant {i} panicked (seed {}): {:?}",
            seed(),
            String::from_utf8_lossy(&m[..m.len().min(400)])
        );
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "{name}: mutant {i} took {:?}",
            t.elapsed()
        );
    }
    let rss = peak_rss_bytes();
    assert!(rss < 1 << 30, "{name}: peak RSS {rss} bytes");
    println!(
        "{name}: {n} mutants in {:?}, peak RSS {} MB",
        start.elapsed(),
        rss >> 20
    );
}

/// VmHWM of this process (Linux); 0 elsewhere.
fn peak_rss_bytes() -> usize {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<usize>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

#[test]
fn fuzz_the_spec_parser() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("sweeps");
    let mut seeds: Vec<Vec<u8>> = ["paper.yaml", "quickstart.yaml", "nightly.yaml"]
        .iter()
        .map(|f| std::fs::read(root.join(f)).unwrap())
        .collect();
    seeds.push(BASE.as_bytes().to_vec());
    let file = root.join("fuzz.yaml");
    fuzz("spec", mutants(2000), &seeds, |m| {
        if let Ok(text) = std::str::from_utf8(m) {
            let _ = ranksweep::sweep::parse(text, &file);
        }
    });
}

#[test]
fn fuzz_the_nifti_reader() {
    use ranksweep::data::Volume;
    use ranksweep::data::nifti::{read_header, read_label, read_volume, write_i16, write_u8};
    let tmp = tempfile::tempdir().unwrap();
    let img = ndarray::Array3::from_shape_fn((4, 8, 8), |(z, y, x)| (z * 64 + y * 8 + x) as i16);
    let lab = img.mapv(|v| (v % 3) as u8);
    let mut seeds = Vec::new();
    for (i, name) in ["a.nii", "a.nii.gz"].iter().enumerate() {
        let p = tmp.path().join(name);
        write_i16(&Volume::new(img.clone(), [5.0, 0.5, 0.5]), &p).unwrap();
        seeds.push(std::fs::read(&p).unwrap());
        let q = tmp.path().join(format!("l{i}{name}"));
        write_u8(&Volume::new(lab.clone(), [2.0, 1.0, 1.0]), &q).unwrap();
        seeds.push(std::fs::read(&q).unwrap());
    }
    // The reader goes by the gzip magic, not the name: one file serves both kinds.
    let p = tmp.path().join("m.nii.gz");
    fuzz("nifti", mutants(1000), &seeds, |m| {
        std::fs::write(&p, m).unwrap();
        let _ = read_header(&p);
        let _ = read_volume(&p);
        let _ = read_label(&p);
    });
}
