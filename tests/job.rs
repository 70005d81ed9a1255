//! The worker's job end to end on two small synthetic cohorts written here as NIfTI: pretrain on
//! the source, evaluate `none` and fine-tune `conv-lora` on a target fold, artifacts checked
//! against a recomputation, multi-view fusion, determinism, and the exit classes (nan,
//! interrupted, timeout, failed) through the real binary.
//!
//! Cohorts (flat `data/` + `label/` pairs, 6 × 32 × 32 voxels of 5 × 0.8 × 0.8 mm, so coronal
//! slices are padded 6 → 8): a head disc of ~30 HU in air. Source: bright lesions (75 HU),
//! labelled. Target: dimmer lesions (57 HU), labelled, plus bright unlabelled mimics (80 HU,
//! like calcifications). A source model marks the mimics and misses dim blood; fine-tuning on
//! the target has something to learn.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::AtomicBool;

use ndarray::Array3;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use ranksweep::data::Volume;
use ranksweep::data::folds::{SPLITS_FILE, load_or_create_splits};
use ranksweep::data::nifti::{header_for, read_label, write_i16, write_u8};
use ranksweep::data::preprocess::View;
use ranksweep::metrics::{CaseMetrics, Strata};
use ranksweep::model::checkpoint::read_adapter;
use ranksweep::train::job_run::{METRICS_FILE, METRICS_HEADER, PRED_DIR, RESULT_FILE};
use ranksweep::train::{Event, ExitClass, JobConfig, JobResult, run_job};
use tempfile::TempDir;

use crate::util;

const SHAPE: [usize; 3] = [6, 32, 32];
const SPACING: [f64; 3] = [5.0, 0.8, 0.8];

/// Writes a cohort of `n` cases; `target` selects the shifted (SAH-like) cohort.
fn write_cohort(root: &Path, n: usize, target: bool, seed: u64) {
    std::fs::create_dir_all(root.join("data")).unwrap();
    std::fs::create_dir_all(root.join("label")).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    for i in 0..n {
        let mut hu = Array3::<f32>::from_elem((SHAPE[0], SHAPE[1], SHAPE[2]), -1000.0);
        let mut label = Array3::<u8>::zeros((SHAPE[0], SHAPE[1], SHAPE[2]));
        let c = 15.5;
        for ((z, y, x), v) in hu.indexed_iter_mut() {
            let _ = z;
            let r2 = (y as f64 - c).powi(2) + (x as f64 - c).powi(2);
            if r2 < 14.0f64.powi(2) {
                *v = 30.0;
            }
        }
        // (hu, labelled) blobs: lesions, and for the target cohort also mimics.
        let mut blobs: Vec<(f32, bool)> = vec![(if target { 57.0 } else { 75.0 }, true)];
        if rng.random_bool(0.6) {
            blobs.push((if target { 57.0 } else { 75.0 }, true));
        }
        if target {
            blobs.push((80.0, false));
        }
        for (value, labelled) in blobs {
            let cy = rng.random_range(8.0..24.0);
            let cx = rng.random_range(8.0..24.0);
            let cz = rng.random_range(1.0..5.0);
            let r = if labelled {
                rng.random_range(3.0..5.5)
            } else {
                rng.random_range(1.5..2.5)
            };
            let rz = if labelled { 1.5 } else { 0.8 };
            for z in 0..SHAPE[0] {
                for y in 0..SHAPE[1] {
                    for x in 0..SHAPE[2] {
                        let d = ((y as f64 - cy) / r).powi(2)
                            + ((x as f64 - cx) / r).powi(2)
                            + ((z as f64 - cz) / rz).powi(2);
                        if d < 1.0 {
                            hu[[z, y, x]] = value;
                            label[[z, y, x]] = u8::from(labelled);
                        }
                    }
                }
            }
        }
        for v in hu.iter_mut() {
            if *v > -500.0 {
                *v += rng.random_range(-4.0..4.0f32);
            }
        }
        let header = header_for(SHAPE, SPACING);
        let mut img = Volume::new(hu.mapv(|v| v.round() as i16), SPACING);
        img.header = Some(Box::new(header.clone()));
        let mut lab = Volume::new(label, SPACING);
        lab.header = Some(Box::new(header));
        let name = format!("case_{i:02}.nii.gz");
        write_i16(&img, root.join("data").join(&name)).unwrap();
        write_u8(&lab, root.join("label").join(&name)).unwrap();
    }
}

/// Both cohorts and the axial base checkpoint, made once for every test.
struct Fixture {
    dir: TempDir,
}

impl Fixture {
    fn source(&self) -> PathBuf {
        self.dir.path().join("tbi")
    }
    fn target(&self) -> PathBuf {
        self.dir.path().join("sah")
    }
    fn base(&self) -> PathBuf {
        self.dir.path().join("pretrain/base-axial.safetensors")
    }
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let f = Fixture { dir };
        write_cohort(&f.source(), 8, false, 1);
        write_cohort(&f.target(), 12, true, 2);
        // Written once here: parallel test threads share one pid, hence one temporary name.
        let ids: Vec<String> = (0..12).map(|i| format!("case_{i:02}")).collect();
        load_or_create_splits(f.target().join(SPLITS_FILE), &ids, 3, 0, None).unwrap();
        let job = job(&format!(
            "stage: pretrain\ndata: {{dataset: {}}}\ntrain: {{steps: 150, batch_size: 8, foreground_fraction: 0.5}}\noptimizer: {{lr: 0.01}}\noutput: {}\n",
            f.source().display(),
            f.dir.path().join("pretrain").display()
        ));
        run(&job).unwrap();
        assert!(f.base().is_file());
        f
    })
}

/// A job from YAML with the tiny model, one thread and quiet logging added.
fn job(yaml: &str) -> JobConfig {
    let text = format!("{yaml}model: {{features: [4, 8, 16]}}\nthreads: 1\n");
    JobConfig::from_text(&text).unwrap()
}

fn run(job: &JobConfig) -> Result<JobResult, ranksweep::train::JobError> {
    let stop = AtomicBool::new(false);
    run_job(job, &stop, &mut |_: &Event| {})
}

fn evaluate_job(f: &Fixture, out: &Path) -> String {
    format!(
        "stage: evaluate\ndata: {{dataset: {}, fold: 0, folds: 3}}\nbase: {{axial: {}}}\noutput: {}\n",
        f.target().display(),
        f.base().display(),
        out.display()
    )
}

fn finetune_job(f: &Fixture, out: &Path, steps: usize) -> String {
    format!(
        "stage: finetune\ndata: {{dataset: {}, fold: 0, folds: 3}}\nadaptation: {{kind: conv-lora, module: decoder, rank: 4}}\noptimizer: {{lr: 0.01}}\ntrain: {{steps: {steps}, batch_size: 8, foreground_fraction: 0.5}}\nbase: {{axial: {}}}\noutput: {}\n",
        f.target().display(),
        f.base().display(),
        out.display()
    )
}

fn dice(r: &JobResult) -> f64 {
    r.evaluation.as_ref().unwrap().summary.dice.mean
}

#[test]
fn finetuned_conv_lora_beats_none_and_artifacts_agree_with_the_masks() {
    let f = fixture();
    let tmp = tempfile::tempdir().unwrap();
    let none = run(&job(&evaluate_job(f, &tmp.path().join("none")))).unwrap();
    let ft_dir = tmp.path().join("ft");
    let ft = run(&job(&finetune_job(f, &ft_dir, 80))).unwrap();
    let (d_none, d_ft) = (dice(&none), dice(&ft));
    eprintln!("test Dice: none {d_none:.3}, conv-lora {d_ft:.3}");
    assert!(d_ft > d_none + 0.05, "none {d_none}, conv-lora {d_ft}");
    assert_eq!(none.cases.test, ft.cases.test);
    assert_eq!(none.cases.test.len(), 4);

    // Parameters: only the decoder's LoRA factors train.
    let v = &ft.views[0];
    assert!(v.trainable_params > 0 && v.trainable_params < v.total_params / 2);
    assert_eq!(ft.trainable_params, v.trainable_params);
    assert_eq!(none.views[0].trainable_params, 0);
    assert!(ft_dir.join("adapter-axial.safetensors").is_file());
    assert_eq!(v.steps, 80);
    assert!(v.step_times.unwrap().median_s > 0.0);

    // result.json (read back) and metrics.csv agree with the masks on disk.
    let back = JobResult::read(&ft_dir.join(RESULT_FILE)).unwrap();
    let ev = back.evaluation.as_ref().unwrap();
    let csv = std::fs::read_to_string(ft_dir.join(METRICS_FILE)).unwrap();
    let mut lines = csv.lines();
    assert_eq!(lines.next(), Some(METRICS_HEADER));
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    assert_eq!(rows.len(), ev.cases.len());
    let mut dices = Vec::new();
    for (c, row) in ev.cases.iter().zip(&rows) {
        let pred = read_label(ft_dir.join(PRED_DIR).join(format!("{}.nii.gz", c.case))).unwrap();
        let truth =
            read_label(f.target().join("label").join(format!("{}.nii.gz", c.case))).unwrap();
        assert_eq!(pred.shape(), SHAPE);
        let m = CaseMetrics::compute(
            pred.data.view(),
            truth.data.view(),
            truth.spacing,
            &Strata::default(),
        )
        .unwrap();
        assert_eq!(m.confusion, c.metrics.confusion, "{}", c.case);
        assert_eq!(m.dice.to_bits(), c.metrics.dice.to_bits(), "{}", c.case);
        assert_eq!(
            m.hd95_mm.to_bits(),
            c.metrics.hd95_mm.to_bits(),
            "{}",
            c.case
        );
        assert_eq!(row[0], c.case);
        assert_eq!(row[1].parse::<f64>().unwrap().to_bits(), m.dice.to_bits());
        assert_eq!(row[3].parse::<u64>().unwrap(), m.confusion.tp);
        assert_eq!(row[4].parse::<u64>().unwrap(), m.confusion.fp);
        assert_eq!(row[5].parse::<u64>().unwrap(), m.confusion.fn_);
        dices.push(m.dice);
    }
    let mean = dices.iter().sum::<f64>() / dices.len() as f64;
    assert!((mean - ev.summary.dice.mean).abs() < 1e-12);
    // `evaluate` with the adapter file reproduces the fine-tuned model's predictions.
    let ev_dir = tmp.path().join("ev");
    let mut ev_job = job(&evaluate_job(f, &ev_dir));
    ev_job
        .adapters
        .set(View::Axial, ft_dir.join("adapter-axial.safetensors"));
    let again = run(&ev_job).unwrap();
    assert_eq!(
        again.evaluation.as_ref().unwrap().cases,
        ft.evaluation.as_ref().unwrap().cases
    );
    // The adapter's size is reported as what the adaptation trains.
    assert_eq!(again.views[0].trainable_params, v.trainable_params);

    // NaN != NaN, so compare as JSON (NaN is null on both sides).
    assert_eq!(
        serde_json::to_value(&back).unwrap(),
        serde_json::to_value(&ft).unwrap()
    );
}

#[test]
fn the_same_job_twice_gives_identical_metrics() {
    let f = fixture();
    let tmp = tempfile::tempdir().unwrap();
    let a = run(&job(&finetune_job(f, &tmp.path().join("a"), 12))).unwrap();
    let b = run(&job(&finetune_job(f, &tmp.path().join("b"), 12))).unwrap();
    let (ea, eb) = (
        a.evaluation.as_ref().unwrap(),
        b.evaluation.as_ref().unwrap(),
    );
    assert_eq!(ea.cases, eb.cases);
    assert_eq!(a.views[0].loss_curve, b.views[0].loss_curve);
    let tensors = |r: &JobResult, dir: &str| {
        let path = tmp
            .path()
            .join(dir)
            .join(r.views[0].checkpoint.as_ref().unwrap());
        let (_, t) = read_adapter(&path, &candle_core::Device::Cpu).unwrap();
        let mut t: Vec<(String, Vec<f32>)> = t
            .into_iter()
            .map(|(n, t)| (n, t.flatten_all().unwrap().to_vec1::<f32>().unwrap()))
            .collect();
        t.sort_by(|x, y| x.0.cmp(&y.0));
        t
    };
    assert_eq!(tensors(&a, "a"), tensors(&b, "b"));
    // A different seed changes the run: the comparison above can fail.
    let mut other = job(&finetune_job(f, &tmp.path().join("c"), 12));
    other.seed = 7;
    let c = run(&other).unwrap();
    assert_ne!(a.views[0].loss_curve, c.views[0].loss_curve);
}

#[test]
fn multi_view_prediction_is_fused_on_the_native_grid() {
    let f = fixture();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("mv");
    let r = run(&job(&format!(
        "stage: pretrain\ndata: {{dataset: {}, fold: 1, folds: 3}}\nviews: [axial, coronal]\ntrain: {{steps: 30, batch_size: 4, foreground_fraction: 0.5, selection: best-val, val_every: 10}}\noptimizer: {{lr: 0.01}}\noutput: {}\n",
        f.target().display(),
        out.display()
    )))
    .unwrap();
    assert_eq!(r.views.len(), 2);
    assert_eq!(r.views[1].view, View::Coronal);
    for name in ["base-axial.safetensors", "base-coronal.safetensors"] {
        assert!(out.join(name).is_file(), "{name}");
    }
    // best-val: validation cases are held out of training, and the kept step is a val step.
    assert!(!r.cases.val.is_empty());
    assert!(r.cases.val.iter().all(|c| !r.cases.train.contains(c)));
    assert_eq!(r.cases.train.len() + r.cases.val.len(), 8);
    for v in &r.views {
        assert!(
            v.selected_step % 10 == 0 && v.selected_step <= 30,
            "{}",
            v.selected_step
        );
        assert!(v.best_val_dice.is_some());
    }
    for case in &r.cases.test {
        let pred = read_label(out.join(PRED_DIR).join(format!("{case}.nii.gz"))).unwrap();
        let truth = read_label(f.target().join("label").join(format!("{case}.nii.gz"))).unwrap();
        assert_eq!(pred.shape(), truth.shape());
        assert_eq!(pred.spacing, truth.spacing);
        let (hp, ht) = (pred.header.unwrap(), truth.header.unwrap());
        assert_eq!(hp.srow_x, ht.srow_x);
        assert_eq!(hp.srow_z, ht.srow_z);
    }

    // `ranksweep predict` with both views on one scan gives the job's fused mask.
    let case = &r.cases.test[0];
    let mask = tmp.path().join("one.nii.gz");
    let image = f.target().join("data").join(format!("{case}.nii.gz"));
    let o = util::ranksweep(
        tmp.path(),
        &[
            "predict",
            "--checkpoint",
            out.join("base-axial.safetensors").to_str().unwrap(),
            "--checkpoint",
            out.join("base-coronal.safetensors").to_str().unwrap(),
            "--views",
            "axial,coronal",
            "--image",
            image.to_str().unwrap(),
            "--out",
            mask.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", util::stderr(&o));
    let one = read_label(&mask).unwrap();
    let job_mask = read_label(out.join(PRED_DIR).join(format!("{case}.nii.gz"))).unwrap();
    assert_eq!(one.data, job_mask.data);
}

fn write_job(dir: &Path, yaml: &str) -> PathBuf {
    let path = dir.join("job.yaml");
    std::fs::write(
        &path,
        format!("{yaml}model: {{features: [4, 8, 16]}}\nthreads: 1\n"),
    )
    .unwrap();
    path
}

fn events(stdout: &str) -> Vec<Event> {
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect()
}

#[test]
fn a_non_finite_loss_ends_with_the_nan_class_at_once() {
    let f = fixture();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let path = write_job(
        tmp.path(),
        &format!(
            "stage: pretrain\ndata: {{dataset: {}}}\noptimizer: {{lr: 1.0e30, schedule: constant}}\ntrain: {{steps: 50, batch_size: 2, log_every: 1}}\noutput: {}\n",
            f.source().display(),
            out.display()
        ),
    );
    let o = util::ranksweep(tmp.path(), &["worker", path.to_str().unwrap()]);
    assert_eq!(
        o.status.code(),
        Some(i32::from(ExitClass::Nan.code())),
        "{}",
        util::stderr(&o)
    );
    let ev = events(&util::stdout(&o));
    let steps = ev
        .iter()
        .filter(|e| matches!(e, Event::Step { .. }))
        .count();
    // Step 1 is finite (it makes the huge update); step 2's loss is not, and nothing follows.
    assert!(steps <= 1, "{steps} finite steps logged");
    match ev.last().unwrap() {
        Event::End {
            class,
            error,
            result,
        } => {
            assert_eq!(*class, ExitClass::Nan);
            assert!(error.as_ref().unwrap().contains("non-finite"), "{error:?}");
            assert!(result.is_none());
        }
        e => panic!("last event {e:?}"),
    }
    assert!(!out.join(RESULT_FILE).exists());
}

#[test]
fn sigterm_stops_cleanly_with_the_interrupted_class_and_no_result() {
    let f = fixture();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    // A stale result from an earlier run must not survive an interrupted rerun.
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join(RESULT_FILE), "{}").unwrap();
    let path = write_job(
        tmp.path(),
        &format!(
            "stage: pretrain\ndata: {{dataset: {}}}\ntrain: {{steps: 1000000, batch_size: 2, log_every: 1}}\noutput: {}\n",
            f.source().display(),
            out.display()
        ),
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_ranksweep"))
        .args(["worker", path.to_str().unwrap()])
        .env("RAYON_NUM_THREADS", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    for line in lines.by_ref() {
        let e: Event = serde_json::from_str(&line.unwrap()).unwrap();
        let is_step = matches!(e, Event::Step { .. });
        seen.push(e);
        if is_step {
            break;
        }
    }
    assert!(matches!(seen.last(), Some(Event::Step { .. })), "{seen:?}");
    // SAFETY: signalling our own child by its pid.
    assert_eq!(
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) },
        0
    );
    let rest: Vec<Event> = lines
        .map(|l| serde_json::from_str(&l.unwrap()).unwrap())
        .collect();
    let status = child.wait().unwrap();
    assert_eq!(
        status.code(),
        Some(i32::from(ExitClass::Interrupted.code()))
    );
    match rest.last().unwrap() {
        Event::End { class, result, .. } => {
            assert_eq!(*class, ExitClass::Interrupted);
            assert!(result.is_none());
        }
        e => panic!("last event {e:?}"),
    }
    assert!(!out.join(RESULT_FILE).exists());
}

#[test]
fn a_missing_dataset_fails_naming_the_path() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("no-such-cohort");
    let path = write_job(
        tmp.path(),
        &format!(
            "stage: pretrain\ndata: {{dataset: {}}}\noutput: out\n",
            missing.display()
        ),
    );
    let o = util::ranksweep(tmp.path(), &["worker", path.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(i32::from(ExitClass::Failed.code())));
    let err = util::stderr(&o);
    assert!(err.contains(missing.to_str().unwrap()), "{err}");
    assert!(err.contains("cannot read folder"), "{err}");
    assert!(!tmp.path().join("out").join(RESULT_FILE).exists());
    // A bad job file names the file and the field.
    std::fs::write(
        &path,
        "stage: pretrain\ndata: {dataset: x}\noutput: o\nstepz: 3\n",
    )
    .unwrap();
    let o = util::ranksweep(tmp.path(), &["worker", path.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    let err = util::stderr(&o);
    assert!(
        err.contains("job.yaml") && err.contains("unknown field `stepz`"),
        "{err}"
    );
}

#[test]
fn a_timeout_ends_with_the_timeout_class() {
    let f = fixture();
    let tmp = tempfile::tempdir().unwrap();
    let mut j = job(&format!(
        "stage: pretrain\ndata: {{dataset: {}}}\ntrain: {{steps: 1000000, batch_size: 2}}\noutput: {}\n",
        f.source().display(),
        tmp.path().join("out").display()
    ));
    j.timeout_s = Some(0.3);
    let err = run(&j).unwrap_err();
    assert_eq!(err.class(), ExitClass::Timeout, "{err}");
    assert!(!tmp.path().join("out").join(RESULT_FILE).exists());
}

#[test]
fn train_cli_prints_a_summary_and_worker_prints_json_lines() {
    let f = fixture();
    let tmp = tempfile::tempdir().unwrap();
    let path = write_job(tmp.path(), &evaluate_job(f, Path::new("ev")));
    let o = util::ranksweep(tmp.path(), &["train", path.to_str().unwrap()]);
    assert!(o.status.success(), "{}", util::stderr(&o));
    let text = util::stdout(&o);
    assert!(text.contains("mean ± SD (n=4)"), "{text}");
    assert!(tmp.path().join("ev").join(RESULT_FILE).is_file());

    let o = util::ranksweep(tmp.path(), &["worker", path.to_str().unwrap()]);
    assert!(o.status.success(), "{}", util::stderr(&o));
    let ev = events(&util::stdout(&o));
    assert!(
        matches!(
            ev[0],
            Event::Start {
                steps: 0,
                test_cases: 4,
                ..
            }
        ),
        "{:?}",
        ev[0]
    );
    assert_eq!(
        ev.iter()
            .filter(|e| matches!(e, Event::Case { .. }))
            .count(),
        4
    );
    assert!(matches!(
        ev.last().unwrap(),
        Event::End {
            class: ExitClass::Ok,
            result: Some(_),
            ..
        }
    ));
}

/// The pipeline on the phantom cohorts (nnU-Net v2 layout, `_0000` images, `dataset.json`):
/// a two-view pretrain on TBI phantoms and its evaluation on an SAH fold. A smoke test: this
/// tiny model does not learn the phantoms in a few steps (Dice is not asserted).
#[test]
fn runs_on_the_phantom_cohorts() {
    use ranksweep::data::phantom::{Cohort, PhantomConfig, write_cohort as phantoms};
    let tmp = tempfile::tempdir().unwrap();
    let cohort = |c, seed, dir: &str| {
        let mut cfg = PhantomConfig::new(c, 4, seed);
        cfg.shape = [8, 32, 32];
        cfg.spacing = [6.0, 6.5, 6.5];
        phantoms(&cfg, &tmp.path().join(dir)).unwrap();
    };
    cohort(Cohort::Tbi, 1, "tbi");
    cohort(Cohort::Sah, 2, "sah");
    let pre = tmp.path().join("pre");
    let r = run(&job(&format!(
        "stage: pretrain\ndata: {{dataset: {}}}\nviews: [axial, sagittal]\ntrain: {{steps: 3, batch_size: 2}}\noutput: {}\n",
        tmp.path().join("tbi").display(),
        pre.display()
    )))
    .unwrap();
    assert_eq!(r.cases.train.len(), 4);
    assert!(r.evaluation.is_none());
    let out = tmp.path().join("ev");
    let ev = run(&job(&format!(
        "stage: evaluate\ndata: {{dataset: {}, fold: 1, folds: 2}}\nviews: [axial, sagittal]\nbase: {{axial: {}, sagittal: {}}}\noutput: {}\n",
        tmp.path().join("sah").display(),
        pre.join("base-axial.safetensors").display(),
        pre.join("base-sagittal.safetensors").display(),
        out.display()
    )))
    .unwrap();
    assert_eq!(ev.cases.test.len(), 2);
    let csv = std::fs::read_to_string(out.join(METRICS_FILE)).unwrap();
    assert_eq!(csv.lines().count(), 3);
    for case in &ev.cases.test {
        let pred = read_label(out.join(PRED_DIR).join(format!("{case}.nii.gz"))).unwrap();
        assert_eq!(pred.shape(), [8, 32, 32]);
    }
}

/// A tmpfs of a few pages, unmounted on drop; `None` (with the reason printed) where mounting
/// is not allowed.
struct SmallFs(PathBuf);

impl SmallFs {
    fn mount(dir: &Path) -> Option<SmallFs> {
        std::fs::create_dir_all(dir).unwrap();
        let o = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"])
            .arg(dir)
            .output();
        match o {
            Ok(o) if o.status.success() => Some(SmallFs(dir.to_path_buf())),
            Ok(o) => {
                println!(
                    "skipped: mount -t tmpfs failed: {}",
                    util::stderr(&o).trim()
                );
                None
            }
            Err(e) => {
                println!("skipped: cannot run mount: {e}");
                None
            }
        }
    }

    /// Fills the file system up to the last byte.
    fn fill(&self) {
        use std::io::Write;
        let mut f = std::fs::File::create(self.0.join("filler")).unwrap();
        let block = [0u8; 4096];
        while f.write_all(&block).is_ok() {}
        while f.write_all(&block[..1]).is_ok() {}
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_ends_as_a_failure_naming_enospc_and_leaves_no_temporary_file() {
    let f = fixture();
    let tmp = tempfile::tempdir().unwrap();
    let Some(fs) = SmallFs::mount(&tmp.path().join("full")) else {
        return;
    };
    let out = fs.0.join("out");
    std::fs::create_dir(&out).unwrap();
    fs.fill();
    let path = write_job(tmp.path(), &evaluate_job(f, &out));
    // stderr on a full device too: printing the error must not panic (exit 101).
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_ranksweep"))
        .args(["worker", path.to_str().unwrap()])
        .env("RAYON_NUM_THREADS", "1")
        .stderr(std::fs::File::create("/dev/full").unwrap())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(i32::from(ExitClass::Failed.code())));
    match events(&util::stdout(&o)).last().unwrap() {
        Event::End { class, error, .. } => {
            assert_eq!(*class, ExitClass::Failed);
            assert!(error.as_ref().unwrap().contains("ENOSPC"), "{error:?}");
        }
        e => panic!("last event {e:?}"),
    }
    let left: Vec<_> = walk(&out);
    assert!(left.iter().all(|p| !p.contains(".tmp-")), "{left:?}");
    assert!(!out.join(RESULT_FILE).exists());
}

#[test]
fn a_worker_whose_stdout_is_a_full_device_still_exits_with_its_class() {
    let f = fixture();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let path = write_job(tmp.path(), &evaluate_job(f, &out));
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_ranksweep"))
        .args(["worker", path.to_str().unwrap()])
        .env("RAYON_NUM_THREADS", "1")
        .stdout(std::fs::File::create("/dev/full").unwrap())
        .stderr(std::fs::File::create("/dev/full").unwrap())
        .status()
        .unwrap();
    assert_eq!(o.code(), Some(0));
    assert!(out.join(RESULT_FILE).is_file());
}

/// Every file under `dir`, as strings.
fn walk(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p.display().to_string());
        }
    }
    out
}
