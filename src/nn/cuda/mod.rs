//! CUDA paths of the training ops (feature `cuda`; the convolutions through cuDNN with `cudnn`).
//!
//! Each op is a candle custom op like its CPU twin in [`crate::nn::cpu`], with `cuda_fwd` and a
//! `bwd` that computes only the gradients whose inputs take part in the graph; the backward
//! results are graph leaves. Math and edge cases follow the CPU ops (see their docs):
//! - convolution: cuDNN forward, backward-data and backward-filter ([`conv_forward`],
//!   [`conv_backward_data`], [`conv_backward_filter`], N-d: NCHW and NCDHW; f32, f64, bf16).
//!   f32 may use TF32 tensor cores, as PyTorch's cuDNN default does ([`set_tf32`]). Without
//!   `cudnn` the convolution runs candle's im2col + cuBLAS forward and backward passes with
//!   contiguous operands (never the naive direct kernels);
//! - 2×2 stride-2 transposed conv: non-overlapping, so one cuBLAS product each way plus own
//!   scatter/gather kernels (f32, f64, bf16);
//! - max-pool, GroupNorm, ReLU, BCE + Dice: own kernels (`kernels.cu`, PTX built by build.rs),
//!   f32 and f64; the sums in f64 like the CPU ops.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{
    CudaSlice, CudaView, DeviceRepr, LaunchConfig, PushKernelArg, ValidAsZeroBits,
};
use candle_core::cuda_backend::{CudaDType, CudaDevice, WrapErr};
use candle_core::op::BackpropOp;
use candle_core::{
    CudaStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Storage, Tensor,
    WithDType,
};

#[cfg(feature = "cudnn")]
mod cudnn;
#[cfg(feature = "cudnn")]
pub use cudnn::{conv_backward_data, conv_backward_filter, conv_forward};

/// The PTX of `kernels.cu` (ISA of the CUDA 13.0 toolchain, target `sm_$CUDA_COMPUTE_CAP`).
const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/ranksweep_kernels.ptx"));
const MODULE: &str = "ranksweep_kernels";

static TF32: AtomicBool = AtomicBool::new(true);

/// Allows (default) or forbids TF32 tensor-core math in f32 convolutions. PyTorch allows it
/// for cuDNN convolutions by default; the op checks forbid it to compare at f32 precision.
pub fn set_tf32(allow: bool) {
    TF32.store(allow, Ordering::Relaxed);
}

/// Whether f32 convolutions may use TF32.
pub fn tf32() -> bool {
    TF32.load(Ordering::Relaxed)
}

/// True when the CUDA ops can run on `t`: a CUDA tensor of f32, f64 or bf16 (bf16 only for
/// the convolutions; the other ops check their dtype and say so).
pub fn supported(t: &Tensor) -> bool {
    t.device().is_cuda() && matches!(t.dtype(), DType::F32 | DType::F64 | DType::BF16)
}

/// The dtypes of the own kernels, with their kernel-name suffix.
pub trait GpuFloat: CudaDType + DeviceRepr + ValidAsZeroBits + WithDType {
    const SUFFIX: &'static str;
}
impl GpuFloat for f32 {
    const SUFFIX: &'static str = "f32";
}
impl GpuFloat for f64 {
    const SUFFIX: &'static str = "f64";
}
impl GpuFloat for half::bf16 {
    const SUFFIX: &'static str = "bf16";
}

/// A 1-D launch of `n` work items: 256 threads per block, a grid-stride loop past 2^20 blocks.
fn cfg_for(n: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (n.div_ceil(256).clamp(1, 1 << 20) as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// One block of 256 threads per item (the reductions).
fn cfg_blocks(blocks: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (blocks.max(1) as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// The kernel `$name` of the own module (loaded once per device).
macro_rules! func {
    ($dev:expr, $name:expr) => {
        $dev.get_or_load_custom_func(&$name, MODULE, PTX)
    };
}

/// The contiguous device data of a storage and layout as a view.
fn view<'a, T: GpuFloat>(s: &'a CudaStorage, l: &Layout, op: &str) -> Result<CudaView<'a, T>> {
    let Some((start, end)) = l.contiguous_offsets() else {
        candle_core::bail!(
            "{op}: expected a contiguous input, got strides {:?}",
            l.stride()
        )
    };
    Ok(s.as_cuda_slice::<T>()?.slice(start..end))
}

/// Runs `f` on the contiguous CUDA data of `t` (the backward passes get tensors).
fn with_view<T: GpuFloat, R>(
    t: &Tensor,
    op: &str,
    f: impl FnOnce(&CudaDevice, CudaView<'_, T>) -> Result<R>,
) -> Result<R> {
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cuda(cs) = &*storage else {
        candle_core::bail!(
            "{op}: expected a CUDA tensor, got {:?}",
            t.device().location()
        )
    };
    f(cs.device(), view::<T>(cs, layout, op)?)
}

/// A graph leaf on the device from a kernel result.
fn leaf<T: GpuFloat>(data: CudaSlice<T>, dev: &CudaDevice, dims: &[usize]) -> Tensor {
    let storage = Storage::Cuda(CudaStorage::wrap_cuda_slice(data, dev.clone()));
    Tensor::from_storage(storage, dims, BackpropOp::none(), false)
}

/// An uninitialised device buffer of `n` elements (every kernel below writes all of it).
fn alloc<T: GpuFloat>(dev: &CudaDevice, n: usize) -> Result<CudaSlice<T>> {
    // SAFETY: callers launch a kernel that writes every element before anyone reads it.
    unsafe { dev.alloc::<T>(n.max(1)) }
}

fn float_only(dt: DType, op: &str) -> Result<()> {
    match dt {
        DType::F32 | DType::F64 => Ok(()),
        dt => candle_core::bail!("{op}: the CUDA kernel takes f32 or f64, got {dt:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// ReLU

/// ReLU; the gradient at exactly 0 is 0 (PyTorch's choice, as the CPU op).
#[derive(Debug, Clone, Copy)]
pub struct Relu;

fn relu_fwd<T: GpuFloat>(s: &CudaStorage, l: &Layout) -> Result<CudaStorage> {
    let dev = s.device();
    let x = view::<T>(s, l, "relu")?;
    let n = l.shape().elem_count();
    let y = alloc::<T>(dev, n)?;
    let f = func!(dev, format!("relu_fwd_{}", T::SUFFIX))?;
    let mut b = f.builder();
    b.arg(&n).arg(&x).arg(&y);
    // SAFETY: n elements in x and y.
    unsafe { b.launch(cfg_for(n)) }.w()?;
    Ok(CudaStorage::wrap_cuda_slice(y, dev.clone()))
}

fn relu_bwd<T: GpuFloat>(y: &Tensor, dy: &Tensor) -> Result<Tensor> {
    with_view::<T, _>(y, "relu", |dev, yv| {
        with_view::<T, _>(dy, "relu", |_, dyv| {
            let n = yv.len();
            let dx = alloc::<T>(dev, n)?;
            let f = func!(dev, format!("relu_bwd_{}", T::SUFFIX))?;
            let mut b = f.builder();
            b.arg(&n).arg(&yv).arg(&dyv).arg(&dx);
            // SAFETY: n elements in every buffer.
            unsafe { b.launch(cfg_for(n)) }.w()?;
            Ok(leaf(dx, dev, y.dims()))
        })
    })
}

impl CustomOp1 for Relu {
    fn name(&self) -> &'static str {
        "ranksweep-relu-cuda"
    }
    fn cpu_fwd(
        &self,
        _: &candle_core::CpuStorage,
        _: &Layout,
    ) -> Result<(candle_core::CpuStorage, Shape)> {
        candle_core::bail!("relu: the CUDA op got a CPU tensor")
    }
    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
        let y = match s.dtype() {
            DType::F32 => relu_fwd::<f32>(s, l)?,
            DType::F64 => relu_fwd::<f64>(s, l)?,
            dt => return float_only(dt, "relu").map(|_| unreachable!()),
        };
        Ok((y, l.shape().clone()))
    }
    fn bwd(&self, _x: &Tensor, y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        let dy = dy.contiguous()?;
        Ok(Some(match y.dtype() {
            DType::F32 => relu_bwd::<f32>(y, &dy)?,
            DType::F64 => relu_bwd::<f64>(y, &dy)?,
            dt => return float_only(dt, "relu").map(|_| None),
        }))
    }
}

// ---------------------------------------------------------------------------------------------
// Max-pool 2×2

/// 2×2 stride-2 max-pool with PyTorch's gradient (the first maximum of a window takes it).
#[derive(Debug, Clone, Copy)]
pub struct MaxPool2x2;

fn pool_dims(s: &Shape) -> Result<(usize, usize, usize, usize)> {
    let (b, c, h, w) = s.dims4()?;
    if h % 2 != 0 || w % 2 != 0 {
        candle_core::bail!("max_pool2x2: expected even height and width, got {h}×{w}")
    }
    Ok((b, c, h, w))
}

fn pool_fwd<T: GpuFloat>(s: &CudaStorage, l: &Layout) -> Result<CudaStorage> {
    let (b, c, h, w) = pool_dims(l.shape())?;
    let dev = s.device();
    let x = view::<T>(s, l, "max_pool2x2")?;
    let (n, ow) = (b * c * (h / 2) * (w / 2), w / 2);
    let y = alloc::<T>(dev, n)?;
    let f = func!(dev, format!("pool_fwd_{}", T::SUFFIX))?;
    let mut bld = f.builder();
    bld.arg(&n).arg(&ow).arg(&w).arg(&x).arg(&y);
    // SAFETY: y has n elements, x 4n.
    unsafe { bld.launch(cfg_for(n)) }.w()?;
    Ok(CudaStorage::wrap_cuda_slice(y, dev.clone()))
}

fn pool_bwd<T: GpuFloat>(x: &Tensor, y: &Tensor, dy: &Tensor) -> Result<Tensor> {
    let (_, _, _, w) = pool_dims(x.shape())?;
    let op = "max_pool2x2";
    with_view::<T, _>(x, op, |dev, xv| {
        with_view::<T, _>(y, op, |_, yv| {
            with_view::<T, _>(dy, op, |_, dyv| {
                let (n, ow) = (yv.len(), w / 2);
                let dx = alloc::<T>(dev, xv.len())?;
                let f = func!(dev, format!("pool_bwd_{}", T::SUFFIX))?;
                let mut b = f.builder();
                b.arg(&n)
                    .arg(&ow)
                    .arg(&w)
                    .arg(&xv)
                    .arg(&yv)
                    .arg(&dyv)
                    .arg(&dx);
                // SAFETY: each of the n windows writes its 4 dx elements; dx has 4n.
                unsafe { b.launch(cfg_for(n)) }.w()?;
                Ok(leaf(dx, dev, x.dims()))
            })
        })
    })
}

impl CustomOp1 for MaxPool2x2 {
    fn name(&self) -> &'static str {
        "ranksweep-max-pool2x2-cuda"
    }
    fn cpu_fwd(
        &self,
        _: &candle_core::CpuStorage,
        _: &Layout,
    ) -> Result<(candle_core::CpuStorage, Shape)> {
        candle_core::bail!("max_pool2x2: the CUDA op got a CPU tensor")
    }
    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
        let (b, c, h, w) = pool_dims(l.shape())?;
        let y = match s.dtype() {
            DType::F32 => pool_fwd::<f32>(s, l)?,
            DType::F64 => pool_fwd::<f64>(s, l)?,
            dt => return float_only(dt, "max_pool2x2").map(|_| unreachable!()),
        };
        Ok((y, Shape::from((b, c, h / 2, w / 2))))
    }
    fn bwd(&self, x: &Tensor, y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        let dy = dy.contiguous()?;
        Ok(Some(match x.dtype() {
            DType::F32 => pool_bwd::<f32>(x, y, &dy)?,
            DType::F64 => pool_bwd::<f64>(x, y, &dy)?,
            dt => return float_only(dt, "max_pool2x2").map(|_| None),
        }))
    }
}

// ---------------------------------------------------------------------------------------------
// GroupNorm

/// Fused GroupNorm; `need` flags (x, gamma, beta) that take part in the graph. The forward's
/// per-(image, group) mean and 1/σ stay on the device for the backward.
pub struct GroupNorm {
    groups: usize,
    eps: f64,
    need: [bool; 3],
    stats: OnceLock<(CudaSlice<f64>, CudaSlice<f64>)>,
}

impl std::fmt::Debug for GroupNorm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "GroupNorm(groups {}, eps {}, need {:?})",
            self.groups, self.eps, self.need
        )
    }
}

impl GroupNorm {
    pub fn new(groups: usize, eps: f64, need: [bool; 3]) -> Self {
        GroupNorm {
            groups,
            eps,
            need,
            stats: OnceLock::new(),
        }
    }

    /// Validates (B, C, H, W), (C), (C); returns (B, C, H·W).
    fn dims(&self, x: &Shape, gamma: &Shape, beta: &Shape) -> Result<(usize, usize, usize)> {
        let (b, c, h, w) = x.dims4()?;
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
        Ok((b, c, h * w))
    }

    fn stats_of<T: GpuFloat>(
        &self,
        dev: &CudaDevice,
        x: &CudaView<'_, T>,
        (b, c, hw): (usize, usize, usize),
    ) -> Result<(CudaSlice<f64>, CudaSlice<f64>)> {
        let jobs = b * self.groups;
        let len = c / self.groups * hw;
        let mean = alloc::<f64>(dev, jobs)?;
        let rstd = alloc::<f64>(dev, jobs)?;
        let f = func!(dev, format!("gn_stats_{}", T::SUFFIX))?;
        let mut bld = f.builder();
        bld.arg(&len).arg(&self.eps).arg(x).arg(&mean).arg(&rstd);
        // SAFETY: one block per (image, group) of len contiguous values.
        unsafe { bld.launch(cfg_blocks(jobs)) }.w()?;
        Ok((mean, rstd))
    }

    fn fwd<T: GpuFloat>(
        &self,
        s: [(&CudaStorage, &Layout); 3],
        dims: (usize, usize, usize),
    ) -> Result<CudaStorage> {
        let dev = s[0].0.device();
        let op = "group_norm";
        let x = view::<T>(s[0].0, s[0].1, op)?;
        let g = view::<T>(s[1].0, s[1].1, op)?;
        let be = view::<T>(s[2].0, s[2].1, op)?;
        let (b, c, hw) = dims;
        let n = b * c * hw;
        let y = alloc::<T>(dev, n)?;
        if n == 0 {
            return Ok(CudaStorage::wrap_cuda_slice(y, dev.clone()));
        }
        let (mean, rstd) = self.stats_of(dev, &x, dims)?;
        let cg = c / self.groups;
        let f = func!(dev, format!("gn_fwd_{}", T::SUFFIX))?;
        let mut bld = f.builder();
        bld.arg(&n)
            .arg(&hw)
            .arg(&c)
            .arg(&cg)
            .arg(&x)
            .arg(&g)
            .arg(&be);
        bld.arg(&mean).arg(&rstd).arg(&y);
        // SAFETY: n elements in x and y; mean/rstd per (image, group).
        unsafe { bld.launch(cfg_for(n)) }.w()?;
        let _ = self.stats.set((mean, rstd));
        Ok(CudaStorage::wrap_cuda_slice(y, dev.clone()))
    }

    fn grads<T: GpuFloat>(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        dy: &Tensor,
    ) -> Result<[Option<Tensor>; 3]> {
        let (b, c, hw) = self.dims(x.shape(), gamma.shape(), gamma.shape())?;
        let op = "group_norm";
        let cg = c / self.groups;
        with_view::<T, _>(x, op, |dev, xv| {
            with_view::<T, _>(dy, op, |_, dyv| {
                with_view::<T, _>(gamma, op, |_, gv| {
                    let recomputed;
                    let (mean, rstd) = match self.stats.get() {
                        Some((m, r)) => (m, r),
                        None => {
                            recomputed = self.stats_of(dev, &xv, (b, c, hw))?;
                            (&recomputed.0, &recomputed.1)
                        }
                    };
                    let bc = b * c;
                    let sdy = alloc::<f64>(dev, bc)?;
                    let sdyxh = alloc::<f64>(dev, bc)?;
                    let f = func!(dev, format!("gn_chsums_{}", T::SUFFIX))?;
                    let mut bld = f.builder();
                    bld.arg(&hw).arg(&c).arg(&cg).arg(&xv).arg(&dyv);
                    bld.arg(mean).arg(rstd).arg(&sdy).arg(&sdyxh);
                    // SAFETY: one block per (image, channel) of hw values.
                    unsafe { bld.launch(cfg_blocks(bc)) }.w()?;
                    let dx = if self.need[0] {
                        let jobs = b * self.groups;
                        let ga = alloc::<f64>(dev, jobs)?;
                        let gb = alloc::<f64>(dev, jobs)?;
                        let f = func!(dev, format!("gn_ab_{}", T::SUFFIX))?;
                        let mut bld = f.builder();
                        bld.arg(&jobs).arg(&c).arg(&cg).arg(&hw).arg(&gv);
                        bld.arg(&sdy).arg(&sdyxh).arg(&ga).arg(&gb);
                        // SAFETY: one thread per (image, group), reading its channels' sums.
                        unsafe { bld.launch(cfg_for(jobs)) }.w()?;
                        let n = bc * hw;
                        let dx = alloc::<T>(dev, n)?;
                        let f = func!(dev, format!("gn_dx_{}", T::SUFFIX))?;
                        let mut bld = f.builder();
                        bld.arg(&n)
                            .arg(&hw)
                            .arg(&c)
                            .arg(&cg)
                            .arg(&xv)
                            .arg(&dyv)
                            .arg(&gv);
                        bld.arg(mean).arg(rstd).arg(&ga).arg(&gb).arg(&dx);
                        // SAFETY: n elements in x, dy and dx.
                        unsafe { bld.launch(cfg_for(n)) }.w()?;
                        Some(leaf(dx, dev, x.dims()))
                    } else {
                        None
                    };
                    let (dg, db) = if self.need[1] || self.need[2] {
                        let dg = alloc::<T>(dev, c)?;
                        let db = alloc::<T>(dev, c)?;
                        let f = func!(dev, format!("gn_affine_{}", T::SUFFIX))?;
                        let mut bld = f.builder();
                        bld.arg(&b).arg(&c).arg(&sdy).arg(&sdyxh).arg(&dg).arg(&db);
                        // SAFETY: c channels, b images of per-channel sums.
                        unsafe { bld.launch(cfg_for(c)) }.w()?;
                        (
                            self.need[1].then(|| leaf(dg, dev, &[c])),
                            self.need[2].then(|| leaf(db, dev, &[c])),
                        )
                    } else {
                        (None, None)
                    };
                    Ok([dx, dg, db])
                })
            })
        })
    }
}

impl CustomOp3 for GroupNorm {
    fn name(&self) -> &'static str {
        "ranksweep-group-norm-cuda"
    }
    fn cpu_fwd(
        &self,
        _: &candle_core::CpuStorage,
        _: &Layout,
        _: &candle_core::CpuStorage,
        _: &Layout,
        _: &candle_core::CpuStorage,
        _: &Layout,
    ) -> Result<(candle_core::CpuStorage, Shape)> {
        candle_core::bail!("group_norm: the CUDA op got a CPU tensor")
    }
    fn cuda_fwd(
        &self,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
        s3: &CudaStorage,
        l3: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let dims = self.dims(l1.shape(), l2.shape(), l3.shape())?;
        if s1.dtype() != s2.dtype() || s1.dtype() != s3.dtype() {
            candle_core::bail!(
                "group_norm: x, gamma and beta differ in dtype: {:?}, {:?}, {:?}",
                s1.dtype(),
                s2.dtype(),
                s3.dtype()
            )
        }
        let s = [(s1, l1), (s2, l2), (s3, l3)];
        let y = match s1.dtype() {
            DType::F32 => self.fwd::<f32>(s, dims)?,
            DType::F64 => self.fwd::<f64>(s, dims)?,
            dt => return float_only(dt, "group_norm").map(|_| unreachable!()),
        };
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
            dt => return float_only(dt, "group_norm").map(|_| (None, None, None)),
        };
        Ok((dx, dg, db))
    }
}

// ---------------------------------------------------------------------------------------------
// BCE + Dice

/// The fused loss `w_bce·BCE + w_dice·Dice(smooth)` (see `cpu::loss`); the target is data.
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

    /// (Σ BCE terms, P, T, I), reduced on the device and read back (one small copy).
    fn sums<T: GpuFloat>(
        dev: &CudaDevice,
        x: &CudaView<'_, T>,
        t: &CudaView<'_, T>,
    ) -> Result<[f64; 4]> {
        let n = x.len();
        let out = dev.alloc_zeros::<f64>(4)?;
        let f = func!(dev, format!("loss_sums_{}", T::SUFFIX))?;
        let mut b = f.builder();
        b.arg(&n).arg(x).arg(t).arg(&out);
        // SAFETY: n elements in x and t; 4 totals.
        unsafe { b.launch(cfg_for(n)) }.w()?;
        let v = dev.clone_dtoh(&out)?;
        Ok([v[0], v[1], v[2], v[3]])
    }

    fn value(&self, n: usize, [b, p, t, i]: [f64; 4]) -> f64 {
        let bce = if n == 0 { 0.0 } else { b / n as f64 };
        let dice = 1.0 - (2.0 * i + self.smooth) / (p + t + self.smooth);
        self.w_bce * bce + self.w_dice * dice
    }

    fn fwd<T: GpuFloat>(
        &self,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
    ) -> Result<CudaStorage> {
        let dev = s1.device();
        let x = view::<T>(s1, l1, "loss")?;
        let t = view::<T>(s2, l2, "loss")?;
        let s = Self::sums(dev, &x, &t)?;
        let _ = self.sums.set((s[1], s[2], s[3]));
        let v = [T::from_f64(self.value(x.len(), s))];
        let out = dev.cuda_stream().clone_htod(&v).w()?;
        Ok(CudaStorage::wrap_cuda_slice(out, dev.clone()))
    }

    fn grad<T: GpuFloat>(&self, x: &Tensor, t: &Tensor, g: f64) -> Result<Tensor> {
        with_view::<T, _>(x, "loss", |dev, xv| {
            with_view::<T, _>(t, "loss", |_, tv| {
                let (p_sum, t_sum, i_sum) = match self.sums.get() {
                    Some(&s) => s,
                    None => {
                        let s = Self::sums(dev, &xv, &tv)?;
                        (s[1], s[2], s[3])
                    }
                };
                let n = xv.len();
                let d = p_sum + t_sum + self.smooth;
                let cb = T::from_f64(g * self.w_bce / n as f64);
                let cd = -g * self.w_dice / (d * d);
                let cd_2d = T::from_f64(cd * 2.0 * d);
                let cd_num = T::from_f64(cd * (2.0 * i_sum + self.smooth));
                let dx = alloc::<T>(dev, n)?;
                let f = func!(dev, format!("loss_bwd_{}", T::SUFFIX))?;
                let mut b = f.builder();
                b.arg(&n)
                    .arg(&xv)
                    .arg(&tv)
                    .arg(&cb)
                    .arg(&cd_2d)
                    .arg(&cd_num)
                    .arg(&dx);
                // SAFETY: n elements in x, t and dx.
                unsafe { b.launch(cfg_for(n)) }.w()?;
                Ok(leaf(dx, dev, x.dims()))
            })
        })
    }
}

impl CustomOp2 for BceDice {
    fn name(&self) -> &'static str {
        "ranksweep-bce-dice-cuda"
    }
    fn cpu_fwd(
        &self,
        _: &candle_core::CpuStorage,
        _: &Layout,
        _: &candle_core::CpuStorage,
        _: &Layout,
    ) -> Result<(candle_core::CpuStorage, Shape)> {
        candle_core::bail!("loss: the CUDA op got a CPU tensor")
    }
    fn cuda_fwd(
        &self,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        if l1.shape() != l2.shape() {
            candle_core::bail!(
                "loss: logits {:?} and target {:?} differ in shape",
                l1.shape(),
                l2.shape()
            )
        }
        if s1.dtype() != s2.dtype() {
            candle_core::bail!(
                "loss: logits {:?} and target {:?} differ in dtype",
                s1.dtype(),
                s2.dtype()
            )
        }
        let v = match s1.dtype() {
            DType::F32 => self.fwd::<f32>(s1, l1, s2, l2)?,
            DType::F64 => self.fwd::<f64>(s1, l1, s2, l2)?,
            dt => return float_only(dt, "loss").map(|_| unreachable!()),
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
        let dx = match x.dtype() {
            DType::F32 => self.grad::<f32>(x, t, g)?,
            DType::F64 => self.grad::<f64>(x, t, g)?,
            dt => return float_only(dt, "loss").map(|_| (None, None)),
        };
        Ok((Some(dx), None))
    }
}

// ---------------------------------------------------------------------------------------------
// 2×2 stride-2 transposed convolution

/// The transposed conv; `need` flags (x, w, b) that take part in the graph. With T_b (4O × HW)
/// = Wᵀ·X_b (one strided-batched cuBLAS product) the output is a scatter of T plus the bias;
/// backward gathers dY into G (4O × HW) per image, then dX_b = W·G_b, dW = Σ_b X_b·G_bᵀ.
#[derive(Debug, Clone, Copy)]
pub struct ConvTranspose2x2 {
    pub need: [bool; 3],
}

/// (B, I, O, H, W) after validating x (B, I, H, W), w (I, O, 2, 2), b (O).
fn ct_dims(x: &Shape, w: &Shape, b: &Shape) -> Result<(usize, usize, usize, usize, usize)> {
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
    Ok((bt, ci, co, h, wd))
}

/// `gemm` in row-major terms, through cuBLAS's column-major one. See the op's docs.
mod blas {
    use super::*;
    use candle_core::cuda_backend::cudarc::cublas::CudaBlas;
    use candle_core::cuda_backend::cudarc::cublas::sys::cublasOperation_t as Op;
    use candle_core::cuda_backend::cudarc::cublas::{Gemm, GemmConfig, StridedBatchedConfig};

    pub trait BlasFloat: GpuFloat
    where
        CudaBlas: Gemm<Self>,
    {
    }
    impl BlasFloat for f32 {}
    impl BlasFloat for f64 {}
    impl BlasFloat for half::bf16 {}

    fn cfg<T: GpuFloat>(
        (ta, tb): (Op, Op),
        (m, n, k): (usize, usize, usize),
        (lda, ldb, ldc): (usize, usize, usize),
        beta: f64,
    ) -> Result<GemmConfig<T>> {
        let i = |v: usize| -> Result<i32> {
            i32::try_from(v)
                .map_err(|_| candle_core::Error::Msg(format!("gemm size {v} exceeds i32")))
        };
        Ok(GemmConfig {
            transa: ta,
            transb: tb,
            m: i(m)?,
            n: i(n)?,
            k: i(k)?,
            alpha: T::from_f64(1.0),
            lda: i(lda)?,
            ldb: i(ldb)?,
            beta: T::from_f64(beta),
            ldc: i(ldc)?,
        })
    }

    /// T_b (4O × HW) = Wᵀ (4O × I) · X_b (I × HW), all images in one strided-batched call.
    pub fn forward<T: BlasFloat>(
        dev: &CudaDevice,
        x: &CudaView<'_, T>,
        w: &CudaView<'_, T>,
        (b, ci, co, hw): (usize, usize, usize, usize),
        t: &mut CudaSlice<T>,
    ) -> Result<()>
    where
        CudaBlas: Gemm<T>,
    {
        // Column-major: Tᵀ (HW × 4O) = Xᵀ (HW × I) · W (I × 4O), W stored as (4O × I) → op T.
        let gemm = cfg::<T>(
            (Op::CUBLAS_OP_N, Op::CUBLAS_OP_T),
            (hw, 4 * co, ci),
            (hw, 4 * co, hw),
            0.0,
        )?;
        let cfg = StridedBatchedConfig {
            gemm,
            batch_size: b as i32,
            stride_a: (ci * hw) as i64,
            stride_b: 0,
            stride_c: (4 * co * hw) as i64,
        };
        // SAFETY: the sizes above stay inside x (B·I·HW), w (I·4O) and t (B·4O·HW).
        unsafe { dev.cublas_handle().gemm_strided_batched(cfg, x, w, t) }.w()
    }

    /// dX_b (I × HW) = W (I × 4O) · G_b (4O × HW), all images in one call.
    pub fn input_grad<T: BlasFloat>(
        dev: &CudaDevice,
        g: &CudaSlice<T>,
        w: &CudaView<'_, T>,
        (b, ci, co, hw): (usize, usize, usize, usize),
        dx: &mut CudaSlice<T>,
    ) -> Result<()>
    where
        CudaBlas: Gemm<T>,
    {
        // Column-major: dXᵀ (HW × I) = Gᵀ (HW × 4O) · Wᵀ (4O × I), W stored (4O × I) → op N.
        let gemm = cfg::<T>(
            (Op::CUBLAS_OP_N, Op::CUBLAS_OP_N),
            (hw, ci, 4 * co),
            (hw, 4 * co, hw),
            0.0,
        )?;
        let cfg = StridedBatchedConfig {
            gemm,
            batch_size: b as i32,
            stride_a: (4 * co * hw) as i64,
            stride_b: 0,
            stride_c: (ci * hw) as i64,
        };
        // SAFETY: inside g (B·4O·HW), w (I·4O) and dx (B·I·HW).
        unsafe { dev.cublas_handle().gemm_strided_batched(cfg, g, w, dx) }.w()
    }

    /// dW (I × 4O) = Σ_b X_b (I × HW) · G_bᵀ (HW × 4O), accumulated image by image.
    pub fn weight_grad<T: BlasFloat>(
        dev: &CudaDevice,
        x: &CudaView<'_, T>,
        g: &CudaSlice<T>,
        (b, ci, co, hw): (usize, usize, usize, usize),
        dw: &mut CudaSlice<T>,
    ) -> Result<()>
    where
        CudaBlas: Gemm<T>,
    {
        let blas = dev.cublas_handle();
        for bi in 0..b {
            // Column-major: dWᵀ (4O × I) (+)= G_b (4O × HW) · X_bᵀ (HW × I).
            let gemm = cfg::<T>(
                (Op::CUBLAS_OP_T, Op::CUBLAS_OP_N),
                (4 * co, ci, hw),
                (hw, hw, 4 * co),
                if bi == 0 { 0.0 } else { 1.0 },
            )?;
            let gb = g.slice(bi * 4 * co * hw..(bi + 1) * 4 * co * hw);
            let xb = x.slice(bi * ci * hw..(bi + 1) * ci * hw);
            // SAFETY: image bi's blocks of g and x, and all of dw (I·4O).
            unsafe { blas.gemm(gemm, &gb, &xb, dw) }.w()?;
        }
        Ok(())
    }
}

use blas::BlasFloat;

impl ConvTranspose2x2 {
    fn fwd<T: BlasFloat>(&self, s: [(&CudaStorage, &Layout); 3]) -> Result<(CudaStorage, Shape)>
    where
        candle_core::cuda_backend::cudarc::cublas::CudaBlas:
            candle_core::cuda_backend::cudarc::cublas::Gemm<T>,
    {
        let (b, ci, co, h, w) = ct_dims(s[0].1.shape(), s[1].1.shape(), s[2].1.shape())?;
        let dev = s[0].0.device();
        let op = "conv_transpose2x2";
        let x = view::<T>(s[0].0, s[0].1, op)?;
        let wv = view::<T>(s[1].0, s[1].1, op)?;
        let bias = view::<T>(s[2].0, s[2].1, op)?;
        let (hw, n) = (h * w, b * co * 4 * h * w);
        let shape = Shape::from((b, co, 2 * h, 2 * w));
        let mut t = if ci == 0 {
            dev.alloc_zeros::<T>(n.max(1))?
        } else {
            let mut t = alloc::<T>(dev, n)?;
            if n > 0 {
                blas::forward(dev, &x, &wv, (b, ci, co, hw), &mut t)?;
            }
            t
        };
        let y = alloc::<T>(dev, n)?;
        if n > 0 {
            let f = func!(dev, format!("ct_scatter_{}", T::SUFFIX))?;
            let mut bld = f.builder();
            bld.arg(&n)
                .arg(&co)
                .arg(&h)
                .arg(&w)
                .arg(&t)
                .arg(&bias)
                .arg(&y);
            // SAFETY: n output elements, each read from T (n elements) and the bias.
            unsafe { bld.launch(cfg_for(n)) }.w()?;
        }
        let _ = &mut t;
        Ok((CudaStorage::wrap_cuda_slice(y, dev.clone()), shape))
    }

    fn grads<T: BlasFloat>(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        dy: &Tensor,
    ) -> Result<[Option<Tensor>; 3]>
    where
        candle_core::cuda_backend::cudarc::cublas::CudaBlas:
            candle_core::cuda_backend::cudarc::cublas::Gemm<T>,
    {
        let (bt, ci, co, h, wd) = ct_dims(x.shape(), w.shape(), b.shape())?;
        let (hw, n) = (h * wd, bt * co * 4 * h * wd);
        let op = "conv_transpose2x2";
        with_view::<T, _>(dy, op, |dev, dyv| {
            let mut out = [None, None, None];
            if self.need[2] {
                let db = alloc::<T>(dev, co)?;
                let plane = 4 * hw;
                let f = func!(dev, format!("ct_bias_grad_{}", T::SUFFIX))?;
                let mut bld = f.builder();
                bld.arg(&bt).arg(&co).arg(&plane).arg(&dyv).arg(&db);
                // SAFETY: one block per output channel over B planes of 4·HW.
                unsafe { bld.launch(cfg_blocks(co)) }.w()?;
                out[2] = Some(leaf(db, dev, &[co]));
            }
            if !(self.need[0] || self.need[1]) {
                return Ok(out);
            }
            if n == 0 || ci == 0 {
                if self.need[0] {
                    out[0] = Some(Tensor::zeros(x.dims(), x.dtype(), x.device())?);
                }
                if self.need[1] {
                    out[1] = Some(Tensor::zeros(w.dims(), w.dtype(), w.device())?);
                }
                return Ok(out);
            }
            let g = alloc::<T>(dev, n)?;
            let f = func!(dev, format!("ct_gather_{}", T::SUFFIX))?;
            let mut bld = f.builder();
            bld.arg(&n).arg(&co).arg(&h).arg(&wd).arg(&dyv).arg(&g);
            // SAFETY: a permutation of n elements.
            unsafe { bld.launch(cfg_for(n)) }.w()?;
            let sizes = (bt, ci, co, hw);
            if self.need[0] {
                out[0] = Some(with_view::<T, _>(w, op, |_, wv| {
                    let mut dx = alloc::<T>(dev, bt * ci * hw)?;
                    blas::input_grad(dev, &g, &wv, sizes, &mut dx)?;
                    Ok(leaf(dx, dev, x.dims()))
                })?);
            }
            if self.need[1] {
                out[1] = Some(with_view::<T, _>(x, op, |_, xv| {
                    let mut dw = alloc::<T>(dev, ci * 4 * co)?;
                    blas::weight_grad(dev, &xv, &g, sizes, &mut dw)?;
                    Ok(leaf(dw, dev, w.dims()))
                })?);
            }
            Ok(out)
        })
    }
}

impl CustomOp3 for ConvTranspose2x2 {
    fn name(&self) -> &'static str {
        "ranksweep-conv-transpose2x2-cuda"
    }
    fn cpu_fwd(
        &self,
        _: &candle_core::CpuStorage,
        _: &Layout,
        _: &candle_core::CpuStorage,
        _: &Layout,
        _: &candle_core::CpuStorage,
        _: &Layout,
    ) -> Result<(candle_core::CpuStorage, Shape)> {
        candle_core::bail!("conv_transpose2x2: the CUDA op got a CPU tensor")
    }
    fn cuda_fwd(
        &self,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
        s3: &CudaStorage,
        l3: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        if s1.dtype() != s2.dtype() || s1.dtype() != s3.dtype() {
            candle_core::bail!(
                "conv_transpose2x2: x, w and b differ in dtype: {:?}, {:?}, {:?}",
                s1.dtype(),
                s2.dtype(),
                s3.dtype()
            )
        }
        let s = [(s1, l1), (s2, l2), (s3, l3)];
        match s1.dtype() {
            DType::F32 => self.fwd::<f32>(s),
            DType::F64 => self.fwd::<f64>(s),
            DType::BF16 => self.fwd::<half::bf16>(s),
            dt => candle_core::bail!("conv_transpose2x2: expected f32, f64 or bf16, got {dt:?}"),
        }
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
            DType::BF16 => self.grads::<half::bf16>(x, w, b, &dy)?,
            dt => candle_core::bail!("conv_transpose2x2: expected f32, f64 or bf16, got {dt:?}"),
        };
        Ok((dx, dw, db))
    }
}

// ---------------------------------------------------------------------------------------------
// 3×3 / 1×1 convolution (stride 1, padding k/2)

/// The convolution op; `need_x` / `need_w` say which gradients backward must produce.
#[derive(Debug, Clone, Copy)]
pub struct Conv2d {
    pub need_x: bool,
    pub need_w: bool,
}

/// Validates x (B, I, H, W) and w (O, I, k, k), k ∈ {1, 3}; returns k.
fn conv_k(x: &Shape, w: &Shape) -> Result<usize> {
    let (_, ci, _, _) = x.dims4()?;
    let (_, ci2, kh, kw) = w.dims4()?;
    if ci2 != ci {
        candle_core::bail!("conv2d: input has {ci} channels but the kernel expects {ci2}")
    }
    if kh != kw || (kh != 1 && kh != 3) {
        candle_core::bail!("conv2d: expected a 1×1 or 3×3 kernel, got {kh}×{kw}")
    }
    Ok(kh)
}

#[cfg(feature = "cudnn")]
impl CustomOp2 for Conv2d {
    fn name(&self) -> &'static str {
        "ranksweep-conv2d-cudnn"
    }
    fn cpu_fwd(
        &self,
        _: &candle_core::CpuStorage,
        _: &Layout,
        _: &candle_core::CpuStorage,
        _: &Layout,
    ) -> Result<(candle_core::CpuStorage, Shape)> {
        candle_core::bail!("conv2d: the CUDA op got a CPU tensor")
    }
    fn cuda_fwd(
        &self,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let k = conv_k(l1.shape(), l2.shape())?;
        cudnn::forward_storage(s1, l1, s2, l2, k / 2, 1)
    }
    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let pad = conv_k(x.shape(), w.shape())? / 2;
        let dy = dy.contiguous()?;
        let dx = if self.need_x {
            Some(conv_backward_data(&dy, w, x.dims(), pad, 1)?)
        } else {
            None
        };
        let dw = if self.need_w {
            Some(conv_backward_filter(x, &dy, w.dims(), pad, 1)?)
        } else {
            None
        };
        Ok((dx, dw))
    }
}

/// Without cuDNN: `conv2d` applies this op to (x, w, y) where y was computed by candle's conv2d
/// (im2col + cuBLAS on CUDA); `cuda_fwd` hands y on (one device copy), and `bwd` runs the two
/// gradients as im2col + cuBLAS convolutions with contiguous operands instead of candle's
/// naive `conv_transpose2d` backward.
#[cfg(not(feature = "cudnn"))]
impl CustomOp3 for Conv2d {
    fn name(&self) -> &'static str {
        "ranksweep-conv2d-cuda"
    }
    fn cpu_fwd(
        &self,
        _: &candle_core::CpuStorage,
        _: &Layout,
        _: &candle_core::CpuStorage,
        _: &Layout,
        _: &candle_core::CpuStorage,
        _: &Layout,
    ) -> Result<(candle_core::CpuStorage, Shape)> {
        candle_core::bail!("conv2d: the CUDA op got a CPU tensor")
    }
    fn cuda_fwd(
        &self,
        _s1: &CudaStorage,
        l1: &Layout,
        _s2: &CudaStorage,
        l2: &Layout,
        s3: &CudaStorage,
        l3: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        conv_k(l1.shape(), l2.shape())?;
        let Some((start, end)) = l3.contiguous_offsets() else {
            candle_core::bail!("conv2d: expected a contiguous forward result")
        };
        fn copy<T: GpuFloat>(s: &CudaStorage, (a, b): (usize, usize)) -> Result<CudaStorage> {
            let dev = s.device();
            let src = s.as_cuda_slice::<T>()?.slice(a..b);
            let mut dst = alloc::<T>(dev, b - a)?;
            dev.cuda_stream().memcpy_dtod(&src, &mut dst).w()?;
            Ok(CudaStorage::wrap_cuda_slice(dst, dev.clone()))
        }
        let y = match s3.dtype() {
            DType::F32 => copy::<f32>(s3, (start, end))?,
            DType::F64 => copy::<f64>(s3, (start, end))?,
            DType::BF16 => copy::<half::bf16>(s3, (start, end))?,
            dt => candle_core::bail!("conv2d: expected f32, f64 or bf16, got {dt:?}"),
        };
        Ok((y, l3.shape().clone()))
    }
    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let pad = conv_k(x.shape(), w.shape())? / 2;
        let (x, w, dy) = (x.detach(), w.detach(), dy.detach().contiguous()?);
        let dx = if self.need_x {
            // conv(dY, W flipped in space, in/out channels swapped).
            let k = w.dim(2)?;
            let rev: Vec<u32> = (0..k as u32).rev().collect();
            let rev = Tensor::new(rev.as_slice(), w.device())?;
            let wf = w
                .transpose(0, 1)?
                .index_select(&rev, 2)?
                .index_select(&rev, 3)?
                .contiguous()?;
            Some(dy.conv2d(&wf, pad, 1, 1, 1)?)
        } else {
            None
        };
        let dw = if self.need_w {
            // dW (O, I, k, k) = conv(Xᵀ (I, B, H, W), dYᵀ (O, B, H, W) as the kernel)ᵀ.
            let xt = x.transpose(0, 1)?.contiguous()?;
            let dyt = dy.transpose(0, 1)?.contiguous()?;
            Some(
                xt.conv2d(&dyt, pad, 1, 1, 1)?
                    .transpose(0, 1)?
                    .contiguous()?,
            )
        } else {
            None
        };
        Ok((dx, dw, None))
    }
}

/// The CUDA `conv2d` of [`crate::nn::ops::conv2d`] (inputs contiguous, dtypes checked there).
pub fn conv2d(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let op = Conv2d {
        need_x: x.track_op(),
        need_w: w.track_op(),
    };
    #[cfg(feature = "cudnn")]
    {
        x.apply_op2(w, op)
    }
    #[cfg(not(feature = "cudnn"))]
    {
        let k = conv_k(x.shape(), w.shape())?;
        let y = x.detach().conv2d(&w.detach(), k / 2, 1, 1, 1)?;
        x.apply_op3(w, &y, op)
    }
}
