//! One optimisation step over a model's trainable tensors: forward, BCE + soft-Dice loss,
//! backward, AdamW.

use candle_core::{Result, Tensor, Var};

use crate::model::{AdamW, AdamWConfig, Unet2d};
use crate::nn;

/// The outcome of one step.
#[derive(Debug, Clone, Copy)]
pub struct StepStats {
    pub loss: f32,
    pub lr: f64,
}

/// A model with an optimizer over exactly its trainable tensors.
pub struct Trainer {
    pub model: Unet2d,
    opt: AdamW,
    total_steps: usize,
    precision: nn::Precision,
}

impl Trainer {
    /// `total_steps` sizes the learning-rate schedule.
    pub fn new(model: Unet2d, cfg: AdamWConfig, total_steps: usize) -> Result<Self> {
        let vars: Vec<Var> = model
            .params()
            .iter()
            .filter_map(|p| p.param.var().cloned())
            .collect();
        let opt = AdamW::new(vars, cfg)?;
        Ok(Trainer {
            model,
            opt,
            total_steps,
            precision: nn::Precision::F32,
        })
    }

    /// Runs the forward passes under bf16 autocast (CUDA) or plain f32 (default).
    pub fn set_precision(&mut self, p: nn::Precision) {
        self.precision = p;
    }

    pub fn steps_done(&self) -> usize {
        self.opt.steps()
    }

    /// One step on a batch: `x` (B, C, H, W), `y` (B, 1, H, W) in {0, 1}.
    /// A non-finite loss is returned as is and no update is made, so the caller can stop.
    pub fn step(&mut self, x: &Tensor, y: &Tensor) -> Result<StepStats> {
        let lr = self.opt.config().lr_at(self.opt.steps(), self.total_steps);
        let logits = {
            let _autocast = nn::autocast::enable(self.precision);
            self.model.forward(x)?
        };
        let loss = nn::bce_dice_loss(&logits, y)?;
        let value = loss.to_scalar::<f32>()?;
        if !value.is_finite() {
            return Ok(StepStats { loss: value, lr });
        }
        let grads = loss.backward()?;
        self.opt.step(&grads, lr)?;
        Ok(StepStats { loss: value, lr })
    }
}
