//! The workspace test suite: one integration-test binary.
//!
//! Every test runs on SQLite and on Postgres (when `DATABASE_URL` is set) through
//! `capstan_tests::on_both_backends!`, on a fresh database of its own.
//!
//! - End to end (`admin`, `oauth`, `rotation`, `policy`, `authorization`, `cluster`,
//!   `platform`, `registry`): the real server on port 0
//!   with a manual clock, driven over HTTP like a user would.
//! - Storage conformance (`auth_store`, `policy_store`, `secrets`): the stores' traits, the same
//!   assertions on every backend.
//!
//! The compiled `capstan` binary itself is tested in `services/server/tests` (cargo hands a
//! binary's path only to its own package's tests).

// Tests may unwrap and panic: a failure is the point.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod admin;
mod attacks;
mod auth_store;
mod authorization;
mod cli;
mod cluster;
mod config;
mod config_sdk;
mod config_store;
mod decision_trace;
mod feed;
mod identity;
mod identity_store;
mod mtls;
mod oauth;
mod platform;
mod policy;
mod policy_store;
mod registry;
mod rotation;
mod sdk;
mod secrets;
mod trace;
mod trace_client;
mod watch_http1;
