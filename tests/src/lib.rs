//! Capstan's test kit, for the workspace suite (`tests/it`) and the benchmarks: fresh databases
//! ([`db`]), real servers on port 0 with a manual clock ([`server`]), and [`on_both_backends!`],
//! the one macro that runs a test on SQLite and on Postgres.

// A test kit: a failure must stop the test that hit it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod db;
pub mod server;

pub use server::{verify_with_jwks, verify_with_jwks_at, Creds, Ctx, TestServer};

/// Generates one test per backend for each named `async fn(&Ctx)` of the calling module: one on
/// a fresh SQLite database, one on a fresh Postgres database (when `DATABASE_URL` is set;
/// otherwise the Postgres half says on stderr that it skipped).
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let ctx = $crate::Ctx::sqlite().await;
                    super::$name(&ctx).await;
                    ctx.cleanup().await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some(ctx) = $crate::Ctx::postgres().await else { return };
                    super::$name(&ctx).await;
                    ctx.cleanup().await;
                }
            )*
        }
    };
}
