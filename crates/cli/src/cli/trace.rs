//! `capstanctl traces`: the trace collector's query API.

use clap::{Args, Subcommand};

/// `traces`.
#[derive(Debug, Subcommand)]
pub enum TracesCommand {
    /// The services that reported spans.
    Services,
    /// The operations (span names) a service reported.
    Operations {
        /// The service.
        service: String,
    },
    /// Find traces with a span of a service: trace id, root span's service and operation,
    /// span count, duration and start, newest first.
    Search(TraceSearchArgs),
    /// Show a trace as a tree of spans: service (principal), operation, duration, status.
    /// With `-o json` or `-o yaml`, the trace as OTLP JSON (`GET /v1/traces/{id}`).
    Get {
        /// The trace id (32 hex digits).
        trace_id: String,
    },
}

/// `traces search`.
#[derive(Debug, Args)]
pub struct TraceSearchArgs {
    /// The service.
    #[arg(long)]
    pub service: String,
    /// Only traces with a span of this name in the service.
    #[arg(long)]
    pub operation: Option<String>,
    /// Only traces with a span tagged `KEY=VALUE` (repeatable: all of them).
    #[arg(long = "tag", value_name = "KEY=VALUE")]
    pub tags: Vec<String>,
    /// How far back to look: `30m`, `1h`, `2d`, … [1h].
    #[arg(long, value_name = "DURATION")]
    pub lookback: Option<String>,
    /// At most this many traces [20].
    #[arg(long)]
    pub limit: Option<u32>,
    /// Only spans that took at least this long: `10ms`, `1.5s`, …
    #[arg(long, value_name = "DURATION")]
    pub min_duration: Option<String>,
    /// Only spans that took at most this long.
    #[arg(long, value_name = "DURATION")]
    pub max_duration: Option<String>,
}
