//! Fresh databases of a test's own: a SQLite file, or a Postgres database created (and dropped)
//! on the server `DATABASE_URL` points at.

use capstan_db::{Db, DbError};
use sqlx::Connection;

/// Creates an empty Postgres database `name` through `admin_url` (a URL to any existing database
/// on the same server) and returns the URL of the new database.
pub async fn create_postgres_database(admin_url: &str, name: &str) -> Result<String, DbError> {
    let mut conn = sqlx::PgConnection::connect(admin_url).await?;
    sqlx::query(&format!("CREATE DATABASE \"{name}\""))
        .execute(&mut conn)
        .await?;
    conn.close().await?;
    Ok(replace_database(admin_url, name))
}

/// Drops the database `name` (best effort: open connections are terminated).
pub async fn drop_postgres_database(admin_url: &str, name: &str) -> Result<(), DbError> {
    let mut conn = sqlx::PgConnection::connect(admin_url).await?;
    sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
        .execute(&mut conn)
        .await?;
    conn.close().await?;
    Ok(())
}

/// `admin_url` with its database path replaced by `name`.
pub fn replace_database(admin_url: &str, name: &str) -> String {
    let (base, query) = match admin_url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (admin_url, None),
    };
    let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let host_part = match base[scheme_end..].find('/') {
        Some(i) => &base[..scheme_end + i],
        None => base,
    };
    match query {
        Some(q) => format!("{host_part}/{name}?{q}"),
        None => format!("{host_part}/{name}"),
    }
}

/// A migrated database of a test's own, removed by [`TestDatabase::cleanup`].
pub struct TestDatabase {
    /// Its URL (for a second server on the same database).
    pub url: String,
    /// An open handle.
    pub db: Db,
    postgres: Option<(String, String)>,
    sqlite_dir: Option<std::path::PathBuf>,
}

/// A name no other test run uses: the process id and per-process random bits.
pub fn unique_name(prefix: &str) -> String {
    use std::hash::BuildHasher;
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let salt = std::collections::hash_map::RandomState::new().hash_one(n);
    format!("{prefix}_{}_{n}_{salt:016x}", std::process::id())
}

impl TestDatabase {
    /// A fresh SQLite file in the temp directory.
    pub async fn sqlite() -> Result<TestDatabase, DbError> {
        let dir = std::env::temp_dir().join(unique_name("capstan_t"));
        std::fs::create_dir_all(&dir).map_err(|e| DbError::Corrupt(e.to_string()))?;
        let url = format!("sqlite://{}", dir.join("test.db").display());
        let db = Db::connect(&url, 4).await?;
        db.migrate().await?;
        Ok(TestDatabase {
            url,
            db,
            postgres: None,
            sqlite_dir: Some(dir),
        })
    }

    /// A fresh Postgres database on the server `DATABASE_URL` points at; `None` when the
    /// variable is unset (the caller reports the skip).
    pub async fn postgres() -> Result<Option<TestDatabase>, DbError> {
        let Ok(admin) = std::env::var("DATABASE_URL") else {
            return Ok(None);
        };
        if !admin.starts_with("postgres") {
            return Ok(None);
        }
        let name = unique_name("capstan_t");
        let url = create_postgres_database(&admin, &name).await?;
        let db = Db::connect(&url, 8).await?;
        db.migrate().await?;
        Ok(Some(TestDatabase {
            url,
            db,
            postgres: Some((admin, name)),
            sqlite_dir: None,
        }))
    }

    /// Closes the pool and removes the database.
    pub async fn cleanup(self) {
        match &self.db {
            Db::Postgres(p) => p.close().await,
            Db::Sqlite(p) => p.close().await,
        }
        if let Some((admin, name)) = &self.postgres {
            let _ = drop_postgres_database(admin, name).await;
        }
        if let Some(dir) = &self.sqlite_dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// A fresh Postgres database for a conformance test, or `None` (with a note on stderr) when
/// `DATABASE_URL` is unset. Panics when it is set but unusable: a skipped backend must be visible.
pub async fn postgres_or_skip() -> Option<TestDatabase> {
    match TestDatabase::postgres().await {
        Ok(Some(t)) => Some(t),
        Ok(None) => {
            eprintln!("SKIPPED on Postgres: DATABASE_URL is not set");
            None
        }
        Err(e) => panic!("DATABASE_URL is set but Postgres is unusable: {e}"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn replaces_the_database_name() {
        assert_eq!(
            super::replace_database("postgres://u@h:5432/postgres", "x"),
            "postgres://u@h:5432/x"
        );
        assert_eq!(
            super::replace_database("postgres://u@h/postgres?sslmode=disable", "x"),
            "postgres://u@h/x?sslmode=disable"
        );
        assert_eq!(
            super::replace_database("postgres://h:1", "x"),
            "postgres://h:1/x"
        );
    }
}
