//! ReLU with a one-pass backward.
//!
//! Key type: [`Relu`], a `CustomOp1`.
//!
//! candle's own ReLU gradient is correct but costs five full-size passes and allocations
//! (zeros, compare, cast, multiply, add); this one is `dy · [y > 0]` in one pass. At exactly 0
//! the gradient is 0, as in PyTorch (candle uses 1; both are subgradients). NaN propagates.

use super::{Float, filled, par, slice, tensor, with_data};
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor};

/// Elements per rayon job of the elementwise loops.
const CHUNK: usize = 1 << 15;

/// The ReLU op.
#[derive(Debug, Clone, Copy)]
pub struct Relu;

fn forward<T: Float>(x: &[T]) -> Vec<T> {
    // SAFETY: the chunks cover y and every element is written.
    unsafe {
        filled(x.len(), |y| {
            par::chunks_mut(y, CHUNK, |i, ys| {
                let xs = &x[i * CHUNK..];
                // `x < 0 → 0` keeps NaN (the comparison is false), so a diverging run shows up.
                ys.iter_mut().zip(xs).for_each(|(y, &x)| {
                    y.write(if x < T::zero() { T::zero() } else { x });
                });
            })
        })
    }
}

fn backward<T: Float>(y: &[T], dy: &[T]) -> Vec<T> {
    // SAFETY: the chunks cover dx and every element is written.
    unsafe {
        filled(y.len(), |dx| {
            par::chunks_mut(dx, CHUNK, |i, dxs| {
                let (ys, dys) = (&y[i * CHUNK..], &dy[i * CHUNK..]);
                dxs.iter_mut().zip(ys).zip(dys).for_each(|((d, &y), &g)| {
                    d.write(if y > T::zero() { g } else { T::zero() });
                });
            })
        })
    }
}

impl CustomOp1 for Relu {
    fn name(&self) -> &'static str {
        "ranksweep-relu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let y = match s {
            CpuStorage::F32(_) => CpuStorage::F32(forward::<f32>(slice(s, l, "relu")?)),
            CpuStorage::F64(_) => CpuStorage::F64(forward::<f64>(slice(s, l, "relu")?)),
            _ => candle_core::bail!("relu: expected f32 or f64, got {:?}", s.dtype()),
        };
        Ok((y, l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        let dy = dy.contiguous()?;
        fn run<T: Float>(y: &Tensor, dy: &Tensor) -> Result<Tensor> {
            let v = with_data::<T, _>(y, "relu", |ys| {
                with_data::<T, _>(dy, "relu", |d| Ok(backward(ys, d)))
            })?;
            tensor(v, y.dims())
        }
        let dx = match y.dtype() {
            DType::F32 => run::<f32>(y, &dy)?,
            DType::F64 => run::<f64>(y, &dy)?,
            dt => candle_core::bail!("relu: expected f32 or f64, got {dt:?}"),
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
        // Distinct values 0.01 apart, centred: none within 0.005 of the kink at 0.
        let x = distinct(&[2, 3, 3, 5], 0.01, 24, DType::F64);
        check(&[(x, true)], |a| a[0].apply_op1(Relu))
    }

    #[test]
    fn matches_reference_away_from_zero_and_is_zero_at_zero() -> Result<()> {
        let x = Var::from_tensor(&uniform(&[3, 5, 7, 9], -1.0, 1.0, 25, DType::F32))?;
        let probe = uniform(&[3, 5, 7, 9], -1.0, 1.0, 26, DType::F32);
        let (own, refr) = (ops::relu(&x)?, reference::relu(&x)?);
        assert_matches_reference(&own, &refr, &probe, &[("dx", &x)], 0.0)?;

        let x = Var::new(&[-1f32, 0., 2., f32::NAN], &Device::Cpu)?;
        let y = ops::relu(&x)?;
        let yv = y.to_vec1::<f32>()?;
        assert_eq!(&yv[..3], &[0., 0., 2.]);
        assert!(yv[3].is_nan());
        let g = y.sum_all()?.backward()?.get(&x).unwrap().to_vec1::<f32>()?;
        assert_eq!(&g[..3], &[0., 0., 1.]);
        Ok(())
    }
}
