//! The op checks, runnable on any device: central finite differences in f64, own op against
//! the candle-native reference (values and gradients), and "only the needed gradients". The
//! CPU unit tests, the CUDA tests (`tests/cuda.rs`) and `ranksweep selftest --device ...` all
//! run these same functions; a failed check is an `Err` naming what differed and by how much.
//!
//! On CUDA the f32 comparisons run with TF32 forbidden in the own convolutions; candle's own
//! cuDNN forward (the reference) may still use TF32, so f32 tolerances there are TF32-sized
//! (2e-3), and the exact comparison is the f64 one.

use candle_core::{DType, Device, Result, Tensor, Var};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::ops::{self, reference};

/// Relative error bound of the finite-difference checks.
pub const FD_TOL: f64 = 1e-4;

/// What one check concluded.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Pass,
    Skipped(String),
}

/// A named check on a device.
pub struct Check {
    pub name: &'static str,
    pub run: fn(&Device) -> Result<Outcome>,
}

/// A deterministic tensor with entries uniform in [lo, hi), on `dev`.
pub fn uniform(
    dims: &[usize],
    lo: f64,
    hi: f64,
    seed: u64,
    dtype: DType,
    dev: &Device,
) -> Result<Tensor> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let n: usize = dims.iter().product();
    let v: Vec<f64> = (0..n).map(|_| rng.random_range(lo..hi)).collect();
    Tensor::from_vec(v, dims, dev)?.to_dtype(dtype)
}

/// Distinct values (a shuffled grid of spacing `step`), for ops with kinks at ties or zero.
pub fn distinct(
    dims: &[usize],
    step: f64,
    seed: u64,
    dtype: DType,
    dev: &Device,
) -> Result<Tensor> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let n: usize = dims.iter().product();
    let mut v: Vec<f64> = (0..n)
        .map(|i| (i as f64 - n as f64 / 2.0 + 0.5) * step)
        .collect();
    for i in (1..n).rev() {
        let j = rng.random_range(0..=i);
        v.swap(i, j);
    }
    Tensor::from_vec(v, dims, dev)?.to_dtype(dtype)
}

fn max_abs(t: &Tensor) -> Result<f64> {
    t.to_dtype(DType::F64)?
        .abs()?
        .flatten_all()?
        .max(0)?
        .to_scalar::<f64>()
}

/// `a ≈ b`: max |a − b| ≤ tol · max(1, max |b|), else an error naming `what`.
pub fn close(a: &Tensor, b: &Tensor, tol: f64, what: &str) -> Result<()> {
    if a.dims() != b.dims() {
        candle_core::bail!("{what}: shapes differ: {:?} vs {:?}", a.dims(), b.dims())
    }
    let scale = max_abs(b)?.max(1.0);
    let d = max_abs(&(a.to_dtype(DType::F64)? - b.to_dtype(DType::F64)?)?)?;
    if d.is_nan() || d > tol * scale {
        candle_core::bail!("{what}: max |diff| {d:e} > {tol:e} · {scale}")
    }
    Ok(())
}

/// Gradients of `Σ f(inputs) ⊙ R` against central differences (f64, step 1e-6) for every input
/// flagged trainable; inputs flagged false stay plain tensors and must get no gradient.
pub fn fd_check(
    dev: &Device,
    inputs: &[(Tensor, bool)],
    f: impl Fn(&[Tensor]) -> Result<Tensor>,
) -> Result<()> {
    let host: Vec<(Vec<f64>, Vec<usize>, bool)> = inputs
        .iter()
        .map(|(t, g)| {
            Ok((
                t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?,
                t.dims().to_vec(),
                *g,
            ))
        })
        .collect::<Result<_>>()?;
    let on_dev = |v: &[f64], dims: &[usize]| Tensor::from_vec(v.to_vec(), dims, dev);
    let vars: Vec<Option<Var>> = host
        .iter()
        .map(|(v, d, g)| {
            if *g {
                Var::from_tensor(&on_dev(v, d)?).map(Some)
            } else {
                Ok(None)
            }
        })
        .collect::<Result<_>>()?;
    let args: Vec<Tensor> = host
        .iter()
        .zip(&vars)
        .map(|((v, d, _), var)| match var {
            Some(var) => Ok(var.as_tensor().clone()),
            None => on_dev(v, d),
        })
        .collect::<Result<_>>()?;
    let out = f(&args)?;
    let probe = uniform(out.dims(), -1.0, 1.0, 97, DType::F64, dev)?;
    let loss = |out: &Tensor| -> Result<f64> { (out * &probe)?.sum_all()?.to_scalar::<f64>() };
    let grads = (&out * &probe)?.sum_all()?.backward()?;
    let eps = 1e-6;
    for (idx, ((base, dims, _), var)) in host.iter().zip(&vars).enumerate() {
        let Some(var) = var else {
            if grads.get(&args[idx]).is_some() {
                candle_core::bail!("input {idx}: a frozen input got a gradient")
            }
            continue;
        };
        let Some(g) = grads.get(var.as_tensor()) else {
            candle_core::bail!("input {idx}: no gradient")
        };
        let analytic = g.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
        let mut numeric = Vec::with_capacity(base.len());
        for e in 0..base.len() {
            let at = |delta: f64| -> Result<f64> {
                let mut v = base.clone();
                v[e] += delta;
                let mut a = args.clone();
                a[idx] = on_dev(&v, dims)?;
                loss(&f(&a)?)
            };
            numeric.push((at(eps)? - at(-eps)?) / (2.0 * eps));
        }
        let scale = numeric.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        if scale <= 1e-8 {
            candle_core::bail!(
                "input {idx}: the numeric gradient vanishes; the check would be void"
            )
        }
        let err = analytic
            .iter()
            .zip(&numeric)
            .map(|(a, n)| (a - n).abs())
            .fold(0.0, f64::max);
        if err.is_nan() || err / scale >= FD_TOL {
            candle_core::bail!(
                "input {idx}: relative gradient error {:e} ≥ {FD_TOL:e}",
                err / scale
            )
        }
    }
    Ok(())
}

/// Own op against reference: forward and the gradient of `Σ out ⊙ probe` for every input
/// (all trainable), within `tol`.
pub fn own_vs_reference(
    dev: &Device,
    inputs: &[Tensor],
    own: impl Fn(&[Tensor]) -> Result<Tensor>,
    refr: impl Fn(&[Tensor]) -> Result<Tensor>,
    tol: f64,
) -> Result<()> {
    let vars: Vec<Var> = inputs
        .iter()
        .map(|t| Var::from_tensor(&t.to_device(dev)?))
        .collect::<Result<_>>()?;
    let args: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let (a, b) = (own(&args)?, refr(&args)?);
    close(&a, &b, tol, "forward")?;
    let probe = uniform(a.dims(), -1.0, 1.0, 98, a.dtype(), dev)?;
    let ga = (&a * &probe)?.sum_all()?.backward()?;
    let gb = (&b * &probe)?.sum_all()?.backward()?;
    for (i, v) in vars.iter().enumerate() {
        match (ga.get(v.as_tensor()), gb.get(v.as_tensor())) {
            (Some(x), Some(y)) => close(x, y, tol, &format!("gradient of input {i}"))?,
            (x, y) => candle_core::bail!(
                "input {i}: gradient missing (own: {}, reference: {})",
                x.is_some(),
                y.is_some()
            ),
        }
    }
    Ok(())
}

/// The f32 tolerance of own-vs-reference on `dev` (see the module docs).
fn f32_tol(dev: &Device) -> f64 {
    if dev.is_cpu() { 1e-5 } else { 2e-3 }
}

/// Runs `f` with TF32 forbidden in the own CUDA convolutions (a no-op elsewhere).
fn strict<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(feature = "cuda")]
    {
        let prev = super::cuda::tf32();
        super::cuda::set_tf32(false);
        let r = f();
        super::cuda::set_tf32(prev);
        r
    }
    #[cfg(not(feature = "cuda"))]
    f()
}

fn u(dims: &[usize], lo: f64, hi: f64, seed: u64, dev: &Device) -> Result<Tensor> {
    uniform(dims, lo, hi, seed, DType::F64, dev)
}

fn conv_fd(dev: &Device) -> Result<Outcome> {
    for (ci, co, k) in [(3, 5, 3), (5, 3, 1), (1, 2, 3)] {
        let x = u(&[2, ci, 5, 4], -1.0, 1.0, 1, dev)?;
        let w = u(&[co, ci, k, k], -1.0, 1.0, 2, dev)?;
        fd_check(dev, &[(x.clone(), true), (w.clone(), true)], |a| {
            ops::conv2d(&a[0], &a[1])
        })?;
        fd_check(dev, &[(x.clone(), true), (w.clone(), false)], |a| {
            ops::conv2d(&a[0], &a[1])
        })?;
        fd_check(dev, &[(x, false), (w, true)], |a| ops::conv2d(&a[0], &a[1]))?;
    }
    Ok(Outcome::Pass)
}

fn conv_vs_reference(dev: &Device) -> Result<Outcome> {
    strict(|| {
        for (b, ci, co, h, w, k) in [
            (2, 70, 3, 5, 40, 3),
            (2, 4, 3, 13, 20, 3),
            (3, 6, 4, 8, 6, 1),
        ] {
            for (dt, tol) in [(DType::F64, 1e-9), (DType::F32, f32_tol(dev))] {
                let x = uniform(&[b, ci, h, w], -1.0, 1.0, 8, dt, dev)?;
                let wt = uniform(&[co, ci, k, k], -0.3, 0.3, 9, dt, dev)?;
                own_vs_reference(
                    dev,
                    &[x, wt],
                    |a| ops::conv2d(&a[0], &a[1]),
                    |a| reference::conv2d(&a[0], &a[1]),
                    tol,
                )?;
            }
        }
        Ok(Outcome::Pass)
    })
}

fn conv_transpose_fd(dev: &Device) -> Result<Outcome> {
    for (ci, co) in [(3, 5), (5, 3)] {
        let x = u(&[2, ci, 3, 2], -1.0, 1.0, 31, dev)?;
        let w = u(&[ci, co, 2, 2], -1.0, 1.0, 32, dev)?;
        let b = u(&[co], -1.0, 1.0, 33, dev)?;
        let f = |a: &[Tensor]| ops::conv_transpose2x2(&a[0], &a[1], &a[2]);
        fd_check(
            dev,
            &[(x.clone(), true), (w.clone(), true), (b.clone(), true)],
            f,
        )?;
        fd_check(
            dev,
            &[(x.clone(), true), (w.clone(), false), (b.clone(), false)],
            f,
        )?;
        fd_check(dev, &[(x, false), (w, true), (b, false)], f)?;
    }
    Ok(Outcome::Pass)
}

fn conv_transpose_vs_reference(dev: &Device) -> Result<Outcome> {
    for (bt, ci, co, h, w) in [(3, 7, 40, 12, 5), (2, 5, 3, 4, 3)] {
        for (dt, tol) in [(DType::F64, 1e-9), (DType::F32, f32_tol(dev))] {
            let x = uniform(&[bt, ci, h, w], -1.0, 1.0, 37, dt, dev)?;
            let wt = uniform(&[ci, co, 2, 2], -0.5, 0.5, 38, dt, dev)?;
            let b = uniform(&[co], -0.5, 0.5, 39, dt, dev)?;
            own_vs_reference(
                dev,
                &[x, wt, b],
                |a| ops::conv_transpose2x2(&a[0], &a[1], &a[2]),
                |a| reference::conv_transpose2x2(&a[0], &a[1], &a[2]),
                tol,
            )?;
        }
    }
    Ok(Outcome::Pass)
}

fn pool_and_relu(dev: &Device) -> Result<Outcome> {
    for c in [3, 5] {
        let x = distinct(&[2, c, 4, 6], 0.01, 21, DType::F64, dev)?;
        fd_check(dev, &[(x.clone(), true)], |a| ops::max_pool2x2(&a[0]))?;
        fd_check(dev, &[(x, true)], |a| ops::relu(&a[0]))?;
    }
    for dt in [DType::F64, DType::F32] {
        let x = distinct(&[3, 5, 8, 6], 0.001, 22, dt, dev)?;
        own_vs_reference(
            dev,
            std::slice::from_ref(&x),
            |a| ops::max_pool2x2(&a[0]),
            |a| reference::max_pool2x2(&a[0]),
            0.0,
        )?;
        own_vs_reference(
            dev,
            &[x],
            |a| ops::relu(&a[0]),
            |a| reference::relu(&a[0]),
            0.0,
        )?;
    }
    // Ties: the first maximum takes the gradient; a NaN propagates.
    let x = Var::from_tensor(
        &Tensor::new(
            &[
                [[[1f32, 1., 2., 5.], [1., 1., 5., 0.]]],
                [[[0., f32::NAN, 3., 3.], [7., 1., 3., 9.]]],
            ],
            &Device::Cpu,
        )?
        .to_device(dev)?,
    )?;
    let y = ops::max_pool2x2(&x)?;
    let yv = y.flatten_all()?.to_vec1::<f32>()?;
    if (yv[0], yv[1], yv[3]) != (1.0, 5.0, 9.0) || !yv[2].is_nan() {
        candle_core::bail!("max-pool with ties and NaN: got {yv:?}")
    }
    let dx = y
        .sum_all()?
        .backward()?
        .get(&x)
        .map(|g| g.flatten_all()?.to_vec1::<f32>())
        .transpose()?;
    let want = vec![
        1f32, 0., 0., 1., 0., 0., 0., 0., 0., 1., 0., 0., 0., 0., 0., 1.,
    ];
    if dx.as_ref() != Some(&want) {
        candle_core::bail!("max-pool tie gradient: got {dx:?}, want {want:?}")
    }
    Ok(Outcome::Pass)
}

fn group_norm(dev: &Device) -> Result<Outcome> {
    for (c, groups) in [(3, 3), (6, 2), (5, 1)] {
        let x = u(&[2, c, 3, 4], -2.0, 2.0, 11, dev)?;
        let g = u(&[c], 0.5, 1.5, 12, dev)?;
        let b = u(&[c], -0.5, 0.5, 13, dev)?;
        let f = |a: &[Tensor]| ops::group_norm(&a[0], groups, &a[1], &a[2], 1e-5);
        fd_check(
            dev,
            &[(x.clone(), true), (g.clone(), true), (b.clone(), true)],
            f,
        )?;
        fd_check(
            dev,
            &[(x.clone(), true), (g.clone(), false), (b.clone(), false)],
            f,
        )?;
        fd_check(dev, &[(x, false), (g, true), (b, true)], f)?;
    }
    for (b, c, groups, h, w) in [(3, 16, 8, 9, 7), (2, 5, 5, 4, 4)] {
        for (dt, tol) in [(DType::F64, 1e-9), (DType::F32, 1e-5)] {
            let x = (uniform(&[b, c, h, w], -2.0, 3.0, 17, dt, dev)? * 4.0)?;
            let g = uniform(&[c], 0.5, 1.5, 18, dt, dev)?;
            let be = uniform(&[c], -0.5, 0.5, 19, dt, dev)?;
            own_vs_reference(
                dev,
                &[x, g, be],
                |a| ops::group_norm(&a[0], groups, &a[1], &a[2], 1e-5),
                |a| reference::group_norm(&a[0], groups, &a[1], &a[2], 1e-5),
                tol,
            )?;
        }
    }
    Ok(Outcome::Pass)
}

fn losses(dev: &Device) -> Result<Outcome> {
    let x = u(&[2, 1, 3, 4], -3.0, 3.0, 47, dev)?;
    let t = u(&[2, 1, 3, 4], 0.0, 1.0, 48, dev)?
        .ge(0.5)?
        .to_dtype(DType::F64)?;
    fd_check(dev, &[(x.clone(), true)], |a| {
        ops::bce_with_logits(&a[0], &t)
    })?;
    fd_check(dev, &[(x.clone(), true)], |a| {
        ops::soft_dice_loss(&a[0], &t, 1.0)
    })?;
    fd_check(dev, &[(x, true)], |a| ops::bce_dice_loss(&a[0], &t))?;
    for (dt, tol) in [(DType::F64, 1e-9), (DType::F32, 1e-5)] {
        let x = uniform(&[2, 1, 9, 8], -4.0, 4.0, 61, dt, dev)?;
        let t = uniform(&[2, 1, 9, 8], 0.0, 1.0, 62, dt, dev)?
            .ge(0.7)?
            .to_dtype(dt)?;
        own_vs_reference(
            dev,
            &[x],
            |a| ops::bce_dice_loss(&a[0], &t),
            |a| reference::bce_with_logits(&a[0], &t)? + reference::soft_dice_loss(&a[0], &t, 1.0)?,
            tol,
        )?;
    }
    let big = Var::from_tensor(&Tensor::new(&[[[[40f32, -40.]]]], &Device::Cpu)?.to_device(dev)?)?;
    let t = Tensor::new(&[[[[0f32, 1.]]]], &Device::Cpu)?.to_device(dev)?;
    let loss = ops::bce_with_logits(&big, &t)?;
    let l = loss.to_scalar::<f32>()?;
    let g = loss
        .backward()?
        .get(&big)
        .map(|g| g.flatten_all()?.to_vec1::<f32>())
        .transpose()?;
    let ok = (l - 40.0).abs() < 1e-4
        && g.as_ref()
            .is_some_and(|g| (g[0] - 0.5).abs() < 1e-6 && (g[1] + 0.5).abs() < 1e-6);
    if !ok {
        candle_core::bail!("BCE at logits ±40: loss {l}, gradient {g:?}")
    }
    Ok(Outcome::Pass)
}

/// bf16 autocast (CUDA): the convolutions run in bf16 and stay within bf16 accuracy of f32,
/// their outputs are f32, and f32 master tensors get f32 gradients.
fn bf16_autocast(dev: &Device) -> Result<Outcome> {
    if dev.is_cpu() {
        return Ok(Outcome::Skipped("bf16 autocast runs on CUDA only".into()));
    }
    let x = Var::from_tensor(&uniform(&[2, 8, 16, 16], -1.0, 1.0, 71, DType::F32, dev)?)?;
    let w = Var::from_tensor(&uniform(&[8, 8, 3, 3], -0.3, 0.3, 72, DType::F32, dev)?)?;
    let wt = Var::from_tensor(&uniform(&[8, 4, 2, 2], -0.3, 0.3, 73, DType::F32, dev)?)?;
    let b = Var::from_tensor(&uniform(&[4], -0.3, 0.3, 74, DType::F32, dev)?)?;
    let run = || -> Result<Tensor> {
        let y = ops::relu(&ops::conv2d(&x, &w)?)?;
        ops::conv_transpose2x2(&y, &wt, &b)
    };
    let want = run()?;
    let got = {
        let _g = super::autocast::enable(super::autocast::Precision::Bf16);
        run()?
    };
    if got.dtype() != DType::F32 {
        candle_core::bail!("autocast output is {:?}, expected f32", got.dtype())
    }
    close(&got, &want, 3e-2, "bf16 forward")?;
    let grads = got.sum_all()?.backward()?;
    for (name, v) in [("x", &x), ("w", &w), ("wt", &wt), ("b", &b)] {
        match grads.get(v.as_tensor()) {
            Some(g) if g.dtype() == DType::F32 => {}
            Some(g) => candle_core::bail!("{name}: gradient in {:?}, expected f32", g.dtype()),
            None => candle_core::bail!("{name}: no gradient under autocast"),
        }
    }
    Ok(Outcome::Pass)
}

/// Every op check, in a fixed order.
pub fn op_checks() -> Vec<Check> {
    vec![
        Check {
            name: "conv2d: finite differences (f64)",
            run: conv_fd,
        },
        Check {
            name: "conv2d: own vs reference (f64, f32)",
            run: conv_vs_reference,
        },
        Check {
            name: "conv_transpose2x2: finite differences (f64)",
            run: conv_transpose_fd,
        },
        Check {
            name: "conv_transpose2x2: own vs reference",
            run: conv_transpose_vs_reference,
        },
        Check {
            name: "max_pool2x2 + relu: gradients, ties, NaN",
            run: pool_and_relu,
        },
        Check {
            name: "group_norm: finite differences, own vs reference",
            run: group_norm,
        },
        Check {
            name: "bce/dice loss: finite differences, reference, large logits",
            run: losses,
        },
        Check {
            name: "bf16 autocast: accuracy and f32 gradients",
            run: bf16_autocast,
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shared checks on CPU (the CUDA tests run the same list on a GPU).
    #[test]
    fn op_checks_pass_on_cpu() {
        for c in op_checks() {
            match (c.run)(&Device::Cpu) {
                Ok(_) => {}
                Err(e) => panic!("{}: {e}", c.name),
            }
        }
    }

    #[test]
    fn close_and_fd_check_reject_wrong_values() -> Result<()> {
        let dev = &Device::Cpu;
        let a = uniform(&[3], 0.0, 1.0, 1, DType::F64, dev)?;
        assert!(close(&(&a + 0.1)?, &a, 1e-3, "shifted").is_err());
        // sqr's gradient is right; 1.5·sqr compared against the gradient of sqr is not.
        fd_check(dev, &[(a.clone(), true)], |x| x[0].sqr())?;
        let wrong = fd_check(dev, &[(a, true)], |x| {
            // forward x², gradient 3x (a detached extra term that only backward sees).
            let extra = (x[0].sqr()? - x[0].sqr()?.detach())?;
            x[0].sqr()? + (extra * 0.5)?
        });
        assert!(wrong.is_err());
        Ok(())
    }
}
