//! Model checks runnable on any device (the CPU tests in tests/model.rs, the CUDA tests and
//! `ranksweep selftest` share them): adapters leave the output unchanged at init, and every
//! trainable tensor gets a finite, non-zero gradient. A tiny net (features [4, 8, 16], 32²).

use candle_core::{DType, Device, Result, Var};

use super::param::normal;
use super::{AdamW, AdamWConfig, AdaptationKind, AdaptationSpec, Selector, Unet2d, UnetConfig};
use crate::nn;
use crate::nn::checks::{Check, Outcome};

const SELECTORS: [&str; 4] = ["encoder", "bottleneck", "decoder", "all"];

fn tiny() -> Result<UnetConfig> {
    UnetConfig::new(1, vec![4, 8, 16]).map_err(|e| candle_core::Error::Msg(e.to_string()))
}

fn spec(kind: AdaptationKind, module: &str, rank: usize) -> Result<AdaptationSpec> {
    let sel = Selector::new(module).map_err(|e| candle_core::Error::Msg(e.to_string()))?;
    Ok(match kind {
        AdaptationKind::None => AdaptationSpec::none(),
        AdaptationKind::Full => AdaptationSpec::full(sel),
        k => AdaptationSpec::adapter(k, sel, rank),
    })
}

fn apply(m: &mut Unet2d, s: &AdaptationSpec, seed: u64) -> Result<()> {
    s.apply(m, seed)
        .map_err(|e| candle_core::Error::Msg(e.to_string()))
}

/// Every adapter kind on every selector leaves the output unchanged at init (1e-6; 1e-5 off
/// CPU, where the adapted conv's merged weight may pick another cuDNN algorithm).
fn adapters_unchanged_at_init(dev: &Device) -> Result<Outcome> {
    let base = Unet2d::init(&tiny()?, 3, dev)?;
    let x = normal(1, "x", &[2, 1, 32, 32], 1.0, dev)?;
    let want = base.forward(&x)?;
    let tol = if dev.is_cpu() { 1e-6 } else { 1e-5 };
    for kind in AdaptationKind::ADAPTERS {
        for module in SELECTORS {
            let mut m = base.clone();
            apply(&mut m, &spec(kind, module, 4)?, 11)?;
            let d = (m.forward(&x)? - &want)?
                .abs()?
                .flatten_all()?
                .max(0)?
                .to_scalar::<f32>()?;
            if d.is_nan() || d >= tol {
                candle_core::bail!("{kind}/{module}: output moved by {d} at init")
            }
        }
    }
    Ok(Outcome::Pass)
}

/// By the second AdamW step every trainable tensor has a finite, non-zero gradient.
fn every_trainable_gets_a_gradient(dev: &Device) -> Result<Outcome> {
    let base = Unet2d::init(&tiny()?, 3, dev)?;
    let x = normal(1, "x", &[2, 1, 32, 32], 1.0, dev)?;
    let y = normal(2, "y", &[2, 1, 32, 32], 1.0, dev)?
        .gt(0.8)?
        .to_dtype(DType::F32)?;
    for kind in AdaptationKind::ALL {
        if kind == AdaptationKind::None {
            continue;
        }
        for module in SELECTORS {
            let mut m = base.clone();
            apply(&mut m, &spec(kind, module, 2)?, 5)?;
            let vars: Vec<(String, Var)> = m
                .params()
                .into_iter()
                .filter_map(|p| p.param.var().map(|v| (p.name.clone(), v.clone())))
                .collect();
            let mut opt = AdamW::new(
                vars.iter().map(|(_, v)| v.clone()).collect(),
                AdamWConfig::default(),
            )?;
            for step in 0..2 {
                let grads = nn::bce_dice_loss(&m.forward(&x)?, &y)?.backward()?;
                if step == 1 {
                    for (name, v) in &vars {
                        let Some(g) = grads.get(v.as_tensor()) else {
                            candle_core::bail!("{kind}/{module}: no gradient for {name}")
                        };
                        let g: Vec<f32> = g.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
                        if !g.iter().all(|v| v.is_finite()) {
                            candle_core::bail!("{kind}/{module}: non-finite gradient for {name}")
                        }
                        if g.iter().all(|v| *v == 0.0) {
                            candle_core::bail!("{kind}/{module}: zero gradient for {name}")
                        }
                    }
                }
                opt.step(&grads, 1e-2)?;
            }
        }
    }
    Ok(Outcome::Pass)
}

/// The model checks.
pub fn model_checks() -> Vec<Check> {
    vec![
        Check {
            name: "model: adapters leave the output unchanged at init",
            run: adapters_unchanged_at_init,
        },
        Check {
            name: "model: every trainable tensor gets a gradient",
            run: every_trainable_gets_a_gradient,
        },
    ]
}

/// The result of one check.
#[derive(Debug, Clone)]
pub struct CheckReport {
    pub name: &'static str,
    /// `Ok(None)` passed, `Ok(Some(reason))` skipped, `Err(message)` failed.
    pub result: std::result::Result<Option<String>, String>,
    pub seconds: f64,
}

/// Runs the op checks and the model checks on `dev`, each isolated (a panic inside a check is
/// reported as its failure).
pub fn run_all(dev: &Device) -> Vec<CheckReport> {
    let mut checks = nn::checks::op_checks();
    checks.extend(model_checks());
    checks
        .into_iter()
        .map(|c| {
            let t = std::time::Instant::now();
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (c.run)(dev)));
            let result = match r {
                Ok(Ok(Outcome::Pass)) => Ok(None),
                Ok(Ok(Outcome::Skipped(why))) => Ok(Some(why)),
                Ok(Err(e)) => Err(e.to_string()),
                Err(p) => Err(p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "panicked".into())),
            };
            CheckReport {
                name: c.name,
                result,
                seconds: t.elapsed().as_secs_f64(),
            }
        })
        .collect()
}
