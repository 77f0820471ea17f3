//! The `wick` binary: parse the command line (`serve` and `train` links run by that name),
//! start logging, run the command, turn its error into a message and a non-zero exit code.

use std::process::ExitCode;

use clap::Parser;
use wick::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse_from(wick::cli::args_for_invocation(std::env::args_os()));
    wick::telemetry::init(cli.log_format, wick::telemetry::default_level());
    let result = match &cli.command {
        Command::Serve(args) => wick::serve::run(args),
        Command::Predict(args) => wick::predict::run(args),
        Command::Convert(args) => wick::convert::run(args),
        Command::Bench(args) => wick::bench::run(args),
        Command::Package(args) => wick::package_cmd::run(args),
        Command::Train(args) => wick::train::run(args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
