//! The model contract end to end: counts, init, gradients, freezing, merge, learning.

use candle_core::{DType, Device, Result, Tensor, Var};
use ranksweep::model::param::{normal, uniform};
use ranksweep::model::summary::ModelSummary;
use ranksweep::model::{
    AdamW, AdamWConfig, AdaptationKind, AdaptationSpec, Selector, Unet2d, UnetConfig,
};
use ranksweep::nn;
use ranksweep::train::Trainer;

use crate::util;

const SELECTORS: [&str; 4] = ["encoder", "bottleneck", "decoder", "all"];

fn tiny() -> UnetConfig {
    UnetConfig::new(1, vec![4, 8, 16]).unwrap()
}

fn spec(kind: AdaptationKind, module: &str, rank: usize) -> AdaptationSpec {
    let sel = Selector::new(module).unwrap();
    match kind {
        AdaptationKind::None => AdaptationSpec::none(),
        AdaptationKind::Full => AdaptationSpec::full(sel),
        k => AdaptationSpec::adapter(k, sel, rank),
    }
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
    (a - b)?
        .abs()?
        .flatten_all()?
        .max(0)?
        .to_dtype(DType::F32)?
        .to_scalar::<f32>()
}

/// Every trainable tensor set to random values, so no factor is zero.
fn randomize_trainables(m: &mut Unet2d, seed: u64) -> Result<()> {
    for (name, p) in m.params_mut() {
        if let Some(v) = p.var() {
            let t = uniform(seed, &name, v.dims(), 0.3, &Device::Cpu)?.to_dtype(v.dtype())?;
            v.set(&t)?;
        }
    }
    Ok(())
}

/// The contract's rank-16 table; other ranks follow from it (the low-rank part is linear in r,
/// DoRA adds one magnitude per output channel).
#[test]
fn trainable_counts_match_the_contract_at_ranks_4_16_96() -> Result<()> {
    let table: [(&str, [usize; 7]); 4] = [
        (
            "encoder",
            [72_016, 55_440, 26_768, 6_736, 55_664, 26_992, 6_960],
        ),
        (
            "decoder",
            [188_720, 80_640, 51_968, 9_536, 80_864, 52_192, 9_760],
        ),
        (
            "bottleneck",
            [221_696, 64_512, 31_744, 7_360, 64_768, 32_000, 7_616],
        ),
        (
            "all",
            [482_449, 200_592, 110_480, 23_632, 201_296, 111_184, 24_336],
        ),
    ];
    let kinds = [
        AdaptationKind::Full,
        AdaptationKind::LoraC,
        AdaptationKind::ConvLora,
        AdaptationKind::CpLora,
        AdaptationKind::DoraC,
        AdaptationKind::ConvDora,
        AdaptationKind::CpDora,
    ];
    let base = Unet2d::init(&UnetConfig::default(), 0, &Device::Cpu)?;
    assert_eq!(base.total_params(), 482_449);
    for (module, counts) in table {
        for rank in [4usize, 16, 96] {
            for (col, kind) in kinds.iter().enumerate() {
                let want = match kind {
                    AdaptationKind::Full => counts[col],
                    k if k.is_dora() => {
                        let magnitudes = counts[col] - counts[col - 3];
                        counts[col - 3] * rank / 16 + magnitudes
                    }
                    _ => counts[col] * rank / 16,
                };
                let mut m = base.clone();
                let s = spec(*kind, module, rank);
                s.apply(&mut m, 0).unwrap();
                let summary = ModelSummary::of(&m, &s);
                assert_eq!(summary.trainable_params, want, "{kind} {module} r{rank}");
                // Per layer, the contract's formulas written out.
                for layer in summary.layers.iter().filter(|l| l.adapter_params > 0) {
                    let (o, i, k) = (layer.shape[0], layer.shape[1], layer.shape[2]);
                    let lora = match kind {
                        AdaptationKind::LoraC | AdaptationKind::DoraC => rank * k * k * (i + o),
                        AdaptationKind::ConvLora | AdaptationKind::ConvDora => {
                            rank * (i * k * k + o)
                        }
                        _ => rank * (o + i + 2 * k),
                    };
                    let dora = if kind.is_dora() { o } else { 0 };
                    assert_eq!(layer.adapter_params, lora + dora, "{kind} {}", layer.layer);
                }
            }
        }
    }
    Ok(())
}

#[test]
fn adapters_leave_the_output_unchanged_at_init() -> Result<()> {
    let base = Unet2d::init(&tiny(), 3, &Device::Cpu)?;
    let x = normal(1, "x", &[2, 1, 32, 32], 1.0, &Device::Cpu)?;
    let want = base.forward(&x)?;
    for kind in AdaptationKind::ADAPTERS {
        for module in SELECTORS {
            let mut m = base.clone();
            spec(kind, module, 4).apply(&mut m, 11).unwrap();
            let d = max_abs_diff(&m.forward(&x)?, &want)?;
            assert!(d < 1e-6, "{kind}/{module}: output moved by {d} at init");
        }
    }
    Ok(())
}

/// By the second step every trainable tensor has a finite, non-zero gradient (the zero factor
/// moves on the first), and no frozen tensor ever changes.
#[test]
fn every_trainable_tensor_learns_and_frozen_tensors_never_change() -> Result<()> {
    let base = Unet2d::init(&tiny(), 3, &Device::Cpu)?;
    let x = normal(1, "x", &[2, 1, 32, 32], 1.0, &Device::Cpu)?;
    let y = normal(2, "y", &[2, 1, 32, 32], 1.0, &Device::Cpu)?
        .gt(0.8)?
        .to_dtype(DType::F32)?;
    for kind in AdaptationKind::ALL {
        for module in SELECTORS {
            if kind == AdaptationKind::None && module != "encoder" {
                continue;
            }
            let mut m = base.clone();
            let s = spec(kind, module, 2);
            s.apply(&mut m, 5).unwrap();
            let frozen_before: Vec<(String, Vec<f32>)> = m
                .params()
                .into_iter()
                .filter(|p| !p.param.is_trainable())
                .map(|p| {
                    (
                        p.name,
                        p.param.tensor().flatten_all().unwrap().to_vec1().unwrap(),
                    )
                })
                .collect();
            let vars: Vec<(String, Var)> = m
                .params()
                .into_iter()
                .filter_map(|p| p.param.var().map(|v| (p.name.clone(), v.clone())))
                .collect();
            if kind == AdaptationKind::None {
                assert!(vars.is_empty());
                continue;
            }
            let mut opt = AdamW::new(
                vars.iter().map(|(_, v)| v.clone()).collect(),
                AdamWConfig::default(),
            )?;
            for step in 0..2 {
                let loss = nn::bce_dice_loss(&m.forward(&x)?, &y)?;
                let grads = loss.backward()?;
                if step == 1 {
                    for (name, v) in &vars {
                        let g = grads
                            .get(v.as_tensor())
                            .unwrap_or_else(|| panic!("{kind}/{module}: no gradient for {name}"));
                        let g: Vec<f32> = g.flatten_all()?.to_vec1()?;
                        assert!(
                            g.iter().all(|v| v.is_finite()),
                            "{kind}/{module}: non-finite gradient for {name}"
                        );
                        assert!(
                            g.iter().any(|v| *v != 0.0),
                            "{kind}/{module}: zero gradient for {name}"
                        );
                    }
                }
                opt.step(&grads, 1e-2)?;
            }
            for p in m.params().into_iter().filter(|p| !p.param.is_trainable()) {
                let (_, before) = frozen_before.iter().find(|(n, _)| *n == p.name).unwrap();
                let now: Vec<f32> = p.param.tensor().flatten_all()?.to_vec1()?;
                assert!(before == &now, "{kind}/{module}: frozen {} changed", p.name);
            }
        }
    }
    Ok(())
}

#[test]
fn merged_model_equals_the_adapted_model() -> Result<()> {
    let base = Unet2d::init(&tiny(), 3, &Device::Cpu)?;
    let x = normal(1, "x", &[2, 1, 32, 32], 1.0, &Device::Cpu)?;
    let base_out = base.forward(&x)?;
    for kind in AdaptationKind::ALL
        .into_iter()
        .filter(|k| *k != AdaptationKind::None)
    {
        let mut m = base.clone();
        spec(kind, "all", 3).apply(&mut m, 5).unwrap();
        randomize_trainables(&mut m, 9)?;
        let adapted = m.forward(&x)?;
        let merged = m.merged()?;
        assert_eq!(merged.trainable_params(), 0);
        assert_eq!(
            merged.total_params(),
            base.total_params(),
            "{kind}: merge leaves adapters behind"
        );
        let d = max_abs_diff(&merged.forward(&x)?, &adapted)?;
        assert!(d <= 1e-5, "{kind}: merged differs by {d}");
        assert!(
            max_abs_diff(&adapted, &base_out)? > 1e-3,
            "{kind}: ΔW had no effect, the check is void"
        );
    }
    Ok(())
}

/// Central differences in f64 through the whole network for adapter and base tensors.
#[test]
fn network_gradients_match_finite_differences() -> Result<()> {
    let dev = Device::Cpu;
    let cfg = UnetConfig::new(1, vec![3, 5]).unwrap();
    let base = Unet2d::init(&cfg, 3, &dev)?;
    let x = normal(1, "x", &[2, 1, 8, 8], 1.0, &dev)?.to_dtype(DType::F64)?;
    let y = normal(2, "y", &[2, 1, 8, 8], 1.0, &dev)?
        .gt(0.5)?
        .to_dtype(DType::F64)?;
    let kinds = [
        AdaptationKind::Full,
        AdaptationKind::LoraC,
        AdaptationKind::ConvLora,
        AdaptationKind::CpLora,
    ];
    for kind in kinds {
        let mut m = base.clone();
        spec(kind, "all", 2).apply(&mut m, 5).unwrap();
        randomize_trainables(&mut m, 4)?;
        let m = m.to_dtype(DType::F64)?;
        let loss = |m: &Unet2d| nn::bce_dice_loss(&m.forward(&x)?, &y);
        let grads = loss(&m)?.backward()?;
        for p in m.params().into_iter().filter(|p| p.param.is_trainable()) {
            let var = p.param.var().unwrap();
            let g: Vec<f64> = grads
                .get(var.as_tensor())
                .unwrap()
                .flatten_all()?
                .to_vec1()?;
            let orig: Vec<f64> = var.flatten_all()?.to_vec1()?;
            // A few elements per tensor keep the test fast.
            for idx in (0..orig.len()).step_by((orig.len() / 3).max(1)) {
                let h = 1e-5;
                let at = |d: f64| -> Result<f64> {
                    let mut v = orig.clone();
                    v[idx] += d;
                    var.set(&Tensor::from_vec(v, var.dims(), &dev)?)?;
                    loss(&m)?.to_scalar::<f64>()
                };
                let fd = (at(h)? - at(-h)?) / (2.0 * h);
                var.set(&Tensor::from_vec(orig.clone(), var.dims(), &dev)?)?;
                let rel = (fd - g[idx]).abs() / fd.abs().max(g[idx].abs()).max(1e-7);
                assert!(
                    rel < 1e-4,
                    "{kind} {}[{idx}]: fd {fd} vs autograd {}",
                    p.name,
                    g[idx]
                );
            }
        }
    }
    Ok(())
}

/// Bright discs on a noisy background; the "shifted" task inverts the contrast and adds a
/// bright distractor stripe.
fn blobs(n: usize, size: usize, seed: u64, shifted: bool) -> Result<(Tensor, Tensor)> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut xs = vec![0f32; n * size * size];
    let mut ys = vec![0f32; n * size * size];
    for b in 0..n {
        let discs: Vec<(f64, f64, f64)> = (0..rng.random_range(1..=3))
            .map(|_| {
                (
                    rng.random_range(6.0..size as f64 - 6.0),
                    rng.random_range(6.0..size as f64 - 6.0),
                    rng.random_range(2.5..5.0),
                )
            })
            .collect();
        let stripe = rng.random_range(0..size);
        for r in 0..size {
            for c in 0..size {
                let inside = discs.iter().any(|(cy, cx, rad)| {
                    (r as f64 - cy).powi(2) + (c as f64 - cx).powi(2) <= rad * rad
                });
                let noise = rng.random_range(-0.25..0.25);
                let i = b * size * size + r * size + c;
                ys[i] = inside as u8 as f32;
                xs[i] = if shifted {
                    (if inside { 0.2 } else { 0.7 }) + noise + if c == stripe { 0.6 } else { 0.0 }
                } else {
                    (if inside { 0.8 } else { 0.2 }) + noise
                };
            }
        }
    }
    let dev = Device::Cpu;
    Ok((
        Tensor::from_vec(xs, (n, 1, size, size), &dev)?,
        Tensor::from_vec(ys, (n, 1, size, size), &dev)?,
    ))
}

fn dice(m: &Unet2d, x: &Tensor, y: &Tensor) -> Result<f32> {
    let p = m.forward(x)?.gt(0.0)?.to_dtype(DType::F32)?;
    let inter = (&p * y)?.sum_all()?.to_scalar::<f32>()?;
    let total = (p.sum_all()? + y.sum_all()?)?.to_scalar::<f32>()?;
    Ok(2.0 * inter / total.max(1.0))
}

fn train(m: Unet2d, steps: usize, lr: f64, seed: u64, shifted: bool) -> Result<Unet2d> {
    let cfg = AdamWConfig {
        lr,
        warmup_steps: 10,
        ..Default::default()
    };
    let mut t = Trainer::new(m, cfg, steps)?;
    for s in 0..steps {
        let (x, y) = blobs(8, 32, seed * 100_000 + s as u64, shifted)?;
        t.step(&x, &y)?;
    }
    Ok(t.model)
}

#[test]
fn a_tiny_unet_learns_blobs_and_an_adapter_learns_the_shift() -> Result<()> {
    let mut m = Unet2d::init(&tiny(), 1, &Device::Cpu)?;
    AdaptationSpec::full(Selector::all())
        .apply(&mut m, 0)
        .unwrap();
    let pretrained = train(m, 250, 1e-2, 1, false)?.merged()?;
    let (xt, yt) = blobs(16, 32, 999, false)?;
    let d = dice(&pretrained, &xt, &yt)?;
    assert!(d >= 0.9, "pre-training reached Dice {d}");

    let (xs, ys) = blobs(16, 32, 998, true)?;
    let frozen = dice(&pretrained, &xs, &ys)?;
    let mut adapted = pretrained.clone();
    spec(AdaptationKind::ConvLora, "all", 4)
        .apply(&mut adapted, 2)
        .unwrap();
    let adapted = train(adapted, 120, 1e-2, 2, true)?;
    let after = dice(&adapted, &xs, &ys)?;
    assert!(
        after > frozen + 0.2,
        "conv-lora on the shifted task: {after} vs frozen {frozen}"
    );
    Ok(())
}

#[test]
fn model_summary_cli_prints_counts_and_refuses_bad_arguments() {
    let dir = tempfile::tempdir().unwrap();
    let out = util::ranksweep(
        dir.path(),
        &[
            "model", "summary", "--kind", "cp-lora", "--module", "decoder", "--rank", "16",
            "--json",
        ],
    );
    assert!(out.status.success(), "{}", util::stderr(&out));
    let v: serde_json::Value = serde_json::from_str(&util::stdout(&out)).unwrap();
    assert_eq!(v["trainable_params"], 9_536);
    assert_eq!(v["total_params"], 482_449 + 9_536);
    let table = util::ranksweep(
        dir.path(),
        &["model", "summary", "--kind", "full", "--module", "decoder"],
    );
    assert!(
        util::stdout(&table).contains("188720"),
        "{}",
        util::stdout(&table)
    );
    let bad: [&[&str]; 6] = [
        &["--kind", "lora"],
        &["--kind", "conv-lora", "--module", "decoder", "--rank", "0"],
        &["--kind", "full", "--module", "decoder", "--rank", "4"],
        &["--kind", "none", "--module", "decoder"],
        &["--kind", "lora-c", "--module", "head", "--rank", "4"],
        &["--features", "16"],
    ];
    for args in bad {
        let mut full = vec!["model", "summary"];
        full.extend_from_slice(args);
        let out = util::ranksweep(dir.path(), &full);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = util::stderr(&out);
        assert_eq!(
            err.trim()
                .lines()
                .filter(|l| !l.is_empty() && !l.starts_with("For more"))
                .count(),
            1,
            "{args:?}: {err}"
        );
    }
    let out = util::ranksweep(
        dir.path(),
        &[
            "bench",
            "train-step",
            "--pretrain",
            "--size",
            "100",
            "--steps",
            "1",
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        util::stderr(&out).contains("multiples of 8"),
        "{}",
        util::stderr(&out)
    );
}

#[test]
fn bench_train_step_reports_json() {
    let dir = tempfile::tempdir().unwrap();
    let out = util::ranksweep(
        dir.path(),
        &[
            "bench",
            "train-step",
            "--features",
            "4,8",
            "--size",
            "16",
            "--batch",
            "2",
            "--kind",
            "dora-c",
            "--module",
            "decoder",
            "--rank",
            "2",
            "--steps",
            "2",
            "--threads",
            "1",
            "--json",
        ],
    );
    assert!(out.status.success(), "{}", util::stderr(&out));
    let v: serde_json::Value = serde_json::from_str(&util::stdout(&out)).unwrap();
    assert!(v["median_step_s"].as_f64().unwrap() > 0.0);
    assert!(v["gflops"].as_f64().unwrap() > 0.0);
    assert!(v["peak_rss_mb"].as_f64().unwrap() > 1.0);
}

/// The device-independent model checks (`ranksweep selftest` and the CUDA tests run them too).
#[test]
fn shared_model_checks_pass_on_cpu() {
    for c in ranksweep::model::checks::model_checks() {
        if let Err(e) = (c.run)(&Device::Cpu) {
            panic!("{}: {e}", c.name);
        }
    }
}
