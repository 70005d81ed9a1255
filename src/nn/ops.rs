//! The op set the Unet trains through, with one signature per op.
//!
//! Every function here dispatches by device: where an own CPU op exists it is used on CPU, and
//! on CUDA the candle-native composition whose gradient is right (see the project notes). The
//! native compositions are also the reference the own ops are tested against.

use candle_core::{D, DType, Result, Tensor};

/// 3×3 (padding 1) or 1×1 (padding 0) convolution, stride 1, no bias.
/// `x`: (B, I, H, W); `w`: (O, I, k, k) with k ∈ {1, 3}.
pub fn conv2d(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let (_, _, kh, kw) = w.dims4()?;
    if kh != kw || (kh != 1 && kh != 3) {
        candle_core::bail!("conv2d: expected a 1×1 or 3×3 kernel, got {kh}×{kw}")
    }
    x.conv2d(w, kh / 2, 1, 1, 1)
}

/// 2×2, stride-2 transposed convolution with bias (the decoder's `up`).
/// `x`: (B, I, H, W); `w`: (I, O, 2, 2); `b`: (O) → (B, O, 2H, 2W).
pub fn conv_transpose2x2(x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
    let y = x.conv_transpose2d(w, 0, 0, 2, 1)?;
    y.broadcast_add(&b.reshape((1, (), 1, 1))?)
}

/// 2×2 max-pool, stride 2, through reshape + max: candle's `max_pool2d` scales its gradient by
/// 1/4 and splits ties wrongly. H and W must be even.
pub fn max_pool2x2(x: &Tensor) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    if h % 2 != 0 || w % 2 != 0 {
        candle_core::bail!("max_pool2x2: expected even height and width, got {h}×{w}")
    }
    x.reshape((b, c, h / 2, 2, w / 2, 2))?.max(5)?.max(3)
}

/// GroupNorm over (C/G, H, W) per group with a per-channel affine transform.
pub fn group_norm(
    x: &Tensor,
    groups: usize,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    if groups == 0 || c % groups != 0 {
        candle_core::bail!("group_norm: {c} channels do not split into {groups} groups")
    }
    let xg = x.reshape((b, groups, (c / groups) * h * w))?;
    let mean = xg.mean_keepdim(D::Minus1)?;
    let centered = xg.broadcast_sub(&mean)?;
    let var = centered.sqr()?.mean_keepdim(D::Minus1)?;
    let normed = centered
        .broadcast_div(&(var + eps)?.sqrt()?)?
        .reshape((b, c, h, w))?;
    normed
        .broadcast_mul(&gamma.reshape((1, c, 1, 1))?)?
        .broadcast_add(&beta.reshape((1, c, 1, 1))?)
}

/// max(x, 0).
pub fn relu(x: &Tensor) -> Result<Tensor> {
    x.relu()
}

/// Mean binary cross-entropy on logits, stable at any magnitude:
/// relu(x) − x·t + log(1 + exp(−|x|)). candle's own version overflows at |x| ≈ 20.
pub fn bce_with_logits(logits: &Tensor, target: &Tensor) -> Result<Tensor> {
    let t = target.to_dtype(logits.dtype())?;
    let softplus = logits.abs()?.neg()?.exp()?.affine(1.0, 1.0)?.log()?;
    (logits.relu()? - (logits * &t)?)?
        .add(&softplus)?
        .mean_all()
}

/// Soft Dice loss on logits over the whole batch: 1 − (2Σpt + s) / (Σp + Σt + s), p = σ(x).
pub fn soft_dice_loss(logits: &Tensor, target: &Tensor, smooth: f64) -> Result<Tensor> {
    let t = target.to_dtype(logits.dtype())?;
    let p = candle_nn::ops::sigmoid(logits)?;
    let inter = (&p * &t)?.sum_all()?;
    let denom = (p.sum_all()? + t.sum_all()?)?;
    let dice = ((inter * 2.0)? + smooth)?.div(&(denom + smooth)?)?;
    dice.neg()? + 1.0
}

/// The training loss: BCE + soft Dice (smooth 1), as in `torch_unet.py`.
pub fn bce_dice_loss(logits: &Tensor, target: &Tensor) -> Result<Tensor> {
    bce_with_logits(logits, target)? + soft_dice_loss(logits, target, 1.0)?
}

/// Casts to f32 if needed: training on CPU runs in f32 (bf16 conv errors there).
pub fn to_f32(x: &Tensor) -> Result<Tensor> {
    if x.dtype() == DType::F32 {
        Ok(x.clone())
    } else {
        x.to_dtype(DType::F32)
    }
}
