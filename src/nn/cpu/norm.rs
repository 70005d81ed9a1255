//! Fused GroupNorm with a per-channel affine transform.
//!
//! Key type: [`GroupNorm`], a `CustomOp3` on (x: (B, C, H, W), gamma: (C), beta: (C)).
//!
//! Design: one job per (image, group), whose C/G·H·W values are contiguous in NCHW and small
//! enough to stay in L2 across passes. The forward takes the mean, then the variance around it
//! (two passes, f64 totals, like the reference), and writes `x·scale_c + shift_c`; it keeps the
//! per-group mean and 1/σ for the backward. The backward is analytic: with x̂ = (x − μ)/σ and
//! n = C/G·H·W,
//!   dβ_c = Σ dy,  dγ_c = Σ dy·x̂,
//!   dx = (γ_c·dy − Σ_g γ·dy / n − x̂·Σ_g γ·dy·x̂ / n) / σ,
//! which per channel is `dy·p + x·q + r`, one fused pass.

use std::mem::MaybeUninit;
use std::sync::OnceLock;

use super::{Float, dot_f64, filled, par, slice, sum_f64, sum_sq_dev_f64, tensor, with_data};
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor};

/// The GroupNorm op. `need` says which of (x, gamma, beta) take gradients; `stats` holds the
/// forward's (mean, 1/σ) per (image, group).
#[derive(Debug)]
pub struct GroupNorm {
    groups: usize,
    eps: f64,
    need: [bool; 3],
    stats: OnceLock<Vec<(f64, f64)>>,
}

impl GroupNorm {
    /// An op for `groups` groups; `need` flags (x, gamma, beta) that take part in the graph.
    pub fn new(groups: usize, eps: f64, need: [bool; 3]) -> Self {
        GroupNorm {
            groups,
            eps,
            need,
            stats: OnceLock::new(),
        }
    }

    /// Validates (B, C, H, W) or (B, C, D, H, W), (C), (C); returns (B, C, spatial size).
    fn dims(&self, x: &Shape, gamma: &Shape, beta: &Shape) -> Result<(usize, usize, usize)> {
        if !matches!(x.rank(), 4 | 5) {
            candle_core::bail!("group_norm: expected a 4D or 5D input, got {x:?}")
        }
        let (b, c) = (x.dims()[0], x.dims()[1]);
        let spatial: usize = x.dims()[2..].iter().product();
        if self.groups == 0 || c % self.groups != 0 {
            candle_core::bail!(
                "group_norm: {c} channels do not split into {} groups",
                self.groups
            )
        }
        for (name, s) in [("gamma", gamma), ("beta", beta)] {
            if s.elem_count() != c || s.rank() != 1 {
                candle_core::bail!("group_norm: expected {name} of shape ({c}), got {s:?}")
            }
        }
        Ok((b, c, spatial))
    }
}

/// Mean and 1/σ of one group's values.
fn stats<T: Float>(xs: &[T], eps: f64) -> (f64, f64) {
    let n = xs.len() as f64;
    let mean = sum_f64(xs) / n;
    let var = sum_sq_dev_f64(xs, T::from_f64(mean)) / n;
    (mean, 1.0 / (var + eps).sqrt())
}

fn forward<T: Float>(
    x: &[T],
    gamma: &[T],
    beta: &[T],
    (c, hw): (usize, usize),
    groups: usize,
    eps: f64,
) -> (Vec<T>, Vec<(f64, f64)>) {
    let cg = c / groups;
    let len = cg * hw;
    if len == 0 {
        return (vec![T::zero(); x.len()], Vec::new());
    }
    let mut st = Vec::new();
    // SAFETY: the chunks cover y and every element of each chunk is written.
    let y = unsafe {
        filled(x.len(), |y| {
            st = par::chunks_map(y, len, |j, ys| {
                let xs = &x[j * len..(j + 1) * len];
                let (mean, rstd) = stats(xs, eps);
                let g = j % groups;
                for (ci, (yc, xc)) in ys.chunks_exact_mut(hw).zip(xs.chunks_exact(hw)).enumerate() {
                    let ch = g * cg + ci;
                    let scale = gamma[ch].to_f64() * rstd;
                    let (scale, shift) = (
                        T::from_f64(scale),
                        T::from_f64(beta[ch].to_f64() - mean * scale),
                    );
                    yc.iter_mut().zip(xc).for_each(|(y, &x)| {
                        y.write(x * scale + shift);
                    });
                }
                (mean, rstd)
            });
        })
    };
    (y, st)
}

/// Per-channel (Σ dy, Σ dy·x̂) of one (image, group).
type ChannelSums = Vec<(f64, f64)>;

/// Gradients: dx (when `need_x`) and per-channel (Σ dy·x̂, Σ dy) summed over images.
fn backward<T: Float>(
    x: &[T],
    dy: &[T],
    gamma: &[T],
    st: &[(f64, f64)],
    (c, hw): (usize, usize),
    groups: usize,
    need_x: bool,
) -> (Option<Vec<T>>, Vec<f64>, Vec<f64>) {
    let cg = c / groups;
    let len = cg * hw;
    let mut dgamma = vec![0.0; c];
    let mut dbeta = vec![0.0; c];
    if len == 0 {
        return (need_x.then(|| vec![T::zero(); x.len()]), dgamma, dbeta);
    }
    // Per (image, group): per-channel Σ dy and Σ dy·x̂; writes dx when given.
    let job =
        |j: usize, xs: &[T], dys: &[T], dx: Option<&mut [MaybeUninit<T>]>| -> Vec<(f64, f64)> {
            let (mean, rstd) = st[j];
            let g = j % groups;
            let sums: ChannelSums = xs
                .chunks_exact(hw)
                .zip(dys.chunks_exact(hw))
                .map(|(xc, dc)| {
                    let (sdy, sdyx) = (sum_f64(dc), dot_f64(dc, xc));
                    (sdy, rstd * (sdyx - mean * sdy))
                })
                .collect();
            if let Some(dx) = dx {
                let n = len as f64;
                let (mut a, mut b) = (0.0, 0.0);
                for (ci, (sdy, sdyxh)) in sums.iter().enumerate() {
                    let gm = gamma[g * cg + ci].to_f64();
                    a += gm * sdy / n;
                    b += gm * sdyxh / n;
                }
                for (ci, ((dxc, xc), dc)) in dx
                    .chunks_exact_mut(hw)
                    .zip(xs.chunks_exact(hw))
                    .zip(dys.chunks_exact(hw))
                    .enumerate()
                {
                    let gm = gamma[g * cg + ci].to_f64();
                    // dx = rstd·(γ·dy − a − (x − μ)·rstd·b) = dy·p + x·q + r.
                    let p = T::from_f64(gm * rstd);
                    let q = T::from_f64(-rstd * rstd * b);
                    let r = T::from_f64(rstd * (mean * rstd * b - a));
                    dxc.iter_mut().zip(xc).zip(dc).for_each(|((d, &xv), &dv)| {
                        d.write(dv * p + xv * q + r);
                    });
                }
            }
            sums
        };
    let (dx, sums): (Option<Vec<T>>, Vec<ChannelSums>) = if need_x {
        let mut sums = Vec::new();
        // SAFETY: the chunks cover dx and the job writes every element of its chunk.
        let dx = unsafe {
            filled(x.len(), |dx| {
                sums = par::chunks_map(dx, len, |j, dxs| {
                    job(
                        j,
                        &x[j * len..(j + 1) * len],
                        &dy[j * len..(j + 1) * len],
                        Some(dxs),
                    )
                });
            })
        };
        (Some(dx), sums)
    } else {
        let sums = par::map(x.len() / len, |j| {
            job(
                j,
                &x[j * len..(j + 1) * len],
                &dy[j * len..(j + 1) * len],
                None,
            )
        });
        (None, sums)
    };
    for (j, s) in sums.iter().enumerate() {
        let g = j % groups;
        for (ci, (sdy, sdyxh)) in s.iter().enumerate() {
            dbeta[g * cg + ci] += sdy;
            dgamma[g * cg + ci] += sdyxh;
        }
    }
    (dx, dgamma, dbeta)
}

impl GroupNorm {
    fn grads<T: Float>(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        dy: &Tensor,
    ) -> Result<[Option<Tensor>; 3]> {
        let (_, c, hw) = self.dims(x.shape(), gamma.shape(), gamma.shape())?;
        let (dx, dgamma, dbeta) = with_data::<T, _>(x, "group_norm", |xs| {
            with_data::<T, _>(dy, "group_norm", |dys| {
                with_data::<T, _>(gamma, "group_norm", |gs| {
                    // The forward's statistics; recomputed if this op never ran forward on CPU.
                    let recomputed;
                    let st = match self.stats.get() {
                        Some(st) => st.as_slice(),
                        None => {
                            let len = (c / self.groups * hw).max(1);
                            recomputed = par::map(xs.len() / len, |j| {
                                stats(&xs[j * len..(j + 1) * len], self.eps)
                            });
                            recomputed.as_slice()
                        }
                    };
                    Ok(backward(
                        xs,
                        dys,
                        gs,
                        st,
                        (c, hw),
                        self.groups,
                        self.need[0],
                    ))
                })
            })
        })?;
        let dx = dx.map(|v| tensor(v, x.dims())).transpose()?;
        let to_t = |v: Vec<f64>| tensor(v.into_iter().map(T::from_f64).collect(), &[c]);
        let dgamma = if self.need[1] {
            Some(to_t(dgamma)?)
        } else {
            None
        };
        let dbeta = if self.need[2] {
            Some(to_t(dbeta)?)
        } else {
            None
        };
        Ok([dx, dgamma, dbeta])
    }
}

impl CustomOp3 for GroupNorm {
    fn name(&self) -> &'static str {
        "ranksweep-group-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (_, c, hw) = self.dims(l1.shape(), l2.shape(), l3.shape())?;
        let dims = (c, hw);
        let (y, st) = match (s1, s2, s3) {
            (CpuStorage::F32(_), CpuStorage::F32(_), CpuStorage::F32(_)) => {
                let (y, st) = forward::<f32>(
                    slice(s1, l1, "group_norm")?,
                    slice(s2, l2, "group_norm")?,
                    slice(s3, l3, "group_norm")?,
                    dims,
                    self.groups,
                    self.eps,
                );
                (CpuStorage::F32(y), st)
            }
            (CpuStorage::F64(_), CpuStorage::F64(_), CpuStorage::F64(_)) => {
                let (y, st) = forward::<f64>(
                    slice(s1, l1, "group_norm")?,
                    slice(s2, l2, "group_norm")?,
                    slice(s3, l3, "group_norm")?,
                    dims,
                    self.groups,
                    self.eps,
                );
                (CpuStorage::F64(y), st)
            }
            _ => candle_core::bail!(
                "group_norm: expected f32 or f64 x, gamma and beta of one dtype, got {:?}, {:?}, {:?}",
                s1.dtype(),
                s2.dtype(),
                s3.dtype()
            ),
        };
        // A second forward of the same op value (not done by ops::group_norm) keeps the first
        // statistics; backward then uses the graph's own x anyway.
        let _ = self.stats.set(st);
        Ok((y, l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        _beta: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dy = dy.contiguous()?;
        let [dx, dg, db] = match x.dtype() {
            DType::F32 => self.grads::<f32>(x, gamma, &dy)?,
            DType::F64 => self.grads::<f64>(x, gamma, &dy)?,
            dt => candle_core::bail!("group_norm: expected f32 or f64, got {dt:?}"),
        };
        Ok((dx, dg, db))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::gradcheck::{assert_matches_reference, check, uniform};
    use crate::nn::ops::{self, reference};
    use candle_core::Var;

    fn op(x: &Tensor, g: &Tensor, b: &Tensor, groups: usize) -> Result<Tensor> {
        x.apply_op3(
            g,
            b,
            GroupNorm::new(groups, 1e-5, [x.track_op(), g.track_op(), b.track_op()]),
        )
    }

    #[test]
    fn gradients_match_finite_differences_with_odd_channels() -> Result<()> {
        // 3 channels in 3 groups (one channel each), 6 in 2 groups, 5 in 1 group; batch 2.
        for (c, groups) in [(3, 3), (6, 2), (5, 1)] {
            let x = uniform(&[2, c, 3, 4], -2.0, 2.0, 11, DType::F64);
            let g = uniform(&[c], 0.5, 1.5, 12, DType::F64);
            let b = uniform(&[c], -0.5, 0.5, 13, DType::F64);
            check(&[(x, true), (g, true), (b, true)], |a| {
                op(&a[0], &a[1], &a[2], groups)
            })?;
        }
        Ok(())
    }

    #[test]
    fn frozen_affine_or_frozen_input_still_gives_the_other_gradients() -> Result<()> {
        let x = uniform(&[2, 4, 3, 3], -2.0, 2.0, 14, DType::F64);
        let g = uniform(&[4], 0.5, 1.5, 15, DType::F64);
        let b = uniform(&[4], -0.5, 0.5, 16, DType::F64);
        check(
            &[(x.clone(), true), (g.clone(), false), (b.clone(), false)],
            |a| op(&a[0], &a[1], &a[2], 2),
        )?;
        check(&[(x, false), (g, true), (b, true)], |a| {
            op(&a[0], &a[1], &a[2], 2)
        })?;
        Ok(())
    }

    #[test]
    fn matches_reference_forward_and_gradients_in_f32() -> Result<()> {
        for (b, c, groups, h, w) in [(3, 16, 8, 9, 7), (2, 5, 5, 4, 4)] {
            let x = Var::from_tensor(&(uniform(&[b, c, h, w], -2.0, 3.0, 17, DType::F32) * 4.0)?)?;
            let g = Var::from_tensor(&uniform(&[c], 0.5, 1.5, 18, DType::F32))?;
            let be = Var::from_tensor(&uniform(&[c], -0.5, 0.5, 19, DType::F32))?;
            let probe = uniform(&[b, c, h, w], -1.0, 1.0, 20, DType::F32);
            let own = ops::group_norm(&x, groups, &g, &be, 1e-5)?;
            let refr = reference::group_norm(&x, groups, &g, &be, 1e-5)?;
            let vars = [("dx", &x), ("dgamma", &g), ("dbeta", &be)];
            assert_matches_reference(&own, &refr, &probe, &vars, 1e-5)?;
        }
        Ok(())
    }

    #[test]
    fn rejects_bad_groups_and_affine_shapes() {
        let dev = &candle_core::Device::Cpu;
        let x = Tensor::zeros((1, 6, 2, 2), DType::F32, dev).unwrap();
        let g = Tensor::ones(6, DType::F32, dev).unwrap();
        let err = op(&x, &g, &g, 4).unwrap_err().to_string();
        assert!(
            err.contains("6 channels do not split into 4 groups"),
            "{err}"
        );
        let g5 = Tensor::ones(5, DType::F32, dev).unwrap();
        let err = op(&x, &g5, &g, 3).unwrap_err().to_string();
        assert!(err.contains("gamma"), "{err}");
    }

    #[test]
    fn gradients_3d_match_finite_differences_and_reference() -> Result<()> {
        for (c, groups) in [(3, 3), (6, 2), (5, 1)] {
            let x = uniform(&[2, c, 2, 3, 2], -2.0, 2.0, 111, DType::F64);
            let g = uniform(&[c], 0.5, 1.5, 112, DType::F64);
            let b = uniform(&[c], -0.5, 0.5, 113, DType::F64);
            check(
                &[(x.clone(), true), (g.clone(), true), (b.clone(), true)],
                |a| op(&a[0], &a[1], &a[2], groups),
            )?;
            check(
                &[(x.clone(), true), (g.clone(), false), (b.clone(), false)],
                |a| op(&a[0], &a[1], &a[2], groups),
            )?;
            check(&[(x, false), (g, true), (b, true)], |a| {
                op(&a[0], &a[1], &a[2], groups)
            })?;
        }
        let (b, c, groups) = (2, 16, 8);
        let x = Var::from_tensor(&(uniform(&[b, c, 4, 5, 6], -2.0, 3.0, 114, DType::F32) * 4.0)?)?;
        let g = Var::from_tensor(&uniform(&[c], 0.5, 1.5, 115, DType::F32))?;
        let be = Var::from_tensor(&uniform(&[c], -0.5, 0.5, 116, DType::F32))?;
        let probe = uniform(&[b, c, 4, 5, 6], -1.0, 1.0, 117, DType::F32);
        let own = ops::group_norm(&x, groups, &g, &be, 1e-5)?;
        let refr = reference::group_norm(&x, groups, &g, &be, 1e-5)?;
        let vars = [("dx", &x), ("dgamma", &g), ("dbeta", &be)];
        assert_matches_reference(&own, &refr, &probe, &vars, 1e-5)
    }
}
