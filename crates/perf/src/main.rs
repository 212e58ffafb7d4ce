//! `warren-perf`: see the crate docs and README.md.

use clap::Parser;
use perf::options::Options;

fn main() {
    let opts = Options::parse();
    match perf::run::main_with(opts) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("warren-perf: {e:#}");
            std::process::exit(2);
        }
    }
}
