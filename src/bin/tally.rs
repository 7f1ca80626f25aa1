//! The `tally` executable: parses flags and hands over to the library.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    tally::cli::main(tally::cli::Cli::parse())
}
