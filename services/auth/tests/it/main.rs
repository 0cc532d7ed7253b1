//! The issuer's one integration-test binary (every file under `tests/` would link its own).
//!
//! `conformance` is the storage suite: each test runs unchanged on SQLite and on Postgres (when
//! `DATABASE_URL` points at a server; otherwise the Postgres half reports that it skipped).
//! `secrets` checks what actually lands in the database.

// Tests may unwrap and panic: a failure is the point.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod conformance;
mod secrets;

use capstan_db::testing::TestDatabase;

/// Runs `body` against a fresh database of each backend.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    let t = capstan_db::testing::TestDatabase::sqlite().await.expect("sqlite");
                    super::$name(t.db.clone()).await;
                    t.cleanup().await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $name() {
                    let Some(t) = crate::postgres().await else { return };
                    super::$name(t.db.clone()).await;
                    t.cleanup().await;
                }
            )*
        }
    };
}
pub(crate) use on_both_backends;

/// A fresh Postgres database, or `None` (with a note on stderr) when `DATABASE_URL` is unset.
pub async fn postgres() -> Option<TestDatabase> {
    match TestDatabase::postgres().await {
        Ok(Some(t)) => Some(t),
        Ok(None) => {
            eprintln!("SKIPPED on Postgres: DATABASE_URL is not set");
            None
        }
        Err(e) => panic!("DATABASE_URL is set but Postgres is unusable: {e}"),
    }
}
