//! Fused BCE-with-logits and soft Dice loss on logits, one pass each way.
//!
//! Key type: [`BceDice`], a `CustomOp2` on (logits, target) of one shape → a scalar
//! `w_bce·BCE + w_dice·Dice`; `bce_with_logits`, `soft_dice_loss` and `bce_dice_loss` are its
//! three weightings. The composed reference takes ~15 candle ops each way, each allocating a
//! full-size tensor; this reads the logits and targets once forward and once backward.
//!
//! With p = σ(x), N elements, P = Σp, T = Σt, I = Σp·t, D = P + T + s:
//!   BCE  = Σ [max(x, 0) − x·t + log(1 + e^−|x|)] / N,   ∂/∂x = (p − t) / N;
//!   Dice = 1 − (2I + s) / D,   ∂/∂x = −(2t·D − (2I + s)) / D² · p(1 − p).
//! Per-element math runs in the input's precision, the sums in f64; the forward keeps
//! (P, T, I) for the backward. The target takes no gradient (it is data).

use std::sync::OnceLock;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor};

use super::{Float, filled, par, slice, tensor, with_data};

/// Elements per parallel job.
const CHUNK: usize = 1 << 14;

/// The loss op: `w_bce·BCE + w_dice·Dice(smooth)`.
#[derive(Debug)]
pub struct BceDice {
    w_bce: f64,
    w_dice: f64,
    smooth: f64,
    /// (P, T, I) of the forward.
    sums: OnceLock<(f64, f64, f64)>,
}

impl BceDice {
    pub fn new(w_bce: f64, w_dice: f64, smooth: f64) -> Self {
        BceDice {
            w_bce,
            w_dice,
            smooth,
            sums: OnceLock::new(),
        }
    }
}

/// σ(x) and the stable BCE term max(x, 0) − x·t + log(1 + e^−|x|), in the input's precision
/// (f32 transcendentals are what make the op cheap; the sums are f64).
#[inline]
fn terms<T: Float>(x: T, t: T) -> (T, T) {
    let one = T::one();
    let e = (T::zero() - x.abs()).exp();
    let p = if x >= T::zero() {
        one / (one + e)
    } else {
        e / (one + e)
    };
    let relu = if x > T::zero() { x } else { T::zero() };
    (p, relu - x * t + e.ln_1p())
}

/// (Σ BCE terms, P, T, I).
fn sums<T: Float>(x: &[T], t: &[T]) -> (f64, f64, f64, f64) {
    let parts = par::map(x.len().div_ceil(CHUNK), |c| {
        let end = x.len().min((c + 1) * CHUNK);
        let (xs, ts) = (&x[c * CHUNK..end], &t[c * CHUNK..end]);
        let mut s = (0.0, 0.0, 0.0, 0.0);
        for (&xv, &tv) in xs.iter().zip(ts) {
            let (p, b) = terms(xv, tv);
            let (p, b, tv) = (p.to_f64(), b.to_f64(), tv.to_f64());
            s = (s.0 + b, s.1 + p, s.2 + tv, s.3 + p * tv);
        }
        s
    });
    parts.into_iter().fold((0.0, 0.0, 0.0, 0.0), |a, b| {
        (a.0 + b.0, a.1 + b.1, a.2 + b.2, a.3 + b.3)
    })
}

impl BceDice {
    fn value(&self, n: usize, (b, p, t, i): (f64, f64, f64, f64)) -> f64 {
        let bce = if n == 0 { 0.0 } else { b / n as f64 };
        let dice = 1.0 - (2.0 * i + self.smooth) / (p + t + self.smooth);
        self.w_bce * bce + self.w_dice * dice
    }

    fn forward<T: Float>(&self, x: &[T], t: &[T]) -> T {
        let s = sums(x, t);
        let _ = self.sums.set((s.1, s.2, s.3));
        T::from_f64(self.value(x.len(), s))
    }

    /// ∂loss/∂x times the upstream gradient `g`.
    fn backward<T: Float>(&self, x: &[T], t: &[T], g: f64) -> Vec<T> {
        let (p_sum, t_sum, i_sum) = match self.sums.get() {
            Some(&s) => s,
            None => {
                let s = sums(x, t);
                (s.1, s.2, s.3)
            }
        };
        let n = x.len() as f64;
        let d = p_sum + t_sum + self.smooth;
        // ∂/∂x = cb·(p − t) + cd·(2t·D − num)·p(1 − p), with the constants in T.
        let cb = T::from_f64(g * self.w_bce / n);
        let cd = -g * self.w_dice / (d * d);
        let (cd_2d, cd_num) = (
            T::from_f64(cd * 2.0 * d),
            T::from_f64(cd * (2.0 * i_sum + self.smooth)),
        );
        // SAFETY: the chunks cover dx and every element is written.
        unsafe {
            filled(x.len(), |dx| {
                par::chunks_mut(dx, CHUNK, |c, dxs| {
                    let (xs, ts) = (&x[c * CHUNK..], &t[c * CHUNK..]);
                    for ((d_out, &xv), &tv) in dxs.iter_mut().zip(xs).zip(ts) {
                        let (p, _) = terms(xv, tv);
                        let v = cb * (p - tv) + (cd_2d * tv - cd_num) * p * (T::one() - p);
                        d_out.write(v);
                    }
                })
            })
        }
    }
}

impl CustomOp2 for BceDice {
    fn name(&self) -> &'static str {
        "ranksweep-bce-dice"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        if l1.shape() != l2.shape() {
            candle_core::bail!(
                "loss: logits {:?} and target {:?} differ in shape",
                l1.shape(),
                l2.shape()
            )
        }
        let v = match (s1, s2) {
            (CpuStorage::F32(_), CpuStorage::F32(_)) => CpuStorage::F32(vec![
                self.forward::<f32>(slice(s1, l1, "loss")?, slice(s2, l2, "loss")?),
            ]),
            (CpuStorage::F64(_), CpuStorage::F64(_)) => CpuStorage::F64(vec![
                self.forward::<f64>(slice(s1, l1, "loss")?, slice(s2, l2, "loss")?),
            ]),
            _ => candle_core::bail!(
                "loss: expected f32 or f64 logits and target of one dtype, got {:?} and {:?}",
                s1.dtype(),
                s2.dtype()
            ),
        };
        Ok((v, Shape::from(())))
    }

    fn bwd(
        &self,
        x: &Tensor,
        t: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = g.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        fn run<T: Float>(op: &BceDice, x: &Tensor, t: &Tensor, g: f64) -> Result<Tensor> {
            let v = with_data::<T, _>(x, "loss", |xs| {
                with_data::<T, _>(t, "loss", |ts| Ok(op.backward(xs, ts, g)))
            })?;
            tensor(v, x.dims())
        }
        let dx = match x.dtype() {
            DType::F32 => run::<f32>(self, x, t, g)?,
            DType::F64 => run::<f64>(self, x, t, g)?,
            dt => candle_core::bail!("loss: expected f32 or f64, got {dt:?}"),
        };
        Ok((Some(dx), None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::gradcheck::{assert_close, check, uniform};
    use crate::nn::ops::{self, reference};
    use candle_core::{Device, Var};

    fn target(dims: &[usize], seed: u64, dtype: DType) -> Tensor {
        uniform(dims, 0.0, 1.0, seed, DType::F64)
            .ge(0.7)
            .unwrap()
            .to_dtype(dtype)
            .unwrap()
    }

    #[test]
    fn gradients_match_finite_differences_for_each_weighting() -> Result<()> {
        let x = uniform(&[2, 1, 3, 5], -4.0, 4.0, 61, DType::F64);
        let t = target(&[2, 1, 3, 5], 62, DType::F64);
        for (wb, wd, s) in [
            (1.0, 0.0, 1.0),
            (0.0, 1.0, 1.0),
            (1.0, 1.0, 1.0),
            (0.5, 2.0, 0.1),
        ] {
            check(&[(x.clone(), true)], |a| {
                a[0].apply_op2(&t, BceDice::new(wb, wd, s))
            })?;
        }
        Ok(())
    }

    #[test]
    fn matches_reference_value_and_gradient_in_f32() -> Result<()> {
        // Large enough for several parallel chunks.
        let dims = [3, 1, 100, 120];
        let x = Var::from_tensor(&uniform(&dims, -6.0, 6.0, 63, DType::F32))?;
        let t = target(&dims, 64, DType::F32);
        type Loss = fn(&Tensor, &Tensor) -> Result<Tensor>;
        let cases: [(&str, Loss, Loss); 3] = [
            ("bce", ops::bce_with_logits, reference::bce_with_logits),
            (
                "dice",
                |x, t| ops::soft_dice_loss(x, t, 1.0),
                |x, t| reference::soft_dice_loss(x, t, 1.0),
            ),
            ("bce+dice", ops::bce_dice_loss, |x, t| {
                reference::bce_with_logits(x, t)? + reference::soft_dice_loss(x, t, 1.0)?
            }),
        ];
        for (name, own, refr) in cases {
            let (lo, lr) = (own(&x, &t)?, refr(&x, &t)?);
            assert_close(&lo, &lr, 1e-5, name);
            let (go, gr) = (lo.backward()?, lr.backward()?);
            assert_close(go.get(&x).unwrap(), gr.get(&x).unwrap(), 1e-5, name);
        }
        Ok(())
    }

    #[test]
    fn stays_finite_at_large_logits_and_checks_shapes() -> Result<()> {
        let x = Var::new(&[[[[80f32, -80., 0.]]]], &Device::Cpu)?;
        let t = Tensor::new(&[[[[0f32, 1., 1.]]]], &Device::Cpu)?;
        let loss = ops::bce_with_logits(&x, &t)?;
        // (80 + 80 + log 2) / 3.
        assert!((loss.to_scalar::<f32>()? - (160.0 + 2f32.ln()) / 3.0).abs() < 1e-4);
        let g = loss
            .backward()?
            .get(&x)
            .unwrap()
            .flatten_all()?
            .to_vec1::<f32>()?;
        assert!(g.iter().all(|v| v.is_finite()), "{g:?}");
        assert!(
            (g[0] - 1.0 / 3.0).abs() < 1e-6
                && (g[1] + 1.0 / 3.0).abs() < 1e-6
                && (g[2] + 1.0 / 6.0).abs() < 1e-6
        );
        let bad = Tensor::zeros((1, 1, 1, 2), DType::F32, &Device::Cpu)?;
        let err = x
            .apply_op2(&bad, BceDice::new(1.0, 0.0, 1.0))
            .unwrap_err()
            .to_string();
        assert!(err.contains("differ in shape"), "{err}");
        Ok(())
    }

    /// The loss over 5D (B, 1, D, H, W) logits: finite differences and the reference.
    #[test]
    fn loss_over_5d_matches_finite_differences_and_reference() -> Result<()> {
        let x = uniform(&[2, 1, 3, 2, 4], -4.0, 4.0, 161, DType::F64);
        let t = target(&[2, 1, 3, 2, 4], 162, DType::F64);
        check(&[(x, true)], |a| ops::bce_dice_loss(&a[0], &t))?;
        let dims = [2, 1, 8, 12, 10];
        let x = Var::from_tensor(&uniform(&dims, -6.0, 6.0, 163, DType::F32))?;
        let t = target(&dims, 164, DType::F32);
        let lo = ops::bce_dice_loss(&x, &t)?;
        let lr = (reference::bce_with_logits(&x, &t)? + reference::soft_dice_loss(&x, &t, 1.0)?)?;
        assert_close(&lo, &lr, 1e-5, "5D loss");
        let (go, gr) = (lo.backward()?, lr.backward()?);
        assert_close(
            go.get(&x).unwrap(),
            gr.get(&x).unwrap(),
            1e-5,
            "5D loss gradient",
        );
        Ok(())
    }
}
