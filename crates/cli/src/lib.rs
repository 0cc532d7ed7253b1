//! `capstanctl`: Capstan from a terminal. Every command is one call to the HTTP API through
//! `capstan-sdk` (never SQL); logins are kept per address under the user's config directory.
//!
//! [`run`] is the whole program with its standard streams passed in, so the test suite drives
//! the same code the binary runs.

pub mod cli;
mod commands;
mod config;
pub mod docs;
mod output;
mod session;

use std::ffi::OsString;
use std::io::{BufRead, Write};

use clap::Parser;

pub use cli::Cli;

/// Exit codes scripts can rely on.
pub mod exit {
    /// Success.
    pub const OK: i32 = 0;
    /// Any error (unreachable server, bad input, server error).
    pub const ERROR: i32 = 1;
    /// A usage error (unknown command or flag, missing argument).
    pub const USAGE: i32 = 2;
    /// Denied: a 403, or `authorize` answering Deny.
    pub const DENIED: i32 = 3;
    /// The named object does not exist (a 404).
    pub const NOT_FOUND: i32 = 4;
}

/// The program's streams.
pub struct Io<'a> {
    /// Standard input (documents, `--client-secret-stdin`).
    pub stdin: &'a mut (dyn BufRead + Send),
    /// Standard output: answers only.
    pub out: &'a mut (dyn Write + Send),
    /// Standard error: messages, prompts, the spinner.
    pub err: &'a mut (dyn Write + Send),
    /// Whether stdout is a terminal (table output by default).
    pub stdout_tty: bool,
    /// Whether stdin and stderr are a terminal (prompts and the spinner).
    pub interactive: bool,
}

/// Runs capstanctl with `args` (the first is the program name); returns the exit code.
pub async fn run<I, T>(args: I, io: &mut Io<'_>) -> i32
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() {
                exit::USAGE
            } else {
                exit::OK
            };
            let text = e.render().to_string();
            let _ = if e.use_stderr() {
                write!(io.err, "{text}")
            } else {
                write!(io.out, "{text}")
            };
            return code;
        }
    };
    match commands::run(cli, io).await {
        Ok(code) => code,
        Err(e) if e.message.is_empty() => e.code,
        Err(e) => {
            let _ = writeln!(io.err, "error: {}", e.message);
            if let Some(hint) = &e.hint {
                let _ = writeln!(io.err, "  {hint}");
            }
            e.code
        }
    }
}

/// A failure, with what to do about it and the exit code.
#[derive(Debug)]
pub struct Failure {
    /// What went wrong.
    pub message: String,
    /// What to do.
    pub hint: Option<String>,
    /// The exit code.
    pub code: i32,
}

impl Failure {
    fn new(message: impl Into<String>) -> Failure {
        Failure {
            message: message.into(),
            hint: None,
            code: exit::ERROR,
        }
    }

    fn hint(mut self, hint: impl Into<String>) -> Failure {
        self.hint = Some(hint.into());
        self
    }
}
