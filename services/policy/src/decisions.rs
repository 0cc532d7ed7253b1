//! The decision log: every decision is queued on a bounded channel and one task writes them in
//! batches (one multi-row `INSERT`); a full queue drops and counts, never blocks a decision.

use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};

use capstan_core::ids::TenantId;
use capstan_iam::{Decision, Outcome};

use crate::error::PolicyError;
use crate::service::{PolicyService, Subject};
use crate::store::DecisionRecord;

/// What the decision-log writer receives.
pub(crate) enum LogMsg {
    Record(DecisionRecord),
    /// Answered once everything sent before it is written.
    Flush(tokio::sync::oneshot::Sender<()>),
}

impl PolicyService {
    pub(crate) fn record(
        &self,
        tenant: &TenantId,
        subject: &Subject,
        action: &str,
        resource: &str,
        o: &Outcome,
        revision: i64,
    ) {
        let matched: Vec<serde_json::Value> = o
            .matched
            .iter()
            .map(|m| serde_json::json!({"policy": m.policy, "version": m.version, "sid": m.sid}))
            .collect();
        let rec = DecisionRecord {
            tenant: tenant.to_string(),
            principal: subject.principal.clone(),
            action: action.to_owned(),
            resource: resource.to_owned(),
            decision: if o.decision == Decision::Allow {
                "Allow"
            } else {
                "Deny"
            }
            .to_owned(),
            reason: o.reason.as_str().to_owned(),
            policy_revision: revision,
            context: serde_json::json!({ "matched": matched }).to_string(),
            at: self.clock.now(),
            trace_id: subject.trace_id.clone(),
        };
        if self.log.try_send(LogMsg::Record(rec)).is_err() {
            self.dropped_decisions.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Starts the decision-log writer. Changes reach [`PolicyService::on_change`] through the
    /// server's change feed.
    pub async fn start(self: &Arc<Self>) -> Result<Vec<tokio::task::JoinHandle<()>>, PolicyError> {
        let mut tasks = Vec::new();
        let rx = self
            .log_rx
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(mut rx) = rx {
            let store = self.store.clone();
            let me = Arc::clone(self);
            tasks.push(tokio::spawn(async move {
                let mut msgs = Vec::with_capacity(512);
                let mut batch = Vec::with_capacity(512);
                while rx.recv_many(&mut msgs, 512).await > 0 {
                    let mut flushes = Vec::new();
                    for m in msgs.drain(..) {
                        match m {
                            LogMsg::Record(r) => batch.push(r),
                            LogMsg::Flush(done) => flushes.push(done),
                        }
                    }
                    if let Err(e) = store.insert_decisions(&batch).await {
                        // One bad row must not erase the others: write them one by one.
                        tracing::warn!(error = %e, rows = batch.len(), "decision batch failed; writing rows one by one");
                        for row in batch.chunks(1) {
                            if let Err(e) = store.insert_decisions(row).await {
                                me.dropped_decisions.fetch_add(1, Ordering::Relaxed);
                                tracing::warn!(error = %e, "cannot write a decision");
                            }
                        }
                    }
                    batch.clear();
                    for f in flushes {
                        let _ = f.send(());
                    }
                }
            }));
        }
        Ok(tasks)
    }

    /// Drops decisions older than the retention.
    pub async fn prune_decisions(&self) -> Result<u64, PolicyError> {
        let before = self.clock.now() - self.cfg.decision_retention;
        Ok(self.store.prune_decisions(before).await?)
    }

    /// Waits until every decision logged so far is written (before reading the log, and at
    /// shutdown).
    pub async fn flush_decisions(&self) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self.log.send(LogMsg::Flush(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }
}
