//! `capstan-bench policy`: one tenant with 1,000 principals, 50 groups and 100,000 statements;
//! the same requests decided in-process by Capstan (the real `PolicyService::decide` path over a
//! compiled snapshot), by a flat casbin-rs model and by cedar-policy, in one run.

use capstan_policy::store::{AttachmentStore, GroupStore, PolicyVersions, SnapshotSource};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use capstan_auth::model::Tenant;
use capstan_auth::store::{SqlStore, TenantStore};
use capstan_core::clock::{Clock, SystemClock};
use capstan_core::ids::TenantId;
use capstan_core::jwt::Alg;
use capstan_iam::Context;
use capstan_policy::service::Subject;
use capstan_policy::{PolicyConfig, PolicyService};
use capstan_tests::db::TestDatabase;
use serde_json::{json, Value};

pub const PRINCIPALS: usize = 1_000;
pub const GROUPS: usize = 50;
const SERVICES: usize = 20;
const PER_PRINCIPAL: usize = 80;
const PER_GROUP: usize = 400;

/// A tiny deterministic generator, so every engine sees the same data in every run.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) as usize
    }
}

/// One statement, engine-neutral.
#[derive(Clone)]
pub struct Stmt {
    pub allow: bool,
    pub action: String,
    pub resource: String,
    pub env: Option<&'static str>,
}

/// The synthetic tenant.
pub struct Dataset {
    pub principal_policies: Vec<Vec<Stmt>>,
    pub group_policies: Vec<Vec<Stmt>>,
    pub memberships: Vec<(usize, usize)>,
    pub requests: Vec<Req>,
}

/// One request.
#[derive(Clone)]
pub struct Req {
    pub principal: usize,
    pub action: String,
    pub resource: String,
    pub env: &'static str,
}

pub fn principal_id(i: usize) -> String {
    format!("svc_p{i}")
}

fn stmt(rng: &mut Lcg, prefix: &str, j: usize) -> Stmt {
    let k = rng.next() % SERVICES;
    Stmt {
        allow: !rng.next().is_multiple_of(10),
        action: format!("s{k}:Action{}", j % 10),
        resource: format!("crn:capstan:s{k}:default:{prefix}/{j}/*"),
        env: j.is_multiple_of(5).then_some("prod"),
    }
}

pub fn dataset(requests: usize) -> Dataset {
    let mut rng = Lcg(42);
    let principal_policies: Vec<Vec<Stmt>> = (0..PRINCIPALS)
        .map(|i| {
            (0..PER_PRINCIPAL)
                .map(|j| stmt(&mut rng, &format!("res/{i}"), j))
                .collect()
        })
        .collect();
    let group_policies: Vec<Vec<Stmt>> = (0..GROUPS)
        .map(|g| {
            (0..PER_GROUP)
                .map(|j| stmt(&mut rng, &format!("shared/g{g}"), j))
                .collect()
        })
        .collect();
    let memberships: Vec<(usize, usize)> = (0..PRINCIPALS)
        .flat_map(|i| [(i, i % GROUPS), (i, (i * 7 + 3) % GROUPS)])
        .collect();
    let reqs = (0..requests)
        .map(|_| {
            let p = rng.next() % PRINCIPALS;
            // Half the requests aim at a statement of the principal or one of its groups (so
            // both allows and denies happen), half at something nobody granted.
            let (action, resource) = match rng.next() % 4 {
                0 | 1 => {
                    let s = &principal_policies[p][rng.next() % PER_PRINCIPAL];
                    (s.action.clone(), s.resource.replace('*', "item"))
                }
                2 => {
                    let g = if rng.next().is_multiple_of(2) {
                        p % GROUPS
                    } else {
                        (p * 7 + 3) % GROUPS
                    };
                    let s = &group_policies[g][rng.next() % PER_GROUP];
                    (s.action.clone(), s.resource.replace('*', "item"))
                }
                _ => (
                    format!("s{}:Action{}", rng.next() % SERVICES, rng.next() % 10),
                    format!("crn:capstan:s1:default:other/{}", rng.next()),
                ),
            };
            Req {
                principal: p,
                action,
                resource,
                env: if rng.next().is_multiple_of(2) {
                    "prod"
                } else {
                    "dev"
                },
            }
        })
        .collect();
    Dataset {
        principal_policies,
        group_policies,
        memberships,
        requests: reqs,
    }
}

pub fn statements(d: &Dataset) -> usize {
    d.principal_policies
        .iter()
        .chain(&d.group_policies)
        .map(Vec::len)
        .sum()
}

/// Statements per policy document, so every document stays within the default limits
/// (6,144 non-whitespace characters, as in AWS).
pub const CHUNK: usize = 40;

/// The policy documents (name suffix, document) that hold `stmts`.
pub fn documents(stmts: &[Stmt]) -> Vec<(usize, Value)> {
    stmts.chunks(CHUNK).map(iam_document).enumerate().collect()
}

/// An IAM document for a list of statements.
pub fn iam_document(stmts: &[Stmt]) -> Value {
    let list: Vec<Value> = stmts
        .iter()
        .map(|s| {
            let mut v = json!({"Effect": if s.allow { "Allow" } else { "Deny" }, "Action": s.action, "Resource": s.resource});
            if let Some(env) = s.env {
                v["Condition"] = json!({"StringEquals": {"env": env}});
            }
            v
        })
        .collect();
    json!({"Version": "2012-10-17", "Statement": list})
}

/// Latency statistics in microseconds.
pub struct Lat {
    pub n: usize,
    pub p50: f64,
    pub p99: f64,
    pub mean: f64,
    pub allows: usize,
}

fn lat(mut us: Vec<f64>, allows: usize) -> Lat {
    us.sort_by(|a, b| a.total_cmp(b));
    let pick = |p: f64| {
        us.get(((us.len() as f64 - 1.0) * p).round() as usize)
            .copied()
            .unwrap_or(0.0)
    };
    Lat {
        n: us.len(),
        p50: pick(0.5),
        p99: pick(0.99),
        mean: us.iter().sum::<f64>() / us.len().max(1) as f64,
        allows,
    }
}

/// Writes the synthetic tenant (policies within the default limits, attachments, groups,
/// members) into the `default` tenant of `db`.
pub async fn store_tenant(db: &capstan_db::Db, d: &Dataset) -> Result<(), String> {
    let store = capstan_policy::store::SqlPolicyStore::new(db.clone());
    let now = SystemClock.now();
    let e = |e: capstan_db::DbError| e.to_string();
    let limits = capstan_iam::Limits::default();
    let check = |doc: &str| {
        capstan_iam::Policy::parse(doc, capstan_iam::PolicyKind::Identity, &limits)
            .map(|_| ())
            .map_err(|e| format!("benchmark document over the limits: {e:?}"))
    };
    for (i, stmts) in d.principal_policies.iter().enumerate() {
        for (c, doc) in documents(stmts) {
            let (name, doc) = (format!("P{i}-{c}"), doc.to_string());
            check(&doc)?;
            store
                .put_version("default", &name, &doc, now)
                .await
                .map_err(e)?;
            store
                .attach("default", "principal", &principal_id(i), &name, 0)
                .await
                .map_err(e)?;
        }
    }
    for (g, stmts) in d.group_policies.iter().enumerate() {
        store
            .put_group("default", &format!("g{g}"), now)
            .await
            .map_err(e)?;
        for (c, doc) in documents(stmts) {
            let (name, doc) = (format!("G{g}-{c}"), doc.to_string());
            check(&doc)?;
            store
                .put_version("default", &name, &doc, now)
                .await
                .map_err(e)?;
            store
                .attach("default", "group", &format!("g{g}"), &name, 0)
                .await
                .map_err(e)?;
        }
    }
    for (p, g) in &d.memberships {
        store
            .add_member("default", &format!("g{g}"), &principal_id(*p), 0)
            .await
            .map_err(e)?;
    }
    store.bump_revision("default").await.map_err(e)?;
    Ok(())
}

/// Capstan in-process: the service's own decision path (snapshot lookup, applicable policies,
/// evaluation, decision log), on a fresh SQLite database.
/// Capstan's in-process figures.
pub struct InProcess {
    /// First decision of every request (index builds included).
    pub cold: Lat,
    /// Steady state, without the decision log.
    pub engine: Lat,
    /// Steady state, with the decision log.
    pub logged: Lat,
    /// Loading and compiling the snapshot.
    pub compile: Duration,
}

pub async fn capstan_in_process(d: &Dataset) -> Result<InProcess, String> {
    let t = TestDatabase::sqlite().await.map_err(|e| e.to_string())?;
    let tenant = TenantId::default_tenant();
    SqlStore::new(t.db.clone())
        .create_tenant(&Tenant {
            id: tenant.clone(),
            signing_alg: Alg::ES256,
            created_at: 0,
        })
        .await
        .map_err(|e| e.to_string())?;
    let svc = Arc::new(PolicyService::new(
        Arc::new(capstan_policy::store::SqlPolicyStore::new(t.db.clone())),
        Arc::new(SystemClock),
        PolicyConfig::default(),
    ));
    store_tenant(&t.db, d).await?;
    eprintln!("capstan: tenant stored");
    let _tasks = svc.start().await.map_err(|e| e.to_string())?;
    // The first decision loads and compiles the snapshot.
    let load = Instant::now();
    let subject = Subject {
        principal: principal_id(0),
        ..Default::default()
    };
    svc.decide(
        &tenant,
        &subject,
        "s0:Action0",
        "crn:capstan:s0:default:x",
        None,
    )
    .await
    .map_err(|e| e.to_string())?;
    let compile = load.elapsed();
    let contexts: HashMap<&str, Context> = ["prod", "dev"]
        .into_iter()
        .map(|e| (e, Context::new().with("env", [e])))
        .collect();
    let subjects: Vec<Subject> = (0..PRINCIPALS)
        .map(|i| Subject {
            principal: principal_id(i),
            ..Default::default()
        })
        .collect();
    // First touch: each principal's identity index is built on its first decision (once per
    // principal per snapshot), then the steady state: the engine alone, then the logged path.
    let pass = |logged: bool| measure(&svc, &tenant, &subjects, &contexts, d, logged);
    let (cold, _) = pass(false).await?;
    let (engine, allows) = pass(false).await?;
    let (logged, logged_allows) = pass(true).await?;
    svc.flush_decisions().await;
    t.cleanup().await;
    Ok(InProcess {
        cold: lat(cold, 0),
        engine: lat(engine, allows),
        logged: lat(logged, logged_allows),
        compile,
    })
}

/// One timed pass over every request: the engine alone, or the logged path. Returns the
/// latencies in µs and the number of allows.
async fn measure(
    svc: &PolicyService,
    tenant: &TenantId,
    subjects: &[Subject],
    contexts: &HashMap<&str, Context>,
    d: &Dataset,
    logged: bool,
) -> Result<(Vec<f64>, usize), String> {
    let mut us = Vec::with_capacity(d.requests.len());
    let mut allows = 0;
    for r in &d.requests {
        let (subject, ctx) = (&subjects[r.principal], contexts.get(r.env));
        let t0 = Instant::now();
        let o = if logged {
            svc.decide(tenant, subject, &r.action, &r.resource, ctx)
                .await
                .map(|(o, _)| o)
        } else {
            svc.decide_unlogged(tenant, subject, &r.action, &r.resource, ctx)
                .await
        }
        .map_err(|e| e.to_string())?;
        us.push(t0.elapsed().as_secs_f64() * 1e6);
        allows += usize::from(o.decision == capstan_iam::Decision::Allow);
    }
    Ok((us, allows))
}

const CASBIN_MODEL: &str = r#"
[request_definition]
r = sub, obj, act

[policy_definition]
p = sub, obj, act, eft

[role_definition]
g = _, _

[policy_effect]
e = some(where (p.eft == allow)) && !some(where (p.eft == deny))

[matchers]
m = g(r.sub, p.sub) && keyMatch(r.obj, p.obj) && r.act == p.act
"#;

/// A flat casbin-rs model holding the same rules (conditions dropped: its expression engine
/// cannot say them); every rule is scanned per request.
pub async fn casbin_flat(d: &Dataset, sample: usize) -> Result<Lat, String> {
    use casbin::{CoreApi, DefaultModel, Enforcer, MemoryAdapter, MgmtApi};
    let m = DefaultModel::from_str(CASBIN_MODEL)
        .await
        .map_err(|e| e.to_string())?;
    let mut e = Enforcer::new(m, MemoryAdapter::default())
        .await
        .map_err(|e| e.to_string())?;
    let rule = |sub: String, s: &Stmt| {
        vec![
            sub,
            s.resource.clone(),
            s.action.clone(),
            if s.allow { "allow" } else { "deny" }.to_string(),
        ]
    };
    let mut rules: Vec<Vec<String>> = Vec::with_capacity(statements(d));
    for (i, stmts) in d.principal_policies.iter().enumerate() {
        rules.extend(stmts.iter().map(|s| rule(principal_id(i), s)));
    }
    for (g, stmts) in d.group_policies.iter().enumerate() {
        rules.extend(stmts.iter().map(|s| rule(format!("g{g}"), s)));
    }
    let t0 = Instant::now();
    e.add_policies(rules).await.map_err(|e| e.to_string())?;
    eprintln!("casbin: rules added in {:.1} s", t0.elapsed().as_secs_f64());
    let groups: Vec<Vec<String>> = d
        .memberships
        .iter()
        .map(|(p, g)| vec![principal_id(*p), format!("g{g}")])
        .collect();
    e.add_grouping_policies(groups)
        .await
        .map_err(|e| e.to_string())?;
    let mut us = Vec::new();
    let mut allows = 0;
    for r in d.requests.iter().take(sample) {
        let t0 = Instant::now();
        let ok = e
            .enforce((
                principal_id(r.principal),
                r.resource.clone(),
                r.action.clone(),
            ))
            .map_err(|e| e.to_string())?;
        us.push(t0.elapsed().as_secs_f64() * 1e6);
        allows += usize::from(ok);
    }
    Ok(lat(us, allows))
}

/// cedar-policy with the same policies (one Cedar policy per statement) and entities.
pub fn cedar(d: &Dataset, sample: usize) -> Result<(Lat, Duration), String> {
    use cedar_policy::{
        Authorizer, Context as CContext, Decision, Entities, EntityUid, PolicySet, Request,
    };
    use std::str::FromStr;
    let mut text = String::with_capacity(statements(d) * 160);
    let mut push = |principal: String, s: &Stmt| {
        let effect = if s.allow { "permit" } else { "forbid" };
        let env = s
            .env
            .map(|e| format!(" && context.env == \"{e}\""))
            .unwrap_or_default();
        text.push_str(&format!(
            "{effect}(principal {principal}, action == Action::\"{}\", resource) when {{ resource.path like \"{}\"{env} }};\n",
            s.action, s.resource
        ));
    };
    for (i, stmts) in d.principal_policies.iter().enumerate() {
        for s in stmts {
            push(format!("== Svc::\"{}\"", principal_id(i)), s);
        }
    }
    for (g, stmts) in d.group_policies.iter().enumerate() {
        for s in stmts {
            push(format!("in Group::\"g{g}\""), s);
        }
    }
    let parse = Instant::now();
    let policies = PolicySet::from_str(&text).map_err(|e| e.to_string())?;
    let parse = parse.elapsed();
    eprintln!("cedar: policy set parsed in {:.1} s", parse.as_secs_f64());
    let mut entities: Vec<Value> = (0..PRINCIPALS)
        .map(|i| {
            let parents: Vec<Value> = d
                .memberships
                .iter()
                .filter(|(p, _)| *p == i)
                .map(|(_, g)| json!({"type": "Group", "id": format!("g{g}")}))
                .collect();
            json!({"uid": {"type": "Svc", "id": principal_id(i)}, "attrs": {}, "parents": parents})
        })
        .collect();
    entities.extend((0..GROUPS).map(
        |g| json!({"uid": {"type": "Group", "id": format!("g{g}")}, "attrs": {}, "parents": []}),
    ));
    let reqs: Vec<&Req> = d.requests.iter().take(sample).collect();
    entities.extend(reqs.iter().enumerate().map(|(n, r)| json!({"uid": {"type": "Res", "id": format!("r{n}")}, "attrs": {"path": r.resource}, "parents": []})));
    let entities =
        Entities::from_json_value(Value::Array(entities), None).map_err(|e| e.to_string())?;
    let authorizer = Authorizer::new();
    let mut us = Vec::new();
    let mut allows = 0;
    for (n, r) in reqs.iter().enumerate() {
        let uid = |s: String| EntityUid::from_str(&s).map_err(|e| e.to_string());
        let request = Request::new(
            uid(format!("Svc::\"{}\"", principal_id(r.principal)))?,
            uid(format!("Action::\"{}\"", r.action))?,
            uid(format!("Res::\"r{n}\""))?,
            CContext::from_json_value(json!({"env": r.env}), None).map_err(|e| e.to_string())?,
            None,
        )
        .map_err(|e| e.to_string())?;
        let t0 = Instant::now();
        let resp = authorizer.is_authorized(&request, &policies, &entities);
        us.push(t0.elapsed().as_secs_f64() * 1e6);
        allows += usize::from(resp.decision() == Decision::Allow);
    }
    Ok((lat(us, allows), parse))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_dataset_has_the_promised_size_and_is_deterministic() {
        let a = super::dataset(100);
        assert_eq!(super::statements(&a), 100_000);
        assert_eq!(a.memberships.len(), 2 * super::PRINCIPALS);
        let b = super::dataset(100);
        let key = |d: &super::Dataset| {
            d.requests
                .iter()
                .map(|r| (r.principal, r.action.clone(), r.resource.clone()))
                .collect::<Vec<_>>()
        };
        assert_eq!(key(&a), key(&b));
        // Every document is valid Capstan IAM within the default limits.
        let limits = capstan_iam::Limits::default();
        for stmts in a.principal_policies.iter().chain(&a.group_policies) {
            for (_, doc) in super::documents(stmts) {
                let r = capstan_iam::Policy::parse(
                    &doc.to_string(),
                    capstan_iam::PolicyKind::Identity,
                    &limits,
                );
                assert!(r.is_ok(), "{r:?}");
            }
        }
    }
}
