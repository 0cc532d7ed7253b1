//! Span storage over [`capstan_db::Db`]: each query written once where the backends agree.
//!
//! Postgres: `trace_spans` is partitioned by day of the span's start (`start_ns`); a writer
//! creates the partition of a day before its first insert there, and retention drops whole
//! partitions. SQLite keeps one plain table and deletes. Both are idempotent on (tenant, trace
//! id, span id): a retried export inserts nothing twice (on Postgres the key also holds the
//! start, which a retry repeats, because a partitioned table's keys must hold its partition key).
//!
//! `trace_operations` keeps each (service, operation, kind) seen per tenant, so listing
//! services and operations never scans spans.

use std::collections::HashSet;
use std::sync::Mutex;

use capstan_db::{on_pool, BeginWrite, Db, DbError};

use crate::model::{SpanRow, StoredSpan, DAY_NS};

/// A trace search (Jaeger's `/api/traces`).
#[derive(Debug, Clone, Default)]
pub struct SearchQuery {
    /// The service (required).
    pub service: String,
    /// The operation (span name).
    pub operation: Option<String>,
    /// Tags every matching span carries (span or resource attributes, compared as text).
    pub tags: Vec<(String, String)>,
    /// Earliest start, Unix ns.
    pub start_ns: i64,
    /// Latest start, Unix ns.
    pub end_ns: i64,
    /// Shortest span.
    pub min_duration_ns: Option<i64>,
    /// Longest span.
    pub max_duration_ns: Option<i64>,
    /// Most traces.
    pub limit: i64,
}

/// An operation of a service.
#[derive(Debug, Clone, PartialEq, Eq, Hash, sqlx::FromRow)]
pub struct Operation {
    /// The span name.
    pub name: String,
    /// The span kind.
    pub kind: i16,
}

/// A call edge between two services.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Dependency {
    /// The caller.
    pub parent: String,
    /// The callee.
    pub child: String,
    /// Calls seen.
    pub calls: i64,
}

/// One span's facts for RED metrics.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Sample {
    /// Operation.
    pub name: String,
    /// Duration, ns.
    pub duration_ns: i64,
    /// Status code.
    pub status_code: i16,
}

/// A read-only transaction whose statements may run 15 s at most: a search or graph over a
/// week of spans must not hold the pool every service shares (cancelled is 503).
async fn bounded(p: &sqlx::PgPool) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, DbError> {
    let mut tx = p.begin().await?;
    sqlx::query("SET LOCAL statement_timeout = 15000")
        .execute(&mut *tx)
        .await?;
    Ok(tx)
}

enum Bind {
    Text(String),
    Int(i64),
}

/// The SQL span store.
pub struct SqlTraceStore {
    db: Db,
    /// Days whose Postgres partition is known to exist.
    partitions: Mutex<HashSet<i64>>,
    /// Postgres connections kept for batch writes. sqlx keeps a connection's write buffer at
    /// the largest message it ever sent, for the connection's life, and a batch's bind message
    /// is megabytes: if batches went to whichever pooled connection was free, every one of
    /// them would come to hold that much. Batches use these few instead (at most
    /// [`KEPT_WRITERS`]; one that fails is dropped).
    writers: Mutex<Vec<sqlx::pool::PoolConnection<sqlx::Postgres>>>,
}

/// Most connections kept for batch writes (the pipeline runs 2 writers by default).
const KEPT_WRITERS: usize = 4;

const INSERT_PG: &str = "INSERT INTO trace_spans (tenant, trace_id, span_id, parent_span_id, \
     service, principal, name, kind, start_ns, duration_ns, status_code, tags, span, resource, scope) \
     SELECT t, ti, si, ps, sv, pr, nm, k, st, du, sc, tg::jsonb, sp, rs, so \
     FROM UNNEST($1::text[], $2::bytea[], $3::bytea[], $4::bytea[], $5::text[], $6::text[], \
     $7::text[], $8::int2[], $9::int8[], $10::int8[], $11::int2[], $12::text[], $13::bytea[], \
     $14::bytea[], $15::bytea[]) AS u(t, ti, si, ps, sv, pr, nm, k, st, du, sc, tg, sp, rs, so) \
     ON CONFLICT DO NOTHING";

const INSERT_SQLITE: &str = "INSERT OR IGNORE INTO trace_spans (tenant, trace_id, span_id, \
     parent_span_id, service, principal, name, kind, start_ns, duration_ns, status_code, tags, span, \
     resource, scope) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)";

const SPAN_COLUMNS: &str = "service, principal, span, resource, scope";

/// The partition of `day` (days since the epoch): `trace_spans_YYYYMMDD`.
pub fn partition_name(day: i64) -> String {
    let (y, m, d) = civil_from_days(day);
    format!("trace_spans_{y:04}{m:02}{d:02}")
}

/// The day of a partition name.
fn partition_day(name: &str) -> Option<i64> {
    let digits = name.strip_prefix("trace_spans_")?;
    if digits.len() != 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let y: i64 = digits[..4].parse().ok()?;
    let m: i64 = digits[4..6].parse().ok()?;
    let d: i64 = digits[6..].parse().ok()?;
    Some(days_from_civil(y, m, d))
}

/// Howard Hinnant's `civil_from_days`: proleptic Gregorian (y, m, d) of a day number.
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// The inverse of [`civil_from_days`].
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

impl SqlTraceStore {
    /// A store over `db`.
    pub fn new(db: Db) -> SqlTraceStore {
        SqlTraceStore {
            db,
            partitions: Mutex::new(HashSet::new()),
            writers: Mutex::new(Vec::new()),
        }
    }

    /// The database.
    pub fn db(&self) -> &Db {
        &self.db
    }

    /// Creates the Postgres partition of `day` unless it exists (SQLite: nothing to do).
    pub async fn ensure_partition(&self, day: i64) -> Result<(), DbError> {
        let Db::Postgres(p) = &self.db else {
            return Ok(());
        };
        if self
            .partitions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&day)
        {
            return Ok(());
        }
        let from = day * DAY_NS;
        let to = from + DAY_NS;
        // Replicas and writers create partitions under one advisory lock; the name and range
        // are computed, never taken from input.
        let mut tx = p.begin().await?;
        // DDL waits for ACCESS EXCLUSIVE: never queue behind a long read for long.
        sqlx::query("SET LOCAL lock_timeout = 5000")
            .execute(&mut *tx)
            .await?;
        sqlx::query("SELECT pg_advisory_xact_lock(7261001)")
            .execute(&mut *tx)
            .await?;
        let name = partition_name(day);
        sqlx::query(&format!(
            "CREATE TABLE IF NOT EXISTS {name} PARTITION OF trace_spans FOR VALUES FROM ({from}) TO ({to})"
        ))
        .execute(&mut *tx)
        .await?;
        // The span key, per partition (the parent's keys would have to hold start_ns): a span
        // repeated with another start time that day is skipped like an exact repeat.
        sqlx::query(&format!(
            "CREATE UNIQUE INDEX IF NOT EXISTS {name}_span ON {name} (tenant, trace_id, span_id)"
        ))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        self.partitions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(day);
        Ok(())
    }

    /// Stores `rows` in one statement (Postgres) or one transaction (SQLite); spans already
    /// stored are skipped.
    pub async fn write(&self, rows: &[&SpanRow]) -> Result<(), DbError> {
        if rows.is_empty() {
            return Ok(());
        }
        let mut days: Vec<i64> = rows.iter().map(|r| r.start_ns.div_euclid(DAY_NS)).collect();
        days.sort_unstable();
        days.dedup();
        for d in days {
            self.ensure_partition(d).await?;
        }
        match &self.db {
            Db::Postgres(p) => {
                let c = Columns::new(rows);
                let kept = self.writers.lock().unwrap_or_else(|e| e.into_inner()).pop();
                // A kept connection is checked as the pool checks its own (one round trip
                // against a batch's ~1 s): after a database restart it is replaced, not failed.
                let kept = match kept {
                    Some(mut c) => sqlx::Connection::ping(&mut *c).await.is_ok().then_some(c),
                    None => None,
                };
                let mut conn = match kept {
                    Some(c) => c,
                    None => p.acquire().await?,
                };
                sqlx::query(INSERT_PG)
                    .bind(c.tenant)
                    .bind(c.trace_id)
                    .bind(c.span_id)
                    .bind(c.parent)
                    .bind(c.service)
                    .bind(c.principal)
                    .bind(c.name)
                    .bind(c.kind)
                    .bind(c.start)
                    .bind(c.duration)
                    .bind(c.status)
                    .bind(c.tags)
                    .bind(c.span)
                    .bind(c.resource)
                    .bind(c.scope)
                    .execute(&mut *conn)
                    .await?;
                let mut writers = self.writers.lock().unwrap_or_else(|e| e.into_inner());
                if writers.len() < KEPT_WRITERS {
                    writers.push(conn);
                }
            }
            Db::Sqlite(p) => {
                let mut tx = p.begin_write().await?;
                for r in rows {
                    sqlx::query(INSERT_SQLITE)
                        .bind(&r.tenant)
                        .bind(&r.trace_id)
                        .bind(&r.span_id)
                        .bind(&r.parent_span_id)
                        .bind(&r.service)
                        .bind(&r.principal)
                        .bind(&r.name)
                        .bind(r.kind)
                        .bind(r.start_ns)
                        .bind(r.duration_ns)
                        .bind(r.status_code)
                        .bind(&r.tags)
                        .bind(&r.span)
                        .bind(&r.resource)
                        .bind(&r.scope)
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
            }
        }
        Ok(())
    }

    /// Records operations as seen at `now_ns`.
    pub async fn touch_operations(
        &self,
        ops: &[(String, String, String, i16)],
        now_ns: i64,
    ) -> Result<(), DbError> {
        on_pool!(&self.db, |p| {
            let mut tx = p.begin_write().await?;
            for (tenant, service, name, kind) in ops {
                sqlx::query(
                    "INSERT INTO trace_operations (tenant, service, name, kind, last_seen_ns) \
                     VALUES ($1, $2, $3, $4, $5) ON CONFLICT (tenant, service, name, kind) \
                     DO UPDATE SET last_seen_ns = excluded.last_seen_ns",
                )
                .bind(tenant)
                .bind(service)
                .bind(name)
                .bind(*kind)
                .bind(now_ns)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await
        })?;
        Ok(())
    }

    /// The services of `tenant` with spans.
    pub async fn services(&self, tenant: &str) -> Result<Vec<String>, DbError> {
        let rows: Vec<(String,)> = on_pool!(&self.db, |p| {
            sqlx::query_as(
                "SELECT DISTINCT service FROM trace_operations WHERE tenant = $1 ORDER BY service \
                 LIMIT 10000",
            )
            .bind(tenant)
            .fetch_all(p)
            .await
        })?;
        Ok(rows.into_iter().map(|(s,)| s).collect())
    }

    /// The operations of a service.
    pub async fn operations(&self, tenant: &str, service: &str) -> Result<Vec<Operation>, DbError> {
        Ok(on_pool!(&self.db, |p| {
            sqlx::query_as(
                "SELECT name, kind FROM trace_operations WHERE tenant = $1 AND service = $2 \
                 ORDER BY name, kind LIMIT 10000",
            )
            .bind(tenant)
            .bind(service)
            .fetch_all(p)
            .await
        })?)
    }

    /// The ids of the traces with a span matching `q`, latest first.
    pub async fn find_trace_ids(
        &self,
        tenant: &str,
        q: &SearchQuery,
    ) -> Result<Vec<Vec<u8>>, DbError> {
        let pg = matches!(self.db, Db::Postgres(_));
        let mut sql = String::from(
            "SELECT trace_id FROM trace_spans WHERE tenant = $1 AND service = $2 \
             AND start_ns >= $3 AND start_ns <= $4",
        );
        let mut binds = vec![
            Bind::Text(tenant.to_owned()),
            Bind::Text(q.service.clone()),
            Bind::Int(q.start_ns),
            Bind::Int(q.end_ns),
        ];
        let arg = |binds: &mut Vec<Bind>, b: Bind| {
            binds.push(b);
            format!("${}", binds.len())
        };
        if let Some(op) = &q.operation {
            let a = arg(&mut binds, Bind::Text(op.clone()));
            sql.push_str(&format!(" AND name = {a}"));
        }
        if let Some(d) = q.min_duration_ns {
            let a = arg(&mut binds, Bind::Int(d));
            sql.push_str(&format!(" AND duration_ns >= {a}"));
        }
        if let Some(d) = q.max_duration_ns {
            let a = arg(&mut binds, Bind::Int(d));
            sql.push_str(&format!(" AND duration_ns <= {a}"));
        }
        if !q.tags.is_empty() {
            if pg {
                let obj: serde_json::Map<String, serde_json::Value> = q
                    .tags
                    .iter()
                    .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
                    .collect();
                let a = arg(
                    &mut binds,
                    Bind::Text(serde_json::Value::Object(obj).to_string()),
                );
                sql.push_str(&format!(" AND tags @> {a}::jsonb"));
            } else {
                for (k, v) in &q.tags {
                    let ka = arg(&mut binds, Bind::Text(k.clone()));
                    let va = arg(&mut binds, Bind::Text(v.clone()));
                    sql.push_str(&format!(
                        " AND EXISTS (SELECT 1 FROM json_each(trace_spans.tags) j \
                         WHERE j.key = {ka} AND j.value = {va})"
                    ));
                }
            }
        }
        let a = arg(&mut binds, Bind::Int(q.limit));
        sql.push_str(&format!(
            " GROUP BY trace_id ORDER BY max(start_ns) DESC LIMIT {a}"
        ));
        macro_rules! bound {
            () => {{
                let mut query = sqlx::query_as(&sql);
                for b in &binds {
                    query = match b {
                        Bind::Text(s) => query.bind(s.clone()),
                        Bind::Int(i) => query.bind(*i),
                    };
                }
                query
            }};
        }
        let rows: Vec<(Vec<u8>,)> = match &self.db {
            Db::Postgres(p) => {
                let mut tx = bounded(p).await?;
                let rows = bound!().fetch_all(&mut *tx).await?;
                tx.commit().await?;
                rows
            }
            Db::Sqlite(p) => bound!().fetch_all(p).await?,
        };
        Ok(rows.into_iter().map(|(t,)| t).collect())
    }

    /// Every stored span of the given traces, by start.
    pub async fn spans_of(
        &self,
        tenant: &str,
        trace_ids: &[Vec<u8>],
        limit: i64,
    ) -> Result<Vec<StoredSpan>, DbError> {
        if trace_ids.is_empty() {
            return Ok(Vec::new());
        }
        type Row = (String, String, Vec<u8>, Vec<u8>, Vec<u8>);
        let rows: Vec<Row> = match &self.db {
            Db::Postgres(p) => {
                sqlx::query_as(&format!(
                "SELECT {SPAN_COLUMNS} FROM trace_spans WHERE tenant = $1 AND trace_id = ANY($2) \
                     ORDER BY start_ns, span_id LIMIT $3"
            ))
                .bind(tenant)
                .bind(trace_ids)
                .bind(limit)
                .fetch_all(p)
                .await?
            }
            Db::Sqlite(p) => {
                let mut all = Vec::new();
                for id in trace_ids {
                    let mut rows: Vec<Row> = sqlx::query_as(&format!(
                        "SELECT {SPAN_COLUMNS} FROM trace_spans WHERE tenant = $1 AND trace_id = $2 \
                         ORDER BY start_ns, span_id LIMIT $3"
                    ))
                    .bind(tenant)
                    .bind(id)
                    .bind(limit - all.len() as i64)
                    .fetch_all(p)
                    .await?;
                    all.append(&mut rows);
                }
                all
            }
        };
        Ok(rows
            .into_iter()
            .map(|(service, principal, span, resource, scope)| StoredSpan {
                service,
                principal,
                span,
                resource,
                scope,
            })
            .collect())
    }

    /// Calls between services in spans starting in `[from_ns, to_ns]`: a span whose parent
    /// belongs to another service is one call from the parent's service to its own.
    pub async fn dependencies(
        &self,
        tenant: &str,
        from_ns: i64,
        to_ns: i64,
    ) -> Result<Vec<Dependency>, DbError> {
        match &self.db {
            Db::Postgres(p) => {
                let mut tx = bounded(p).await?;
                let rows = sqlx::query_as(
                    "SELECT pa.service AS parent, c.service AS child, COUNT(*) AS calls \
                 FROM trace_spans c JOIN trace_spans pa ON pa.tenant = c.tenant \
                 AND pa.trace_id = c.trace_id AND pa.span_id = c.parent_span_id \
                 WHERE c.tenant = $1 AND c.start_ns >= $2 AND c.start_ns <= $3 \
                 AND c.parent_span_id IS NOT NULL AND pa.service <> c.service \
                 GROUP BY pa.service, c.service ORDER BY pa.service, c.service",
                )
                .bind(tenant)
                .bind(from_ns)
                .bind(to_ns)
                .fetch_all(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(rows)
            }
            Db::Sqlite(p) => Ok(sqlx::query_as(
                "SELECT pa.service AS parent, c.service AS child, COUNT(*) AS calls \
                 FROM trace_spans c JOIN trace_spans pa ON pa.tenant = c.tenant \
                 AND pa.trace_id = c.trace_id AND pa.span_id = c.parent_span_id \
                 WHERE c.tenant = $1 AND c.start_ns >= $2 AND c.start_ns <= $3 \
                 AND c.parent_span_id IS NOT NULL AND pa.service <> c.service \
                 GROUP BY pa.service, c.service ORDER BY pa.service, c.service",
            )
            .bind(tenant)
            .bind(from_ns)
            .bind(to_ns)
            .fetch_all(p)
            .await?),
        }
    }

    /// Up to `cap` spans of a service in a window, for RED metrics.
    pub async fn samples(
        &self,
        tenant: &str,
        service: &str,
        from_ns: i64,
        to_ns: i64,
        cap: i64,
    ) -> Result<Vec<Sample>, DbError> {
        match &self.db {
            Db::Postgres(p) => {
                let mut tx = bounded(p).await?;
                let rows = sqlx::query_as(
                    "SELECT name, duration_ns, status_code FROM trace_spans WHERE tenant = $1 \
                 AND service = $2 AND start_ns >= $3 AND start_ns <= $4 LIMIT $5",
                )
                .bind(tenant)
                .bind(service)
                .bind(from_ns)
                .bind(to_ns)
                .bind(cap)
                .fetch_all(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(rows)
            }
            Db::Sqlite(p) => Ok(sqlx::query_as(
                "SELECT name, duration_ns, status_code FROM trace_spans WHERE tenant = $1 \
                 AND service = $2 AND start_ns >= $3 AND start_ns <= $4 LIMIT $5",
            )
            .bind(tenant)
            .bind(service)
            .bind(from_ns)
            .bind(to_ns)
            .bind(cap)
            .fetch_all(p)
            .await?),
        }
    }

    /// Drops what started before `before_ns`: whole day partitions on Postgres (a partition
    /// goes once all of its day is older), rows on SQLite; and operations not seen since.
    /// Returns the partitions dropped (Postgres) or rows deleted (SQLite).
    pub async fn prune(&self, before_ns: i64) -> Result<u64, DbError> {
        let n = match &self.db {
            Db::Postgres(p) => {
                let parts: Vec<(String,)> = sqlx::query_as(
                    "SELECT c.relname::text FROM pg_inherits i \
                     JOIN pg_class c ON c.oid = i.inhrelid \
                     JOIN pg_class t ON t.oid = i.inhparent WHERE t.relname = 'trace_spans'",
                )
                .fetch_all(p)
                .await?;
                let mut dropped = 0;
                for (name,) in parts {
                    let Some(day) = partition_day(&name) else {
                        continue;
                    };
                    if (day + 1) * DAY_NS <= before_ns {
                        // The name is ours (checked digits), never input.
                        let mut tx = p.begin().await?;
                        sqlx::query("SET LOCAL lock_timeout = 5000")
                            .execute(&mut *tx)
                            .await?;
                        sqlx::query(&format!("DROP TABLE IF EXISTS {}", partition_name(day)))
                            .execute(&mut *tx)
                            .await?;
                        tx.commit().await?;
                        self.partitions
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .remove(&day);
                        dropped += 1;
                    }
                }
                dropped
            }
            Db::Sqlite(p) => sqlx::query("DELETE FROM trace_spans WHERE start_ns < $1")
                .bind(before_ns)
                .execute(p)
                .await?
                .rows_affected(),
        };
        on_pool!(&self.db, |p| {
            sqlx::query("DELETE FROM trace_operations WHERE last_seen_ns < $1")
                .bind(before_ns)
                .execute(p)
                .await
                .map(|_| ())
        })?;
        Ok(n)
    }

    /// The Postgres partitions that exist (days), for tests and operators.
    pub async fn partition_days(&self) -> Result<Vec<i64>, DbError> {
        let Db::Postgres(p) = &self.db else {
            return Ok(Vec::new());
        };
        let parts: Vec<(String,)> = sqlx::query_as(
            "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
             JOIN pg_class t ON t.oid = i.inhparent WHERE t.relname = 'trace_spans'",
        )
        .fetch_all(p)
        .await?;
        let mut days: Vec<i64> = parts.iter().filter_map(|(n,)| partition_day(n)).collect();
        days.sort_unstable();
        Ok(days)
    }
}

/// Rows as columns, for `UNNEST` (borrowed: nothing is copied).
struct Columns<'a> {
    tenant: Vec<&'a str>,
    trace_id: Vec<&'a [u8]>,
    span_id: Vec<&'a [u8]>,
    parent: Vec<Option<&'a [u8]>>,
    service: Vec<&'a str>,
    principal: Vec<&'a str>,
    name: Vec<&'a str>,
    kind: Vec<i16>,
    start: Vec<i64>,
    duration: Vec<i64>,
    status: Vec<i16>,
    tags: Vec<&'a str>,
    span: Vec<&'a [u8]>,
    resource: Vec<&'a [u8]>,
    scope: Vec<&'a [u8]>,
}

impl<'a> Columns<'a> {
    fn new(rows: &[&'a SpanRow]) -> Columns<'a> {
        Columns {
            tenant: rows.iter().map(|r| r.tenant.as_str()).collect(),
            trace_id: rows.iter().map(|r| r.trace_id.as_slice()).collect(),
            span_id: rows.iter().map(|r| r.span_id.as_slice()).collect(),
            parent: rows.iter().map(|r| r.parent_span_id.as_deref()).collect(),
            service: rows.iter().map(|r| r.service.as_str()).collect(),
            principal: rows.iter().map(|r| r.principal.as_str()).collect(),
            name: rows.iter().map(|r| r.name.as_str()).collect(),
            kind: rows.iter().map(|r| r.kind).collect(),
            start: rows.iter().map(|r| r.start_ns).collect(),
            duration: rows.iter().map(|r| r.duration_ns).collect(),
            status: rows.iter().map(|r| r.status_code).collect(),
            tags: rows.iter().map(|r| r.tags.as_str()).collect(),
            span: rows.iter().map(|r| r.span.as_slice()).collect(),
            resource: rows.iter().map(|r| r.resource.as_slice()).collect(),
            scope: rows.iter().map(|r| r.scope.as_slice()).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_names_round_trip() {
        assert_eq!(partition_name(0), "trace_spans_19700101");
        let day = days_from_civil(2026, 12, 5);
        assert_eq!(partition_name(day), "trace_spans_20261205");
        assert_eq!(partition_day("trace_spans_20261205"), Some(day));
        assert_eq!(partition_day("trace_spans_2026120"), None);
        assert_eq!(partition_day("other_20261205"), None);
        for d in [-1000, 0, 59, 60, 20_000, 20_427] {
            assert_eq!(partition_day(&partition_name(d)), Some(d));
        }
    }
}
