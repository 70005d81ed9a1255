//! Own CPU kernels for the training ops, wrapped as candle custom ops (`CustomOp1/2/3`).
//!
//! Owns: the 3×3/1×1 convolution ([`conv`]), the 2×2 stride-2 transposed convolution
//! ([`conv_transpose`]), the 2×2 max-pool ([`pool`]), the fused GroupNorm ([`norm`]), ReLU
//! ([`activation`]) and the fused BCE + Dice loss ([`loss`]). [`crate::nn::ops`] dispatches
//! to these on CPU for f32 and f64, and to the candle-native reference bodies elsewhere.
//!
//! Design:
//! - Every kernel is generic over [`Float`] (f32 for training, f64 for the finite-difference
//!   tests); the `gemm` crate is generic over both.
//! - Inputs reach the kernels contiguous (the public functions call `.contiguous()`), so the
//!   kernels work on plain NCHW slices.
//! - A forward op records which of its inputs take part in the graph (`Tensor::track_op`), and
//!   its `bwd` computes only those gradients: a frozen base weight or the input image costs
//!   nothing in backward.
//! - `bwd` runs the backward kernels straight on the storages (`with_data`); their outputs
//!   are graph leaves (no second-order gradients).
//! - Outputs are written without zero-filling first (`filled`); patch tiles live in a
//!   per-thread scratch buffer; [`keep_freed_memory`] stops glibc from unmapping freed
//!   tensors. Measured reasons are in each item's docs.
//! - Parallel loops go through `par` (rayon); `gemm` itself runs single-threaded inside a job.

pub mod activation;
pub mod conv;
pub mod conv_transpose;
pub mod loss;
pub mod norm;
pub(crate) mod par;
pub mod pool;

use std::cell::RefCell;
use std::mem::MaybeUninit;

use candle_core::{CpuStorage, DType, Device, Layout, Result, Storage, Tensor, WithDType};

/// The float types the own ops support: f32 (training) and f64 (finite-difference checks).
pub trait Float: WithDType + Default + std::iter::Sum {
    fn exp(self) -> Self;
    fn ln_1p(self) -> Self;
    fn abs(self) -> Self;

    /// Runs `f` on this thread's scratch buffer of at least `n` elements (contents arbitrary).
    /// Kernels reuse it for im2col tiles instead of allocating and zeroing one per job.
    fn with_scratch<R>(n: usize, f: impl FnOnce(&mut [Self]) -> R) -> R;
}

macro_rules! impl_float {
    ($t:ty, $scratch:ident) => {
        thread_local! {
            static $scratch: RefCell<Vec<$t>> = const { RefCell::new(Vec::new()) };
        }

        impl Float for $t {
            fn exp(self) -> Self {
                <$t>::exp(self)
            }

            fn ln_1p(self) -> Self {
                <$t>::ln_1p(self)
            }

            fn abs(self) -> Self {
                <$t>::abs(self)
            }

            fn with_scratch<R>(n: usize, f: impl FnOnce(&mut [Self]) -> R) -> R {
                $scratch.with(|cell| match cell.try_borrow_mut() {
                    Ok(mut buf) => {
                        if buf.len() < n {
                            buf.resize(n, 0.0);
                        }
                        f(&mut buf[..n])
                    }
                    // Re-entered on this thread (not done by the kernels): a fresh buffer.
                    Err(_) => f(&mut vec![0.0; n]),
                })
            }
        }
    };
}

impl_float!(f32, SCRATCH_F32);
impl_float!(f64, SCRATCH_F64);

/// A vector of `n` elements written by `fill`, without zeroing it first (the outputs are large
/// and every kernel writes all of its output anyway).
///
/// # Safety
/// `fill` must initialise every element of the slice it gets (directly or through its pointer).
pub(crate) unsafe fn filled<T: Float>(
    n: usize,
    fill: impl FnOnce(&mut [MaybeUninit<T>]),
) -> Vec<T> {
    let mut v = Vec::with_capacity(n);
    fill(&mut v.spare_capacity_mut()[..n]);
    // SAFETY: the caller guarantees that `fill` initialised all n elements.
    unsafe { v.set_len(n) };
    v
}

/// Makes glibc keep freed activation-sized buffers for reuse (called once by the first own op).
///
/// By default glibc serves allocations above 128 KiB with fresh `mmap`s and unmaps them on
/// free, so every multi-MiB tensor of every training step pays page faults and kernel page
/// zeroing (a quarter of a step's CPU time, measured). This raises the mmap threshold to 32 MiB
/// and stops trimming the heap top, so a step reuses the memory the previous step freed. The
/// cost is that the process keeps its peak heap. A no-op off glibc.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            // SAFETY: mallopt only changes allocator tuning parameters.
            unsafe {
                libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
                libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
                libc::mallopt(libc::M_TOP_PAD, 64 << 20);
            }
        });
    }
}

/// True when the own CPU ops can run on `t`: a CPU tensor of f32 or f64.
pub fn supported(t: &Tensor) -> bool {
    t.device().is_cpu() && matches!(t.dtype(), DType::F32 | DType::F64)
}

/// The contiguous slice of a CPU storage described by `l`, as `T`.
pub(crate) fn slice<'a, T: Float>(s: &'a CpuStorage, l: &Layout, op: &str) -> Result<&'a [T]> {
    let Some((start, end)) = l.contiguous_offsets() else {
        candle_core::bail!(
            "{op}: expected a contiguous input, got strides {:?}",
            l.stride()
        )
    };
    Ok(&T::cpu_storage_as_slice(s)?[start..end])
}

/// Runs `f` on the contiguous CPU data of `t` (used by the backward passes, which get tensors).
pub(crate) fn with_data<T: Float, R>(
    t: &Tensor,
    op: &str,
    f: impl FnOnce(&[T]) -> Result<R>,
) -> Result<R> {
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else {
        candle_core::bail!(
            "{op}: expected a CPU tensor, got {:?}",
            t.device().location()
        )
    };
    f(slice::<T>(cpu, layout, op)?)
}

/// Wraps a kernel result as a CPU tensor (a graph leaf).
pub(crate) fn tensor<T: Float>(data: Vec<T>, dims: &[usize]) -> Result<Tensor> {
    Tensor::from_vec(data, dims, &Device::Cpu)
}

/// A raw pointer that rayon jobs share to write disjoint parts of one output buffer.
#[derive(Clone, Copy)]
pub(crate) struct SharedMut<T>(pub *mut T);
// SAFETY: only used by jobs that write disjoint index sets of a buffer that outlives them.
unsafe impl<T: Send> Send for SharedMut<T> {}
unsafe impl<T: Send> Sync for SharedMut<T> {}

impl<T> SharedMut<T> {
    /// The pointer (a method, so closures capture the `Send` wrapper, not the raw field).
    pub(crate) fn get(&self) -> *mut T {
        self.0
    }
}

/// `dst (m×n) = lhs (m×k) · rhs (k×n)`, or `dst += …` when `accumulate`, single-threaded.
/// Element (r, c) of a matrix sits at `ptr + r·rs + c·cs`; all strides must be non-negative.
///
/// # Safety
/// Every element addressed through the three views must be in bounds, and `dst` must not be
/// written concurrently by anyone else.
#[allow(clippy::too_many_arguments)]
#[inline]
pub(crate) unsafe fn gemm<T: Float>(
    (m, n, k): (usize, usize, usize),
    dst: *mut T,
    (dst_rs, dst_cs): (usize, usize),
    accumulate: bool,
    lhs: *const T,
    (lhs_rs, lhs_cs): (usize, usize),
    rhs: *const T,
    (rhs_rs, rhs_cs): (usize, usize),
) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        // An empty product: dst stays or becomes zero (dst may be uninitialised memory).
        if !accumulate {
            for c in 0..n {
                for r in 0..m {
                    // SAFETY: (r, c) is in bounds of dst by the caller's contract.
                    unsafe { dst.add(r * dst_rs + c * dst_cs).write(T::zero()) };
                }
            }
        }
        return;
    }
    // SAFETY: forwarded from the caller; gemm's argument order is (cs, rs) and
    // dst = alpha·dst + beta·lhs·rhs, with alpha read only when read_dst is set.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            dst_cs as isize,
            dst_rs as isize,
            accumulate,
            lhs,
            lhs_cs as isize,
            lhs_rs as isize,
            rhs,
            rhs_cs as isize,
            rhs_rs as isize,
            T::one(),
            T::one(),
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
}

/// Sum of a slice with independent partial sums (vectorizes) and an f64 total (accurate).
pub(crate) fn sum_f64<T: Float>(xs: &[T]) -> f64 {
    let mut total = 0.0;
    for block in xs.chunks(1024) {
        let mut lanes = [T::zero(); 8];
        let chunks = block.chunks_exact(8);
        let rest = chunks.remainder();
        for c in chunks {
            for (l, v) in lanes.iter_mut().zip(c) {
                *l += *v;
            }
        }
        total += lanes.iter().map(|v| v.to_f64()).sum::<f64>();
        total += rest.iter().map(|v| v.to_f64()).sum::<f64>();
    }
    total
}

/// Σ (x − shift)² with the same blocking as [`sum_f64`].
pub(crate) fn sum_sq_dev_f64<T: Float>(xs: &[T], shift: T) -> f64 {
    let mut total = 0.0;
    for block in xs.chunks(1024) {
        let mut lanes = [T::zero(); 8];
        let chunks = block.chunks_exact(8);
        let rest = chunks.remainder();
        for c in chunks {
            for (l, v) in lanes.iter_mut().zip(c) {
                let d = *v - shift;
                *l += d * d;
            }
        }
        total += lanes.iter().map(|v| v.to_f64()).sum::<f64>();
        total += rest
            .iter()
            .map(|v| (*v - shift).to_f64().powi(2))
            .sum::<f64>();
    }
    total
}

/// Σ a·b with the same blocking as [`sum_f64`].
pub(crate) fn dot_f64<T: Float>(a: &[T], b: &[T]) -> f64 {
    let mut total = 0.0;
    for (ba, bb) in a.chunks(1024).zip(b.chunks(1024)) {
        let mut lanes = [T::zero(); 8];
        let ca = ba.chunks_exact(8);
        let cb = bb.chunks_exact(8);
        let (ra, rb) = (ca.remainder(), cb.remainder());
        for (x, y) in ca.zip(cb) {
            for ((l, u), v) in lanes.iter_mut().zip(x).zip(y) {
                *l += *u * *v;
            }
        }
        total += lanes.iter().map(|v| v.to_f64()).sum::<f64>();
        total += ra
            .iter()
            .zip(rb)
            .map(|(u, v)| (*u * *v).to_f64())
            .sum::<f64>();
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gemm_wrapper_matches_naive_product_with_strides() {
        // lhs 2×3 row-major, rhs 3×2 column-major, dst 2×2 column-major, then accumulate.
        let lhs = [1.0f64, 2., 3., 4., 5., 6.];
        let rhs = [1.0f64, 0., 2., -1., 1., 0.5];
        let mut dst = [0.0f64; 4];
        // lhs strides (3, 1), rhs (1, 3), dst (1, 2); `k` = 0 leaves dst (accumulate) or zeroes it.
        let product = |dst: &mut [f64; 4], k: usize, accumulate: bool| unsafe {
            gemm(
                (2, 2, k),
                dst.as_mut_ptr(),
                (1, 2),
                accumulate,
                lhs.as_ptr(),
                (3, 1),
                rhs.as_ptr(),
                (1, 3),
            )
        };
        product(&mut dst, 3, false);
        // row 0: [1,2,3]·[1,0,2] = 7, [1,2,3]·[-1,1,0.5] = 2.5; row 1: 4+12 = 16, -4+5+3 = 4.
        assert_eq!(dst, [7.0, 16.0, 2.5, 4.0]);
        product(&mut dst, 3, true);
        assert_eq!(dst, [14.0, 32.0, 5.0, 8.0]);
        product(&mut dst, 0, true);
        assert_eq!(dst, [14.0, 32.0, 5.0, 8.0]);
        product(&mut dst, 0, false);
        assert_eq!(dst, [0.0; 4]);
    }

    #[test]
    fn blocked_sums_match_plain_sums() {
        let xs: Vec<f32> = (0..2051)
            .map(|i| ((i * 37 % 101) as f32) * 0.01 - 0.3)
            .collect();
        let ys: Vec<f32> = (0..2051)
            .map(|i| ((i * 13 % 29) as f32) * 0.1 - 1.0)
            .collect();
        let plain: f64 = xs.iter().map(|&v| v as f64).sum();
        assert!((sum_f64(&xs) - plain).abs() < 1e-3);
        let m = 0.2f32;
        let plain_sq: f64 = xs.iter().map(|&v| ((v - m) as f64).powi(2)).sum();
        assert!((sum_sq_dev_f64(&xs, m) - plain_sq).abs() < 1e-3);
        let plain_dot: f64 = xs.iter().zip(&ys).map(|(&a, &b)| a as f64 * b as f64).sum();
        assert!((dot_f64(&xs, &ys) - plain_dot).abs() < 1e-3);
    }
}
