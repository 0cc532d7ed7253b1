//! The decision log over Postgres and SQLite: batched inserts (one multi-row `INSERT`),
//! filtered reads, pruning by age.

use async_trait::async_trait;
use capstan_db::{on_pool, DbError};

use super::{DecisionFilter, DecisionLog, DecisionRecord};
use crate::store::SqlPolicyStore;

#[async_trait]
impl DecisionLog for SqlPolicyStore {
    /// Appends decisions in one statement.
    async fn insert_decisions(&self, batch: &[DecisionRecord]) -> Result<(), DbError> {
        if batch.is_empty() {
            return Ok(());
        }
        on_pool!(&self.db, |p| {
            let mut qb = sqlx::QueryBuilder::new(
                "INSERT INTO policy_decisions (tenant, principal, action, resource, decision, reason, policy_revision, context, at, trace_id) ",
            );
            qb.push_values(batch, |mut b, r| {
                b.push_bind(&r.tenant)
                    .push_bind(&r.principal)
                    .push_bind(&r.action)
                    .push_bind(&r.resource)
                    .push_bind(&r.decision)
                    .push_bind(&r.reason)
                    .push_bind(r.policy_revision)
                    .push_bind(&r.context)
                    .push_bind(r.at)
                    .push_bind(&r.trace_id);
            });
            qb.build().execute(p).await.map(|r| r.rows_affected())
        })?;
        Ok(())
    }

    /// A tenant's decisions: newest first, or oldest after `filter.after` first.
    async fn list_decisions(
        &self,
        tenant: &str,
        f: &DecisionFilter<'_>,
    ) -> Result<Vec<(i64, DecisionRecord)>, DbError> {
        type Row = (
            i64,
            String,
            String,
            String,
            String,
            String,
            String,
            i64,
            String,
            i64,
            Option<String>,
        );
        let order = if f.after.is_some() { "ASC" } else { "DESC" };
        // A trace lookup is a plain equality, so the (tenant, trace_id) index serves it; an
        // `$7 IS NULL OR …` form would leave a generic plan without it.
        let by_trace = if f.trace_id.is_some() {
            "AND trace_id = $7"
        } else {
            ""
        };
        let sql = format!(
            "SELECT seq, tenant, principal, action, resource, decision, reason, policy_revision, context, at, trace_id \
             FROM policy_decisions WHERE tenant = $1 AND ($2 IS NULL OR principal = $2) \
             AND ($3 IS NULL OR decision = $3) AND ($4 IS NULL OR at >= $4) \
             AND ($5 IS NULL OR seq > $5) {by_trace} ORDER BY seq {order} LIMIT $6"
        );
        let rows: Vec<Row> = on_pool!(&self.db, |p| {
            let mut q = sqlx::query_as(&sql)
                .bind(tenant)
                .bind(f.principal)
                .bind(f.decision)
                .bind(f.since)
                .bind(f.after)
                .bind(f.limit);
            if let Some(t) = f.trace_id {
                q = q.bind(t);
            }
            q.fetch_all(p).await
        })?;
        Ok(rows
            .into_iter()
            .map(
                |(
                    seq,
                    tenant,
                    principal,
                    action,
                    resource,
                    decision,
                    reason,
                    policy_revision,
                    context,
                    at,
                    trace_id,
                )| {
                    (
                        seq,
                        DecisionRecord {
                            tenant,
                            principal,
                            action,
                            resource,
                            decision,
                            reason,
                            policy_revision,
                            context,
                            at,
                            trace_id,
                        },
                    )
                },
            )
            .collect())
    }

    /// Drops decisions older than `before`.
    async fn prune_decisions(&self, before: i64) -> Result<u64, DbError> {
        Ok(on_pool!(&self.db, |p| {
            sqlx::query("DELETE FROM policy_decisions WHERE at < $1")
                .bind(before)
                .execute(p)
                .await
                .map(|r| r.rows_affected())
        })?)
    }
}
