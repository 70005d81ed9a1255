use std::process::ExitCode;

fn main() -> ExitCode {
    ranksweep::cli::main()
}
