//! `ranksweep selftest [--device cuda:0]`: the op and model checks (finite differences, own
//! ops against the reference, adapters unchanged at init, every trainable tensor gets a
//! gradient) on a device, as a pass/fail table; exit 1 on any failure. For GPU machines that
//! have only the binary, not Rust.

use std::process::ExitCode;

use clap::Args;
use comfy_table::Table;

use crate::model::checks::run_all;
use crate::nn::DeviceSpec;

#[derive(Args, Debug)]
pub struct SelftestArgs {
    /// cpu or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: DeviceSpec,
}

pub fn run(args: SelftestArgs) -> anyhow::Result<ExitCode> {
    let device = match args.device.open() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    let reports = run_all(&device);
    let mut table = Table::new();
    table.set_header(["check", "result", "seconds"]);
    let mut failed = 0;
    for r in &reports {
        let result = match &r.result {
            Ok(None) => "pass".to_string(),
            Ok(Some(why)) => format!("skipped: {why}"),
            Err(e) => {
                failed += 1;
                format!("FAIL: {e}")
            }
        };
        table.add_row([r.name.to_string(), result, format!("{:.2}", r.seconds)]);
    }
    println!("selftest on {} (build: {})", args.device, build_features());
    println!("{table}");
    println!("{} checks, {failed} failed", reports.len());
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn build_features() -> &'static str {
    if cfg!(feature = "cudnn") {
        "cuda + cudnn"
    } else if cfg!(feature = "cuda") {
        "cuda"
    } else {
        "cpu only"
    }
}
