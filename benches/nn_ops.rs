//! Forward and forward+backward time of each training op, own CPU op vs candle-native
//! reference, at the shapes of the default Unet (features 16, 32, 64, 128; batch 8; 1×128×128),
//! and one whole training step of that Unet built from the same ops.
//!
//! Run: `cargo bench --bench nn_ops` (threads: `RAYON_NUM_THREADS`, default all cores).
//! Optional filter argument: only cases whose name contains it (`cargo bench --bench nn_ops -- conv`);
//! `--own` skips the reference (for profiling the own ops).
//! Prints, per case and for forward and forward+backward, own and reference: the fastest wall
//! time in ms, then (median wall, median process CPU time over all threads), and the ratio of
//! the fastest reference time to the fastest own time (higher is better for the own op).

use std::sync::Arc;
use std::time::Instant;

use candle_core::{CpuStorage, CustomOp1, DType, Device, Layout, Result, Shape, Tensor, Var};
use ranksweep::nn::ops::{self, reference};

/// Loss that weights the output by a fixed probe: forward Σ y·probe, backward hands the probe
/// back as the output gradient, so the timed backward is the op's own.
struct Probe(Tensor, Arc<Vec<f32>>);

impl CustomOp1 for Probe {
    fn name(&self) -> &'static str {
        "bench-probe"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(v) = s else {
            candle_core::bail!("probe: f32 only")
        };
        let (a, b) = l.contiguous_offsets().expect("contiguous");
        let sum: f32 = v[a..b].iter().zip(self.1.iter()).map(|(x, y)| x * y).sum();
        Ok((CpuStorage::F32(vec![sum]), Shape::from(())))
    }
    fn bwd(&self, _: &Tensor, _: &Tensor, _: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(self.0.clone()))
    }
}

fn rand(dims: &[usize], scale: f64) -> Tensor {
    (Tensor::randn(0f32, 1f32, dims, &Device::Cpu).unwrap() * scale).unwrap()
}

/// CPU time of the whole process (all threads), in seconds.
fn cpu_time() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// Timing of one measurement: fastest wall time, median wall time, median process CPU time
/// (seconds). The machine is shared, so the minimum is the least disturbed run; CPU time shows
/// the work summed over threads even when other processes take the cores.
#[derive(Clone, Copy)]
struct Timing {
    min: f64,
    median: f64,
    cpu: f64,
}

impl std::fmt::Display for Timing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:>8.2} ({:>8.2}, cpu {:>8.2})",
            self.min * 1e3,
            self.median * 1e3,
            self.cpu * 1e3
        )
    }
}

const NONE: Timing = Timing {
    min: f64::NAN,
    median: f64::NAN,
    cpu: f64::NAN,
};

/// Times `f` over `reps` runs after one warm-up.
fn time(reps: usize, mut f: impl FnMut() -> Result<()>) -> Timing {
    f().unwrap();
    let mut wall = Vec::new();
    let mut cpu = Vec::new();
    for _ in 0..reps {
        let (s, c) = (Instant::now(), cpu_time());
        f().unwrap();
        wall.push(s.elapsed().as_secs_f64());
        cpu.push(cpu_time() - c);
    }
    wall.sort_by(|a, b| a.partial_cmp(b).unwrap());
    cpu.sort_by(|a, b| a.partial_cmp(b).unwrap());
    Timing {
        min: wall[0],
        median: wall[reps / 2],
        cpu: cpu[reps / 2],
    }
}

/// `--own`: time only the own ops (for profiling).
fn own_only() -> bool {
    std::env::args().any(|a| a == "--own")
}

/// Prints one case: own and reference for two measurements, and the reference/own ratio of the
/// fastest runs.
fn report(name: &str, what: [&str; 2], mut row: Vec<(Timing, Timing)>) {
    if row.len() == 1 {
        row.push((NONE, NONE));
    }
    let ((of, ob), (rf, rb)) = (row[0], row[1]);
    println!("{name}");
    for (w, o, r) in [(what[0], of, rf), (what[1], ob, rb)] {
        println!("  {w:<8} own {o}  ref {r}  ref/own {:>6.2}x", r.min / o.min);
    }
}

type OpFn = dyn Fn(&[Tensor]) -> Result<Tensor>;

/// Times forward and forward+backward of `own` and `refr` on the same inputs. Inputs whose
/// flag is true are `Var`s (they take gradients); the others are frozen tensors.
fn case(name: &str, inputs: &[(Tensor, bool)], own: &OpFn, refr: &OpFn, reps: usize) {
    let args: Vec<Tensor> = inputs
        .iter()
        .map(|(t, g)| {
            if *g {
                Var::from_tensor(t).unwrap().as_tensor().clone()
            } else {
                t.clone()
            }
        })
        .collect();
    let out_dims = own(&args).unwrap().dims().to_vec();
    let probe = rand(&out_dims, 1.0);
    let probe_v = Arc::new(probe.flatten_all().unwrap().to_vec1::<f32>().unwrap());
    let mut row = Vec::new();
    for f in [own, refr].into_iter().take(if own_only() { 1 } else { 2 }) {
        let fwd = time(reps, || f(&args).map(|_| ()));
        let both = time(reps, || {
            let y = f(&args)?;
            y.apply_op1(Probe(probe.clone(), probe_v.clone()))?
                .backward()
                .map(|_| ())
        });
        row.push((fwd, both));
    }
    report(name, ["fwd", "fwd+bwd"], row);
}

/// The op set a Unet step runs through.
#[derive(Clone, Copy)]
struct OpSet {
    conv: fn(&Tensor, &Tensor) -> Result<Tensor>,
    up: fn(&Tensor, &Tensor, &Tensor) -> Result<Tensor>,
    pool: fn(&Tensor) -> Result<Tensor>,
    norm: fn(&Tensor, usize, &Tensor, &Tensor, f64) -> Result<Tensor>,
    relu: fn(&Tensor) -> Result<Tensor>,
    loss: fn(&Tensor, &Tensor) -> Result<Tensor>,
}

struct DoubleConv {
    w1: Var,
    g1: Var,
    b1: Var,
    w2: Var,
    g2: Var,
    b2: Var,
}

fn var(t: Tensor) -> Var {
    Var::from_tensor(&t).unwrap()
}

impl DoubleConv {
    fn new(ci: usize, co: usize) -> Self {
        let ones = || var(Tensor::ones(co, DType::F32, &Device::Cpu).unwrap());
        let zeros = || var(Tensor::zeros(co, DType::F32, &Device::Cpu).unwrap());
        DoubleConv {
            w1: var(rand(&[co, ci, 3, 3], (2.0 / (9 * ci) as f64).sqrt())),
            g1: ones(),
            b1: zeros(),
            w2: var(rand(&[co, co, 3, 3], (2.0 / (9 * co) as f64).sqrt())),
            g2: ones(),
            b2: zeros(),
        }
    }

    fn forward(&self, o: &OpSet, x: &Tensor) -> Result<Tensor> {
        let g = self.g1.dim(0)?.min(8);
        let x = (o.relu)(&(o.norm)(
            &(o.conv)(x, &self.w1)?,
            g,
            &self.g1,
            &self.b1,
            1e-5,
        )?)?;
        (o.relu)(&(o.norm)(
            &(o.conv)(&x, &self.w2)?,
            g,
            &self.g2,
            &self.b2,
            1e-5,
        )?)
    }
}

/// The contract's Unet2D (model-contract.md) with every tensor trainable, built from an op set.
struct Unet {
    enc: Vec<DoubleConv>,
    bottleneck: DoubleConv,
    dec: Vec<(Var, Var, DoubleConv)>,
    head_w: Var,
    head_b: Var,
}

impl Unet {
    fn new(features: &[usize]) -> Self {
        let l = features.len();
        let mut c = 1;
        let mut enc = Vec::new();
        for &f in &features[..l - 1] {
            enc.push(DoubleConv::new(c, f));
            c = f;
        }
        let dec = (0..l - 1)
            .map(|j| {
                let (ci, co) = (features[l - 1 - j], features[l - 2 - j]);
                (
                    var(rand(&[ci, co, 2, 2], (1.0 / (4 * ci) as f64).sqrt())),
                    var(Tensor::zeros(co, DType::F32, &Device::Cpu).unwrap()),
                    DoubleConv::new(2 * co, co),
                )
            })
            .collect();
        Unet {
            enc,
            bottleneck: DoubleConv::new(features[l - 2], features[l - 1]),
            dec,
            head_w: var(rand(&[1, features[0], 1, 1], 0.25)),
            head_b: var(Tensor::zeros(1, DType::F32, &Device::Cpu).unwrap()),
        }
    }

    fn forward(&self, o: &OpSet, x: &Tensor) -> Result<Tensor> {
        let mut skips = Vec::new();
        let mut x = x.clone();
        for block in &self.enc {
            x = block.forward(o, &x)?;
            skips.push(x.clone());
            x = (o.pool)(&x)?;
        }
        x = self.bottleneck.forward(o, &x)?;
        for ((w, b, block), skip) in self.dec.iter().zip(skips.iter().rev()) {
            let up = (o.up)(&x, w, b)?;
            x = block.forward(o, &Tensor::cat(&[&up, skip], 1)?)?;
        }
        (o.conv)(&x, &self.head_w)?.broadcast_add(&self.head_b.reshape((1, 1, 1, 1))?)
    }
}

fn main() {
    let filter = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .unwrap_or_default();
    let want = |name: &str| name.contains(filter.as_str());
    let env = |k: &str| std::env::var(k).unwrap_or_else(|_| "unset".into());
    println!(
        "nn_ops bench: {} rayon threads (RAYON_NUM_THREADS {}, CANDLE_NUM_THREADS {}), f32, batch 8",
        rayon::current_num_threads(),
        env("RAYON_NUM_THREADS"),
        env("CANDLE_NUM_THREADS")
    );
    println!("times in ms: fastest wall (median wall, median process CPU over all threads)");
    let reps = 7;
    let b = 8;

    let conv = |a: &[Tensor]| ops::conv2d(&a[0], &a[1]);
    let conv_ref = |a: &[Tensor]| reference::conv2d(&a[0], &a[1]);
    // (in, out, side, input takes a gradient): the first layer's input is the image.
    for (ci, co, s, gx) in [
        (1, 16, 128, false),
        (16, 16, 128, true),
        (32, 32, 64, true),
        (64, 64, 32, true),
        (128, 128, 16, true),
        (32, 16, 128, true),
    ] {
        let name = format!("conv3x3 {ci}->{co} @{s}");
        if want(&name) {
            let inputs = [
                (rand(&[b, ci, s, s], 1.0), gx),
                (rand(&[co, ci, 3, 3], 0.1), true),
            ];
            case(&name, &inputs, &conv, &conv_ref, reps);
        }
    }
    let name = "conv3x3 16->16 @128 frozen W".to_string();
    if want(&name) {
        let inputs = [
            (rand(&[b, 16, 128, 128], 1.0), true),
            (rand(&[16, 16, 3, 3], 0.1), false),
        ];
        case(&name, &inputs, &conv, &conv_ref, reps);
    }
    let name = "conv1x1 16->1 @128 (head)".to_string();
    if want(&name) {
        let inputs = [
            (rand(&[b, 16, 128, 128], 1.0), true),
            (rand(&[1, 16, 1, 1], 0.1), true),
        ];
        case(&name, &inputs, &conv, &conv_ref, reps);
    }

    let up = |a: &[Tensor]| ops::conv_transpose2x2(&a[0], &a[1], &a[2]);
    let up_ref = |a: &[Tensor]| reference::conv_transpose2x2(&a[0], &a[1], &a[2]);
    for (ci, co, s) in [(128, 64, 16), (64, 32, 32), (32, 16, 64)] {
        let name = format!("up2x2 {ci}->{co} @{s}->{}", 2 * s);
        if want(&name) {
            let inputs = [
                (rand(&[b, ci, s, s], 1.0), true),
                (rand(&[ci, co, 2, 2], 0.1), true),
                (rand(&[co], 0.1), true),
            ];
            case(&name, &inputs, &up, &up_ref, reps);
        }
    }

    let pool = |a: &[Tensor]| ops::max_pool2x2(&a[0]);
    let pool_ref = |a: &[Tensor]| reference::max_pool2x2(&a[0]);
    for (c, s) in [(16, 128), (32, 64), (64, 32)] {
        let name = format!("maxpool2x2 {c} @{s}");
        if want(&name) {
            case(
                &name,
                &[(rand(&[b, c, s, s], 1.0), true)],
                &pool,
                &pool_ref,
                reps,
            );
        }
    }

    let norm = |a: &[Tensor]| ops::group_norm(&a[0], 8, &a[1], &a[2], 1e-5);
    let norm_ref = |a: &[Tensor]| reference::group_norm(&a[0], 8, &a[1], &a[2], 1e-5);
    for (c, s) in [(16, 128), (32, 64), (64, 32), (128, 16)] {
        let name = format!("group_norm {c} @{s} (8 groups)");
        if want(&name) {
            let inputs = [
                (rand(&[b, c, s, s], 1.0), true),
                (rand(&[c], 1.0), true),
                (rand(&[c], 1.0), true),
            ];
            case(&name, &inputs, &norm, &norm_ref, reps);
        }
    }

    let relu = |a: &[Tensor]| ops::relu(&a[0]);
    let relu_ref = |a: &[Tensor]| reference::relu(&a[0]);
    let name = "relu 16 @128".to_string();
    if want(&name) {
        case(
            &name,
            &[(rand(&[b, 16, 128, 128], 1.0), true)],
            &relu,
            &relu_ref,
            reps,
        );
    }

    let loss = |a: &[Tensor]| ops::bce_dice_loss(&a[0], &a[1]);
    let name = "bce_dice_loss 1 @128".to_string();
    if want(&name) {
        let t = rand(&[b, 1, 128, 128], 1.0)
            .ge(1.3)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap();
        case(
            &name,
            &[(rand(&[b, 1, 128, 128], 2.0), true), (t, false)],
            &loss,
            &loss,
            reps,
        );
    }

    let name = "unet step 16,32,64,128 b8 128² (every tensor trainable)".to_string();
    if want(&name) {
        let own = OpSet {
            conv: ops::conv2d,
            up: ops::conv_transpose2x2,
            pool: ops::max_pool2x2,
            norm: ops::group_norm,
            relu: ops::relu,
            loss: ops::bce_dice_loss,
        };
        let refr = OpSet {
            conv: reference::conv2d,
            up: reference::conv_transpose2x2,
            pool: reference::max_pool2x2,
            norm: reference::group_norm,
            relu: reference::relu,
            loss: |y, t| reference::bce_with_logits(y, t)? + reference::soft_dice_loss(y, t, 1.0)?,
        };
        let net = Unet::new(&[16, 32, 64, 128]);
        let x = rand(&[b, 1, 128, 128], 1.0);
        let t = rand(&[b, 1, 128, 128], 1.0)
            .ge(1.3)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap();
        let mut row = Vec::new();
        for o in [&own, &refr]
            .into_iter()
            .take(if own_only() { 1 } else { 2 })
        {
            let fwd = time(reps, || net.forward(o, &x).map(|_| ()));
            let step = time(reps, || {
                let y = net.forward(o, &x)?;
                (o.loss)(&y, &t)?.backward().map(|_| ())
            });
            row.push((fwd, step));
        }
        report(&name, ["fwd", "step"], row);
    }
}
