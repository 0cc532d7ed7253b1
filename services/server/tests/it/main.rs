//! The compiled `capstan` binary, run as an operator would run it (the rest of the end-to-end
//! suite lives in the workspace's `tests/` crate).

// Tests may unwrap and panic: a failure is the point.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod binary;
mod replicas;
