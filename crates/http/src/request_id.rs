//! Request ids: every response carries `x-request-id`; 5xx bodies carry it too, so an operator
//! can find the logged detail of a failure a user reports.

use std::future::Future;

tokio::task_local! {
    static REQUEST_ID: u64;
}

/// The response header carrying the id.
pub const HEADER: &str = "x-request-id";

/// Runs `fut` (a request's handling) with `id` as its request id.
pub async fn scope<F: Future>(id: u64, fut: F) -> F::Output {
    REQUEST_ID.scope(id, fut).await
}

/// How an id is written: 16 hex digits.
pub fn format(id: u64) -> String {
    format!("{id:016x}")
}

/// The id of the request being handled, if any.
pub fn current() -> Option<String> {
    REQUEST_ID.try_with(|id| format(*id)).ok()
}
