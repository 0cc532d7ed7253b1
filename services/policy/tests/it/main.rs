//! The policy service's one integration-test binary: the storage conformance suite, every test
//! on SQLite and on Postgres (the HTTP behaviour is tested end to end in `services/server`).

// Tests may unwrap and panic: a failure is the point.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod store;
