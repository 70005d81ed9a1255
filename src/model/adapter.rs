//! Conv adapters: one ΔW interface for the three factorisations, and DoRA as an optional
//! magnitude on top of any of them (PEFT's `LycorisLayer` / `DoraConv2dVariant` design).
//!
//! The adapted conv always runs as one conv2d with the merged weight W0 + s·ΔW (or the DoRA
//! W' = m ⊙ (W0 + s·ΔW) / ‖W0 + s·ΔW‖ with the norm detached, DoRA §4.3), never a second conv
//! path. Every factorisation starts with a zero factor, so ΔW = 0 and (for DoRA) m = ‖W0‖ at
//! initialisation: the network output is unchanged.

use candle_core::{Result, Tensor, Var};

use super::kind::{AdaptationKind, Factorization};
use super::param::{Param, normal, uniform, zeros};

/// The low-rank factors of one adapted conv.
#[derive(Debug, Clone)]
pub enum Factors {
    /// `lora_A.weight` (r·k, I·k), `lora_B.weight` (O·k, r·k).
    LoraC { a: Param, b: Param },
    /// `lora_A.weight` (r, I, k, k), `lora_B.weight` (O, r, 1, 1).
    ConvLora { a: Param, b: Param },
    /// `cp.out` (O, r), `cp.in` (I, r), (3D: `cp.kd` (k, r)), `cp.kh` (k, r), `cp.kw` (k, r).
    Cp {
        out: Param,
        inp: Param,
        kd: Option<Param>,
        kh: Param,
        kw: Param,
    },
}

/// The adapter on one 3×3 conv.
#[derive(Debug, Clone)]
pub struct Adapter {
    kind: AdaptationKind,
    rank: usize,
    scale: f64,
    factors: Factors,
    magnitude: Option<Param>,
}

impl Adapter {
    /// Creates the adapter for base weight `w0` (O, I, k, k) or, in 3D, (O, I, k, k, k) with
    /// the contract's init (3D: lora-c A (r·k, I·k²), conv-lora A (r, I, k, k, k) and
    /// B (O, r, 1, 1, 1), cp-lora a depth factor `cp.kd`; the DoRA norm over (I, k, k, k)).
    /// `path` is the conv's layer path (`decoder.1.conv2`), used to name and seed tensors.
    pub fn init(
        kind: AdaptationKind,
        rank: usize,
        alpha: f64,
        w0: &Tensor,
        path: &str,
        seed: u64,
    ) -> Result<Self> {
        let fact = kind
            .factorization()
            .ok_or_else(|| candle_core::Error::Msg(format!("`{kind}` is not an adapter kind")))?;
        if rank == 0 {
            candle_core::bail!("adapter rank must be at least 1")
        }
        let (o, i, k, vol) = match w0.dims() {
            &[o, i, k, _] => (o, i, k, false),
            &[o, i, k, _, _] => (o, i, k, true),
            d => candle_core::bail!("adapter: expected a 4D or 5D conv weight, got {d:?}"),
        };
        // Spatial kernel elements and lora-c's column factor k^(dims − 1).
        let (kk, kc) = if vol { (k * k * k, k * k) } else { (k * k, k) };
        let dev = w0.device();
        let r = rank;
        let name = |t: &str| format!("{path}.{t}");
        let var = |t: Tensor| -> Result<Param> { Ok(Param::Trainable(Var::from_tensor(&t)?)) };
        let factors = match fact {
            Factorization::LoraC => Factors::LoraC {
                a: var(uniform(
                    seed,
                    &name("lora_A.weight"),
                    &[r * k, i * kc],
                    1.0 / ((i * kc) as f64).sqrt(),
                    dev,
                )?)?,
                b: var(zeros(&[o * k, r * k], dev)?)?,
            },
            Factorization::ConvLora => {
                let (a_shape, b_shape) = if vol {
                    (vec![r, i, k, k, k], vec![o, r, 1, 1, 1])
                } else {
                    (vec![r, i, k, k], vec![o, r, 1, 1])
                };
                Factors::ConvLora {
                    a: var(uniform(
                        seed,
                        &name("lora_A.weight"),
                        &a_shape,
                        1.0 / ((i * kk) as f64).sqrt(),
                        dev,
                    )?)?,
                    b: var(zeros(&b_shape, dev)?)?,
                }
            }
            Factorization::Cp => Factors::Cp {
                out: var(zeros(&[o, r], dev)?)?,
                inp: var(normal(
                    seed,
                    &name("cp.in"),
                    &[i, r],
                    1.0 / (i as f64).sqrt(),
                    dev,
                )?)?,
                kd: if vol {
                    Some(var(normal(
                        seed,
                        &name("cp.kd"),
                        &[k, r],
                        1.0 / (k as f64).sqrt(),
                        dev,
                    )?)?)
                } else {
                    None
                },
                kh: var(normal(
                    seed,
                    &name("cp.kh"),
                    &[k, r],
                    1.0 / (k as f64).sqrt(),
                    dev,
                )?)?,
                kw: var(normal(
                    seed,
                    &name("cp.kw"),
                    &[k, r],
                    1.0 / (k as f64).sqrt(),
                    dev,
                )?)?,
            },
        };
        let magnitude = if kind.is_dora() {
            Some(var(channel_norms(w0)?)?)
        } else {
            None
        };
        Ok(Adapter {
            kind,
            rank,
            scale: alpha / rank as f64,
            factors,
            magnitude,
        })
    }

    pub fn kind(&self) -> AdaptationKind {
        self.kind
    }

    pub fn rank(&self) -> usize {
        self.rank
    }

    pub fn scale(&self) -> f64 {
        self.scale
    }

    /// ΔW (O, I, k, k) — or (O, I, k, k, k) — from the factors, for a base weight of `shape`.
    pub fn delta(&self, shape: &[usize]) -> Result<Tensor> {
        let (o, i, k) = (shape[0], shape[1], shape[2]);
        let kk: usize = shape[2..].iter().product();
        let r = self.rank;
        match &self.factors {
            Factors::LoraC { a, b } => b.tensor().matmul(a.tensor())?.reshape(shape),
            Factors::ConvLora { a, b } => {
                let b2 = b.tensor().reshape((o, r))?;
                let a2 = a.tensor().reshape((r, i * kk))?;
                b2.matmul(&a2)?.reshape(shape)
            }
            Factors::Cp {
                out,
                inp,
                kd,
                kh,
                kw,
            } => {
                // khw[j, h, w] = kh[h, j]·kw[w, j] (3D: kd[d, j]·khw[j, h, w]); then
                // (in ⊗ khw)[j, i, hw]; then out · that.
                let kh_t = kh.tensor().t()?.reshape((r, k, 1))?;
                let kw_t = kw.tensor().t()?.reshape((r, 1, k))?;
                let mut khw = kh_t.broadcast_mul(&kw_t)?.reshape((r, 1, k * k))?;
                if let Some(kd) = kd {
                    let kd_t = kd.tensor().t()?.reshape((r, k, 1))?;
                    khw = kd_t.broadcast_mul(&khw)?.reshape((r, 1, kk))?;
                }
                let in_t = inp.tensor().t()?.reshape((r, i, 1))?;
                let core = in_t.broadcast_mul(&khw)?.reshape((r, i * kk))?;
                out.tensor().matmul(&core)?.reshape(shape)
            }
        }
    }

    /// The weight the conv runs with: W0 + s·ΔW, or its DoRA rescaling.
    pub fn weight(&self, w0: &Tensor) -> Result<Tensor> {
        self.weight_with_norm(w0, None)
    }

    /// [`Adapter::weight`], with the DoRA norm taken from `norm` when given (finite-difference
    /// checks hold it fixed, as backward does).
    pub fn weight_with_norm(&self, w0: &Tensor, norm: Option<&Tensor>) -> Result<Tensor> {
        let w = (w0 + (self.delta(w0.dims())? * self.scale)?)?;
        match &self.magnitude {
            None => Ok(w),
            Some(m) => {
                let o = w.dim(0)?;
                // The norm is a constant in backward (DoRA §4.3): detach it.
                let norm = match norm {
                    Some(n) => n.clone(),
                    None => channel_norms(&w)?.detach(),
                };
                let mut per_channel = vec![1; w.rank()];
                per_channel[0] = o;
                let factor = m.tensor().div(&norm)?.reshape(per_channel.as_slice())?;
                w.broadcast_mul(&factor)
            }
        }
    }

    /// The adapter's tensors with their names relative to the conv (`lora_A.weight`, ...).
    pub fn params(&self) -> Vec<(&'static str, &Param)> {
        let mut v: Vec<(&'static str, &Param)> = match &self.factors {
            Factors::LoraC { a, b } | Factors::ConvLora { a, b } => {
                vec![("lora_A.weight", a), ("lora_B.weight", b)]
            }
            Factors::Cp {
                out,
                inp,
                kd,
                kh,
                kw,
            } => {
                let mut v = vec![("cp.out", out), ("cp.in", inp)];
                v.extend(kd.as_ref().into_iter().map(|p| ("cp.kd", p)));
                v.extend([("cp.kh", kh), ("cp.kw", kw)]);
                v
            }
        };
        if let Some(m) = &self.magnitude {
            v.push(("magnitude", m));
        }
        v
    }

    pub fn params_mut(&mut self) -> Vec<(&'static str, &mut Param)> {
        let mut v: Vec<(&'static str, &mut Param)> = match &mut self.factors {
            Factors::LoraC { a, b } | Factors::ConvLora { a, b } => {
                vec![("lora_A.weight", a), ("lora_B.weight", b)]
            }
            Factors::Cp {
                out,
                inp,
                kd,
                kh,
                kw,
            } => {
                let mut v = vec![("cp.out", out), ("cp.in", inp)];
                v.extend(kd.as_mut().into_iter().map(|p| ("cp.kd", p)));
                v.extend([("cp.kh", kh), ("cp.kw", kw)]);
                v
            }
        };
        if let Some(m) = &mut self.magnitude {
            v.push(("magnitude", m));
        }
        v
    }

    /// Trainable parameters per layer by the contract's formulas (2D).
    pub fn count(kind: AdaptationKind, rank: usize, o: usize, i: usize, k: usize) -> usize {
        Self::count_nd(kind, rank, o, i, k, 2)
    }

    /// Trainable parameters per layer in `dims` spatial dimensions: lora-c r·k^(d−1)·(k·I + O)
    /// (2D: r·k²·(I + O)), conv-lora r·(I·k^d + O), cp-lora r·(O + I + d·k); DoRA adds O.
    pub fn count_nd(
        kind: AdaptationKind,
        rank: usize,
        o: usize,
        i: usize,
        k: usize,
        dims: usize,
    ) -> usize {
        let r = rank;
        let kd = k.pow(dims as u32);
        let lora = match kind.factorization() {
            None => 0,
            Some(Factorization::LoraC) => r * k * (i * kd / k + o * k),
            Some(Factorization::ConvLora) => r * (i * kd + o),
            Some(Factorization::Cp) => r * (o + i + dims * k),
        };
        lora + if kind.is_dora() { o } else { 0 }
    }
}

/// ‖W[o]‖ over (I, k, k) (or (I, k, k, k)), shape (O).
pub fn channel_norms(w: &Tensor) -> Result<Tensor> {
    let o = w.dim(0)?;
    w.reshape((o, ()))?.sqr()?.sum(1)?.sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::param::uniform;
    use candle_core::Device;

    fn w0() -> Result<Tensor> {
        uniform(1, "w0", &[5, 3, 3, 3], 0.3, &Device::Cpu)
    }

    #[test]
    fn every_kind_starts_at_the_base_weight() -> Result<()> {
        let w0 = w0()?;
        for kind in AdaptationKind::ADAPTERS {
            let a = Adapter::init(kind, 4, 4.0, &w0, "l", 0)?;
            let diff = (a.weight(&w0)? - &w0)?
                .abs()?
                .max_all()?
                .to_scalar::<f32>()?;
            assert!(diff < 1e-6, "{kind}: {diff}");
        }
        Ok(())
    }

    #[test]
    fn counts_match_tensor_sizes() -> Result<()> {
        let w0 = w0()?;
        for kind in AdaptationKind::ADAPTERS {
            for rank in [1, 4, 7] {
                let a = Adapter::init(kind, rank, rank as f64, &w0, "l", 0)?;
                let n: usize = a.params().iter().map(|(_, p)| p.elem_count()).sum();
                assert_eq!(n, Adapter::count(kind, rank, 5, 3, 3), "{kind} r{rank}");
            }
        }
        Ok(())
    }

    /// CP-LoRA's ΔW against the 4-way sum written out element by element.
    #[test]
    fn cp_delta_matches_the_explicit_sum() -> Result<()> {
        let w0 = w0()?;
        let mut a = Adapter::init(AdaptationKind::CpLora, 2, 2.0, &w0, "l", 0)?;
        let out = uniform(9, "o", &[5, 2], 1.0, &Device::Cpu)?;
        if let Factors::Cp { out: o, .. } = &mut a.factors {
            *o = Param::Frozen(out.clone());
        }
        let d4: Vec<f32> = a.delta(&[5, 3, 3, 3])?.flatten_all()?.to_vec1()?;
        let (outv, inv, khv, kwv) = match &a.factors {
            Factors::Cp {
                out, inp, kh, kw, ..
            } => (
                out.tensor().to_vec2::<f32>()?,
                inp.tensor().to_vec2::<f32>()?,
                kh.tensor().to_vec2::<f32>()?,
                kw.tensor().to_vec2::<f32>()?,
            ),
            _ => unreachable!(),
        };
        for o in 0..5 {
            for i in 0..3 {
                for h in 0..3 {
                    for w in 0..3 {
                        let want: f32 = (0..2)
                            .map(|j| outv[o][j] * inv[i][j] * khv[h][j] * kwv[w][j])
                            .sum();
                        let got = d4[((o * 3 + i) * 3 + h) * 3 + w];
                        assert!((want - got).abs() < 1e-5, "{o}{i}{h}{w}: {want} vs {got}");
                    }
                }
            }
        }
        Ok(())
    }

    /// DoRA keeps the per-channel norm of the effective weight equal to the magnitude.
    #[test]
    fn dora_weight_has_the_magnitude_as_norm() -> Result<()> {
        let w0 = w0()?;
        let mut a = Adapter::init(AdaptationKind::ConvDora, 3, 3.0, &w0, "l", 0)?;
        if let Factors::ConvLora { b, .. } = &mut a.factors {
            *b = Param::Frozen(uniform(2, "b", &[5, 3, 1, 1], 0.5, &Device::Cpu)?);
        }
        let m = Tensor::new(&[1f32, 2.0, 3.0, 0.5, 0.25], &Device::Cpu)?;
        a.magnitude = Some(Param::Frozen(m.clone()));
        let norms = channel_norms(&a.weight(&w0)?)?;
        let diff = (norms - m)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-5);
        Ok(())
    }
}

#[cfg(test)]
mod fd_tests {
    use super::*;
    use crate::model::param::uniform;
    use candle_core::{DType, Device};

    /// Central finite differences in f64 of L = Σ W'(θ) ⊙ R for every adapter tensor of every
    /// kind (DoRA's norm held fixed, as its backward treats it).
    #[test]
    fn adapter_gradients_match_finite_differences() -> Result<()> {
        let dev = Device::Cpu;
        let w0 = uniform(1, "w0", &[5, 3, 3, 3], 0.3, &dev)?.to_dtype(DType::F64)?;
        let r = uniform(2, "r", &[5, 3, 3, 3], 1.0, &dev)?.to_dtype(DType::F64)?;
        for kind in AdaptationKind::ADAPTERS {
            let mut a = Adapter::init(kind, 2, 3.0, &w0.to_dtype(DType::F32)?, "l", 0)?;
            // Move every factor off its init (a zero factor would hide the other's gradient).
            for (name, p) in a.params_mut() {
                let t = uniform(7, name, p.tensor().dims(), 0.8, &dev)?.to_dtype(DType::F64)?;
                let t = if name == "magnitude" {
                    (t.abs()? + 0.5)?
                } else {
                    t
                };
                *p = Param::Trainable(Var::from_tensor(&t)?);
            }
            let norm = if kind.is_dora() {
                Some(channel_norms(&(&w0 + (a.delta(w0.dims())? * a.scale)?)?)?.detach())
            } else {
                None
            };
            let loss = |a: &Adapter| -> Result<Tensor> {
                (a.weight_with_norm(&w0, norm.as_ref())? * &r)?.sum_all()
            };
            let grads = loss(&a)?.backward()?;
            let names: Vec<&'static str> = a.params().iter().map(|(n, _)| *n).collect();
            for name in names {
                let var = a
                    .params()
                    .into_iter()
                    .find(|(n, _)| *n == name)
                    .unwrap()
                    .1
                    .var()
                    .unwrap()
                    .clone();
                let g = grads
                    .get(var.as_tensor())
                    .expect("gradient")
                    .flatten_all()?
                    .to_vec1::<f64>()?;
                let base = var.as_tensor().flatten_all()?.to_vec1::<f64>()?;
                let h = 1e-6;
                for idx in 0..base.len() {
                    let eval = |delta: f64| -> Result<f64> {
                        let mut v = base.clone();
                        v[idx] += delta;
                        var.set(&Tensor::from_vec(v, var.dims(), &dev)?)?;
                        loss(&a)?.to_scalar::<f64>()
                    };
                    let fd = (eval(h)? - eval(-h)?) / (2.0 * h);
                    var.set(&Tensor::from_vec(base.clone(), var.dims(), &dev)?)?;
                    let rel = (fd - g[idx]).abs() / fd.abs().max(g[idx].abs()).max(1e-6);
                    assert!(
                        rel < 1e-4,
                        "{kind} {name}[{idx}]: fd {fd} vs autograd {}",
                        g[idx]
                    );
                }
            }
        }
        Ok(())
    }

    fn w0_3d() -> Result<Tensor> {
        uniform(1, "w0", &[5, 3, 3, 3, 3], 0.3, &Device::Cpu)
    }

    /// The 3D adapters: shapes and counts by the 3D formulas, unchanged at init, DoRA's norm
    /// over (I, k, k, k) equal to the magnitude after a step of the factors.
    #[test]
    fn adapters_3d_have_the_formula_shapes_counts_and_start_at_the_base() -> Result<()> {
        let w0 = w0_3d()?;
        for kind in AdaptationKind::ADAPTERS {
            let a = Adapter::init(kind, 4, 4.0, &w0, "l", 0)?;
            let n: usize = a.params().iter().map(|(_, p)| p.elem_count()).sum();
            assert_eq!(n, Adapter::count_nd(kind, 4, 5, 3, 3, 3), "{kind}");
            let diff = (a.weight(&w0)? - &w0)?
                .abs()?
                .max_all()?
                .to_scalar::<f32>()?;
            assert!(diff < 1e-6, "{kind}: {diff}");
            let names: Vec<&str> = a.params().iter().map(|(n, _)| *n).collect();
            let shapes: Vec<Vec<usize>> = a
                .params()
                .iter()
                .map(|(_, p)| p.tensor().dims().to_vec())
                .collect();
            match kind.factorization().unwrap() {
                Factorization::LoraC => assert_eq!(shapes[..2], [vec![12, 27], vec![15, 12]]),
                Factorization::ConvLora => {
                    assert_eq!(shapes[..2], [vec![4, 3, 3, 3, 3], vec![5, 4, 1, 1, 1]])
                }
                Factorization::Cp => {
                    assert_eq!(names[..5], ["cp.out", "cp.in", "cp.kd", "cp.kh", "cp.kw"])
                }
            }
        }
        // lora-c: r·k·(k²·I) + (O·k)·(r·k); cp: r·(O + I + 3k).
        assert_eq!(
            Adapter::count_nd(AdaptationKind::LoraC, 2, 5, 3, 3, 3),
            2 * 27 * 3 + 2 * 9 * 5
        );
        assert_eq!(
            Adapter::count_nd(AdaptationKind::CpDora, 2, 5, 3, 3, 3),
            2 * (5 + 3 + 9) + 5
        );
        Ok(())
    }

    /// 3D CP-LoRA's ΔW against the 5-way sum, and lora-c's B·A reshaped row-major.
    #[test]
    fn delta_3d_matches_the_explicit_sums() -> Result<()> {
        let w0 = w0_3d()?;
        let dev = &Device::Cpu;
        let mut a = Adapter::init(AdaptationKind::CpLora, 2, 2.0, &w0, "l", 0)?;
        if let Factors::Cp { out: o, .. } = &mut a.factors {
            *o = Param::Frozen(uniform(9, "o", &[5, 2], 1.0, dev)?);
        }
        let d5: Vec<f32> = a.delta(&[5, 3, 3, 3, 3])?.flatten_all()?.to_vec1()?;
        let Factors::Cp {
            out,
            inp,
            kd: Some(kd),
            kh,
            kw,
        } = &a.factors
        else {
            unreachable!()
        };
        let v = |p: &Param| p.tensor().to_vec2::<f32>();
        let (ov, iv, dv, hv, wv) = (v(out)?, v(inp)?, v(kd)?, v(kh)?, v(kw)?);
        for (o, i, z, h, w) in [(0, 0, 0, 0, 0), (4, 2, 1, 2, 0), (3, 1, 2, 1, 2)] {
            let want: f32 = (0..2)
                .map(|j| ov[o][j] * iv[i][j] * dv[z][j] * hv[h][j] * wv[w][j])
                .sum();
            let got = d5[(((o * 3 + i) * 3 + z) * 3 + h) * 3 + w];
            assert!(
                (want - got).abs() < 1e-5,
                "{o}{i}{z}{h}{w}: {want} vs {got}"
            );
        }
        let mut a = Adapter::init(AdaptationKind::LoraC, 2, 2.0, &w0, "l", 0)?;
        let b = uniform(8, "b", &[15, 6], 1.0, dev)?;
        if let Factors::LoraC { b: bp, .. } = &mut a.factors {
            *bp = Param::Frozen(b.clone());
        }
        let Factors::LoraC { a: ap, .. } = &a.factors else {
            unreachable!()
        };
        let ba: Vec<f32> = b.matmul(ap.tensor())?.flatten_all()?.to_vec1()?;
        let d: Vec<f32> = a.delta(&[5, 3, 3, 3, 3])?.flatten_all()?.to_vec1()?;
        assert_eq!(ba, d, "row-major reshape of B·A (15×27) to (5, 3, 3, 3, 3)");
        Ok(())
    }
}
