//! AdamW with decoupled weight decay and bias correction, over trainable `Var`s only, and the
//! learning-rate schedule (linear warm-up, then cosine decay or constant).
//!
//! Own rather than candle-nn's `AdamW`: that one has no schedule hook and its default weight
//! decay (0.01) is easy to inherit by accident; here every hyper-parameter is explicit.

use candle_core::backprop::GradStore;
use candle_core::{Result, Tensor, Var};
use serde::{Deserialize, Serialize};

/// The learning-rate schedule after warm-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum LrSchedule {
    /// Cosine decay from `lr` to `min_lr` over the steps after warm-up.
    #[default]
    Cosine,
    Constant,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdamWConfig {
    pub lr: f64,
    #[serde(default = "defaults::beta1")]
    pub beta1: f64,
    #[serde(default = "defaults::beta2")]
    pub beta2: f64,
    #[serde(default = "defaults::eps")]
    pub eps: f64,
    #[serde(default = "defaults::weight_decay")]
    pub weight_decay: f64,
    /// Steps of linear warm-up from 0 to `lr`.
    #[serde(default)]
    pub warmup_steps: usize,
    #[serde(default)]
    pub schedule: LrSchedule,
    /// Floor of the cosine decay, as a fraction of `lr`.
    #[serde(default = "defaults::min_lr_ratio")]
    pub min_lr_ratio: f64,
}

mod defaults {
    pub fn beta1() -> f64 {
        0.9
    }
    pub fn beta2() -> f64 {
        0.999
    }
    pub fn eps() -> f64 {
        1e-8
    }
    pub fn weight_decay() -> f64 {
        1e-4
    }
    pub fn min_lr_ratio() -> f64 {
        0.01
    }
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig {
            lr: 1e-3,
            beta1: defaults::beta1(),
            beta2: defaults::beta2(),
            eps: defaults::eps(),
            weight_decay: defaults::weight_decay(),
            warmup_steps: 0,
            schedule: LrSchedule::Cosine,
            min_lr_ratio: defaults::min_lr_ratio(),
        }
    }
}

impl AdamWConfig {
    /// The learning rate at 0-based `step` of `total` steps.
    pub fn lr_at(&self, step: usize, total: usize) -> f64 {
        if step < self.warmup_steps {
            return self.lr * (step + 1) as f64 / self.warmup_steps as f64;
        }
        match self.schedule {
            LrSchedule::Constant => self.lr,
            LrSchedule::Cosine => {
                let span = total.saturating_sub(self.warmup_steps).max(1) as f64;
                let t = ((step - self.warmup_steps) as f64 / span).min(1.0);
                let min = self.lr * self.min_lr_ratio;
                min + 0.5 * (self.lr - min) * (1.0 + (std::f64::consts::PI * t).cos())
            }
        }
    }
}

struct Slot {
    var: Var,
    m: Tensor,
    v: Tensor,
}

/// AdamW over a fixed list of trainable vars.
pub struct AdamW {
    cfg: AdamWConfig,
    slots: Vec<Slot>,
    step: usize,
}

impl AdamW {
    pub fn new(vars: Vec<Var>, cfg: AdamWConfig) -> Result<Self> {
        let slots = vars
            .into_iter()
            .map(|var| {
                let m = var.zeros_like()?;
                let v = var.zeros_like()?;
                Ok(Slot { var, m, v })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(AdamW {
            cfg,
            slots,
            step: 0,
        })
    }

    pub fn config(&self) -> &AdamWConfig {
        &self.cfg
    }

    /// Steps taken so far.
    pub fn steps(&self) -> usize {
        self.step
    }

    /// One update at learning rate `lr`. A var without a gradient is left untouched (its
    /// moments too), which is what a frozen tensor would see.
    pub fn step(&mut self, grads: &GradStore, lr: f64) -> Result<()> {
        self.step += 1;
        let c = &self.cfg;
        let bc1 = 1.0 - c.beta1.powi(self.step as i32);
        let bc2 = 1.0 - c.beta2.powi(self.step as i32);
        for slot in &mut self.slots {
            let Some(g) = grads.get(slot.var.as_tensor()) else {
                continue;
            };
            slot.m = ((&slot.m * c.beta1)? + (g * (1.0 - c.beta1))?)?;
            slot.v = ((&slot.v * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?;
            let m_hat = (&slot.m / bc1)?;
            let v_hat = (&slot.v / bc2)?;
            let update = (m_hat / (v_hat.sqrt()? + c.eps)?)?;
            let theta = slot.var.as_tensor();
            let decayed = (theta * (1.0 - lr * c.weight_decay))?;
            slot.var.set(&(decayed - (update * lr)?)?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn schedule_warms_up_then_decays() {
        let c = AdamWConfig {
            lr: 1.0,
            warmup_steps: 4,
            min_lr_ratio: 0.0,
            ..Default::default()
        };
        assert!((c.lr_at(0, 104) - 0.25).abs() < 1e-12);
        assert!((c.lr_at(3, 104) - 1.0).abs() < 1e-12);
        assert!((c.lr_at(4, 104) - 1.0).abs() < 1e-12);
        assert!((c.lr_at(54, 104) - 0.5).abs() < 1e-12);
        assert!(c.lr_at(103, 104) < 0.01);
        let k = AdamWConfig {
            lr: 0.1,
            schedule: LrSchedule::Constant,
            ..Default::default()
        };
        assert_eq!(k.lr_at(50, 100), 0.1);
    }

    /// One step against PyTorch:
    /// p = torch.tensor([1., -2.], requires_grad=True); opt = torch.optim.AdamW([p], lr=0.1,
    /// weight_decay=0.5); (p**2).sum().backward(); opt.step(); p → [0.85, -1.8]
    /// second step after another backward → [0.70825, -1.61041] (torch 2.x, rounded).
    #[test]
    fn matches_pytorch_adamw() -> Result<()> {
        let p = Var::new(&[1f32, -2.0], &Device::Cpu)?;
        let cfg = AdamWConfig {
            lr: 0.1,
            weight_decay: 0.5,
            schedule: LrSchedule::Constant,
            ..Default::default()
        };
        let mut opt = AdamW::new(vec![p.clone()], cfg)?;
        for want in [[0.85f32, -1.8], [0.70825, -1.61041]] {
            let loss = p.as_tensor().sqr()?.sum_all()?;
            opt.step(&loss.backward()?, 0.1)?;
            let got = p.as_tensor().to_vec1::<f32>()?;
            for (g, w) in got.iter().zip(want) {
                assert!((g - w).abs() < 1e-4, "{got:?} vs {want:?}");
            }
        }
        Ok(())
    }
}
