//! The 3D model (#14): counts against `torch_unet.py --dims 3`, init, gradients, merge and
//! checkpoints at tiny sizes (features 4,8,16, 16³ inputs).

use candle_core::{DType, Device, Result, Tensor, Var};
use ranksweep::model::checkpoint::{file_sha256, load_adapter, load_base, save_adapter, save_base};
use ranksweep::model::param::{normal, uniform};
use ranksweep::model::summary::ModelSummary;
use ranksweep::model::{
    AdamW, AdamWConfig, AdaptationKind, AdaptationSpec, Selector, Unet3d, UnetConfig,
};
use ranksweep::nn;

use crate::util;

fn tiny3() -> UnetConfig {
    UnetConfig::with_dims(1, vec![4, 8, 16], 3).unwrap()
}

fn spec(kind: AdaptationKind, module: &str, rank: usize) -> AdaptationSpec {
    let sel = Selector::new(module).unwrap();
    match kind {
        AdaptationKind::None => AdaptationSpec::none(),
        AdaptationKind::Full => AdaptationSpec::full(sel),
        k => AdaptationSpec::adapter(k, sel, rank),
    }
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
    (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()
}

fn randomize_trainables(m: &mut Unet3d, seed: u64) -> Result<()> {
    for (name, p) in m.params_mut() {
        if let Some(v) = p.var() {
            v.set(&uniform(seed, &name, v.dims(), 0.3, &Device::Cpu)?)?;
        }
    }
    Ok(())
}

const KINDS: [AdaptationKind; 7] = [
    AdaptationKind::Full,
    AdaptationKind::LoraC,
    AdaptationKind::ConvLora,
    AdaptationKind::CpLora,
    AdaptationKind::DoraC,
    AdaptationKind::ConvDora,
    AdaptationKind::CpDora,
];

/// Trainable counts of features 16,32,64,128 in 3D for full and the six adapters, from
/// `torch_unet.Unet2D(1, (16, 32, 64, 128), 3)` + `adapt(m, kind, selector, rank)` +
/// `trainable(m)` (/work/shared/bench/torch_unet.py, the `--dims 3` model).
#[test]
fn counts_3d_equal_torch_unet_dims_3_for_every_kind_selector_and_rank() -> Result<()> {
    #[rustfmt::skip]
    let table: [(&str, usize, [usize; 7]); 12] = [
        ("encoder", 4, [215152, 25452, 18284, 1756, 25676, 18508, 1980]),
        ("encoder", 16, [215152, 101808, 73136, 7024, 102032, 73360, 7248]),
        ("encoder", 96, [215152, 610848, 438816, 42144, 611072, 439040, 42368]),
        ("decoder", 4, [522032, 44352, 37184, 2456, 44576, 37408, 2680]),
        ("decoder", 16, [522032, 177408, 148736, 9824, 177632, 148960, 10048]),
        ("decoder", 96, [522032, 1064448, 892416, 58944, 1064672, 892640, 59168]),
        ("bottleneck", 4, [664064, 29952, 21760, 1864, 30208, 22016, 2120]),
        ("bottleneck", 16, [664064, 119808, 87040, 7456, 120064, 87296, 7712]),
        ("bottleneck", 96, [664064, 718848, 522240, 44736, 719104, 522496, 44992]),
        ("all", 4, [1401265, 99756, 77228, 6076, 100460, 77932, 6780]),
        ("all", 16, [1401265, 399024, 308912, 24304, 399728, 309616, 25008]),
        ("all", 96, [1401265, 2394144, 1853472, 145824, 2394848, 1854176, 146528]),
    ];
    let cfg = UnetConfig::with_dims(1, vec![16, 32, 64, 128], 3).unwrap();
    let base = Unet3d::init(&cfg, 0, &Device::Cpu)?;
    assert_eq!(base.total_params(), 1_401_265);
    for (module, rank, counts) in table {
        for (kind, want) in KINDS.iter().zip(counts) {
            let mut m = base.clone();
            let s = spec(*kind, module, rank);
            s.apply(&mut m, 0).unwrap();
            let summary = ModelSummary::of(&m, &s);
            assert_eq!(summary.trainable_params, want, "{kind} {module} r{rank}");
            for layer in summary.layers.iter().filter(|l| l.adapter_params > 0) {
                let (o, i, k) = (layer.shape[0], layer.shape[1], layer.shape[2]);
                assert_eq!(layer.shape.len(), 5, "{}", layer.layer);
                // The 3D formulas written out.
                let lora = match kind {
                    AdaptationKind::LoraC | AdaptationKind::DoraC => rank * k * k * (k * i + o),
                    AdaptationKind::ConvLora | AdaptationKind::ConvDora => {
                        rank * (i * k * k * k + o)
                    }
                    _ => rank * (o + i + 3 * k),
                };
                let dora = if kind.is_dora() { o } else { 0 };
                assert_eq!(layer.adapter_params, lora + dora, "{kind} {}", layer.layer);
            }
        }
    }
    Ok(())
}

#[test]
fn forward_3d_shapes_and_adapters_leave_the_output_unchanged_at_init() -> Result<()> {
    let base = Unet3d::init(&tiny3(), 3, &Device::Cpu)?;
    let x = normal(1, "x", &[2, 1, 16, 8, 16], 1.0, &Device::Cpu)?;
    let want = base.forward(&x)?;
    assert_eq!(want.dims(), &[2, 1, 16, 8, 16]);
    for kind in AdaptationKind::ADAPTERS {
        for module in ["encoder", "decoder", "all"] {
            let mut m = base.clone();
            spec(kind, module, 4).apply(&mut m, 11).unwrap();
            let d = max_abs_diff(&m.forward(&x)?, &want)?;
            assert!(d < 1e-6, "{kind}/{module}: output moved by {d} at init");
        }
    }
    let bad = Tensor::zeros((1, 1, 16, 6, 16), DType::F32, &Device::Cpu)?;
    let err = base.forward(&bad).unwrap_err().to_string();
    assert!(err.contains("16×6×16"), "{err}");
    let flat = Tensor::zeros((1, 1, 16, 16), DType::F32, &Device::Cpu)?;
    assert!(base.forward(&flat).is_err(), "a 4D input to the 3D model");
    Ok(())
}

/// By the second step every trainable tensor has a finite, non-zero gradient, and frozen
/// tensors never change.
#[test]
fn every_trainable_3d_tensor_gets_a_gradient() -> Result<()> {
    let base = Unet3d::init(&tiny3(), 3, &Device::Cpu)?;
    let x = normal(1, "x", &[2, 1, 16, 16, 16], 1.0, &Device::Cpu)?;
    let y = normal(2, "y", &[2, 1, 16, 16, 16], 1.0, &Device::Cpu)?
        .gt(0.8)?
        .to_dtype(DType::F32)?;
    for kind in KINDS {
        let mut m = base.clone();
        spec(kind, "all", 2).apply(&mut m, 5).unwrap();
        let frozen: Vec<(String, Vec<f32>)> = m
            .params()
            .into_iter()
            .filter(|p| !p.param.is_trainable())
            .map(|p| {
                (
                    p.name,
                    p.param.tensor().flatten_all().unwrap().to_vec1().unwrap(),
                )
            })
            .collect();
        let vars: Vec<(String, Var)> = m
            .params()
            .into_iter()
            .filter_map(|p| p.param.var().map(|v| (p.name.clone(), v.clone())))
            .collect();
        assert!(!vars.is_empty());
        let mut opt = AdamW::new(
            vars.iter().map(|(_, v)| v.clone()).collect(),
            AdamWConfig::default(),
        )?;
        for step in 0..2 {
            let grads = nn::bce_dice_loss(&m.forward(&x)?, &y)?.backward()?;
            if step == 1 {
                for (name, v) in &vars {
                    let g: Vec<f32> = grads
                        .get(v.as_tensor())
                        .unwrap_or_else(|| panic!("{kind}: no gradient for {name}"))
                        .flatten_all()?
                        .to_vec1()?;
                    assert!(g.iter().all(|v| v.is_finite()), "{kind}: non-finite {name}");
                    assert!(
                        g.iter().any(|v| *v != 0.0),
                        "{kind}: zero gradient for {name}"
                    );
                }
            }
            opt.step(&grads, 1e-2)?;
        }
        for p in m.params().into_iter().filter(|p| !p.param.is_trainable()) {
            let (_, before) = frozen.iter().find(|(n, _)| *n == p.name).unwrap();
            let now: Vec<f32> = p.param.tensor().flatten_all()?.to_vec1()?;
            assert!(before == &now, "{kind}: frozen {} changed", p.name);
        }
    }
    Ok(())
}

/// Merge equals adapted (with ΔW made non-zero first), and base and adapter files load back
/// bit-exactly, refusing a 2D base for a 3D adapter.
#[test]
fn merge_3d_equals_adapted_and_checkpoints_load_back_exactly() -> Result<()> {
    let dir = tempfile::tempdir().unwrap();
    let base = Unet3d::init(&tiny3(), 3, &Device::Cpu)?;
    let base_path = dir.path().join("base.safetensors");
    save_base(&base, &base_path).unwrap();
    let loaded = load_base(&base_path, &Device::Cpu).unwrap();
    assert_eq!(loaded.config(), base.config());
    let x = normal(1, "x", &[1, 1, 8, 16, 8], 1.0, &Device::Cpu)?;
    let base_out = base.forward(&x)?;
    assert_eq!(max_abs_diff(&loaded.forward(&x)?, &base_out)?, 0.0);
    let sha = file_sha256(&base_path).unwrap();
    for kind in AdaptationKind::ADAPTERS {
        let mut m = base.clone();
        let s = spec(kind, "all", 3);
        s.apply(&mut m, 5).unwrap();
        randomize_trainables(&mut m, 9)?;
        let adapted = m.forward(&x)?;
        let merged = m.merged()?;
        assert_eq!(merged.total_params(), base.total_params());
        let d = max_abs_diff(&merged.forward(&x)?, &adapted)?;
        assert!(d <= 1e-5, "{kind}: merged differs by {d}");
        assert!(
            max_abs_diff(&adapted, &base_out)? > 1e-3,
            "{kind}: ΔW had no effect"
        );
        let ap = dir.path().join(format!("{kind}.safetensors"));
        save_adapter(&m, &s, &sha, &ap).unwrap();
        let (back, _) = load_adapter(&loaded, &ap).unwrap();
        assert_eq!(max_abs_diff(&back.forward(&x)?, &adapted)?, 0.0, "{kind}");
        if kind == AdaptationKind::CpLora {
            let names: Vec<String> = back.params().into_iter().map(|p| p.name).collect();
            assert!(names.contains(&"encoder.0.conv1.cp.kd".to_string()));
        }
    }
    let flat = ranksweep::model::Unet2d::init(
        &UnetConfig::new(1, vec![4, 8, 16]).unwrap(),
        3,
        &Device::Cpu,
    )?;
    let err = load_adapter(&flat, &dir.path().join("cp-lora.safetensors"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("(3D)") && err.contains("(2D)"), "{err}");
    Ok(())
}

#[test]
fn model_summary_cli_dims_3_json_and_formulas() {
    let dir = tempfile::tempdir().unwrap();
    let args = [
        "model", "summary", "--dims", "3", "--kind", "cp-lora", "--module", "all", "--rank", "16",
    ];
    let out = util::ranksweep(dir.path(), &[&args[..], &["--json"]].concat());
    assert!(out.status.success(), "{}", util::stderr(&out));
    let v: serde_json::Value = serde_json::from_str(&util::stdout(&out)).unwrap();
    assert_eq!(v["trainable_params"], 24_304);
    assert_eq!(v["total_params"], 1_401_265 + 24_304);
    assert_eq!(v["formula"], "r·(O + I + 3k)");
    assert_eq!(v["config"]["dims"], 3);
    let table = util::ranksweep(dir.path(), &args);
    let text = util::stdout(&table);
    assert!(
        text.contains("16×1×3×3×3") && text.contains("cp.kd") && text.contains("3D conv"),
        "{text}"
    );
    let bad = util::ranksweep(dir.path(), &["model", "summary", "--dims", "4"]);
    assert_eq!(bad.status.code(), Some(2), "{}", util::stderr(&bad));
    assert!(
        util::stderr(&bad).contains("`dims`"),
        "{}",
        util::stderr(&bad)
    );
}
