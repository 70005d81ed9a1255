//! The op set the Unet trains through, with one signature per op.
//!
//! Every function here dispatches by device and dtype: on CPU with f32 or f64 it runs the own op
//! from [`crate::nn::cpu`] (im2col + gemm convolutions, fused GroupNorm and BCE + Dice, a
//! max-pool with PyTorch's gradient, each computing only the gradients the graph needs);
//! on CUDA (feature `cuda`) the CUDA op from `crate::nn::cuda` (cuDNN convolutions with
//! `cudnn`, cuBLAS transposed conv, own kernels for the rest); anywhere else (other devices or
//! dtypes) the candle-native composition in [`reference`], whose gradients are right (see the
//! project notes). [`reference`] is also the oracle the own ops are tested against.
//!
//! Under bf16 autocast ([`crate::nn::autocast`], CUDA only) the two convolutions cast their f32
//! operands to bf16, run in bf16 and hand back f32; everything else stays f32.
//!
//! The own ops give the reference's values and gradients (tested to 1e-5 in f32) with two
//! deliberate differences at non-differentiable points: ReLU's gradient at exactly 0 is 0
//! (PyTorch's choice; candle uses 1), and a max-pool window with tied maxima sends its gradient
//! to the first of them only (PyTorch's choice; the reshape+max reference gives it to each).

use candle_core::{DType, Result, Tensor};

use super::autocast;
use super::cpu;

/// True when the CUDA kernels of the element-wise ops apply: a CUDA f32/f64 tensor.
#[cfg(feature = "cuda")]
fn cuda_float(t: &Tensor) -> bool {
    t.device().is_cuda() && matches!(t.dtype(), DType::F32 | DType::F64)
}

/// Runs a convolution-like op in bf16 when autocast asks for it: f32 CUDA operands are cast to
/// bf16 and the result back to f32 (the casts carry the gradients back to f32).
fn autocast_bf16(
    args: &[&Tensor],
    f: impl Fn(&[Tensor]) -> Result<Tensor>,
) -> Option<Result<Tensor>> {
    let on = autocast::bf16_active()
        && args
            .iter()
            .all(|t| t.device().is_cuda() && t.dtype() == DType::F32);
    if !on {
        return None;
    }
    let run = || {
        let cast: Vec<Tensor> = args
            .iter()
            .map(|t| t.to_dtype(DType::BF16))
            .collect::<Result<_>>()?;
        f(&cast)?.to_dtype(DType::F32)
    };
    Some(run())
}

/// 3×3 (padding 1) or 1×1 (padding 0) convolution, stride 1, no bias.
/// `x`: (B, I, H, W); `w`: (O, I, k, k) with k ∈ {1, 3}.
pub fn conv2d(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    if let Some(y) = autocast_bf16(&[x, w], |a| conv2d(&a[0], &a[1])) {
        return y;
    }
    #[cfg(feature = "cuda")]
    if super::cuda::supported(x) && x.dtype() == w.dtype() && w.device().same_device(x.device()) {
        return super::cuda::conv2d(&x.contiguous()?, &w.contiguous()?);
    }
    if !(cpu::supported(x) && cpu::supported(w)) {
        return reference::conv2d(x, w);
    }
    cpu::keep_freed_memory();
    let (x, w) = (x.contiguous()?, w.contiguous()?);
    x.apply_op2(
        &w,
        cpu::conv::Conv {
            need_x: x.track_op(),
            need_w: w.track_op(),
        },
    )
}

/// 3×3×3 (padding 1) or 1×1×1 (padding 0) convolution, stride 1, no bias.
/// `x`: (B, I, D, H, W); `w`: (O, I, k, k, k) with k ∈ {1, 3}.
pub fn conv3d(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    if !(cpu::supported(x) && cpu::supported(w)) {
        // The one non-CPU call site of the 3D conv: where cuDNN is wired in, it goes here.
        return reference::conv3d(x, w);
    }
    if x.rank() != 5 || w.rank() != 5 {
        candle_core::bail!(
            "conv3d: expected a 5D input and kernel, got {:?} and {:?}",
            x.shape(),
            w.shape()
        )
    }
    cpu::keep_freed_memory();
    let (x, w) = (x.contiguous()?, w.contiguous()?);
    x.apply_op2(
        &w,
        cpu::conv::Conv {
            need_x: x.track_op(),
            need_w: w.track_op(),
        },
    )
}

/// 2×2×2, stride-2 transposed convolution with bias (the 3D decoder's `up`).
/// `x`: (B, I, D, H, W); `w`: (I, O, 2, 2, 2); `b`: (O) → (B, O, 2D, 2H, 2W).
pub fn conv_transpose2x2x2(x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
    if !(cpu::supported(x) && cpu::supported(w) && cpu::supported(b)) {
        // The one non-CPU call site of the 3D transposed conv (cuDNN backward-data goes here).
        return reference::conv_transpose2x2x2(x, w, b);
    }
    if x.rank() != 5 {
        candle_core::bail!(
            "conv_transpose2x2x2: expected a 5D input, got {:?}",
            x.shape()
        )
    }
    cpu::keep_freed_memory();
    let (x, w, b) = (x.contiguous()?, w.contiguous()?, b.contiguous()?);
    let need = [x.track_op(), w.track_op(), b.track_op()];
    x.apply_op3(&w, &b, cpu::conv_transpose::ConvTranspose2x2 { need })
}

/// 2×2×2 max-pool, stride 2, with PyTorch's gradient (the first maximum of a window in
/// (kd, kh, kw) order takes it). D, H and W must be even.
pub fn max_pool2x2x2(x: &Tensor) -> Result<Tensor> {
    if !cpu::supported(x) {
        return reference::max_pool2x2x2(x);
    }
    if x.rank() != 5 {
        candle_core::bail!("max_pool2x2x2: expected a 5D input, got {:?}", x.shape())
    }
    cpu::keep_freed_memory();
    x.contiguous()?.apply_op1(cpu::pool::MaxPool2x2)
}

/// 2×2, stride-2 transposed convolution with bias (the decoder's `up`).
/// `x`: (B, I, H, W); `w`: (I, O, 2, 2); `b`: (O) → (B, O, 2H, 2W).
pub fn conv_transpose2x2(x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
    if let Some(y) = autocast_bf16(&[x, w, b], |a| conv_transpose2x2(&a[0], &a[1], &a[2])) {
        return y;
    }
    #[cfg(feature = "cuda")]
    if super::cuda::supported(x) && x.dtype() == w.dtype() && x.dtype() == b.dtype() {
        let (x, w, b) = (x.contiguous()?, w.contiguous()?, b.contiguous()?);
        let need = [x.track_op(), w.track_op(), b.track_op()];
        return x.apply_op3(&w, &b, super::cuda::ConvTranspose2x2 { need });
    }
    if !(cpu::supported(x) && cpu::supported(w) && cpu::supported(b)) {
        return reference::conv_transpose2x2(x, w, b);
    }
    cpu::keep_freed_memory();
    let (x, w, b) = (x.contiguous()?, w.contiguous()?, b.contiguous()?);
    let need = [x.track_op(), w.track_op(), b.track_op()];
    x.apply_op3(&w, &b, cpu::conv_transpose::ConvTranspose2x2 { need })
}

/// 2×2 max-pool, stride 2, with PyTorch's gradient (the first maximum of a window takes it).
/// H and W must be even.
pub fn max_pool2x2(x: &Tensor) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if cuda_float(x) {
        return x.contiguous()?.apply_op1(super::cuda::MaxPool2x2);
    }
    if !cpu::supported(x) {
        return reference::max_pool2x2(x);
    }
    cpu::keep_freed_memory();
    x.contiguous()?.apply_op1(cpu::pool::MaxPool2x2)
}

/// GroupNorm over (C/G, H, W) (or (C/G, D, H, W) for 5D input) per group with a per-channel
/// affine transform.
pub fn group_norm(
    x: &Tensor,
    groups: usize,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if cuda_float(x) && gamma.dtype() == x.dtype() && beta.dtype() == x.dtype() {
        let (x, gamma, beta) = (x.contiguous()?, gamma.contiguous()?, beta.contiguous()?);
        let need = [x.track_op(), gamma.track_op(), beta.track_op()];
        return x.apply_op3(
            &gamma,
            &beta,
            super::cuda::GroupNorm::new(groups, eps, need),
        );
    }
    if !(cpu::supported(x) && cpu::supported(gamma) && cpu::supported(beta)) {
        return reference::group_norm(x, groups, gamma, beta, eps);
    }
    cpu::keep_freed_memory();
    let (x, gamma, beta) = (x.contiguous()?, gamma.contiguous()?, beta.contiguous()?);
    let need = [x.track_op(), gamma.track_op(), beta.track_op()];
    x.apply_op3(&gamma, &beta, cpu::norm::GroupNorm::new(groups, eps, need))
}

/// max(x, 0). The gradient at exactly 0 is 0 with the own ops (CPU and CUDA, PyTorch's
/// choice) and 1 with the reference (other devices, candle's).
pub fn relu(x: &Tensor) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if cuda_float(x) {
        return x.contiguous()?.apply_op1(super::cuda::Relu);
    }
    if !cpu::supported(x) {
        return reference::relu(x);
    }
    cpu::keep_freed_memory();
    x.contiguous()?.apply_op1(cpu::activation::Relu)
}

/// Mean binary cross-entropy on logits, stable at any magnitude:
/// relu(x) − x·t + log(1 + exp(−|x|)). candle's own version overflows at |x| ≈ 20.
pub fn bce_with_logits(logits: &Tensor, target: &Tensor) -> Result<Tensor> {
    fused_loss(logits, target, (1.0, 0.0, 1.0))
        .unwrap_or_else(|| reference::bce_with_logits(logits, target))
}

/// Soft Dice loss on logits over the whole batch: 1 − (2Σpt + s) / (Σp + Σt + s), p = σ(x).
pub fn soft_dice_loss(logits: &Tensor, target: &Tensor, smooth: f64) -> Result<Tensor> {
    fused_loss(logits, target, (0.0, 1.0, smooth))
        .unwrap_or_else(|| reference::soft_dice_loss(logits, target, smooth))
}

/// The training loss: BCE + soft Dice (smooth 1), as in `torch_unet.py`.
pub fn bce_dice_loss(logits: &Tensor, target: &Tensor) -> Result<Tensor> {
    fused_loss(logits, target, (1.0, 1.0, 1.0)).unwrap_or_else(|| {
        reference::bce_with_logits(logits, target)?
            + reference::soft_dice_loss(logits, target, 1.0)?
    })
}

/// `w_bce·BCE + w_dice·Dice(smooth)` through the fused CPU op, or `None` where it does not
/// apply (not CPU or CUDA f32/f64, or a target that itself takes a gradient).
fn fused_loss(
    logits: &Tensor,
    target: &Tensor,
    (w_bce, w_dice, smooth): (f64, f64, f64),
) -> Option<Result<Tensor>> {
    #[cfg(feature = "cuda")]
    if cuda_float(logits) && target.device().same_device(logits.device()) && !target.track_op() {
        let run = || {
            let t = target.to_dtype(logits.dtype())?.contiguous()?;
            logits
                .contiguous()?
                .apply_op2(&t, super::cuda::BceDice::new(w_bce, w_dice, smooth))
        };
        return Some(run());
    }
    if !cpu::supported(logits) || !target.device().is_cpu() || target.track_op() {
        return None;
    }
    cpu::keep_freed_memory();
    let run = || {
        let t = target.to_dtype(logits.dtype())?.contiguous()?;
        logits
            .contiguous()?
            .apply_op2(&t, cpu::loss::BceDice::new(w_bce, w_dice, smooth))
    };
    Some(run())
}

/// Casts to f32 if needed: training on CPU runs in f32 (bf16 conv errors there).
pub fn to_f32(x: &Tensor) -> Result<Tensor> {
    if x.dtype() == DType::F32 {
        Ok(x.clone())
    } else {
        x.to_dtype(DType::F32)
    }
}

/// The candle-native bodies: used on CUDA and for other dtypes, and the test oracle of the own
/// CPU ops. Their gradients are correct (finite-difference tested below) but slow on CPU.
pub mod reference {
    use candle_core::{D, Result, Tensor};

    /// See [`super::conv2d`].
    pub fn conv2d(x: &Tensor, w: &Tensor) -> Result<Tensor> {
        let (_, _, kh, kw) = w.dims4()?;
        if kh != kw || (kh != 1 && kh != 3) {
            candle_core::bail!("conv2d: expected a 1×1 or 3×3 kernel, got {kh}×{kw}")
        }
        x.conv2d(w, kh / 2, 1, 1, 1)
    }

    /// See [`super::conv3d`]. candle has no conv3d: Σ over the depth taps kd of a 2D conv of
    /// the depth-shifted slices (B·D, I, H, W) with the kernel's slice kd.
    pub fn conv3d(x: &Tensor, w: &Tensor) -> Result<Tensor> {
        let (b, ci, d, h, wd) = x.dims5()?;
        let (co, _, kd, kh, kw) = w.dims5()?;
        if kd != kh || kh != kw || (kh != 1 && kh != 3) {
            candle_core::bail!("conv3d: expected a 1×1×1 or 3×3×3 kernel, got {kd}×{kh}×{kw}")
        }
        let pad = kd / 2;
        let xp = x.pad_with_zeros(2, pad, pad)?;
        let mut y: Option<Tensor> = None;
        for t in 0..kd {
            let xs = xp
                .narrow(2, t, d)?
                .permute((0, 2, 1, 3, 4))?
                .reshape((b * d, ci, h, wd))?;
            let wt = w.narrow(2, t, 1)?.squeeze(2)?;
            let yt = xs.conv2d(&wt, pad, 1, 1, 1)?;
            y = Some(match y {
                None => yt,
                Some(acc) => (acc + yt)?,
            });
        }
        let y = y.expect("kd ≥ 1");
        y.reshape((b, d, co, h, wd))?
            .permute((0, 2, 1, 3, 4))?
            .contiguous()
    }

    /// See [`super::conv_transpose2x2x2`]: per depth tap kd, a 2D transposed conv of the slices
    /// with the kernel's slice kd, interleaved along depth.
    pub fn conv_transpose2x2x2(x: &Tensor, w: &Tensor, bias: &Tensor) -> Result<Tensor> {
        let (b, ci, d, h, wd) = x.dims5()?;
        let (_, co, kd, _, _) = w.dims5()?;
        if kd != 2 {
            candle_core::bail!(
                "conv_transpose2x2x2: expected a 2×2×2 kernel, got {:?}",
                w.shape()
            )
        }
        let xs = x.permute((0, 2, 1, 3, 4))?.reshape((b * d, ci, h, wd))?;
        let taps = (0..2)
            .map(|t| {
                let wt = w.narrow(2, t, 1)?.squeeze(2)?;
                xs.conv_transpose2d(&wt, 0, 0, 2, 1)?
                    .reshape((b, d, 1, co, 2 * h, 2 * wd))
            })
            .collect::<Result<Vec<_>>>()?;
        let y = Tensor::cat(&taps, 2)?
            .reshape((b, 2 * d, co, 2 * h, 2 * wd))?
            .permute((0, 2, 1, 3, 4))?;
        y.broadcast_add(&bias.reshape((1, (), 1, 1, 1))?)
    }

    /// See [`super::max_pool2x2x2`]; through reshape + max (a tie gives each tied element the
    /// gradient).
    pub fn max_pool2x2x2(x: &Tensor) -> Result<Tensor> {
        let (b, c, d, h, w) = x.dims5()?;
        if d % 2 != 0 || h % 2 != 0 || w % 2 != 0 {
            candle_core::bail!(
                "max_pool2x2x2: expected even depth, height and width, got {d}×{h}×{w}"
            )
        }
        x.reshape(vec![b, c, d / 2, 2, h / 2, 2, w / 2, 2])?
            .max(7)?
            .max(5)?
            .max(3)
    }

    /// See [`super::conv_transpose2x2`].
    pub fn conv_transpose2x2(x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
        let y = x.conv_transpose2d(w, 0, 0, 2, 1)?;
        y.broadcast_add(&b.reshape((1, (), 1, 1))?)
    }

    /// See [`super::max_pool2x2`]; through reshape + max: candle's `max_pool2d` scales its
    /// gradient by 1/4 and splits ties wrongly. Here a tie gives every tied element the gradient.
    pub fn max_pool2x2(x: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        if h % 2 != 0 || w % 2 != 0 {
            candle_core::bail!("max_pool2x2: expected even height and width, got {h}×{w}")
        }
        x.reshape((b, c, h / 2, 2, w / 2, 2))?.max(5)?.max(3)
    }

    /// See [`super::group_norm`].
    pub fn group_norm(
        x: &Tensor,
        groups: usize,
        gamma: &Tensor,
        beta: &Tensor,
        eps: f64,
    ) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let (b, c) = (dims[0], dims[1]);
        if groups == 0 || c % groups != 0 {
            candle_core::bail!("group_norm: {c} channels do not split into {groups} groups")
        }
        let spatial: usize = dims[2..].iter().product();
        let xg = x.reshape((b, groups, (c / groups) * spatial))?;
        let mean = xg.mean_keepdim(D::Minus1)?;
        let centered = xg.broadcast_sub(&mean)?;
        let var = centered.sqr()?.mean_keepdim(D::Minus1)?;
        let normed = centered
            .broadcast_div(&(var + eps)?.sqrt()?)?
            .reshape(dims.as_slice())?;
        // (1, C, 1, …): the affine per channel for any number of spatial dims.
        let mut aff = vec![1; dims.len()];
        aff[1] = c;
        normed
            .broadcast_mul(&gamma.reshape(aff.as_slice())?)?
            .broadcast_add(&beta.reshape(aff.as_slice())?)
    }

    /// See [`super::relu`].
    pub fn relu(x: &Tensor) -> Result<Tensor> {
        x.relu()
    }

    /// See [`super::bce_with_logits`].
    pub fn bce_with_logits(logits: &Tensor, target: &Tensor) -> Result<Tensor> {
        let t = target.to_dtype(logits.dtype())?;
        let softplus = logits.abs()?.neg()?.exp()?.affine(1.0, 1.0)?.log()?;
        (logits.relu()? - (logits * &t)?)?
            .add(&softplus)?
            .mean_all()
    }

    /// See [`super::soft_dice_loss`].
    pub fn soft_dice_loss(logits: &Tensor, target: &Tensor, smooth: f64) -> Result<Tensor> {
        let t = target.to_dtype(logits.dtype())?;
        let p = candle_nn::ops::sigmoid(logits)?;
        let inter = (&p * &t)?.sum_all()?;
        let denom = (p.sum_all()? + t.sum_all()?)?;
        let dice = ((inter * 2.0)? + smooth)?.div(&(denom + smooth)?)?;
        dice.neg()? + 1.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::gradcheck::{check, distinct, uniform};
    use candle_core::{Device, Var};

    /// The reference bodies are the oracle, so they are finite-difference checked too.
    #[test]
    fn reference_gradients_match_finite_differences() -> Result<()> {
        let x = uniform(&[2, 3, 4, 4], -1.0, 1.0, 41, DType::F64);
        let w3 = uniform(&[5, 3, 3, 3], -1.0, 1.0, 42, DType::F64);
        check(&[(x.clone(), true), (w3, true)], |a| {
            reference::conv2d(&a[0], &a[1])
        })?;
        let wt = uniform(&[3, 5, 2, 2], -1.0, 1.0, 43, DType::F64);
        let b = uniform(&[5], -1.0, 1.0, 44, DType::F64);
        check(&[(x.clone(), true), (wt, true), (b, true)], |a| {
            reference::conv_transpose2x2(&a[0], &a[1], &a[2])
        })?;
        let g = uniform(&[3], 0.5, 1.5, 45, DType::F64);
        check(&[(x.clone(), true), (g.clone(), true), (g, true)], |a| {
            reference::group_norm(&a[0], 3, &a[1], &a[2], 1e-5)
        })?;
        let xd = distinct(&[2, 3, 4, 4], 0.01, 46, DType::F64);
        check(&[(xd.clone(), true)], |a| reference::max_pool2x2(&a[0]))?;
        check(&[(xd, true)], |a| reference::relu(&a[0]))?;
        Ok(())
    }

    /// The 3D reference bodies (the oracle of the own 3D ops), finite-difference checked, and
    /// one conv3d value checked by direct summation.
    #[test]
    fn reference_3d_gradients_match_finite_differences() -> Result<()> {
        let x = uniform(&[2, 3, 4, 3, 4], -1.0, 1.0, 141, DType::F64);
        for k in [3, 1] {
            let w = uniform(&[5, 3, k, k, k], -1.0, 1.0, 142, DType::F64);
            check(&[(x.clone(), true), (w, true)], |a| {
                reference::conv3d(&a[0], &a[1])
            })?;
        }
        let wt = uniform(&[3, 5, 2, 2, 2], -1.0, 1.0, 143, DType::F64);
        let b = uniform(&[5], -1.0, 1.0, 144, DType::F64);
        check(&[(x.clone(), true), (wt, true), (b, true)], |a| {
            reference::conv_transpose2x2x2(&a[0], &a[1], &a[2])
        })?;
        let g = uniform(&[3], 0.5, 1.5, 145, DType::F64);
        check(&[(x.clone(), true), (g.clone(), true), (g, true)], |a| {
            reference::group_norm(&a[0], 3, &a[1], &a[2], 1e-5)
        })?;
        let xd = distinct(&[2, 3, 4, 2, 4], 0.01, 146, DType::F64);
        check(&[(xd, true)], |a| reference::max_pool2x2x2(&a[0]))?;

        // y[0, o, z, r, c] by the definition, at an interior and a corner voxel.
        let w = uniform(&[5, 3, 3, 3, 3], -1.0, 1.0, 147, DType::F64);
        let y = reference::conv3d(&x, &w)?;
        let xs = x.flatten_all()?.to_vec1::<f64>()?;
        let ws = w.flatten_all()?.to_vec1::<f64>()?;
        let ys = y.flatten_all()?.to_vec1::<f64>()?;
        let (d, h, wd) = (4usize, 3usize, 4usize);
        for (o, z, r, c) in [(2usize, 1usize, 1usize, 2usize), (4, 0, 0, 0), (0, 3, 2, 3)] {
            let mut want = 0.0;
            for i in 0..3 {
                for (kz, kr, kc) in (0..27).map(|t| (t / 9, (t / 3) % 3, t % 3)) {
                    let (zz, rr, cc) = (z + kz, r + kr, c + kc);
                    if zz < 1 || rr < 1 || cc < 1 || zz > d || rr > h || cc > wd {
                        continue;
                    }
                    let xi = ((i * d + zz - 1) * h + rr - 1) * wd + cc - 1;
                    want += xs[xi] * ws[(((o * 3 + i) * 3 + kz) * 3 + kr) * 3 + kc];
                }
            }
            let got = ys[((o * d + z) * h + r) * wd + c];
            assert!(
                (got - want).abs() < 1e-12,
                "({o},{z},{r},{c}): {got} vs {want}"
            );
        }
        Ok(())
    }

    #[test]
    fn losses_match_finite_differences_and_stay_finite_at_large_logits() -> Result<()> {
        let x = uniform(&[2, 1, 3, 4], -3.0, 3.0, 47, DType::F64);
        let t = uniform(&[2, 1, 3, 4], 0.0, 1.0, 48, DType::F64)
            .ge(0.5)?
            .to_dtype(DType::F64)?;
        check(&[(x.clone(), true)], |a| bce_with_logits(&a[0], &t))?;
        check(&[(x.clone(), true)], |a| soft_dice_loss(&a[0], &t, 1.0))?;
        check(&[(x, true)], |a| bce_dice_loss(&a[0], &t))?;

        let big = Var::new(&[[[[40f32, -40.]]]], &Device::Cpu)?;
        let t = Tensor::new(&[[[[0f32, 1.]]]], &Device::Cpu)?;
        let loss = bce_with_logits(&big, &t)?;
        assert!((loss.to_scalar::<f32>()? - 40.0).abs() < 1e-4);
        let g = loss
            .backward()?
            .get(&big)
            .unwrap()
            .flatten_all()?
            .to_vec1::<f32>()?;
        assert!(
            g.iter().all(|v| v.is_finite())
                && (g[0] - 0.5).abs() < 1e-6
                && (g[1] + 0.5).abs() < 1e-6,
            "{g:?}"
        );
        Ok(())
    }

    #[test]
    fn dispatch_takes_the_own_op_on_cpu_and_reference_for_other_dtypes() -> Result<()> {
        let x = Var::from_tensor(&uniform(&[1, 2, 4, 4], -1.0, 1.0, 49, DType::F32))?;
        let w = uniform(&[3, 2, 3, 3], -1.0, 1.0, 50, DType::F32);
        // Own op: a frozen plain-Tensor kernel gets no gradient, the input does.
        let y = conv2d(&x, &w)?;
        let grads = y.sum_all()?.backward()?;
        assert!(grads.get(&x).is_some() && grads.get(&w).is_none());
        // bf16 has no own op: the reference path runs (and errors on CPU conv, as candle does)
        // rather than the own op rejecting the dtype.
        let xb = x.to_dtype(DType::BF16)?;
        let err = conv2d(&xb, &w.to_dtype(DType::BF16)?)
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert!(!err.contains("expected f32 or f64"), "{err}");
        // Non-contiguous input: made contiguous, same result as the reference.
        let xt = x.as_tensor().transpose(2, 3)?;
        crate::nn::gradcheck::assert_close(
            &conv2d(&xt, &w)?,
            &reference::conv2d(&xt, &w)?,
            1e-5,
            "strided",
        );
        Ok(())
    }
}
