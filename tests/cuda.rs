//! The op and model checks on a GPU (feature `cuda`): the same functions the CPU unit tests
//! and `ranksweep selftest` run. Without a visible GPU each test prints why and passes.

use candle_core::Device;
use ranksweep::model::checks::model_checks;
use ranksweep::nn::checks::{Check, op_checks};

fn gpu() -> Option<Device> {
    match Device::new_cuda(0) {
        Ok(d) => Some(d),
        Err(e) => {
            eprintln!("skipped: no CUDA device visible ({e})");
            None
        }
    }
}

fn run(checks: Vec<Check>) {
    let Some(dev) = gpu() else { return };
    let mut failed = Vec::new();
    for c in checks {
        match (c.run)(&dev) {
            Ok(o) => eprintln!("{}: {o:?}", c.name),
            Err(e) => failed.push(format!("{}: {e}", c.name)),
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}

#[test]
fn op_checks_pass_on_cuda() {
    run(op_checks());
}

#[test]
fn model_checks_pass_on_cuda() {
    run(model_checks());
}
