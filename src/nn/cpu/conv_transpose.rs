//! 2×2 (2×2×2 in 3D) transposed convolution, stride 2, with bias (the decoder's up-sampling).
//!
//! Key type: [`ConvTranspose2x2`], a `CustomOp3` on (x: (B, I, H, W), w: (I, O, 2, 2), b: (O))
//! → (B, O, 2H, 2W), or in 3D (x: (B, I, D, H, W), w: (I, O, 2, 2, 2), b: (O))
//! → (B, O, 2D, 2H, 2W).
//!
//! Design: each input voxel owns its own 2×2(×2) output block, so the op is one gemm per tile
//! of pixels, T (Q·O × n) = Wᵀ (Q·O × I) · X_tile (I × n) with Q = 4 (8 in 3D) kernel taps,
//! followed by a scatter of T's rows into the interleaved output (plus the bias). The backward
//! gathers dY back into that (Q·O × n) form (space-to-depth), then dX = W · G and
//! dW += X · Gᵀ are plain gemms and db is a row sum. Jobs are (image, depth slice, row tile);
//! each gradient is computed only when needed.

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

/// Sizes: batch, in channels, out channels, input depth (1 in 2D), height and width, the depth
/// taps (1 in 2D, 2 in 3D) and whether tensors are 5D.
#[derive(Debug, Clone, Copy)]
struct Geom {
    b: usize,
    ci: usize,
    co: usize,
    d: usize,
    h: usize,
    w: usize,
    kd: usize,
    vol: bool,
}

impl Geom {
    fn new(x: &Shape, w: &Shape, b: &Shape) -> Result<Self> {
        let g = if x.rank() == 5 {
            let (bt, ci, d, h, wd) = x.dims5()?;
            let ok = matches!(w.dims(), &[c, _, 2, 2, 2] if c == ci);
            if !ok {
                candle_core::bail!(
                    "conv_transpose2x2x2: expected a kernel of shape ({ci}, O, 2, 2, 2), got {w:?}"
                )
            }
            let co = w.dims()[1];
            Geom {
                b: bt,
                ci,
                co,
                d,
                h,
                w: wd,
                kd: 2,
                vol: true,
            }
        } else {
            let (bt, ci, h, wd) = x.dims4()?;
            let ok = matches!(w.dims(), &[c, _, 2, 2] if c == ci);
            if !ok {
                candle_core::bail!(
                    "conv_transpose2x2: expected a kernel of shape ({ci}, O, 2, 2), got {w:?}"
                )
            }
            let co = w.dims()[1];
            Geom {
                b: bt,
                ci,
                co,
                d: 1,
                h,
                w: wd,
                kd: 1,
                vol: false,
            }
        };
        if b.rank() != 1 || b.elem_count() != g.co {
            candle_core::bail!(
                "{}: expected a bias of shape ({}), got {b:?}",
                g.name(),
                g.co
            )
        }
        Ok(g)
    }

    fn name(&self) -> &'static str {
        if self.vol {
            "conv_transpose2x2x2"
        } else {
            "conv_transpose2x2"
        }
    }

    fn hw(&self) -> usize {
        self.h * self.w
    }

    /// Input elements per channel (D·H·W): the stride between channel planes.
    fn dhw(&self) -> usize {
        self.d * self.hw()
    }

    /// Kernel taps per output channel: 4, or 8 in 3D.
    fn taps(&self) -> usize {
        4 * self.kd
    }

    /// Offset of input slice image `p` = (image, depth slice) in a (B, C, D, H, W) buffer with
    /// `c` channels.
    fn slice_offset(&self, p: usize, c: usize) -> usize {
        ((p / self.d) * c * self.d + p % self.d) * self.hw()
    }

    /// Offset of output row `row` (of 2H) of depth plane `kd` of input slice `p`, channel `o`.
    fn out_row(&self, p: usize, o: usize, kd: usize, row: usize) -> usize {
        let (bi, z) = (p / self.d, p % self.d);
        let od = self.kd * self.d;
        (((bi * self.co + o) * od + self.kd * z + kd) * 2 * self.h + row) * 2 * self.w
    }

    fn out_shape(&self) -> Shape {
        let (oh, ow) = (2 * self.h, 2 * self.w);
        if self.vol {
            Shape::from((self.b, self.co, 2 * self.d, oh, ow))
        } else {
            Shape::from((self.b, self.co, oh, ow))
        }
    }

    /// Input rows per tile.
    fn tile_rows(&self) -> usize {
        (TILE_ELEMS / (self.taps() * self.co * self.w).max(1)).clamp(1, self.h.max(1))
    }

    /// Number of (slice image, row tile) jobs.
    fn n_jobs(&self) -> usize {
        self.b * self.d * self.h.div_ceil(self.tile_rows())
    }

    /// Job `j` as (slice image, first row, rows).
    fn job(&self, j: usize) -> (usize, usize, usize) {
        let rows = self.tile_rows();
        let tiles = self.h.div_ceil(rows);
        let r0 = (j % tiles) * rows;
        (j / tiles, r0, rows.min(self.h - r0))
    }
}

fn forward<T: Float>(x: &[T], w: &[T], bias: &[T], g: Geom) -> Vec<T> {
    let (nk, q) = (g.taps(), g.taps() * g.co);
    let len = g.b * g.co * nk * g.dhw();
    if len == 0 || g.ci == 0 {
        // No input channels: the output is the bias alone.
        let mut y = vec![T::zero(); len];
        for (i, v) in y.iter_mut().enumerate() {
            *v = bias[(i / (nk * g.dhw()).max(1)) % g.co.max(1)];
        }
        return y;
    }
    let job = |yp: SharedMut<T>, (p, r0, nr): (usize, usize, usize)| {
        let n = nr * g.w;
        T::with_scratch(q * n, |t| {
            // Tᵀ (n × Q·O) = X_tileᵀ (n × I) · W (I × Q·O).
            // SAFETY: views inside slice p of x, w and the scratch buffer t.
            unsafe {
                gemm(
                    (n, q, g.ci),
                    t.as_mut_ptr(),
                    (1, n),
                    false,
                    x[g.slice_offset(p, g.ci) + r0 * g.w..].as_ptr(),
                    (1, g.dhw()),
                    w.as_ptr(),
                    (q, 1),
                )
            }
            for (o, &bo) in bias.iter().enumerate().take(g.co) {
                for (kd, kh) in (0..g.kd).flat_map(|kd| (0..2).map(move |kh| (kd, kh))) {
                    let tap = o * nk + kd * 4 + kh * 2;
                    let t0 = &t[tap * n..][..n];
                    let t1 = &t[(tap + 1) * n..][..n];
                    for r in 0..nr {
                        let off = g.out_row(p, o, kd, 2 * (r0 + r) + kh);
                        let (a, b) = (&t0[r * g.w..][..g.w], &t1[r * g.w..][..g.w]);
                        for (j, (&u, &v)) in a.iter().zip(b).enumerate() {
                            // SAFETY: output row 2·(r0 + r) + kh of (p, o, kd) belongs to this job.
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
    // SAFETY: the jobs cover every input row of every slice, hence every output row pair (of
    // every depth pair), all channels.
    unsafe {
        filled(len, |y| {
            let yp = SharedMut(y.as_mut_ptr() as *mut T);
            par::for_each(g.n_jobs(), |j| job(yp, g.job(j)));
        })
    }
}

/// Gathers the dY blocks of a tile into G (Q·O × n):
/// G[(o, kd, kh, kw), p] = dy[o, 2z + kd, 2h + kh, 2w + kw].
fn gather<T: Float>(dy: &[T], g: &Geom, p: usize, r0: usize, nr: usize, out: &mut [T]) {
    let (ow, n) = (2 * g.w, nr * g.w);
    for o in 0..g.co {
        for (kd, kh) in (0..g.kd).flat_map(|kd| (0..2).map(move |kh| (kd, kh))) {
            let (g0, rest) = out[(o * g.taps() + kd * 4 + kh * 2) * n..].split_at_mut(n);
            let g1 = &mut rest[..n];
            for r in 0..nr {
                let src = &dy[g.out_row(p, o, kd, 2 * (r0 + r) + kh)..][..ow];
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
    let (dhw, nk, q) = (g.dhw(), g.taps(), g.taps() * g.co);
    let (wl, bl) = (
        if need[1] { g.ci * q } else { 0 },
        if need[2] { g.co } else { 0 },
    );
    if dhw == 0 || g.co == 0 {
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
                let (p, r0, nr) = g.job(j);
                let n = nr * g.w;
                let xo = g.slice_offset(p, g.ci) + r0 * g.w;
                T::with_scratch(q * n, |gt| {
                    gather(dy, &g, p, r0, nr, gt);
                    let xt = x[xo..].as_ptr();
                    if let Some(dxp) = dxp {
                        // dX_tileᵀ (n × I) = Gᵀ (n × Q·O) · Wᵀ (Q·O × I).
                        // SAFETY: the dx rows r0..r0 + nr of slice p belong to this job.
                        unsafe {
                            gemm(
                                (n, g.ci, q),
                                dxp.get().add(xo),
                                (1, dhw),
                                false,
                                gt.as_ptr(),
                                (1, n),
                                w.as_ptr(),
                                (1, q),
                            )
                        }
                    }
                    if need[1] {
                        // dWᵀ (Q·O × I) += G (Q·O × n) · X_tileᵀ (n × I).
                        // SAFETY: views inside gt, slice p of x and this thread's dw.
                        unsafe {
                            gemm(
                                (q, g.ci, n),
                                dw.as_mut_ptr(),
                                (1, q),
                                true,
                                gt.as_ptr(),
                                (n, 1),
                                xt,
                                (1, dhw),
                            )
                        }
                    }
                    if need[2] {
                        for (o, d) in db.iter_mut().enumerate() {
                            *d += gt[o * nk * n..(o + 1) * nk * n].iter().copied().sum::<T>();
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
        // SAFETY: the jobs cover every (slice, row) of dx and each gemm writes all I channels.
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
        let op = g.name();
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
        let op = g.name();
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
                "{op}: expected f32 or f64 x, w and b of one dtype, got {:?}, {:?}, {:?}",
                s1.dtype(),
                s2.dtype(),
                s3.dtype()
            ),
        };
        Ok((y, g.out_shape()))
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

    #[test]
    fn gradients_3d_match_finite_differences_with_odd_channels_and_frozen_inputs() -> Result<()> {
        for (ci, co) in [(3, 5), (5, 3)] {
            let x = uniform(&[2, ci, 2, 3, 2], -1.0, 1.0, 131, DType::F64);
            let w = uniform(&[ci, co, 2, 2, 2], -1.0, 1.0, 132, DType::F64);
            let b = uniform(&[co], -1.0, 1.0, 133, DType::F64);
            check(
                &[(x.clone(), true), (w.clone(), true), (b.clone(), true)],
                |a| op(&a[0], &a[1], &a[2]),
            )?;
            check(
                &[(x.clone(), true), (w.clone(), false), (b.clone(), false)],
                |a| op(&a[0], &a[1], &a[2]),
            )?;
            check(&[(x, false), (w, true), (b, false)], |a| {
                op(&a[0], &a[1], &a[2])
            })?;
        }
        Ok(())
    }

    #[test]
    fn matches_reference_3d_forward_and_gradients_in_f32() -> Result<()> {
        // 30 rows × 8·40 outputs: several row tiles per slice.
        for (bt, ci, co, d, h, w) in [(2, 7, 40, 3, 30, 5), (2, 5, 3, 2, 4, 3)] {
            let x = Var::from_tensor(&uniform(&[bt, ci, d, h, w], -1.0, 1.0, 137, DType::F32))?;
            let wt = Var::from_tensor(&uniform(&[ci, co, 2, 2, 2], -0.5, 0.5, 138, DType::F32))?;
            let b = Var::from_tensor(&uniform(&[co], -0.5, 0.5, 139, DType::F32))?;
            let probe = uniform(&[bt, co, 2 * d, 2 * h, 2 * w], -1.0, 1.0, 140, DType::F32);
            let own = ops::conv_transpose2x2x2(&x, &wt, &b)?;
            let refr = reference::conv_transpose2x2x2(&x, &wt, &b)?;
            let vars = [("dx", &x), ("dw", &wt), ("db", &b)];
            assert_matches_reference(&own, &refr, &probe, &vars, 1e-5)?;
        }
        Ok(())
    }

    #[test]
    fn rejects_wrong_3d_kernel_shapes() {
        let dev = &candle_core::Device::Cpu;
        let x = Tensor::zeros((1, 3, 2, 2, 2), DType::F32, dev).unwrap();
        let w = Tensor::zeros((3, 4, 2, 2), DType::F32, dev).unwrap();
        let b = Tensor::zeros(4, DType::F32, dev).unwrap();
        let err = op(&x, &w, &b).unwrap_err().to_string();
        assert!(err.contains("2x2x2") && err.contains("kernel"), "{err}");
    }
}
