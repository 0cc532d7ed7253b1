//! The `capstanctl` binary: [`capstan_cli::run`] over the process's streams.

use std::io::IsTerminal;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut input = std::io::BufReader::new(std::io::stdin());
    let mut out = std::io::stdout();
    let mut err = std::io::stderr();
    let mut io = capstan_cli::Io {
        stdout_tty: out.is_terminal(),
        interactive: std::io::stdin().is_terminal() && err.is_terminal(),
        stdin: &mut input,
        out: &mut out,
        err: &mut err,
    };
    let code = capstan_cli::run(std::env::args_os(), &mut io).await;
    std::process::exit(code);
}
