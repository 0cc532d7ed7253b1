//! The `capstan` binary.

use std::process::ExitCode;

use capstan_server::config::{check_environment, CaCommand, Cli, Command, LogFormat};
use capstan_server::{commands, telemetry, ServerError};
use clap::Parser;

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<(), ServerError> {
    let env_warnings = check_environment(std::env::vars().map(|(k, _)| k));
    let opts = match &cli.command {
        Command::Dev { opts }
        | Command::Serve { opts, .. }
        | Command::Bootstrap { opts, .. }
        | Command::Migrate { opts }
        | Command::Ca(CaCommand::Import { opts, .. }) => opts.clone().with_file()?,
    };
    let _telemetry = telemetry::init(
        opts.log_format.unwrap_or(LogFormat::Pretty),
        opts.log.as_deref(),
        std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").ok(),
        opts.trace_self == Some(true),
    )?;
    for w in env_warnings {
        tracing::warn!("{w}");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        match cli.command {
            Command::Dev { .. } => commands::dev(opts).await,
            Command::Serve { no_migrate, .. } => commands::serve(opts, no_migrate).await,
            Command::Bootstrap { force, .. } => commands::bootstrap(opts, force).await,
            Command::Migrate { .. } => commands::migrate(opts).await,
            Command::Ca(CaCommand::Import { cert, key, .. }) => {
                commands::ca_import(opts, &cert, &key).await
            }
        }
    })
}
