//! `trace_spans` rows as Postgres binary `COPY` data, and loaders that copy them with a few
//! connections: the raw rate the server's batch writers are compared with, and the fast way to
//! fill the table for the search measurement.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use capstan_trace::model::{check, Limits, SpanRow, Window};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use sqlx::PgPool;

/// The `COPY` statement, columns in the order [`encode`] writes them.
pub const COPY_SQL: &str = "COPY trace_spans (tenant, trace_id, span_id, parent_span_id, \
     service, principal, name, kind, start_ns, duration_ns, status_code, tags, span, resource, \
     scope) FROM STDIN (FORMAT binary)";

/// The rows the server stores for `req` from `principal` of `tenant` (the collector's own
/// checks, every service allowed).
pub fn rows_of(
    req: ExportTraceServiceRequest,
    tenant: &str,
    principal: &str,
    window: &Window,
) -> Vec<SpanRow> {
    check(req, tenant, principal, window, &Limits::default(), &|_| {
        None
    })
    .map(|c| c.into_rows())
    .unwrap_or_default()
}

/// `rows` as one binary `COPY` stream (header, tuples, trailer).
pub fn encode(rows: &[SpanRow]) -> Vec<u8> {
    let size: usize = rows
        .iter()
        .map(|r| {
            100 + r.tenant.len()
                + r.service.len()
                + r.principal.len()
                + r.name.len()
                + r.tags.len()
                + r.span.len()
                + r.resource.len()
                + r.scope.len()
        })
        .sum();
    let mut out = Vec::with_capacity(size + 21);
    out.extend_from_slice(b"PGCOPY\n\xff\r\n\0");
    out.extend_from_slice(&0i32.to_be_bytes()); // flags
    out.extend_from_slice(&0i32.to_be_bytes()); // header extension
    for r in rows {
        out.extend_from_slice(&15i16.to_be_bytes());
        field(&mut out, r.tenant.as_bytes());
        field(&mut out, &r.trace_id);
        field(&mut out, &r.span_id);
        match &r.parent_span_id {
            Some(p) => field(&mut out, p),
            None => out.extend_from_slice(&(-1i32).to_be_bytes()),
        }
        field(&mut out, r.service.as_bytes());
        field(&mut out, r.principal.as_bytes());
        field(&mut out, r.name.as_bytes());
        field(&mut out, &r.kind.to_be_bytes());
        field(&mut out, &r.start_ns.to_be_bytes());
        field(&mut out, &r.duration_ns.to_be_bytes());
        field(&mut out, &r.status_code.to_be_bytes());
        // jsonb's binary form: version 1, then the text (the server parses it, as it does
        // the `tg::jsonb` cast of the server's insert).
        out.extend_from_slice(&(r.tags.len() as i32 + 1).to_be_bytes());
        out.push(1);
        out.extend_from_slice(r.tags.as_bytes());
        field(&mut out, &r.span);
        field(&mut out, &r.resource);
        field(&mut out, &r.scope);
    }
    out.extend_from_slice(&(-1i16).to_be_bytes());
    out
}

fn field(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as i32).to_be_bytes());
    out.extend_from_slice(b);
}

/// One `COPY` (its own transaction, committed like the server's batch insert).
pub async fn copy_one(pool: &PgPool, data: &[u8]) -> Result<u64, String> {
    let mut conn = pool.acquire().await.map_err(|e| e.to_string())?;
    let mut copy = conn
        .copy_in_raw(COPY_SQL)
        .await
        .map_err(|e| e.to_string())?;
    copy.send(data).await.map_err(|e| e.to_string())?;
    copy.finish().await.map_err(|e| e.to_string())
}

/// Copies every prepared batch with `connections` concurrent connections, each taking the next
/// batch; returns the rows copied and the seconds it took.
pub async fn copy_all(
    pool: &PgPool,
    batches: Arc<Vec<Vec<u8>>>,
    connections: usize,
) -> Result<(u64, f64), String> {
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let tasks: Vec<_> = (0..connections)
        .map(|_| {
            let (pool, batches, next) = (pool.clone(), batches.clone(), next.clone());
            tokio::spawn(async move {
                let mut rows = 0;
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(b) = batches.get(i) else {
                        return Ok::<u64, String>(rows);
                    };
                    rows += copy_one(&pool, b).await?;
                }
            })
        })
        .collect();
    let mut rows = 0;
    for t in tasks {
        rows += t.await.map_err(|e| e.to_string())??;
    }
    Ok((rows, start.elapsed().as_secs_f64()))
}

/// Copies batches as they arrive on `rx` with `connections` concurrent connections; returns the
/// rows copied.
pub async fn copy_stream(
    pool: &PgPool,
    rx: tokio::sync::mpsc::Receiver<Vec<u8>>,
    connections: usize,
) -> Result<u64, String> {
    let rx = Arc::new(tokio::sync::Mutex::new(rx));
    let tasks: Vec<_> = (0..connections)
        .map(|_| {
            let (pool, rx) = (pool.clone(), rx.clone());
            tokio::spawn(async move {
                let mut rows = 0;
                loop {
                    let next = rx.lock().await.recv().await;
                    let Some(b) = next else {
                        return Ok::<u64, String>(rows);
                    };
                    rows += copy_one(&pool, &b).await?;
                }
            })
        })
        .collect();
    let mut rows = 0;
    for t in tasks {
        rows += t.await.map_err(|e| e.to_string())??;
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_copy_framing() {
        let row = SpanRow {
            tenant: "t".into(),
            trace_id: vec![1; 16],
            span_id: vec![2; 8],
            parent_span_id: None,
            service: "s".into(),
            principal: "p".into(),
            name: "n".into(),
            kind: 2,
            start_ns: 5,
            duration_ns: 6,
            status_code: 0,
            tags: "{}".into(),
            span: vec![3],
            resource: vec![],
            scope: vec![],
        };
        let b = encode(&[row]);
        assert!(b.starts_with(b"PGCOPY\n\xff\r\n\0"));
        assert_eq!(&b[19..21], &15i16.to_be_bytes());
        assert!(b.ends_with(&(-1i16).to_be_bytes()));
        // header 19, field count 2, 15 lengths, data (1+16+8+1+1+1+2+8+8+2+(1+2)+1), trailer 2
        assert_eq!(b.len(), 19 + 2 + 15 * 4 + 52 + 2);
    }
}
