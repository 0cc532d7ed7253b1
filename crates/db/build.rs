//! The migrations are embedded by `sqlx::migrate!`; rebuild when they change (sqlx's
//! documented advice: without this, a new migration file is missed by incremental builds).
fn main() {
    println!("cargo:rerun-if-changed=../../migrations/postgres");
    println!("cargo:rerun-if-changed=../../migrations/sqlite");
}
