//! End-to-end tests of the `capstan` server: one integration-test binary.
//!
//! Each test boots the real server on port 0 against a fresh database — SQLite, and Postgres when
//! `DATABASE_URL` is set — with a manual clock, and drives it over HTTP like a user would.

// Tests may unwrap and panic: a failure is the point.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod admin;
mod binary;
mod cluster;
mod oauth;
mod policy;
mod support;

/// Generates one test per backend for each named `async fn(Ctx)`.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let ctx = crate::support::Ctx::sqlite().await;
                    super::$name(&ctx).await;
                    ctx.cleanup().await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some(ctx) = crate::support::Ctx::postgres().await else { return };
                    super::$name(&ctx).await;
                    ctx.cleanup().await;
                }
            )*
        }
    };
}
pub(crate) use on_both_backends;
