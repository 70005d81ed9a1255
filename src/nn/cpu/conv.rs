//! 3×3 (padding 1) and 1×1 (padding 0) convolution, stride 1, no bias: im2col + `gemm`, in
//! 2D and 3D.
//!
//! Key type: [`Conv`], a `CustomOp2` on (x: (B, I, H, W), w: (O, I, k, k)) or, in 3D,
//! (x: (B, I, D, H, W), w: (O, I, k, k, k)).
//!
//! 3D is the 2D code with depth folded into the channels: a 3×3×3 conv of one depth slice z is
//! a 3×3 conv of the slice image whose 3·I "virtual channels" (c, kd) are the planes
//! x[c, z + kd − 1] (zero outside the volume), and the kernel (O, I, 3, 3, 3) read row-major is
//! exactly that 2D kernel (O, 3·I, 3, 3). Jobs are (image, depth slice, row tile); channel
//! planes sit D·H·W apart. The patch modes below then apply unchanged.
//!
//! Design: the image is cut into row tiles, one job per (image, tile) on rayon. A tile's patch
//! matrix is sized to stay in L2 while `gemm` reads it, so no expanded copy reaches memory, and
//! its rows are padded by a cache line so that gemm's walk down them does not hit one L1 set
//! (rows a multiple of 4 KiB apart did: a 16→16-channel forward at 128² took 1.5× as long).
//! Three ways to build it (`Mode`):
//! - `Rows` (3×3 with many input channels: ≥ 32 for the forward, ≥ 64 for the kernel
//!   gradient): only the three horizontal shifts are copied, rows (c, kw) over the tile plus one
//!   halo row above and below; the vertical shift kh is a pointer offset of kh·W into that
//!   buffer. The conv is then 3 accumulating gemms of depth 3·I over a 3× copy of the input
//!   instead of im2col's 9×;
//! - `Full` (3×3 with fewer channels, e.g. the 1-channel first layer): classic im2col, rows
//!   (c, kh, kw), one gemm of depth 9·I (shallow gemms cost more than the copy there);
//! - `Direct` (1×1): the image is the matrix; no copy.
//!
//! Per tile, with P the patch matrix (depth × pixels) and Wp the kernel repacked to match it:
//! - forward: Y_tile (O × n) = Σ_passes Wp · P, written straight into the output, pixels as
//!   gemm's contiguous axis;
//! - input gradient: a convolution of dY with the flipped kernel, in/out channels swapped (the
//!   forward code, no col2im scatter);
//! - kernel gradient: dWp += dY_tile · Pᵀ with the output channels as gemm's row axis, so gemm
//!   only repacks the thin dY tile, not P; one accumulator per rayon split, summed, unpacked.
//!
//! Each gradient is computed only when its input takes part in the graph.

use super::{Float, SharedMut, filled, gemm, par, slice, tensor, with_data};
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor};

/// Elements of one patch tile: 48 Ki f32 = 192 KiB, within a core's L2 with room for gemm's
/// packed panels.
const TILE_ELEMS: usize = 48 * 1024;

/// Input channels from which a 3×3 conv uses [`Mode::Rows`], for the forward and for the
/// kernel gradient (measured on 2-core AVX2, f32, per layer of the default Unet): with fewer,
/// gemm passes of depth 3·I are too shallow and the full im2col wins.
const ROWS_MIN_CI_FORWARD: usize = 32;
const ROWS_MIN_CI_WEIGHT_GRAD: usize = 64;

/// The convolution op (2D or 3D by the input's rank). `need_x` / `need_w` say which gradients
/// backward must produce.
#[derive(Debug, Clone, Copy)]
pub struct Conv {
    pub need_x: bool,
    pub need_w: bool,
}

/// Sizes of one convolution: batch, in/out channels, depth (1 in 2D), height, width, in-plane
/// kernel side, depth kernel side (1 in 2D and for 1×1×1), and whether tensors are 5D.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Geom {
    pub b: usize,
    pub ci: usize,
    pub co: usize,
    pub d: usize,
    pub h: usize,
    pub w: usize,
    pub k: usize,
    pub kd: usize,
    pub vol: bool,
}

/// How a tile's patch matrix is built (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    Direct,
    Full,
    Rows,
}

impl Geom {
    /// Validates the shapes of an input (B, I, H, W) and a kernel (O, I, k, k), or in 3D
    /// (B, I, D, H, W) and (O, I, k, k, k).
    fn new(x: &Shape, w: &Shape) -> Result<Self> {
        let g = if x.rank() == 5 {
            let (b, ci, d, h, wd) = x.dims5()?;
            let (co, ci2, kd, kh, kw) = w.dims5()?;
            if kd != kh || kh != kw || (kh != 1 && kh != 3) {
                candle_core::bail!("conv3d: expected a 1×1×1 or 3×3×3 kernel, got {kd}×{kh}×{kw}")
            }
            (
                ci2,
                Geom {
                    b,
                    ci,
                    co,
                    d,
                    h,
                    w: wd,
                    k: kh,
                    kd,
                    vol: true,
                },
            )
        } else {
            let (b, ci, h, wd) = x.dims4()?;
            let (co, ci2, kh, kw) = w.dims4()?;
            if kh != kw || (kh != 1 && kh != 3) {
                candle_core::bail!("conv2d: expected a 1×1 or 3×3 kernel, got {kh}×{kw}")
            }
            (
                ci2,
                Geom {
                    b,
                    ci,
                    co,
                    d: 1,
                    h,
                    w: wd,
                    k: kh,
                    kd: 1,
                    vol: false,
                },
            )
        };
        let (ci2, g) = g;
        if ci2 != g.ci {
            candle_core::bail!(
                "{}: input has {} channels but the kernel expects {ci2}",
                g.name(),
                g.ci
            )
        }
        Ok(g)
    }

    fn name(&self) -> &'static str {
        if self.vol { "conv3d" } else { "conv2d" }
    }

    fn hw(&self) -> usize {
        self.h * self.w
    }

    /// Elements of one channel's volume (D·H·W): the stride between channel planes.
    fn dhw(&self) -> usize {
        self.d * self.h * self.w
    }

    /// Virtual channels of a slice image: (c, kd) pairs.
    fn civ(&self) -> usize {
        self.ci * self.kd
    }

    /// Elements of the kernel.
    fn w_len(&self) -> usize {
        self.co * self.ci * self.kd * self.k * self.k
    }

    /// The output shape.
    fn out_shape(&self) -> Shape {
        if self.vol {
            Shape::from((self.b, self.co, self.d, self.h, self.w))
        } else {
            Shape::from((self.b, self.co, self.h, self.w))
        }
    }

    /// The plan of a forward (or input-gradient) pass.
    fn forward_plan(self) -> Plan {
        self.plan(ROWS_MIN_CI_FORWARD)
    }

    /// The plan of a kernel-gradient pass.
    fn weight_grad_plan(self) -> Plan {
        self.plan(ROWS_MIN_CI_WEIGHT_GRAD)
    }

    fn plan(self, rows_min_ci: usize) -> Plan {
        let mode = match (self.k, self.civ() >= rows_min_ci) {
            (1, _) => Mode::Direct,
            (_, false) => Mode::Full,
            (_, true) => Mode::Rows,
        };
        Plan { g: self, mode }
    }
}

/// A geometry with the way its patch matrices are built.
#[derive(Debug, Clone, Copy)]
struct Plan {
    g: Geom,
    mode: Mode,
}

impl std::ops::Deref for Plan {
    type Target = Geom;
    fn deref(&self) -> &Geom {
        &self.g
    }
}

impl Plan {
    /// Gemm passes per tile and the depth of each.
    fn passes(&self) -> (usize, usize) {
        match self.mode {
            Mode::Direct => (1, self.ci),
            Mode::Full => (1, 9 * self.civ()),
            Mode::Rows => (3, 3 * self.civ()),
        }
    }

    /// Index in the kernel (O, I[, kd], k, k) of row `r` of pass `t`, output channel `o`.
    fn w_index(&self, t: usize, r: usize, o: usize) -> usize {
        match self.mode {
            Mode::Direct => o * self.ci + r,
            Mode::Full => o * 9 * self.civ() + r,
            // Row r = (virtual channel, kw) of pass t = kh.
            Mode::Rows => ((o * self.civ() + r / 3) * 3 + t) * 3 + r % 3,
        }
    }

    /// Image rows per tile: the patch tile stays near [`TILE_ELEMS`]; 1×1 convs copy nothing
    /// and take whole images unless there are fewer images than threads.
    fn tile_rows(&self) -> usize {
        let w = self.w.max(1);
        let rows = match self.mode {
            Mode::Direct if self.b * self.d >= par::threads() => self.h,
            Mode::Direct => 4096 / w,
            Mode::Full => TILE_ELEMS / (9 * self.civ() * w).max(1),
            Mode::Rows => (TILE_ELEMS / (3 * self.civ() * w).max(1)).saturating_sub(2),
        };
        rows.clamp(1, self.h.max(1))
    }

    /// Number of (slice image, row tile) jobs.
    fn n_jobs(&self) -> usize {
        self.b * self.d * self.h.div_ceil(self.tile_rows())
    }

    /// Offset of slice image `p` = (image, depth slice) in a (B, C, D, H, W) buffer with `c`
    /// channels; its channel planes follow at a stride of [`Geom::dhw`].
    fn slice_offset(&self, p: usize, c: usize) -> usize {
        ((p / self.d) * c * self.d + p % self.d) * self.hw()
    }

    /// Job `j` as (slice image, first row, rows).
    fn job(&self, j: usize) -> (usize, usize, usize) {
        let rows = self.tile_rows();
        let tiles = self.h.div_ceil(rows);
        let r0 = (j % tiles) * rows;
        (j / tiles, r0, rows.min(self.h - r0))
    }

    /// The kernel repacked per pass: `wp[t][o][r] = w[w_index(t, r, o)]`, so that pass t's
    /// right-hand side (depth × O) has unit row stride.
    fn pack_w<T: Float>(&self, w: &[T]) -> Vec<T> {
        let (np, depth) = self.passes();
        let mut wp = Vec::with_capacity(np * self.co * depth);
        for t in 0..np {
            for o in 0..self.co {
                wp.extend((0..depth).map(|r| w[self.w_index(t, r, o)]));
            }
        }
        wp
    }

    /// The plane (H × W) of virtual channel `cv` = (c, kd) of slice image `p` of `x`, or
    /// `None` where the depth shift falls outside the volume (zero padding).
    fn plane<'a, T: Float>(&self, x: &'a [T], p: usize, cv: usize) -> Option<&'a [T]> {
        let (c, kdo) = (cv / self.kd, cv % self.kd);
        let z = (p % self.d + kdo).checked_sub(self.kd / 2)?;
        if z >= self.d {
            return None;
        }
        let at = self.slice_offset(p - p % self.d + z, self.ci) + c * self.dhw();
        Some(&x[at..][..self.hw()])
    }

    /// Runs `f(lhs, lhs_cs, offsets)` on the patch matrix of tile (p, r0, nr) of `x`: pass t
    /// reads rows `lhs + offsets[t] + r·lhs_cs` (r < depth), each n = nr·W pixels long.
    fn with_patches<T: Float, R>(
        &self,
        x: &[T],
        (p, r0, nr): (usize, usize, usize),
        f: impl FnOnce(*const T, usize, [usize; 3]) -> R,
    ) -> R {
        let w = self.w;
        let planes = |cv| self.plane(x, p, cv);
        let geo = (self.civ(), self.h, w);
        match self.mode {
            Mode::Direct => f(
                x[self.slice_offset(p, self.ci) + r0 * w..].as_ptr(),
                self.dhw(),
                [0; 3],
            ),
            Mode::Full => {
                let stride = padded_stride(nr * w);
                T::with_scratch(9 * self.civ() * stride, |col| {
                    shifted_rows(planes, geo, r0 as isize - 1, nr, 3, stride, col);
                    f(col.as_ptr(), stride, [0; 3])
                })
            }
            Mode::Rows => {
                let stride = padded_stride((nr + 2) * w);
                T::with_scratch(3 * self.civ() * stride, |col| {
                    shifted_rows(planes, geo, r0 as isize - 1, nr + 2, 1, stride, col);
                    f(col.as_ptr(), stride, [0, w, 2 * w])
                })
            }
        }
    }
}

/// Row stride of a patch buffer whose rows hold `n` elements: rounded up, plus one cache line,
/// so that consecutive rows do not map to the same cache sets (a multiple of 4 KiB would, and
/// gemm walks down the rows).
fn padded_stride(n: usize) -> usize {
    n.next_multiple_of(16) + 16
}

/// Fills `col` with horizontally shifted row blocks of one image whose channel planes (H × W)
/// `plane(c)` gives (`None`: all zero), zero outside the image: for channel c < `ci`, vertical
/// shift kh < `n_kh` and horizontal shift kw < 3, the block
/// `col[((c·n_kh + kh)·3 + kw)·stride ..]` holds rows `top + kh + r` (r < `n_rows`) of
/// channel c shifted by kw − 1 columns. `n_kh = 3` gives im2col's (c, kh, kw) rows; `n_kh = 1`
/// with `n_rows = nr + 2` gives the (c, kw) rows of [`Mode::Rows`].
fn shifted_rows<'a, T: Float>(
    plane: impl Fn(usize) -> Option<&'a [T]>,
    (ci, h, w): (usize, usize, usize),
    top: isize,
    n_rows: usize,
    n_kh: usize,
    stride: usize,
    col: &mut [T],
) {
    let n = n_rows * w;
    for c in 0..ci {
        let xc = plane(c);
        for kh in 0..n_kh {
            for kw in 0..3 {
                let block = &mut col[((c * n_kh + kh) * 3 + kw) * stride..][..n];
                let Some(xc) = xc else {
                    block.fill(T::zero());
                    continue;
                };
                for (r, dst) in block.chunks_exact_mut(w).enumerate() {
                    let src_r = top + (kh + r) as isize;
                    if src_r < 0 || src_r >= h as isize {
                        dst.fill(T::zero());
                        continue;
                    }
                    let src = &xc[src_r as usize * w..][..w];
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

/// Y = conv(X, W): `x` (B, I[, D], H, W), `w` (O, I, k, k[, k]) → (B, O[, D], H, W).
pub(crate) fn forward<T: Float>(x: &[T], w: &[T], g: Geom) -> Vec<T> {
    forward_with(x, w, g.forward_plan())
}

fn forward_with<T: Float>(x: &[T], w: &[T], g: Plan) -> Vec<T> {
    let dhw = g.dhw();
    assert_eq!(x.len(), g.b * g.ci * dhw, "conv: input length");
    assert_eq!(w.len(), g.w_len(), "conv: kernel length");
    let len = g.b * g.co * dhw;
    if len == 0 || g.ci == 0 {
        return vec![T::zero(); len];
    }
    let (np, depth) = g.passes();
    let wp = g.pack_w(w);
    let job = |yp: SharedMut<T>, (p, r0, nr): (usize, usize, usize)| {
        g.with_patches(x, (p, r0, nr), |lhs, lhs_cs, offsets| {
            for (t, &off) in offsets.iter().enumerate().take(np) {
                // Y_tileᵀ (n × O) (+)= P_tᵀ (n × depth) · Wp_t (depth × O); pixels are the
                // contiguous axis, as gemm's kernels prefer.
                // SAFETY: the views stay inside the patch buffer (or x), wp and slice image p's
                // output rows r0..r0 + nr, which no other job writes.
                unsafe {
                    gemm(
                        (nr * g.w, g.co, depth),
                        yp.get().add(g.slice_offset(p, g.co) + r0 * g.w),
                        (1, dhw),
                        t > 0,
                        lhs.add(off),
                        (1, lhs_cs),
                        wp[t * g.co * depth..].as_ptr(),
                        (1, depth),
                    )
                }
            }
        })
    };
    // SAFETY: the jobs cover every (slice, row) and the first pass writes all O channels of its
    // rows before later passes read them.
    unsafe {
        filled(len, |y| {
            let yp = SharedMut(y.as_mut_ptr() as *mut T);
            par::for_each(g.n_jobs(), |j| job(yp, g.job(j)));
        })
    }
}

/// dX = conv(dY, W flipped in space with in/out channels swapped): `dy` (B, O[, D], H, W).
pub(crate) fn input_grad<T: Float>(dy: &[T], w: &[T], g: Geom) -> Vec<T> {
    let k2 = g.kd * g.k * g.k;
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

/// dW = Σ over images and pixels of dY · Pᵀ: `x` (B, I[, D], H, W), `dy` (B, O[, D], H, W).
pub(crate) fn weight_grad<T: Float>(x: &[T], dy: &[T], g: Geom) -> Vec<T> {
    weight_grad_with(x, dy, g.weight_grad_plan())
}

fn weight_grad_with<T: Float>(x: &[T], dy: &[T], g: Plan) -> Vec<T> {
    let dhw = g.dhw();
    assert_eq!(x.len(), g.b * g.ci * dhw, "conv: input length");
    assert_eq!(dy.len(), g.b * g.co * dhw, "conv: output-gradient length");
    let size = g.w_len();
    if dhw == 0 || size == 0 {
        return vec![T::zero(); size];
    }
    let (np, depth) = g.passes();
    let partials = par::fold(
        g.n_jobs(),
        || vec![T::zero(); np * depth * g.co],
        |acc: &mut Vec<T>, j| {
            let (p, r0, nr) = g.job(j);
            let dyt = dy[g.slice_offset(p, g.co) + r0 * g.w..].as_ptr();
            g.with_patches(x, (p, r0, nr), |lhs, lhs_cs, offsets| {
                for (t, &off) in offsets.iter().enumerate().take(np) {
                    // dWp_tᵀ (O × depth) += dY_tile (O × n) · P_tᵀ (n × depth): O is gemm's row
                    // axis, so gemm repacks only the thin dY tile.
                    // SAFETY: the views stay inside slice p's dy rows, the patch buffer (or
                    // x) and this split's own accumulator.
                    unsafe {
                        gemm(
                            (g.co, depth, nr * g.w),
                            acc[t * depth * g.co..].as_mut_ptr(),
                            (1, g.co),
                            true,
                            dyt,
                            (dhw, 1),
                            lhs.add(off),
                            (1, lhs_cs),
                        )
                    }
                }
            })
        },
    );
    let acc = sum_parts(partials, np * depth * g.co);
    let mut dw = vec![T::zero(); size];
    for t in 0..np {
        for r in 0..depth {
            for o in 0..g.co {
                dw[g.w_index(t, r, o)] = acc[(t * depth + r) * g.co + o];
            }
        }
    }
    dw
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

impl Conv {
    fn grads<T: Float>(
        &self,
        x: &Tensor,
        w: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = Geom::new(x.shape(), w.shape())?;
        let op = g.name();
        let dx = if self.need_x {
            let v = with_data::<T, _>(w, op, |w| {
                with_data::<T, _>(dy, op, |dy| Ok(input_grad(dy, w, g)))
            })?;
            Some(tensor(v, x.dims())?)
        } else {
            None
        };
        let dw = if self.need_w {
            let v = with_data::<T, _>(x, op, |x| {
                with_data::<T, _>(dy, op, |dy| Ok(weight_grad(x, dy, g)))
            })?;
            Some(tensor(v, w.dims())?)
        } else {
            None
        };
        Ok((dx, dw))
    }
}

impl CustomOp2 for Conv {
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
        let op = g.name();
        let y = match (s1, s2) {
            (CpuStorage::F32(_), CpuStorage::F32(_)) => {
                CpuStorage::F32(forward(slice(s1, l1, op)?, slice(s2, l2, op)?, g))
            }
            (CpuStorage::F64(_), CpuStorage::F64(_)) => {
                CpuStorage::F64(forward(slice(s1, l1, op)?, slice(s2, l2, op)?, g))
            }
            _ => candle_core::bail!(
                "{op}: expected an f32 or f64 input and kernel of one dtype, got {:?} and {:?}",
                s1.dtype(),
                s2.dtype()
            ),
        };
        Ok((y, g.out_shape()))
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
            dt => candle_core::bail!("conv: expected f32 or f64, got {dt:?}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::gradcheck::{assert_close, assert_matches_reference, check, uniform};
    use crate::nn::ops::{self, reference};
    use candle_core::Var;

    fn op(x: &Tensor, w: &Tensor) -> Result<Tensor> {
        x.apply_op2(
            w,
            Conv {
                need_x: x.track_op(),
                need_w: w.track_op(),
            },
        )
    }

    #[test]
    fn shifted_rows_match_direct_indexing_with_padding() {
        let (ci, h, w) = (2, 4, 3);
        let x: Vec<f64> = (0..ci * h * w).map(|v| v as f64 + 1.0).collect();
        // im2col layout (n_kh = 3) and the Rows layout (n_kh = 1, halo rows) of rows 1..4.
        for (top, n_rows, n_kh) in [(0isize, 3usize, 3usize), (0, 5, 1), (-1, 2, 3)] {
            let stride = padded_stride(n_rows * w);
            let mut col = vec![f64::NAN; ci * n_kh * 3 * stride];
            let plane = |c: usize| Some(&x[c * h * w..][..h * w]);
            shifted_rows(plane, (ci, h, w), top, n_rows, n_kh, stride, &mut col);
            for c in 0..ci {
                for kh in 0..n_kh {
                    for kw in 0..3 {
                        for r in 0..n_rows {
                            for j in 0..w {
                                let (sr, sc) = (top + (kh + r) as isize, (j + kw) as isize - 1);
                                let want =
                                    if sr < 0 || sr >= h as isize || sc < 0 || sc >= w as isize {
                                        0.0
                                    } else {
                                        x[(c * h + sr as usize) * w + sc as usize]
                                    };
                                let at = ((c * n_kh + kh) * 3 + kw) * stride + r * w + j;
                                assert_eq!(col[at], want, "top {top} c{c} kh{kh} kw{kw} r{r} j{j}");
                            }
                        }
                    }
                }
            }
        }
    }

    /// Every way of building patches gives the reference forward and kernel gradient (the
    /// reference's gradients are finite-difference checked in ops.rs), with several tiles.
    #[test]
    fn every_patch_mode_matches_the_reference_in_f64() -> Result<()> {
        for (ci, k, rows_min_ci, mode) in [
            (3, 3, usize::MAX, Mode::Full),
            (3, 3, 0, Mode::Rows),
            (4, 1, 0, Mode::Direct),
        ] {
            let g = Geom {
                b: 2,
                ci,
                co: 5,
                d: 1,
                h: 9,
                w: 600,
                k,
                kd: 1,
                vol: false,
            };
            let plan = g.plan(rows_min_ci);
            assert_eq!(plan.mode, mode);
            assert!(
                plan.n_jobs() > 2 || mode == Mode::Direct,
                "{mode:?}: several tiles per image"
            );
            let x = uniform(&[2, ci, 9, 600], -1.0, 1.0, 51, DType::F64);
            let w = Var::from_tensor(&uniform(&[5, ci, k, k], -1.0, 1.0, 52, DType::F64))?;
            let dy = uniform(&[2, 5, 9, 600], -1.0, 1.0, 53, DType::F64);
            let y_ref = reference::conv2d(&x, &w)?;
            let dw_ref = (&y_ref * &dy)?
                .sum_all()?
                .backward()?
                .get(&w)
                .unwrap()
                .clone();
            let xs = x.flatten_all()?.to_vec1::<f64>()?;
            let ws = w.flatten_all()?.to_vec1::<f64>()?;
            let dys = dy.flatten_all()?.to_vec1::<f64>()?;
            let y = Tensor::from_vec(
                forward_with(&xs, &ws, plan),
                y_ref.dims(),
                &candle_core::Device::Cpu,
            )?;
            let dw = Tensor::from_vec(
                weight_grad_with(&xs, &dys, plan),
                w.dims(),
                &candle_core::Device::Cpu,
            )?;
            assert_close(&y, &y_ref, 1e-12, &format!("{mode:?} forward"));
            assert_close(&dw, &dw_ref, 1e-12, &format!("{mode:?} dw"));
        }
        Ok(())
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
        let (dx, dw) = Conv {
            need_x: false,
            need_w: true,
        }
        .bwd(&x, &w, &y, &dy)?;
        assert!(dx.is_none() && dw.is_some());
        let (dx, dw) = Conv {
            need_x: true,
            need_w: false,
        }
        .bwd(&x, &w, &y, &dy)?;
        assert!(dx.is_some() && dw.is_none());
        Ok(())
    }

    #[test]
    fn matches_reference_forward_and_gradients_in_f32() -> Result<()> {
        // The default plans, with several row tiles per image and batch > 1: 70 channels (Rows
        // for forward and kernel gradient, 1-row tiles), 40 (Rows forward, Full kernel
        // gradient), 4 (Full, 6-row tiles), Full in one tile, Direct (1×1; a single image is
        // cut into 27-row tiles when there are several threads).
        for (b, ci, co, h, w, k) in [
            (2, 70, 3, 5, 40, 3),
            (3, 40, 7, 16, 150, 3),
            (2, 4, 3, 13, 200, 3),
            (2, 5, 3, 7, 9, 3),
            (3, 6, 4, 8, 6, 1),
            (1, 6, 4, 40, 150, 1),
        ] {
            let x = Var::from_tensor(&uniform(&[b, ci, h, w], -1.0, 1.0, 8, DType::F32))?;
            let wt = Var::from_tensor(&uniform(&[co, ci, k, k], -0.3, 0.3, 9, DType::F32))?;
            let probe = uniform(&[b, co, h, w], -1.0, 1.0, 10, DType::F32);
            let own = ops::conv2d(x.as_tensor(), wt.as_tensor())?;
            let refr = reference::conv2d(x.as_tensor(), wt.as_tensor())?;
            assert_matches_reference(&own, &refr, &probe, &[("dx", &x), ("dw", &wt)], 1e-5)?;
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

    #[test]
    fn conv3d_gradients_match_finite_differences_3x3x3_and_1x1x1() -> Result<()> {
        for (ci, co, k) in [(3, 5, 3), (5, 3, 1), (1, 2, 3)] {
            let x = uniform(&[2, ci, 3, 4, 3], -1.0, 1.0, 101, DType::F64);
            let w = uniform(&[co, ci, k, k, k], -1.0, 1.0, 102, DType::F64);
            check(&[(x, true), (w, true)], |a| op(&a[0], &a[1]))?;
        }
        Ok(())
    }

    #[test]
    fn conv3d_frozen_kernel_or_frozen_input_still_gives_the_other_gradient() -> Result<()> {
        let x = uniform(&[2, 3, 3, 2, 4], -1.0, 1.0, 103, DType::F64);
        let w = uniform(&[5, 3, 3, 3, 3], -1.0, 1.0, 104, DType::F64);
        check(&[(x.clone(), true), (w.clone(), false)], |a| {
            op(&a[0], &a[1])
        })?;
        check(&[(x, false), (w, true)], |a| op(&a[0], &a[1]))?;
        Ok(())
    }

    /// Every patch mode in 3D, with several tiles and depth slices, against the reference.
    #[test]
    fn conv3d_every_patch_mode_matches_the_reference_in_f64() -> Result<()> {
        for (ci, k, rows_min_ci, mode) in [
            (3, 3, usize::MAX, Mode::Full),
            (3, 3, 0, Mode::Rows),
            (4, 1, 0, Mode::Direct),
        ] {
            let (d, h, w) = (3, 9, 300);
            let g = Geom {
                b: 2,
                ci,
                co: 5,
                d,
                h,
                w,
                k,
                kd: k,
                vol: true,
            };
            let plan = g.plan(rows_min_ci);
            assert_eq!(plan.mode, mode);
            let x = uniform(&[2, ci, d, h, w], -1.0, 1.0, 105, DType::F64);
            let wt = Var::from_tensor(&uniform(&[5, ci, k, k, k], -1.0, 1.0, 106, DType::F64))?;
            let dy = uniform(&[2, 5, d, h, w], -1.0, 1.0, 107, DType::F64);
            let y_ref = reference::conv3d(&x, &wt)?;
            let dw_ref = (&y_ref * &dy)?
                .sum_all()?
                .backward()?
                .get(&wt)
                .unwrap()
                .clone();
            let xs = x.flatten_all()?.to_vec1::<f64>()?;
            let ws = wt.flatten_all()?.to_vec1::<f64>()?;
            let dys = dy.flatten_all()?.to_vec1::<f64>()?;
            let dev = &candle_core::Device::Cpu;
            let y = Tensor::from_vec(forward_with(&xs, &ws, plan), y_ref.dims(), dev)?;
            let dw = Tensor::from_vec(weight_grad_with(&xs, &dys, plan), wt.dims(), dev)?;
            assert_close(&y, &y_ref, 1e-12, &format!("3D {mode:?} forward"));
            assert_close(&dw, &dw_ref, 1e-12, &format!("3D {mode:?} dw"));
        }
        Ok(())
    }

    #[test]
    fn conv3d_matches_reference_forward_and_gradients_in_f32() -> Result<()> {
        // Odd channels, batch 2; 70 channels take the Rows plan, 5 the Full plan, 1×1×1 Direct.
        for (b, ci, co, d, h, w, k) in [
            (2, 5, 3, 4, 6, 10, 3),
            (2, 70, 3, 2, 5, 8, 3),
            (1, 1, 4, 6, 8, 8, 3),
            (2, 7, 3, 3, 4, 5, 1),
        ] {
            let x = Var::from_tensor(&uniform(&[b, ci, d, h, w], -1.0, 1.0, 108, DType::F32))?;
            let wt = Var::from_tensor(&uniform(&[co, ci, k, k, k], -0.3, 0.3, 109, DType::F32))?;
            let probe = uniform(&[b, co, d, h, w], -1.0, 1.0, 110, DType::F32);
            let own = ops::conv3d(x.as_tensor(), wt.as_tensor())?;
            let refr = reference::conv3d(x.as_tensor(), wt.as_tensor())?;
            assert_matches_reference(&own, &refr, &probe, &[("dx", &x), ("dw", &wt)], 1e-5)?;
        }
        Ok(())
    }

    #[test]
    fn conv3d_rejects_mismatched_channels_and_kernel_sizes() {
        let dev = &candle_core::Device::Cpu;
        let x = Tensor::zeros((1, 3, 4, 4, 4), DType::F32, dev).unwrap();
        let w = Tensor::zeros((2, 4, 3, 3, 3), DType::F32, dev).unwrap();
        let err = op(&x, &w).unwrap_err().to_string();
        assert!(
            err.contains("conv3d") && err.contains("3 channels"),
            "{err}"
        );
        let w = Tensor::zeros((2, 3, 1, 3, 3), DType::F32, dev).unwrap();
        let err = op(&x, &w).unwrap_err().to_string();
        assert!(err.contains("1×3×3"), "{err}");
        let w = Tensor::zeros((2, 3, 3, 3), DType::F32, dev).unwrap();
        assert!(ops::conv3d(&x, &w).is_err());
    }
}
