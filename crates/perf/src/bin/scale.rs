//! `warren-scale`: the scale workloads of issue 14; see [`perf::scale`].

use clap::Parser;
use perf::scale::ScaleOptions;

fn main() {
    match perf::scale::main_with(ScaleOptions::parse()) {
        Ok(v) => println!("{v}"),
        Err(e) => {
            eprintln!("warren-scale: {e:#}");
            std::process::exit(2);
        }
    }
}
