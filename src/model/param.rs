//! `Param`: a model tensor that is either frozen (a plain `Tensor`, no gradient is ever
//! computed for it) or trainable (a `Var`, the only thing candle's backprop reaches), plus the
//! seeded initialisers.
//!
//! Initialisation draws from a ChaCha stream seeded by (seed, tensor name), so a tensor's initial
//! value does not depend on which other tensors exist or the order they are built in.

use candle_core::{DType, Device, Result, Tensor, Var};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use sha2::{Digest, Sha256};

#[derive(Debug, Clone)]
pub enum Param {
    Frozen(Tensor),
    Trainable(Var),
}

impl Param {
    pub fn tensor(&self) -> &Tensor {
        match self {
            Param::Frozen(t) => t,
            Param::Trainable(v) => v.as_tensor(),
        }
    }

    pub fn is_trainable(&self) -> bool {
        matches!(self, Param::Trainable(_))
    }

    pub fn var(&self) -> Option<&Var> {
        match self {
            Param::Trainable(v) => Some(v),
            Param::Frozen(_) => None,
        }
    }

    /// Turns a frozen tensor into a trainable copy (a fresh storage, so the frozen original
    /// can never change through it).
    pub fn make_trainable(&mut self) -> Result<()> {
        if let Param::Frozen(t) = self {
            *self = Param::Trainable(Var::from_tensor(&t.copy()?)?);
        }
        Ok(())
    }

    /// A frozen snapshot of the current value (copied: `detach` would share storage).
    pub fn frozen_copy(&self) -> Result<Param> {
        Ok(Param::Frozen(self.tensor().detach().copy()?))
    }

    pub fn elem_count(&self) -> usize {
        self.tensor().elem_count()
    }
}

/// A deterministic RNG for the tensor `name` under `seed`.
pub fn rng_for(seed: u64, name: &str) -> ChaCha8Rng {
    let mut h = Sha256::new();
    h.update(seed.to_le_bytes());
    h.update(name.as_bytes());
    let digest = h.finalize();
    let mut s = [0u8; 32];
    s.copy_from_slice(&digest);
    ChaCha8Rng::from_seed(s)
}

/// U(−bound, bound) of `shape`, f32.
pub fn uniform(
    seed: u64,
    name: &str,
    shape: &[usize],
    bound: f64,
    device: &Device,
) -> Result<Tensor> {
    let mut rng = rng_for(seed, name);
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n)
        .map(|_| rng.random_range(-bound..bound) as f32)
        .collect();
    Tensor::from_vec(v, shape, device)
}

/// N(0, std²) of `shape`, f32.
pub fn normal(seed: u64, name: &str, shape: &[usize], std: f64, device: &Device) -> Result<Tensor> {
    let mut rng = rng_for(seed, name);
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n)
        .map(|_| {
            let z: f64 = StandardNormal.sample(&mut rng);
            (z * std) as f32
        })
        .collect();
    Tensor::from_vec(v, shape, device)
}

pub fn zeros(shape: &[usize], device: &Device) -> Result<Tensor> {
    Tensor::zeros(shape, DType::F32, device)
}

pub fn ones(shape: &[usize], device: &Device) -> Result<Tensor> {
    Tensor::ones(shape, DType::F32, device)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_is_deterministic_per_name() -> Result<()> {
        let d = Device::Cpu;
        let a = uniform(3, "x", &[4, 5], 0.5, &d)?.to_vec2::<f32>()?;
        let b = uniform(3, "x", &[4, 5], 0.5, &d)?.to_vec2::<f32>()?;
        let c = uniform(3, "y", &[4, 5], 0.5, &d)?.to_vec2::<f32>()?;
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert!(a.iter().flatten().all(|v| v.abs() <= 0.5));
        Ok(())
    }

    #[test]
    fn trainable_copy_does_not_alias_the_frozen_tensor() -> Result<()> {
        let t = Tensor::new(&[1f32, 2.0], &Device::Cpu)?;
        let mut p = Param::Frozen(t.clone());
        p.make_trainable()?;
        p.var()
            .unwrap()
            .set(&Tensor::new(&[5f32, 6.0], &Device::Cpu)?)?;
        assert_eq!(t.to_vec1::<f32>()?, vec![1.0, 2.0]);
        Ok(())
    }
}
