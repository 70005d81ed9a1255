//! 2×2 transposed convolution, stride 2, with bias (the decoder's up-sampling).
//!
//! Key type: [`ConvTranspose2x2`], a `CustomOp3` on (x: (B, I, H, W), w: (I, O, 2, 2), b: (O))
//! → (B, O, 2H, 2W).
//!
//! Design: each input pixel owns its own 2×2 output block, so the op is one gemm per tile of
//! pixels, T (4·O × n) = Wᵀ (4·O × I) · X_tile (I × n), followed by a scatter of T's rows into
//! the interleaved output (plus the bias). The backward gathers dY back into that (4·O × n)
//! form (space-to-depth), then dX = W · G and dW += X · Gᵀ are plain gemms and db is a row sum.
//! Jobs are (image, row tile) pairs; each gradient is computed only when needed.

use super::conv::sum_parts;
use super::{Float, SharedMut, filled, gemm, par, slice, tensor, with_data};
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor};

/// Elements of one (4·O × n) tile buffer.
const TILE_ELEMS: usize = 32 * 1024;

/// The transposed-convolution op; `need` flags (x, w, b) that take part in the graph.
#[derive(Debug, Clone, Copy)]
pub struct ConvTranspose2x2 {
    pub need: [bool; 3],
}

/// Sizes: batch, in channels, out channels, input height and width.
#[derive(Debug, Clone, Copy)]
struct Geom {
    b: usize,
    ci: usize,
    co: usize,
    h: usize,
    w: usize,
}

impl Geom {
    fn new(x: &Shape, w: &Shape, b: &Shape) -> Result<Self> {
        let (bt, ci, h, wd) = x.dims4()?;
        let (ci2, co, kh, kw) = w.dims4()?;
        if ci2 != ci || kh != 2 || kw != 2 {
            candle_core::bail!(
                "conv_transpose2x2: expected a kernel of shape ({ci}, O, 2, 2), got {w:?}"
            )
        }
        if b.rank() != 1 || b.elem_count() != co {
            candle_core::bail!("conv_transpose2x2: expected a bias of shape ({co}), got {b:?}")
        }
        Ok(Geom {
            b: bt,
            ci,
            co,
            h,
            w: wd,
        })
    }

    fn hw(&self) -> usize {
        self.h * self.w
    }

    /// Input rows per tile.
    fn tile_rows(&self) -> usize {
        (TILE_ELEMS / (4 * self.co * self.w).max(1)).clamp(1, self.h.max(1))
    }

    /// Number of (image, row tile) jobs.
    fn n_jobs(&self) -> usize {
        self.b * self.h.div_ceil(self.tile_rows())
    }

    /// Job `j` as (image, first row, rows).
    fn job(&self, j: usize) -> (usize, usize, usize) {
        let rows = self.tile_rows();
        let tiles = self.h.div_ceil(rows);
        let r0 = (j % tiles) * rows;
        (j / tiles, r0, rows.min(self.h - r0))
    }
}

fn forward<T: Float>(x: &[T], w: &[T], bias: &[T], g: Geom) -> Vec<T> {
    let (hw, q) = (g.hw(), 4 * g.co);
    let (oh, ow) = (2 * g.h, 2 * g.w);
    let len = g.b * g.co * oh * ow;
    if len == 0 || g.ci == 0 {
        // No input channels: the output is the bias alone.
        let mut y = vec![T::zero(); len];
        for (i, v) in y.iter_mut().enumerate() {
            *v = bias[(i / (oh * ow)) % g.co.max(1)];
        }
        return y;
    }
    let job = |yp: SharedMut<T>, (bi, r0, nr): (usize, usize, usize)| {
        let n = nr * g.w;
        T::with_scratch(q * n, |t| {
            // Tᵀ (n × 4O) = X_tileᵀ (n × I) · W (I × 4O).
            // SAFETY: views inside image bi of x, w and the scratch buffer t.
            unsafe {
                gemm(
                    (n, q, g.ci),
                    t.as_mut_ptr(),
                    (1, n),
                    false,
                    x[bi * g.ci * hw + r0 * g.w..].as_ptr(),
                    (1, hw),
                    w.as_ptr(),
                    (q, 1),
                )
            }
            for o in 0..g.co {
                let bo = bias[o];
                for kh in 0..2 {
                    let t0 = &t[(o * 4 + kh * 2) * n..][..n];
                    let t1 = &t[(o * 4 + kh * 2 + 1) * n..][..n];
                    for r in 0..nr {
                        let off = ((bi * g.co + o) * oh + 2 * (r0 + r) + kh) * ow;
                        let (a, b) = (&t0[r * g.w..][..g.w], &t1[r * g.w..][..g.w]);
                        for (j, (&u, &v)) in a.iter().zip(b).enumerate() {
                            // SAFETY: output row 2·(r0 + r) + kh of (bi, o) belongs to this job.
                            unsafe {
                                yp.get().add(off + 2 * j).write(u + bo);
                                yp.get().add(off + 2 * j + 1).write(v + bo);
                            }
                        }
                    }
                }
            }
        })
    };
    // SAFETY: the jobs cover every input row, hence every output row pair, all channels.
    unsafe {
        filled(len, |y| {
            let yp = SharedMut(y.as_mut_ptr() as *mut T);
            par::for_each(g.n_jobs(), |j| job(yp, g.job(j)));
        })
    }
}

/// Gathers the dY blocks of a tile into G (4·O × n): G[(o, kh, kw), p] = dy[o, 2h + kh, 2w + kw].
fn gather<T: Float>(dy: &[T], g: &Geom, bi: usize, r0: usize, nr: usize, out: &mut [T]) {
    let (oh, ow, n) = (2 * g.h, 2 * g.w, nr * g.w);
    for o in 0..g.co {
        for kh in 0..2 {
            let (g0, rest) = out[(o * 4 + kh * 2) * n..].split_at_mut(n);
            let g1 = &mut rest[..n];
            for r in 0..nr {
                let src = &dy[((bi * g.co + o) * oh + 2 * (r0 + r) + kh) * ow..][..ow];
                let (a, b) = (&mut g0[r * g.w..][..g.w], &mut g1[r * g.w..][..g.w]);
                for ((s, u), v) in src.chunks_exact(2).zip(a).zip(b) {
                    *u = s[0];
                    *v = s[1];
                }
            }
        }
    }
}

/// (dx, dw, db) as requested by `need`.
fn backward<T: Float>(
    x: &[T],
    w: &[T],
    dy: &[T],
    g: Geom,
    need: [bool; 3],
) -> (Option<Vec<T>>, Vec<T>, Vec<T>) {
    let (hw, q) = (g.hw(), 4 * g.co);
    let (wl, bl) = (
        if need[1] { g.ci * q } else { 0 },
        if need[2] { g.co } else { 0 },
    );
    if hw == 0 || g.co == 0 {
        return (
            need[0].then(|| vec![T::zero(); x.len()]),
            vec![T::zero(); wl],
            vec![T::zero(); bl],
        );
    }
    let run = |dxp: Option<SharedMut<T>>| {
        let parts = par::fold(
            g.n_jobs(),
            || (vec![T::zero(); wl], vec![T::zero(); bl]),
            |(dw, db): &mut (Vec<T>, Vec<T>), j| {
                let (bi, r0, nr) = g.job(j);
                let n = nr * g.w;
                T::with_scratch(q * n, |gt| {
                    gather(dy, &g, bi, r0, nr, gt);
                    let xt = x[bi * g.ci * hw + r0 * g.w..].as_ptr();
                    if let Some(dxp) = dxp {
                        // dX_tileᵀ (n × I) = Gᵀ (n × 4O) · Wᵀ (4O × I).
                        // SAFETY: the dx rows r0..r0 + nr of image bi belong to this job.
                        unsafe {
                            gemm(
                                (n, g.ci, q),
                                dxp.get().add(bi * g.ci * hw + r0 * g.w),
                                (1, hw),
                                false,
                                gt.as_ptr(),
                                (1, n),
                                w.as_ptr(),
                                (1, q),
                            )
                        }
                    }
                    if need[1] {
                        // dWᵀ (4O × I) += G (4O × n) · X_tileᵀ (n × I).
                        // SAFETY: views inside gt, image bi of x and this thread's dw.
                        unsafe {
                            gemm(
                                (q, g.ci, n),
                                dw.as_mut_ptr(),
                                (1, q),
                                true,
                                gt.as_ptr(),
                                (n, 1),
                                xt,
                                (1, hw),
                            )
                        }
                    }
                    if need[2] {
                        for (o, d) in db.iter_mut().enumerate() {
                            *d += gt[o * 4 * n..(o + 1) * 4 * n].iter().copied().sum::<T>();
                        }
                    }
                });
            },
        );
        let (dws, dbs): (Vec<_>, Vec<_>) = parts.into_iter().unzip();
        (sum_parts(dws, wl), sum_parts(dbs, bl))
    };
    if need[0] {
        let mut dwb = (Vec::new(), Vec::new());
        // SAFETY: the jobs cover every (image, row) of dx and each gemm writes all I channels.
        let dx = unsafe {
            filled(x.len(), |dx| {
                dwb = run(Some(SharedMut(dx.as_mut_ptr() as *mut T)));
            })
        };
        (Some(dx), dwb.0, dwb.1)
    } else {
        let (dw, db) = run(None);
        (None, dw, db)
    }
}

impl ConvTranspose2x2 {
    fn grads<T: Float>(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        dy: &Tensor,
    ) -> Result<[Option<Tensor>; 3]> {
        let g = Geom::new(x.shape(), w.shape(), b.shape())?;
        let op = "conv_transpose2x2";
        let (dx, dw, db) = with_data::<T, _>(x, op, |xs| {
            with_data::<T, _>(w, op, |ws| {
                with_data::<T, _>(dy, op, |dys| Ok(backward(xs, ws, dys, g, self.need)))
            })
        })?;
        Ok([
            dx.map(|v| tensor(v, x.dims())).transpose()?,
            if self.need[1] {
                Some(tensor(dw, w.dims())?)
            } else {
                None
            },
            if self.need[2] {
                Some(tensor(db, b.dims())?)
            } else {
                None
            },
        ])
    }
}

impl CustomOp3 for ConvTranspose2x2 {
    fn name(&self) -> &'static str {
        "ranksweep-conv-transpose2x2"
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
        let g = Geom::new(l1.shape(), l2.shape(), l3.shape())?;
        let op = "conv_transpose2x2";
        let y = match (s1, s2, s3) {
            (CpuStorage::F32(_), CpuStorage::F32(_), CpuStorage::F32(_)) => {
                CpuStorage::F32(forward::<f32>(
                    slice(s1, l1, op)?,
                    slice(s2, l2, op)?,
                    slice(s3, l3, op)?,
                    g,
                ))
            }
            (CpuStorage::F64(_), CpuStorage::F64(_), CpuStorage::F64(_)) => {
                CpuStorage::F64(forward::<f64>(
                    slice(s1, l1, op)?,
                    slice(s2, l2, op)?,
                    slice(s3, l3, op)?,
                    g,
                ))
            }
            _ => candle_core::bail!(
                "conv_transpose2x2: expected f32 or f64 x, w and b of one dtype, got {:?}, {:?}, {:?}",
                s1.dtype(),
                s2.dtype(),
                s3.dtype()
            ),
        };
        Ok((y, Shape::from((g.b, g.co, 2 * g.h, 2 * g.w))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dy = dy.contiguous()?;
        let [dx, dw, db] = match x.dtype() {
            DType::F32 => self.grads::<f32>(x, w, b, &dy)?,
            DType::F64 => self.grads::<f64>(x, w, b, &dy)?,
            dt => candle_core::bail!("conv_transpose2x2: expected f32 or f64, got {dt:?}"),
        };
        Ok((dx, dw, db))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::gradcheck::{assert_matches_reference, check, uniform};
    use crate::nn::ops::{self, reference};
    use candle_core::Var;

    fn op(x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
        x.apply_op3(
            w,
            b,
            ConvTranspose2x2 {
                need: [x.track_op(), w.track_op(), b.track_op()],
            },
        )
    }

    #[test]
    fn gradients_match_finite_differences_with_odd_channels() -> Result<()> {
        for (ci, co) in [(3, 5), (5, 3)] {
            let x = uniform(&[2, ci, 3, 2], -1.0, 1.0, 31, DType::F64);
            let w = uniform(&[ci, co, 2, 2], -1.0, 1.0, 32, DType::F64);
            let b = uniform(&[co], -1.0, 1.0, 33, DType::F64);
            check(&[(x, true), (w, true), (b, true)], |a| {
                op(&a[0], &a[1], &a[2])
            })?;
        }
        Ok(())
    }

    #[test]
    fn frozen_inputs_still_give_the_other_gradients() -> Result<()> {
        let x = uniform(&[2, 3, 2, 3], -1.0, 1.0, 34, DType::F64);
        let w = uniform(&[3, 4, 2, 2], -1.0, 1.0, 35, DType::F64);
        let b = uniform(&[4], -1.0, 1.0, 36, DType::F64);
        check(
            &[(x.clone(), true), (w.clone(), false), (b.clone(), false)],
            |a| op(&a[0], &a[1], &a[2]),
        )?;
        check(&[(x, false), (w, true), (b, false)], |a| {
            op(&a[0], &a[1], &a[2])
        })?;
        Ok(())
    }

    #[test]
    fn matches_reference_forward_and_gradients_in_f32() -> Result<()> {
        // 60 rows × 4·40 outputs: several row tiles per image.
        for (bt, ci, co, h, w) in [(3, 7, 40, 60, 5), (2, 5, 3, 4, 3)] {
            let x = Var::from_tensor(&uniform(&[bt, ci, h, w], -1.0, 1.0, 37, DType::F32))?;
            let wt = Var::from_tensor(&uniform(&[ci, co, 2, 2], -0.5, 0.5, 38, DType::F32))?;
            let b = Var::from_tensor(&uniform(&[co], -0.5, 0.5, 39, DType::F32))?;
            let probe = uniform(&[bt, co, 2 * h, 2 * w], -1.0, 1.0, 40, DType::F32);
            let own = ops::conv_transpose2x2(&x, &wt, &b)?;
            let refr = reference::conv_transpose2x2(&x, &wt, &b)?;
            let vars = [("dx", &x), ("dw", &wt), ("db", &b)];
            assert_matches_reference(&own, &refr, &probe, &vars, 1e-5)?;
        }
        Ok(())
    }

    #[test]
    fn rejects_wrong_kernel_and_bias_shapes() {
        let dev = &candle_core::Device::Cpu;
        let x = Tensor::zeros((1, 3, 2, 2), DType::F32, dev).unwrap();
        let w = Tensor::zeros((3, 4, 3, 3), DType::F32, dev).unwrap();
        let b = Tensor::zeros(4, DType::F32, dev).unwrap();
        assert!(op(&x, &w, &b).unwrap_err().to_string().contains("kernel"));
        let w = Tensor::zeros((3, 4, 2, 2), DType::F32, dev).unwrap();
        let b = Tensor::zeros(5, DType::F32, dev).unwrap();
        assert!(op(&x, &w, &b).unwrap_err().to_string().contains("bias"));
    }
}
