//! The authorization API: `/v1/authorize`, its batch form, and the decision log.

use capstan_core::trace_context;
use serde::Deserialize;

use super::*;

/// The longest action or resource a request may name: longer ones cost matching time and log
/// space and name nothing Capstan stores.
const MAX_NAME_BYTES: usize = 2048;

/// The query of `GET /v1/decisions`: which decisions to list.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct DecisionQuery {
    /// Only this principal's.
    pub principal: Option<String>,
    /// Only `Allow` or `Deny`.
    pub decision: Option<String>,
    /// Only those made at or after this time (Unix seconds).
    pub since: Option<i64>,
    /// Only those after this `seq`, oldest first.
    pub after: Option<i64>,
    /// Only those made for requests of this trace (32 hex digits).
    pub trace_id: Option<String>,
    /// At most this many (1-1000, default 100).
    pub limit: Option<i64>,
}

impl PolicyService {
    async fn subject_of(
        &self,
        verifier: &dyn TokenVerifier,
        caller: &Caller,
        req: &AuthorizeRequest,
    ) -> Result<Subject, PolicyError> {
        match (&req.principal, &req.token) {
            (Some(p), None) => Ok(Subject {
                principal: principal_id(p)?.to_string(),
                ..Default::default()
            }),
            (None, Some(t)) => {
                let v = verifier.verify_access_token(t).await.map_err(|e| match e {
                    VerifyError::Invalid(e) => {
                        PolicyError::BadRequest(format!("token is not valid: {e}"))
                    }
                    VerifyError::Unavailable => PolicyError::Guard(GuardError::Unavailable),
                    VerifyError::Internal => PolicyError::Guard(GuardError::Internal),
                })?;
                if v.tenant != caller.tenant {
                    return Err(PolicyError::BadRequest(
                        "the token belongs to another tenant".into(),
                    ));
                }
                // A certificate-bound token proves nothing without its certificate, which this
                // request cannot show: the resource server checks the binding (introspection
                // returns `cnf`) and asks by `principal`.
                if v.bound_to.is_some() {
                    return Err(PolicyError::BadRequest(
                        "the token is bound to a client certificate (RFC 8705): check the binding, then ask with principal".into(),
                    ));
                }
                Ok(Subject {
                    principal: v.principal.to_string(),
                    client_id: Some(v.client_id),
                    scopes: Some(v.scopes),
                    ..Default::default()
                })
            }
            _ => Err(PolicyError::BadRequest(
                "give exactly one of principal and token".into(),
            )),
        }
    }

    /// The subject and context of an authorization request, checked.
    pub(crate) async fn prepare(
        &self,
        verifier: &dyn TokenVerifier,
        caller: &Caller,
        req: &AuthorizeRequest,
    ) -> Result<(Subject, Context), PolicyError> {
        for (field, value) in [("action", &req.action), ("resource", &req.resource)] {
            if value.len() > MAX_NAME_BYTES || value.chars().any(char::is_control) {
                return Err(PolicyError::BadRequest(format!(
                    "{field}: at most {MAX_NAME_BYTES} bytes, without control characters"
                )));
            }
        }
        let subject = self.subject_of(verifier, caller, req).await?;
        if !req.action.contains(':') {
            return Err(PolicyError::BadRequest(format!(
                "action {:?} must be <service>:<Action>",
                req.action
            )));
        }
        let mut ctx = Context::new();
        for (k, v) in req.context.iter().flatten() {
            if k.to_ascii_lowercase().starts_with("capstan:") {
                return Err(PolicyError::BadRequest(format!(
                    "context key {k:?}: capstan:* keys are set by Capstan"
                )));
            }
            match v {
                ContextValue::One(s) => ctx.set(k, [s.as_str()]),
                ContextValue::Many(list) => ctx.set(k, list.iter().map(String::as_str)),
            }
        }
        Ok((subject, ctx))
    }

    async fn authorize_one(
        &self,
        verifier: &dyn TokenVerifier,
        caller: &Caller,
        req: &AuthorizeRequest,
    ) -> Result<AuthorizeResponse, PolicyError> {
        let (mut subject, ctx) = self.prepare(verifier, caller, req).await?;
        // The decision is made for the subject, in the trace of the request that asked.
        subject.trace_id = caller.trace_id.clone();
        let (o, rev) = self
            .decide(
                &caller.tenant,
                &subject,
                &req.action,
                &req.resource,
                Some(&ctx),
            )
            .await?;
        Ok(outcome_view(o, rev))
    }

    pub(crate) async fn guard_simulate(&self, caller: &Caller) -> Result<(), PolicyError> {
        self.guard(caller, "policy:Simulate", "simulation").await
    }

    /// `POST /v1/authorize`.
    pub async fn authorize_api(
        &self,
        verifier: &dyn TokenVerifier,
        caller: &Caller,
        req: AuthorizeRequest,
    ) -> Result<AuthorizeResponse, PolicyError> {
        self.guard(caller, "policy:Authorize", "authorizer").await?;
        self.authorize_one(verifier, caller, &req).await
    }

    /// `POST /v1/authorize:batch`.
    pub async fn authorize_batch(
        &self,
        verifier: &dyn TokenVerifier,
        caller: &Caller,
        req: BatchRequest,
    ) -> Result<BatchResponse, PolicyError> {
        self.guard(caller, "policy:Authorize", "authorizer").await?;
        if req.requests.is_empty() || req.requests.len() > MAX_BATCH {
            return Err(PolicyError::BadRequest(format!(
                "requests: 1 to {MAX_BATCH} entries"
            )));
        }
        let mut decisions = Vec::with_capacity(req.requests.len());
        for (i, r) in req.requests.iter().enumerate() {
            let d = self
                .authorize_one(verifier, caller, r)
                .await
                .map_err(|e| match e {
                    PolicyError::BadRequest(m) => {
                        PolicyError::BadRequest(format!("requests[{i}]: {m}"))
                    }
                    other => other,
                })?;
            decisions.push(d);
        }
        Ok(BatchResponse { decisions })
    }

    /// `GET /v1/decisions`.
    pub async fn list_decisions(
        &self,
        caller: &Caller,
        q: &DecisionQuery,
    ) -> Result<Vec<DecisionView>, PolicyError> {
        self.guard(caller, "policy:ListDecisions", "decision/*")
            .await?;
        let decision = q.decision.as_deref();
        if let Some(d) = decision {
            if d != "Allow" && d != "Deny" {
                return Err(PolicyError::BadRequest(
                    "decision must be Allow or Deny".into(),
                ));
            }
        }
        // Trace ids are lowercase on the wire; one pasted from a viewer that shows them in
        // uppercase means the same trace.
        let trace_id = q.trace_id.as_deref().map(str::to_ascii_lowercase);
        if let (Some(given), Some(t)) = (&q.trace_id, &trace_id) {
            if !trace_context::is_trace_id(t) {
                return Err(PolicyError::BadRequest(format!(
                    "trace_id {given:?} is not a W3C trace id: 32 hex digits, not all zero"
                )));
            }
        }
        let limit = q.limit.unwrap_or(100);
        if !(1..=MAX_DECISIONS).contains(&limit) {
            return Err(PolicyError::BadRequest(format!(
                "limit must be between 1 and {MAX_DECISIONS}"
            )));
        }
        self.flush_decisions().await;
        let rows = self
            .store
            .list_decisions(
                caller.tenant.as_str(),
                &crate::store::DecisionFilter {
                    principal: q.principal.as_deref(),
                    decision,
                    since: q.since,
                    after: q.after,
                    trace_id: trace_id.as_deref(),
                    limit,
                },
            )
            .await?;
        Ok(rows
            .into_iter()
            .map(|(seq, r)| {
                let ctx: Value = serde_json::from_str(&r.context).unwrap_or(Value::Null);
                DecisionView {
                    seq,
                    principal: r.principal,
                    action: r.action,
                    resource: r.resource,
                    decision: r.decision,
                    reason: r.reason,
                    policy_revision: r.policy_revision,
                    matched: ctx.get("matched").cloned().unwrap_or(Value::Array(vec![])),
                    at: r.at,
                    trace_id: r.trace_id,
                }
            })
            .collect())
    }
}
