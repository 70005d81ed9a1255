//! N-d convolutions through cuDNN (NCHW / NCDHW, f32, f64, bf16 with f32 compute): forward,
//! backward-data and backward-filter, each with cuDNN's heuristic algorithm (v7 API, as
//! PyTorch without `benchmark`) and a workspace of the size cuDNN asks for.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;

use candle_core::cuda_backend::cudarc::cudnn::safe::{
    ConvBackwardData, ConvBackwardFilter, ConvDescriptor, ConvForward, Cudnn, FilterDescriptor,
};
use candle_core::cuda_backend::cudarc::cudnn::sys::{
    cudnnConvolutionMode_t, cudnnMathType_t, cudnnTensorFormat_t,
};
use candle_core::cuda_backend::cudarc::cudnn::{CudnnDataType, TensorDescriptor};
use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaView};
use candle_core::cuda_backend::{CudaDevice, DeviceId};
use candle_core::{CudaStorage, DType, Layout, Result, Shape, Tensor};

use super::{GpuFloat, alloc, leaf, view, with_view};

thread_local! {
    // cuDNN handles are neither Send nor Sync: one per thread and device, on candle's stream.
    static HANDLES: RefCell<HashMap<DeviceId, Arc<Cudnn>>> = RefCell::new(HashMap::new());
}

fn handle(dev: &CudaDevice) -> Result<Arc<Cudnn>> {
    HANDLES.with(|h| {
        if let Some(c) = h.borrow().get(&dev.id()) {
            return Ok(c.clone());
        }
        let c = Cudnn::new(dev.cuda_stream()).map_err(candle_core::Error::wrap)?;
        h.borrow_mut().insert(dev.id(), c.clone());
        Ok(c)
    })
}

/// A dtype cuDNN convolves: its compute type and math mode.
pub trait ConvFloat: GpuFloat + CudnnDataType {
    type Compute: CudnnDataType;
    fn math() -> cudnnMathType_t;
}
impl ConvFloat for f32 {
    type Compute = f32;
    fn math() -> cudnnMathType_t {
        if super::tf32() {
            cudnnMathType_t::CUDNN_DEFAULT_MATH
        } else {
            cudnnMathType_t::CUDNN_FMA_MATH
        }
    }
}
impl ConvFloat for f64 {
    type Compute = f64;
    fn math() -> cudnnMathType_t {
        cudnnMathType_t::CUDNN_DEFAULT_MATH
    }
}
impl ConvFloat for half::bf16 {
    type Compute = f32;
    fn math() -> cudnnMathType_t {
        cudnnMathType_t::CUDNN_TENSOR_OP_MATH
    }
}

/// The geometry of one convolution: input, kernel and output dims (rank 4 or 5), symmetric
/// padding and stride in every spatial dimension, dilation 1, no groups.
#[derive(Debug, Clone)]
struct Geom {
    x: Vec<usize>,
    w: Vec<usize>,
    y: Vec<usize>,
    pad: usize,
    stride: usize,
}

impl Geom {
    fn new(x: &[usize], w: &[usize], pad: usize, stride: usize) -> Result<Self> {
        if !(x.len() == 4 || x.len() == 5) || w.len() != x.len() {
            candle_core::bail!(
                "conv: expected a 4-D or 5-D input and kernel of the same rank, got {x:?} and {w:?}"
            )
        }
        if w[1] != x[1] {
            candle_core::bail!(
                "conv: input has {} channels but the kernel expects {}",
                x[1],
                w[1]
            )
        }
        if stride == 0 {
            candle_core::bail!("conv: stride must be at least 1")
        }
        let mut y = vec![x[0], w[0]];
        for d in 2..x.len() {
            let span = x[d] + 2 * pad;
            if span < w[d] {
                candle_core::bail!("conv: kernel {:?} larger than the padded input {x:?}", w)
            }
            y.push((span - w[d]) / stride + 1);
        }
        for v in x.iter().chain(w).chain(&y) {
            if *v == 0 || *v > i32::MAX as usize {
                candle_core::bail!("conv: dimension {v} is out of cuDNN's range (1..2^31)")
            }
        }
        Ok(Geom {
            x: x.to_vec(),
            w: w.to_vec(),
            y,
            pad,
            stride,
        })
    }

    /// Geometry from the output side (backward-data): `x` is the wanted input shape.
    fn checked_y(self, dy: &[usize]) -> Result<Self> {
        if dy != self.y.as_slice() {
            candle_core::bail!(
                "conv: output gradient {dy:?} does not match the output {:?}",
                self.y
            )
        }
        Ok(self)
    }
}

/// The descriptors of one convolution.
struct Descs<T: ConvFloat> {
    x: TensorDescriptor<T>,
    w: FilterDescriptor<T>,
    y: TensorDescriptor<T>,
    conv: ConvDescriptor<T::Compute>,
}

fn i32s(v: &[usize]) -> Vec<i32> {
    v.iter().map(|&d| d as i32).collect()
}

fn contiguous_strides(dims: &[usize]) -> Vec<i32> {
    let mut s = vec![1i32; dims.len()];
    for d in (0..dims.len() - 1).rev() {
        s[d] = s[d + 1] * dims[d + 1] as i32;
    }
    s
}

fn descs<T: ConvFloat>(cudnn: &Arc<Cudnn>, g: &Geom) -> Result<Descs<T>> {
    let e = candle_core::Error::wrap;
    let x = cudnn
        .create_nd_tensor::<T>(&i32s(&g.x), &contiguous_strides(&g.x))
        .map_err(e)?;
    let y = cudnn
        .create_nd_tensor::<T>(&i32s(&g.y), &contiguous_strides(&g.y))
        .map_err(e)?;
    let w = cudnn
        .create_nd_filter::<T>(cudnnTensorFormat_t::CUDNN_TENSOR_NCHW, &i32s(&g.w))
        .map_err(e)?;
    let nsp = g.x.len() - 2;
    let mut conv = cudnn
        .create_convnd::<T::Compute>(
            &vec![g.pad as i32; nsp],
            &vec![g.stride as i32; nsp],
            &vec![1; nsp],
            cudnnConvolutionMode_t::CUDNN_CROSS_CORRELATION,
        )
        .map_err(e)?;
    conv.set_math_type(T::math()).map_err(e)?;
    Ok(Descs { x, w, y, conv })
}

fn workspace(dev: &CudaDevice, bytes: usize) -> Result<Option<CudaSlice<u8>>> {
    if bytes == 0 {
        Ok(None)
    } else {
        // SAFETY: cuDNN's scratch space; nothing reads it before cuDNN writes it.
        unsafe { dev.alloc::<u8>(bytes) }.map(Some)
    }
}

fn fwd<T: ConvFloat>(
    dev: &CudaDevice,
    g: &Geom,
    x: &CudaView<'_, T>,
    w: &CudaView<'_, T>,
) -> Result<CudaSlice<T>> {
    let e = candle_core::Error::wrap;
    let cudnn = handle(dev)?;
    let d = descs::<T>(&cudnn, g)?;
    let op = ConvForward {
        conv: &d.conv,
        x: &d.x,
        w: &d.w,
        y: &d.y,
    };
    let algo = op.pick_algorithm().map_err(e)?;
    let mut ws = workspace(dev, op.get_workspace_size(algo).map_err(e)?)?;
    let mut y = alloc::<T>(dev, g.y.iter().product())?;
    // SAFETY: the buffers hold exactly the described contiguous tensors; beta 0 overwrites y.
    unsafe {
        op.launch(
            algo,
            ws.as_mut(),
            (T::from_f64(1.0), T::from_f64(0.0)),
            x,
            w,
            &mut y,
        )
    }
    .map_err(e)?;
    Ok(y)
}

fn bwd_data<T: ConvFloat>(
    dev: &CudaDevice,
    g: &Geom,
    dy: &CudaView<'_, T>,
    w: &CudaView<'_, T>,
) -> Result<CudaSlice<T>> {
    let e = candle_core::Error::wrap;
    let cudnn = handle(dev)?;
    let d = descs::<T>(&cudnn, g)?;
    let op = ConvBackwardData {
        conv: &d.conv,
        dx: &d.x,
        w: &d.w,
        dy: &d.y,
    };
    let algo = op.pick_algorithm().map_err(e)?;
    let mut ws = workspace(dev, op.get_workspace_size(algo).map_err(e)?)?;
    let mut dx = alloc::<T>(dev, g.x.iter().product())?;
    // SAFETY: as in `fwd`; beta 0 overwrites dx.
    unsafe {
        op.launch(
            algo,
            ws.as_mut(),
            (T::from_f64(1.0), T::from_f64(0.0)),
            &mut dx,
            w,
            dy,
        )
    }
    .map_err(e)?;
    Ok(dx)
}

fn bwd_filter<T: ConvFloat>(
    dev: &CudaDevice,
    g: &Geom,
    x: &CudaView<'_, T>,
    dy: &CudaView<'_, T>,
) -> Result<CudaSlice<T>> {
    let e = candle_core::Error::wrap;
    let cudnn = handle(dev)?;
    let d = descs::<T>(&cudnn, g)?;
    let op = ConvBackwardFilter {
        conv: &d.conv,
        x: &d.x,
        dw: &d.w,
        dy: &d.y,
    };
    let algo = op.pick_algorithm().map_err(e)?;
    let mut ws = workspace(dev, op.get_workspace_size(algo).map_err(e)?)?;
    let mut dw = alloc::<T>(dev, g.w.iter().product())?;
    // SAFETY: as in `fwd`; beta 0 overwrites dw.
    unsafe {
        op.launch(
            algo,
            ws.as_mut(),
            (T::from_f64(1.0), T::from_f64(0.0)),
            x,
            &mut dw,
            dy,
        )
    }
    .map_err(e)?;
    Ok(dw)
}

/// The forward on storages (the `conv2d` op's `cuda_fwd`).
pub(super) fn forward_storage(
    s1: &CudaStorage,
    l1: &Layout,
    s2: &CudaStorage,
    l2: &Layout,
    pad: usize,
    stride: usize,
) -> Result<(CudaStorage, Shape)> {
    use candle_core::backend::BackendStorage;
    let g = Geom::new(l1.dims(), l2.dims(), pad, stride)?;
    let dev = s1.device();
    fn run<T: ConvFloat>(
        dev: &CudaDevice,
        g: &Geom,
        s: [(&CudaStorage, &Layout); 2],
    ) -> Result<CudaStorage> {
        let x = view::<T>(s[0].0, s[0].1, "conv")?;
        let w = view::<T>(s[1].0, s[1].1, "conv")?;
        Ok(CudaStorage::wrap_cuda_slice(
            fwd(dev, g, &x, &w)?,
            dev.clone(),
        ))
    }
    if s1.dtype() != s2.dtype() {
        candle_core::bail!(
            "conv: input {:?} and kernel {:?} differ in dtype",
            s1.dtype(),
            s2.dtype()
        )
    }
    let s = [(s1, l1), (s2, l2)];
    let y = match s1.dtype() {
        DType::F32 => run::<f32>(dev, &g, s)?,
        DType::F64 => run::<f64>(dev, &g, s)?,
        DType::BF16 => run::<half::bf16>(dev, &g, s)?,
        dt => candle_core::bail!("conv: expected f32, f64 or bf16, got {dt:?}"),
    };
    Ok((y, Shape::from(g.y.clone())))
}

fn same_dtype(a: &Tensor, b: &Tensor) -> Result<DType> {
    if a.dtype() != b.dtype() {
        candle_core::bail!(
            "conv: operands differ in dtype: {:?} and {:?}",
            a.dtype(),
            b.dtype()
        )
    }
    Ok(a.dtype())
}

/// Y = conv(X, W) through cuDNN: `x` (B, I, [D,] H, W), `w` (O, I, [k,] k, k), both contiguous
/// CUDA tensors of one dtype (f32, f64, bf16); padding `pad` and stride `stride` in every
/// spatial dim. The result is a graph leaf (callers wrap it in their own op).
pub fn conv_forward(x: &Tensor, w: &Tensor, pad: usize, stride: usize) -> Result<Tensor> {
    let g = Geom::new(x.dims(), w.dims(), pad, stride)?;
    fn run<T: ConvFloat>(g: &Geom, x: &Tensor, w: &Tensor) -> Result<Tensor> {
        with_view::<T, _>(x, "conv", |dev, xv| {
            with_view::<T, _>(w, "conv", |_, wv| {
                Ok(leaf(fwd(dev, g, &xv, &wv)?, dev, &g.y))
            })
        })
    }
    match same_dtype(x, w)? {
        DType::F32 => run::<f32>(&g, x, w),
        DType::F64 => run::<f64>(&g, x, w),
        DType::BF16 => run::<half::bf16>(&g, x, w),
        dt => candle_core::bail!("conv: expected f32, f64 or bf16, got {dt:?}"),
    }
}

/// dX of [`conv_forward`] for an input of dims `x_dims`, from `dy` and `w` (contiguous).
pub fn conv_backward_data(
    dy: &Tensor,
    w: &Tensor,
    x_dims: &[usize],
    pad: usize,
    stride: usize,
) -> Result<Tensor> {
    let g = Geom::new(x_dims, w.dims(), pad, stride)?.checked_y(dy.dims())?;
    fn run<T: ConvFloat>(g: &Geom, dy: &Tensor, w: &Tensor) -> Result<Tensor> {
        with_view::<T, _>(dy, "conv", |dev, dyv| {
            with_view::<T, _>(w, "conv", |_, wv| {
                Ok(leaf(bwd_data(dev, g, &dyv, &wv)?, dev, &g.x))
            })
        })
    }
    match same_dtype(dy, w)? {
        DType::F32 => run::<f32>(&g, dy, w),
        DType::F64 => run::<f64>(&g, dy, w),
        DType::BF16 => run::<half::bf16>(&g, dy, w),
        dt => candle_core::bail!("conv: expected f32, f64 or bf16, got {dt:?}"),
    }
}

/// dW of [`conv_forward`] for a kernel of dims `w_dims`, from `x` and `dy` (contiguous).
pub fn conv_backward_filter(
    x: &Tensor,
    dy: &Tensor,
    w_dims: &[usize],
    pad: usize,
    stride: usize,
) -> Result<Tensor> {
    let g = Geom::new(x.dims(), w_dims, pad, stride)?.checked_y(dy.dims())?;
    fn run<T: ConvFloat>(g: &Geom, x: &Tensor, dy: &Tensor) -> Result<Tensor> {
        with_view::<T, _>(x, "conv", |dev, xv| {
            with_view::<T, _>(dy, "conv", |_, dyv| {
                Ok(leaf(bwd_filter(dev, g, &xv, &dyv)?, dev, &g.w))
            })
        })
    }
    match same_dtype(x, dy)? {
        DType::F32 => run::<f32>(&g, x, dy),
        DType::F64 => run::<f64>(&g, x, dy),
        DType::BF16 => run::<half::bf16>(&g, x, dy),
        dt => candle_core::bail!("conv: expected f32, f64 or bf16, got {dt:?}"),
    }
}
