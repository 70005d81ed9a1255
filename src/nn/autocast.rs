//! bf16 autocast for GPU training (`train.precision: bf16`), as PyTorch's AMP: while a
//! [`Guard`] for [`Precision::Bf16`] lives on this thread, the convolutions in
//! [`crate::nn::ops`] cast f32 CUDA operands to bf16 and their results back to f32. Master
//! weights, AdamW, the loss and the norms stay f32. CPU tensors are never cast (bf16 conv is
//! broken on candle's CPU backend); job validation refuses bf16 on CPU before that.

use std::cell::Cell;

/// The arithmetic precision of the convolutions in training.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    F32,
    Bf16,
}

impl Precision {
    pub fn is_f32(&self) -> bool {
        *self == Precision::F32
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "f32" => Ok(Precision::F32),
            "bf16" => Ok(Precision::Bf16),
            other => Err(format!(
                "unknown precision `{other}`: expected `f32` or `bf16`"
            )),
        }
    }
}

thread_local! {
    static BF16: Cell<bool> = const { Cell::new(false) };
}

/// True while bf16 autocast is on for this thread.
pub fn bf16_active() -> bool {
    BF16.with(|c| c.get())
}

/// Restores the previous autocast state when dropped.
#[must_use = "autocast ends when the guard is dropped"]
pub struct Guard {
    prev: bool,
}

/// Turns autocast on (`Bf16`) or off (`F32`) for this thread until the guard drops.
pub fn enable(p: Precision) -> Guard {
    let prev = BF16.with(|c| c.replace(p == Precision::Bf16));
    Guard { prev }
}

impl Drop for Guard {
    fn drop(&mut self) {
        BF16.with(|c| c.set(self.prev));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guard_nests_and_restores() {
        assert!(!bf16_active());
        {
            let _a = enable(Precision::Bf16);
            assert!(bf16_active());
            {
                let _b = enable(Precision::F32);
                assert!(!bf16_active());
            }
            assert!(bf16_active());
        }
        assert!(!bf16_active());
        assert_eq!("BF16".parse::<Precision>().unwrap(), Precision::Bf16);
        assert!("fp16".parse::<Precision>().is_err());
    }

    #[test]
    fn autocast_leaves_cpu_tensors_in_f32() -> candle_core::Result<()> {
        let dev = candle_core::Device::Cpu;
        let x = candle_core::Tensor::ones((1, 2, 4, 4), candle_core::DType::F32, &dev)?;
        let w = candle_core::Tensor::ones((3, 2, 3, 3), candle_core::DType::F32, &dev)?;
        let _g = enable(Precision::Bf16);
        let y = crate::nn::conv2d(&x, &w)?;
        assert_eq!(y.dtype(), candle_core::DType::F32);
        Ok(())
    }
}
