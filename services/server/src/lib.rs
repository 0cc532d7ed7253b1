//! The `capstan` server: configuration, composition of the services, operations endpoints and
//! the subcommands. `main.rs` only parses the command line and calls [`commands`].

pub mod app;
pub mod commands;
pub mod config;
pub mod direct;
pub mod error;
pub mod metrics;
pub mod serve;
pub mod telemetry;
pub mod tls;

pub use app::{App, Server};
pub use config::Settings;
pub use error::ServerError;
