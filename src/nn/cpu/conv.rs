//! 3×3 (padding 1) and 1×1 (padding 0) convolution, stride 1, no bias: im2col + `gemm`.
//!
//! Key type: [`Conv2d`], a `CustomOp2` on (x: (B, I, H, W), w: (O, I, k, k)).
//!
//! Design: the image is cut into row tiles; a tile's im2col matrix (I·k² × rows·W) is sized to
//! stay in L2 cache while `gemm` consumes it, so the 9× im2col expansion never goes to memory.
//! Jobs are (image, row tile) pairs run by rayon. 1×1 convs skip im2col (the image already is
//! the matrix).
//! - forward: Y_tile (O × n) = W (O × I·k²) · col(X)_tile, written straight into the output;
//! - input gradient: a convolution of dY with the flipped, transposed kernel (same code path as
//!   the forward, no col2im scatter);
//! - kernel gradient: dW += dY_tile · col(X)_tileᵀ, one accumulator per rayon split, summed.
//!
//! Each gradient is computed only when its input takes part in the graph.

use super::{Float, SharedMut, filled, gemm, par, slice, tensor, with_data};
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor};

/// Elements of one im2col tile: 48 Ki f32 = 192 KiB, within a core's L2 with room for gemm's
/// packed panels.
const TILE_ELEMS: usize = 48 * 1024;

/// The convolution op. `need_x` / `need_w` say which gradients backward must produce.
#[derive(Debug, Clone, Copy)]
pub struct Conv2d {
    pub need_x: bool,
    pub need_w: bool,
}

/// Sizes of one convolution: batch, in/out channels, height, width, kernel side.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Geom {
    pub b: usize,
    pub ci: usize,
    pub co: usize,
    pub h: usize,
    pub w: usize,
    pub k: usize,
}

impl Geom {
    /// Validates the shapes of an input (B, I, H, W) and a kernel (O, I, k, k).
    fn new(x: &Shape, w: &Shape) -> Result<Self> {
        let (b, ci, h, wd) = x.dims4()?;
        let (co, ci2, kh, kw) = w.dims4()?;
        if ci2 != ci {
            candle_core::bail!("conv2d: input has {ci} channels but the kernel expects {ci2}")
        }
        if kh != kw || (kh != 1 && kh != 3) {
            candle_core::bail!("conv2d: expected a 1×1 or 3×3 kernel, got {kh}×{kw}")
        }
        Ok(Geom {
            b,
            ci,
            co,
            h,
            w: wd,
            k: kh,
        })
    }

    fn hw(&self) -> usize {
        self.h * self.w
    }

    /// Rows of the im2col matrix: I·k².
    fn kk(&self) -> usize {
        self.ci * self.k * self.k
    }

    /// Image rows per tile: the im2col tile stays near [`TILE_ELEMS`]; 1×1 convs need no im2col
    /// and take whole images unless there are fewer images than threads.
    fn tile_rows(&self) -> usize {
        let rows = if self.k == 1 {
            if self.b >= par::threads() {
                self.h
            } else {
                (4096 / self.w.max(1)).max(1)
            }
        } else {
            TILE_ELEMS / (self.kk() * self.w).max(1)
        };
        rows.clamp(1, self.h.max(1))
    }
}

/// Fills `col` (I·9 × nr·W, row-major) with the 3×3 patches of rows `r0..r0 + nr` of one image
/// `x` (I × H × W): `col[(c·9 + kh·3 + kw), r·W + j] = x[c, r0 + r + kh − 1, j + kw − 1]`, zero
/// outside the image (padding 1).
fn im2col3<T: Float>(
    x: &[T],
    (ci, h, w): (usize, usize, usize),
    r0: usize,
    nr: usize,
    col: &mut [T],
) {
    let n = nr * w;
    for c in 0..ci {
        let xc = &x[c * h * w..(c + 1) * h * w];
        for kh in 0..3 {
            for kw in 0..3 {
                let dst_rows = &mut col[((c * 3 + kh) * 3 + kw) * n..][..n];
                for (r, dst) in dst_rows.chunks_exact_mut(w).enumerate() {
                    let src_r = r0 + r + kh;
                    if src_r == 0 || src_r > h {
                        dst.fill(T::zero());
                        continue;
                    }
                    let src = &xc[(src_r - 1) * w..][..w];
                    match kw {
                        0 => {
                            dst[0] = T::zero();
                            dst[1..].copy_from_slice(&src[..w - 1]);
                        }
                        1 => dst.copy_from_slice(src),
                        _ => {
                            dst[..w - 1].copy_from_slice(&src[1..]);
                            dst[w - 1] = T::zero();
                        }
                    }
                }
            }
        }
    }
}

impl Geom {
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

/// Y = conv(X, W): `x` (B, I, H, W), `w` (O, I, k, k) → (B, O, H, W).
pub(crate) fn forward<T: Float>(x: &[T], w: &[T], g: Geom) -> Vec<T> {
    let (hw, kk) = (g.hw(), g.kk());
    assert_eq!(x.len(), g.b * g.ci * hw, "conv2d: input length");
    assert_eq!(w.len(), g.co * kk, "conv2d: kernel length");
    let len = g.b * g.co * hw;
    if len == 0 || kk == 0 {
        return vec![T::zero(); len];
    }
    let job = |yp: SharedMut<T>, (bi, r0, nr): (usize, usize, usize)| {
        let n = nr * g.w;
        let xb = &x[bi * g.ci * hw..(bi + 1) * g.ci * hw];
        // Y_tileᵀ (n × O) = col_tileᵀ (n × I·k²) · Wᵀ (I·k² × O); the pixel axis is the
        // contiguous one, as gemm's kernels prefer.
        // SAFETY: the views stay inside xb/col, w and image bi's output; jobs write disjoint
        // (image, row) ranges of y.
        let run = |lhs: *const T, lhs_cs: usize| unsafe {
            gemm(
                (n, g.co, kk),
                yp.get().add(bi * g.co * hw + r0 * g.w),
                (1, hw),
                false,
                lhs,
                (1, lhs_cs),
                w.as_ptr(),
                (1, kk),
            )
        };
        if g.k == 1 {
            run(xb[r0 * g.w..].as_ptr(), hw)
        } else {
            T::with_scratch(kk * n, |col| {
                im2col3(xb, (g.ci, g.h, g.w), r0, nr, col);
                run(col.as_ptr(), n)
            })
        }
    };
    // SAFETY: the jobs cover every (image, row) and each gemm writes all O channels of its rows.
    unsafe {
        filled(len, |y| {
            let yp = SharedMut(y.as_mut_ptr() as *mut T);
            par::for_each(g.n_jobs(), |j| job(yp, g.job(j)));
        })
    }
}

/// dX = conv(dY, W flipped in space with in/out channels swapped): `dy` (B, O, H, W).
pub(crate) fn input_grad<T: Float>(dy: &[T], w: &[T], g: Geom) -> Vec<T> {
    let k2 = g.k * g.k;
    let mut wf = vec![T::zero(); w.len()];
    for o in 0..g.co {
        for i in 0..g.ci {
            for t in 0..k2 {
                wf[(i * g.co + o) * k2 + t] = w[(o * g.ci + i) * k2 + (k2 - 1 - t)];
            }
        }
    }
    forward(
        dy,
        &wf,
        Geom {
            ci: g.co,
            co: g.ci,
            ..g
        },
    )
}

/// dW = Σ over images and pixels of dY · col(X)ᵀ: `x` (B, I, H, W), `dy` (B, O, H, W).
pub(crate) fn weight_grad<T: Float>(x: &[T], dy: &[T], g: Geom) -> Vec<T> {
    let (hw, kk) = (g.hw(), g.kk());
    assert_eq!(x.len(), g.b * g.ci * hw, "conv2d: input length");
    assert_eq!(dy.len(), g.b * g.co * hw, "conv2d: output-gradient length");
    let size = g.co * kk;
    if hw == 0 {
        return vec![T::zero(); size];
    }
    let partials = par::fold(
        g.n_jobs(),
        || vec![T::zero(); size],
        |acc: &mut Vec<T>, j| {
            let (bi, r0, nr) = g.job(j);
            let n = nr * g.w;
            let xb = &x[bi * g.ci * hw..(bi + 1) * g.ci * hw];
            // dWᵀ (I·k² × O) += col_tile (I·k² × n) · dY_tileᵀ (n × O).
            // SAFETY: the views stay inside xb/col, image bi's dy rows and acc (this thread's).
            let mut run = |lhs: *const T, lhs_rs: usize| unsafe {
                gemm(
                    (kk, g.co, n),
                    acc.as_mut_ptr(),
                    (1, kk),
                    true,
                    lhs,
                    (lhs_rs, 1),
                    dy[bi * g.co * hw + r0 * g.w..].as_ptr(),
                    (1, hw),
                )
            };
            if g.k == 1 {
                run(xb[r0 * g.w..].as_ptr(), hw)
            } else {
                T::with_scratch(kk * n, |col| {
                    im2col3(xb, (g.ci, g.h, g.w), r0, nr, col);
                    run(col.as_ptr(), n)
                })
            }
        },
    );
    sum_parts(partials, size)
}

/// Element-wise sum of per-thread partial results.
pub(crate) fn sum_parts<T: Float>(parts: Vec<Vec<T>>, size: usize) -> Vec<T> {
    let mut it = parts.into_iter();
    let mut total = it.next().unwrap_or_else(|| vec![T::zero(); size]);
    for p in it {
        total.iter_mut().zip(&p).for_each(|(u, v)| *u += *v);
    }
    total
}

impl Conv2d {
    fn grads<T: Float>(
        &self,
        x: &Tensor,
        w: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = Geom::new(x.shape(), w.shape())?;
        let dx = if self.need_x {
            let v = with_data::<T, _>(w, "conv2d", |w| {
                with_data::<T, _>(dy, "conv2d", |dy| Ok(input_grad(dy, w, g)))
            })?;
            Some(tensor(v, x.dims())?)
        } else {
            None
        };
        let dw = if self.need_w {
            let v = with_data::<T, _>(x, "conv2d", |x| {
                with_data::<T, _>(dy, "conv2d", |dy| Ok(weight_grad(x, dy, g)))
            })?;
            Some(tensor(v, w.dims())?)
        } else {
            None
        };
        Ok((dx, dw))
    }
}

impl CustomOp2 for Conv2d {
    fn name(&self) -> &'static str {
        "ranksweep-conv2d"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = Geom::new(l1.shape(), l2.shape())?;
        let y = match (s1, s2) {
            (CpuStorage::F32(_), CpuStorage::F32(_)) => CpuStorage::F32(forward(
                slice(s1, l1, "conv2d")?,
                slice(s2, l2, "conv2d")?,
                g,
            )),
            (CpuStorage::F64(_), CpuStorage::F64(_)) => CpuStorage::F64(forward(
                slice(s1, l1, "conv2d")?,
                slice(s2, l2, "conv2d")?,
                g,
            )),
            _ => candle_core::bail!(
                "conv2d: expected an f32 or f64 input and kernel of one dtype, got {:?} and {:?}",
                s1.dtype(),
                s2.dtype()
            ),
        };
        Ok((y, Shape::from((g.b, g.co, g.h, g.w))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let dy = dy.contiguous()?;
        match x.dtype() {
            DType::F32 => self.grads::<f32>(x, w, &dy),
            DType::F64 => self.grads::<f64>(x, w, &dy),
            dt => candle_core::bail!("conv2d: expected f32 or f64, got {dt:?}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::gradcheck::{assert_close, check, uniform};
    use crate::nn::ops::{self, reference};
    use candle_core::Var;

    fn op(x: &Tensor, w: &Tensor) -> Result<Tensor> {
        x.apply_op2(
            w,
            Conv2d {
                need_x: x.track_op(),
                need_w: w.track_op(),
            },
        )
    }

    #[test]
    fn im2col_matches_direct_indexing_with_padding() {
        let (ci, h, w) = (2, 4, 3);
        let x: Vec<f64> = (0..ci * h * w).map(|v| v as f64 + 1.0).collect();
        let (r0, nr) = (1, 3);
        let mut col = vec![f64::NAN; ci * 9 * nr * w];
        im2col3(&x, (ci, h, w), r0, nr, &mut col);
        for c in 0..ci {
            for t in 0..9 {
                for r in 0..nr {
                    for j in 0..w {
                        let (sr, sc) = ((r0 + r + t / 3) as isize - 1, (j + t % 3) as isize - 1);
                        let want = if sr < 0 || sr >= h as isize || sc < 0 || sc >= w as isize {
                            0.0
                        } else {
                            x[(c * h + sr as usize) * w + sc as usize]
                        };
                        assert_eq!(
                            col[(c * 9 + t) * nr * w + r * w + j],
                            want,
                            "c{c} t{t} r{r} j{j}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn gradients_match_finite_differences_3x3_and_1x1() -> Result<()> {
        for (ci, co, k) in [(3, 5, 3), (5, 3, 1), (1, 2, 3)] {
            let x = uniform(&[2, ci, 5, 4], -1.0, 1.0, 1, DType::F64);
            let w = uniform(&[co, ci, k, k], -1.0, 1.0, 2, DType::F64);
            check(&[(x, true), (w, true)], |a| op(&a[0], &a[1]))?;
        }
        Ok(())
    }

    #[test]
    fn frozen_kernel_or_frozen_input_still_gives_the_other_gradient() -> Result<()> {
        let x = uniform(&[2, 3, 4, 5], -1.0, 1.0, 3, DType::F64);
        let w = uniform(&[5, 3, 3, 3], -1.0, 1.0, 4, DType::F64);
        check(&[(x.clone(), true), (w.clone(), false)], |a| {
            op(&a[0], &a[1])
        })?;
        check(&[(x, false), (w, true)], |a| op(&a[0], &a[1]))?;
        Ok(())
    }

    #[test]
    fn only_the_needed_gradients_are_computed() -> Result<()> {
        let x = uniform(&[1, 2, 3, 3], -1.0, 1.0, 5, DType::F32);
        let w = uniform(&[2, 2, 3, 3], -1.0, 1.0, 6, DType::F32);
        let dy = uniform(&[1, 2, 3, 3], -1.0, 1.0, 7, DType::F32);
        let y = op(&x, &w)?;
        let (dx, dw) = Conv2d {
            need_x: false,
            need_w: true,
        }
        .bwd(&x, &w, &y, &dy)?;
        assert!(dx.is_none() && dw.is_some());
        let (dx, dw) = Conv2d {
            need_x: true,
            need_w: false,
        }
        .bwd(&x, &w, &y, &dy)?;
        assert!(dx.is_some() && dw.is_none());
        Ok(())
    }

    #[test]
    fn matches_reference_forward_and_gradients_in_f32() -> Result<()> {
        // Sizes that exercise several row tiles per image (16 rows, 40·9 im2col rows) and batch > 1.
        for (b, ci, co, h, w, k) in [
            (3, 40, 7, 16, 150, 3),
            (2, 5, 3, 7, 9, 3),
            (3, 6, 4, 8, 6, 1),
        ] {
            let x = Var::from_tensor(&uniform(&[b, ci, h, w], -1.0, 1.0, 8, DType::F32))?;
            let wt = Var::from_tensor(&uniform(&[co, ci, k, k], -0.3, 0.3, 9, DType::F32))?;
            let probe = uniform(&[b, co, h, w], -1.0, 1.0, 10, DType::F32);
            let own = ops::conv2d(x.as_tensor(), wt.as_tensor())?;
            let refr = reference::conv2d(x.as_tensor(), wt.as_tensor())?;
            assert_close(&own, &refr, 1e-5, "forward");
            let g_own = (&own * &probe)?.sum_all()?.backward()?;
            let g_ref = (&refr * &probe)?.sum_all()?.backward()?;
            for (name, v) in [("dx", &x), ("dw", &wt)] {
                assert_close(g_own.get(v).unwrap(), g_ref.get(v).unwrap(), 1e-5, name);
            }
        }
        Ok(())
    }

    #[test]
    fn rejects_mismatched_channels_and_kernel_sizes() {
        let x = Tensor::zeros((1, 3, 4, 4), DType::F32, &candle_core::Device::Cpu).unwrap();
        let w = Tensor::zeros((2, 4, 3, 3), DType::F32, &candle_core::Device::Cpu).unwrap();
        let err = op(&x, &w).unwrap_err().to_string();
        assert!(err.contains("3 channels"), "{err}");
        let w = Tensor::zeros((2, 3, 5, 5), DType::F32, &candle_core::Device::Cpu).unwrap();
        let err = op(&x, &w).unwrap_err().to_string();
        assert!(err.contains("5×5"), "{err}");
    }
}
