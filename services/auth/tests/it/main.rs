//! The issuer's one integration-test binary (every file under `tests/` would link its own).
//!
//! `conformance` is the storage suite: each test runs unchanged on SQLite and on Postgres (when
//! `DATABASE_URL` points at a server; otherwise the Postgres half reports that it skipped).
//! `secrets` checks what actually lands in the database.

// Tests may unwrap and panic: a failure is the point.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod conformance;
mod secrets;

/// The storage conformance suite: every test on SQLite and on Postgres.
pub(crate) use capstan_db::conformance_tests as on_both_backends;
