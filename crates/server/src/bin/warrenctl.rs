//! `warrenctl` (also installable as `rabbitmqctl`): see the `ctl` crate.

fn main() -> std::process::ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let code = ctl::run(&argv, &mut std::io::stdout().lock(), &mut std::io::stderr().lock());
    std::process::ExitCode::from(u8::try_from(code).unwrap_or(70))
}
