//! Test helpers: finite-difference gradient checks and tensor comparisons (test builds only).
//!
//! [`check`] compares the gradient that candle's backward pass gives for a scalar probe loss
//! `Σ f(inputs) ⊙ R` (R fixed, pseudo-random, so every output element matters with a
//! different weight) against central differences in f64, for every input marked trainable.

use candle_core::{DType, Device, Result, Tensor, Var};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Relative error bound of the finite-difference checks.
pub const FD_TOL: f64 = 1e-4;

/// A deterministic tensor with entries uniform in [lo, hi).
pub fn uniform(dims: &[usize], lo: f64, hi: f64, seed: u64, dtype: DType) -> Tensor {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let n: usize = dims.iter().product();
    let v: Vec<f64> = (0..n).map(|_| rng.random_range(lo..hi)).collect();
    Tensor::from_vec(v, dims, &Device::Cpu)
        .unwrap()
        .to_dtype(dtype)
        .unwrap()
}

/// A deterministic tensor of distinct values (a shuffled grid with spacing `step`), for ops with
/// kinks at ties (max-pool) or at zero (ReLU): no two entries are closer than `step`.
pub fn distinct(dims: &[usize], step: f64, seed: u64, dtype: DType) -> Tensor {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let n: usize = dims.iter().product();
    let mut v: Vec<f64> = (0..n)
        .map(|i| (i as f64 - n as f64 / 2.0 + 0.5) * step)
        .collect();
    for i in (1..n).rev() {
        let j = rng.random_range(0..=i);
        v.swap(i, j);
    }
    Tensor::from_vec(v, dims, &Device::Cpu)
        .unwrap()
        .to_dtype(dtype)
        .unwrap()
}

/// Largest |a − b| over all elements, after checking equal shapes.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    let a = a
        .to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap();
    let b = b
        .to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap();
    a.iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

/// Asserts `a ≈ b` with max |a − b| ≤ tol · max(1, max |b|).
pub fn assert_close(a: &Tensor, b: &Tensor, tol: f64, what: &str) {
    let scale = b.abs().unwrap().flatten_all().unwrap().max(0).unwrap();
    let scale = scale
        .to_dtype(DType::F64)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
        .max(1.0);
    let d = max_abs_diff(a, b);
    assert!(
        d <= tol * scale,
        "{what}: max |diff| {d:e} > {tol:e} · {scale}"
    );
}

/// Asserts that an own op and its reference agree: forward within `tol`, and the gradient of
/// the probe loss `Σ out ⊙ probe` with respect to each named variable within `tol`.
pub fn assert_matches_reference(
    own: &Tensor,
    refr: &Tensor,
    probe: &Tensor,
    vars: &[(&str, &Var)],
    tol: f64,
) -> Result<()> {
    assert_close(own, refr, tol, "forward");
    let g_own = (own * probe)?.sum_all()?.backward()?;
    let g_ref = (refr * probe)?.sum_all()?.backward()?;
    for (name, v) in vars {
        let (a, b) = (g_own.get(v), g_ref.get(v));
        let (Some(a), Some(b)) = (a, b) else {
            panic!(
                "{name}: no gradient (own: {}, reference: {})",
                a.is_some(),
                b.is_some()
            );
        };
        assert_close(a, b, tol, name);
    }
    Ok(())
}

/// Checks the gradients of `f` for every input whose flag is true against central differences
/// (f64, step 1e-6): max |analytic − numeric| / max |numeric| < [`FD_TOL`], and the numeric
/// gradient must not vanish. Inputs whose flag is false stay plain tensors (frozen).
pub fn check(inputs: &[(Tensor, bool)], f: impl Fn(&[Tensor]) -> Result<Tensor>) -> Result<()> {
    let inputs: Vec<(Tensor, bool)> = inputs
        .iter()
        .map(|(t, g)| Ok((t.to_dtype(DType::F64)?, *g)))
        .collect::<Result<_>>()?;
    let vars: Vec<Option<Var>> = inputs
        .iter()
        .map(|(t, g)| {
            if *g {
                Var::from_tensor(t).map(Some)
            } else {
                Ok(None)
            }
        })
        .collect::<Result<_>>()?;
    let args: Vec<Tensor> = inputs
        .iter()
        .zip(&vars)
        .map(|((t, _), v)| {
            v.as_ref()
                .map_or_else(|| t.clone(), |v| v.as_tensor().clone())
        })
        .collect();
    let out = f(&args)?;
    let probe = uniform(out.dims(), -1.0, 1.0, 97, DType::F64);
    let loss = |out: &Tensor| -> Result<f64> { (out * &probe)?.sum_all()?.to_scalar::<f64>() };
    let grads = (&out * &probe)?.sum_all()?.backward()?;

    let eps = 1e-6;
    for (idx, ((input, _), var)) in inputs.iter().zip(&vars).enumerate() {
        let Some(var) = var else { continue };
        let analytic = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("input {idx}: no gradient"))
            .flatten_all()?
            .to_vec1::<f64>()?;
        let base = input.flatten_all()?.to_vec1::<f64>()?;
        let mut numeric = Vec::with_capacity(base.len());
        for e in 0..base.len() {
            let at = |delta: f64| -> Result<f64> {
                let mut v = base.clone();
                v[e] += delta;
                let mut args = args.clone();
                args[idx] = Tensor::from_vec(v, input.dims(), &Device::Cpu)?;
                loss(&f(&args)?)
            };
            numeric.push((at(eps)? - at(-eps)?) / (2.0 * eps));
        }
        let scale = numeric.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        assert!(
            scale > 1e-8,
            "input {idx}: the numeric gradient vanishes; the check would be void"
        );
        let err = analytic
            .iter()
            .zip(&numeric)
            .map(|(a, n)| (a - n).abs())
            .fold(0.0, f64::max);
        assert!(
            err / scale < FD_TOL,
            "input {idx}: relative gradient error {:e} ≥ {FD_TOL:e}\n analytic {analytic:?}\n numeric {numeric:?}",
            err / scale
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_rejects_a_wrong_gradient() {
        // x·x through a custom op whose backward is deliberately 3x instead of 2x.
        struct Wrong;
        impl candle_core::CustomOp1 for Wrong {
            fn name(&self) -> &'static str {
                "wrong-square"
            }
            fn cpu_fwd(
                &self,
                s: &candle_core::CpuStorage,
                l: &candle_core::Layout,
            ) -> Result<(candle_core::CpuStorage, candle_core::Shape)> {
                let v = crate::nn::cpu::slice::<f64>(s, l, "wrong")?;
                Ok((
                    candle_core::CpuStorage::F64(v.iter().map(|x| x * x).collect()),
                    l.shape().clone(),
                ))
            }
            fn bwd(&self, arg: &Tensor, _res: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
                Ok(Some((g * (arg * 3.0)?)?))
            }
        }
        let x = uniform(&[2, 3], 0.5, 1.0, 1, DType::F64);
        let wrong = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            check(&[(x.clone(), true)], |a| a[0].apply_op1(Wrong))
        }));
        assert!(wrong.is_err(), "a 1.5x gradient error must fail the check");
        check(&[(x, true)], |a| a[0].sqr()).unwrap();
    }
}
