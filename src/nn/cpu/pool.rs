//! 2×2 (2×2×2 in 3D) max-pool, stride 2, with PyTorch's gradient.
//!
//! Key type: [`MaxPool2x2`], a `CustomOp1` on x: (B, C, H, W), H and W even, or on
//! x: (B, C, D, H, W), D, H and W even (a 2×2×2 window, row-major over (kd, kh, kw)).
//!
//! Design: one job per run of (image, channel) planes. The gradient of a window goes to its
//! first maximum in row-major order (a NaN counts as the maximum and propagates), exactly the
//! element PyTorch's index points to; the backward finds it again by comparing the input with
//! the pooled output (no saved indices) and routes the output gradient to that one element. candle's `max_pool2d` instead scales the gradient by 1/4
//! and the reshape+max reference gives every tied element the full gradient.

use super::{Float, filled, par, slice, tensor, with_data};
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor};

/// The max-pool op.
#[derive(Debug, Clone, Copy)]
pub struct MaxPool2x2;

/// Validates (B, C, H, W) with even H and W, or (B, C, D, H, W) with even D, H and W; returns
/// (B, C, D, H, W) with D = 1 in 2D.
fn dims(s: &Shape) -> Result<(usize, usize, usize, usize, usize)> {
    if s.rank() == 5 {
        let (b, c, d, h, w) = s.dims5()?;
        if d % 2 != 0 || h % 2 != 0 || w % 2 != 0 {
            candle_core::bail!(
                "max_pool2x2x2: expected even depth, height and width, got {d}×{h}×{w}"
            )
        }
        return Ok((b, c, d, h, w));
    }
    let (b, c, h, w) = s.dims4()?;
    if h % 2 != 0 || w % 2 != 0 {
        candle_core::bail!("max_pool2x2: expected even height and width, got {h}×{w}")
    }
    Ok((b, c, 1, h, w))
}

/// The pooled shape of `s` (validated by [`dims`]).
fn pooled(s: &Shape) -> Shape {
    let mut d = s.dims().to_vec();
    for v in &mut d[2..] {
        *v /= 2;
    }
    Shape::from(d)
}

/// Offsets of the 8 elements of the 2×2×2 window at (0, 0, 0), row-major (kd, kh, kw).
fn window8((h, w): (usize, usize)) -> [usize; 8] {
    let mut o = [0; 8];
    for (i, v) in o.iter_mut().enumerate() {
        *v = (i >> 2) * h * w + ((i >> 1) & 1) * w + (i & 1);
    }
    o
}

/// The maximum of 8 values (NaN if any is NaN) and the index of the one the gradient goes to:
/// the first equal to it, or the first NaN.
#[inline(always)]
fn max8<T: Float>(v: [T; 8]) -> (T, usize) {
    let mut best = 0;
    for i in 1..8 {
        #[allow(clippy::eq_op)]
        let nan_best = v[best] != v[best];
        #[allow(clippy::eq_op)]
        let nan_i = v[i] != v[i];
        if !nan_best && (nan_i || v[i] > v[best]) {
            best = i;
        }
    }
    (v[best], best)
}

/// 3D forward: `x` holds (B·C) volumes of D × H × W.
fn forward3<T: Float>(x: &[T], (d, h, w): (usize, usize, usize)) -> Vec<T> {
    let (od, oh, ow) = (d / 2, h / 2, w / 2);
    let (vol, ovol) = (d * h * w, od * oh * ow);
    if x.is_empty() || ovol == 0 {
        return vec![T::zero(); x.len() / 8];
    }
    let off = window8((h, w));
    // SAFETY: the chunks cover y, one output volume each, and every element is written.
    unsafe {
        filled(x.len() / 8, |y| {
            par::chunks_mut(y, ovol, |v, ys| {
                let xv = &x[v * vol..][..vol];
                for (i, out) in ys.iter_mut().enumerate() {
                    let (z, r, c) = (i / (oh * ow), (i / ow) % oh, i % ow);
                    let at = (2 * z * h + 2 * r) * w + 2 * c;
                    out.write(max8(off.map(|o| xv[at + o])).0);
                }
            })
        })
    }
}

/// 3D backward: the gradient of each window to its [`max8`] element.
fn backward3<T: Float>(x: &[T], dy: &[T], (d, h, w): (usize, usize, usize)) -> Vec<T> {
    let (od, oh, ow) = (d / 2, h / 2, w / 2);
    let (vol, ovol) = (d * h * w, od * oh * ow);
    let mut dx = vec![T::zero(); x.len()];
    if ovol == 0 {
        return dx;
    }
    let off = window8((h, w));
    par::chunks_mut(&mut dx, vol, |v, dxv| {
        let xv = &x[v * vol..][..vol];
        for (i, &g) in dy[v * ovol..][..ovol].iter().enumerate() {
            let (z, r, c) = (i / (oh * ow), (i / ow) % oh, i % ow);
            let at = (2 * z * h + 2 * r) * w + 2 * c;
            let k = max8(off.map(|o| xv[at + o])).1;
            dxv[at + off[k]] = g;
        }
    });
    dx
}

/// The maximum of a window; NaN if any element is NaN (as in PyTorch).
#[inline(always)]
fn max4<T: Float>(a: T, b: T, c: T, d: T) -> T {
    let mx = |u: T, v: T| if v > u { v } else { u };
    #[allow(clippy::eq_op)]
    let nan = a != a || b != b || c != c || d != d;
    // a + b + c + d is NaN when one of them is.
    if nan {
        a + b + c + d
    } else {
        mx(mx(a, b), mx(c, d))
    }
}

/// Index (0..4, row-major) of the window element the gradient goes to: the first equal to the
/// window's maximum `m`, or the first NaN when `m` is NaN.
#[inline(always)]
fn first_max<T: Float>([a, b, c, _]: [T; 4], m: T) -> usize {
    #[allow(clippy::eq_op)]
    let is = |v: T| v == m || (m != m && v != v);
    if is(a) {
        0
    } else if is(b) {
        1
    } else if is(c) {
        2
    } else {
        3
    }
}

/// Planes per rayon job, so that small planes do not become tiny jobs.
fn planes_per_job(plane: usize) -> usize {
    (16384 / plane.max(1)).max(1)
}

fn forward<T: Float>(x: &[T], (h, w): (usize, usize)) -> Vec<T> {
    let (oh, ow) = (h / 2, w / 2);
    let len = x.len() / 4;
    if len == 0 {
        return Vec::new();
    }
    let per = planes_per_job(h * w);
    // SAFETY: the chunks cover y and every output element is written.
    unsafe {
        filled(len, |y| {
            par::chunks_mut(y, oh * ow * per, |i, ys| {
                let xs = &x[i * h * w * per..];
                for (yp, xp) in ys.chunks_exact_mut(oh * ow).zip(xs.chunks_exact(h * w)) {
                    for (i, yr) in yp.chunks_exact_mut(ow).enumerate() {
                        let (r0, r1) = (&xp[2 * i * w..][..w], &xp[(2 * i + 1) * w..][..w]);
                        for ((out, p0), p1) in yr
                            .iter_mut()
                            .zip(r0.chunks_exact(2))
                            .zip(r1.chunks_exact(2))
                        {
                            out.write(max4(p0[0], p0[1], p1[0], p1[1]));
                        }
                    }
                }
            })
        })
    }
}

/// dx from the input, the pooled output `y` and its gradient `dy`.
fn backward<T: Float>(x: &[T], y: &[T], dy: &[T], (h, w): (usize, usize)) -> Vec<T> {
    let (oh, ow) = (h / 2, w / 2);
    if dy.is_empty() {
        return vec![T::zero(); x.len()];
    }
    let per = planes_per_job(h * w);
    // SAFETY: the chunks cover dx, the windows tile each plane (even H and W), and both
    // elements of both rows of every window are written.
    unsafe {
        filled(x.len(), |dx| {
            par::chunks_mut(dx, h * w * per, |i, dxs| {
                let (xs, ys, dys) = (
                    &x[i * h * w * per..],
                    &y[i * oh * ow * per..],
                    &dy[i * oh * ow * per..],
                );
                let planes = dxs
                    .chunks_exact_mut(h * w)
                    .zip(xs.chunks_exact(h * w))
                    .zip(ys.chunks_exact(oh * ow))
                    .zip(dys.chunks_exact(oh * ow));
                for (((dxp, xp), yp), dyp) in planes {
                    for (i, (yr, dyr)) in yp.chunks_exact(ow).zip(dyp.chunks_exact(ow)).enumerate()
                    {
                        let (r0, r1) = (&xp[2 * i * w..][..w], &xp[(2 * i + 1) * w..][..w]);
                        let (d0, d1) = dxp[2 * i * w..][..2 * w].split_at_mut(w);
                        for j in 0..ow {
                            let (a, b) = (2 * j, 2 * j + 1);
                            let k = first_max([r0[a], r0[b], r1[a], r1[b]], yr[j]);
                            let (g, z) = (dyr[j], T::zero());
                            d0[a].write(if k == 0 { g } else { z });
                            d0[b].write(if k == 1 { g } else { z });
                            d1[a].write(if k == 2 { g } else { z });
                            d1[b].write(if k == 3 { g } else { z });
                        }
                    }
                }
            })
        })
    }
}

impl CustomOp1 for MaxPool2x2 {
    fn name(&self) -> &'static str {
        "ranksweep-max-pool2x2"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (_, _, d, h, w) = dims(l.shape())?;
        if l.shape().rank() == 5 {
            let op = "max_pool2x2x2";
            let y = match s {
                CpuStorage::F32(_) => CpuStorage::F32(forward3::<f32>(slice(s, l, op)?, (d, h, w))),
                CpuStorage::F64(_) => CpuStorage::F64(forward3::<f64>(slice(s, l, op)?, (d, h, w))),
                _ => candle_core::bail!("{op}: expected f32 or f64, got {:?}", s.dtype()),
            };
            return Ok((y, pooled(l.shape())));
        }
        let y = match s {
            CpuStorage::F32(_) => {
                CpuStorage::F32(forward::<f32>(slice(s, l, "max_pool2x2")?, (h, w)))
            }
            CpuStorage::F64(_) => {
                CpuStorage::F64(forward::<f64>(slice(s, l, "max_pool2x2")?, (h, w)))
            }
            _ => candle_core::bail!("max_pool2x2: expected f32 or f64, got {:?}", s.dtype()),
        };
        Ok((y, pooled(l.shape())))
    }

    fn bwd(&self, x: &Tensor, y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        let (_, _, d, h, w) = dims(x.shape())?;
        let dy = dy.contiguous()?;
        if x.rank() == 5 {
            fn run3<T: Float>(
                x: &Tensor,
                dy: &Tensor,
                dhw: (usize, usize, usize),
            ) -> Result<Tensor> {
                let op = "max_pool2x2x2";
                let v = with_data::<T, _>(x, op, |xs| {
                    with_data::<T, _>(dy, op, |d| Ok(backward3(xs, d, dhw)))
                })?;
                tensor(v, x.dims())
            }
            let dx = match x.dtype() {
                DType::F32 => run3::<f32>(x, &dy, (d, h, w))?,
                DType::F64 => run3::<f64>(x, &dy, (d, h, w))?,
                dt => candle_core::bail!("max_pool2x2x2: expected f32 or f64, got {dt:?}"),
            };
            return Ok(Some(dx));
        }
        fn run<T: Float>(
            x: &Tensor,
            y: &Tensor,
            dy: &Tensor,
            hw: (usize, usize),
        ) -> Result<Tensor> {
            let op = "max_pool2x2";
            let v = with_data::<T, _>(x, op, |xs| {
                with_data::<T, _>(y, op, |ys| {
                    with_data::<T, _>(dy, op, |d| Ok(backward(xs, ys, d, hw)))
                })
            })?;
            tensor(v, x.dims())
        }
        let dx = match x.dtype() {
            DType::F32 => run::<f32>(x, y, &dy, (h, w))?,
            DType::F64 => run::<f64>(x, y, &dy, (h, w))?,
            dt => candle_core::bail!("max_pool2x2: expected f32 or f64, got {dt:?}"),
        };
        Ok(Some(dx))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::gradcheck::{assert_matches_reference, check, distinct, uniform};
    use crate::nn::ops::{self, reference};
    use candle_core::{Device, Var};

    #[test]
    fn gradient_matches_finite_differences() -> Result<()> {
        // Distinct values 0.01 apart: no ties, so the max is differentiable at every entry.
        for c in [3, 5] {
            let x = distinct(&[2, c, 4, 6], 0.01, 21, DType::F64);
            check(&[(x, true)], |a| a[0].apply_op1(MaxPool2x2))?;
        }
        Ok(())
    }

    #[test]
    fn matches_reference_forward_and_gradient_without_ties() -> Result<()> {
        let x = Var::from_tensor(&distinct(&[3, 5, 8, 6], 0.001, 22, DType::F32))?;
        let probe = uniform(&[3, 5, 4, 3], -1.0, 1.0, 23, DType::F32);
        let own = ops::max_pool2x2(&x)?;
        let refr = reference::max_pool2x2(&x)?;
        assert_matches_reference(&own, &refr, &probe, &[("dx", &x)], 0.0)
    }

    #[test]
    fn ties_send_the_gradient_to_the_first_maximum_only() -> Result<()> {
        // Window 0: all equal → element 0; window 1: max 5 at positions 1 and 2 → position 1
        // (row-major (0,3)); a NaN wins its window.
        let x = Var::new(
            &[
                [[[1f32, 1., 2., 5.], [1., 1., 5., 0.]]],
                [[[0., f32::NAN, 3., 3.], [7., 1., 3., 9.]]],
            ],
            &Device::Cpu,
        )?;
        let y = ops::max_pool2x2(&x)?;
        let yv = y.flatten_all()?.to_vec1::<f32>()?;
        assert_eq!((yv[0], yv[1], yv[3]), (1.0, 5.0, 9.0));
        assert!(yv[2].is_nan(), "a NaN must propagate");
        let grads = (y.sum_all()?).backward()?;
        let dx = grads.get(&x).unwrap().flatten_all()?.to_vec1::<f32>()?;
        let want = [
            1., 0., 0., 1., 0., 0., 0., 0., 0., 1., 0., 0., 0., 0., 0., 1.,
        ];
        assert_eq!(dx, want);
        Ok(())
    }

    #[test]
    fn rejects_odd_sizes() {
        let x = Tensor::zeros((1, 1, 3, 4), DType::F32, &Device::Cpu).unwrap();
        let err = x.apply_op1(MaxPool2x2).unwrap_err().to_string();
        assert!(err.contains("3×4"), "{err}");
    }

    #[test]
    fn gradient_3d_matches_finite_differences_and_reference() -> Result<()> {
        for c in [3, 5] {
            let x = distinct(&[2, c, 4, 2, 6], 0.01, 121, DType::F64);
            check(&[(x, true)], |a| a[0].apply_op1(MaxPool2x2))?;
        }
        let x = Var::from_tensor(&distinct(&[2, 3, 4, 6, 8], 0.001, 122, DType::F32))?;
        let probe = uniform(&[2, 3, 2, 3, 4], -1.0, 1.0, 123, DType::F32);
        let own = ops::max_pool2x2x2(&x)?;
        let refr = reference::max_pool2x2x2(&x)?;
        assert_matches_reference(&own, &refr, &probe, &[("dx", &x)], 0.0)
    }

    #[test]
    fn ties_in_3d_send_the_gradient_to_the_first_maximum_only() -> Result<()> {
        // One 2×2×2 window, max 5 at (kd 0, kh 1, kw 0) and (1, 0, 1): the first takes it.
        let x = Var::from_tensor(
            &Tensor::new(&[1f32, 2., 5., 0., 3., 5., 4., 1.], &Device::Cpu)?
                .reshape((1, 1, 2, 2, 2))?,
        )?;
        let y = ops::max_pool2x2x2(&x)?;
        assert_eq!(y.flatten_all()?.to_vec1::<f32>()?, [5.0]);
        let dx = y
            .sum_all()?
            .backward()?
            .get(&x)
            .unwrap()
            .flatten_all()?
            .to_vec1::<f32>()?;
        assert_eq!(dx, [0., 0., 1., 0., 0., 0., 0., 0.]);
        let x = Tensor::zeros((1, 1, 3, 4, 4), DType::F32, &Device::Cpu)?;
        let err = x.apply_op1(MaxPool2x2).unwrap_err().to_string();
        assert!(err.contains("3×4×4"), "{err}");
        Ok(())
    }
}
