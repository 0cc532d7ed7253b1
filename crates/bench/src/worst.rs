//! The most expensive decision the policy limits allow, measured: a principal at the attachment
//! caps (20 policies of its own, 10 groups of 20), every policy at the document limit with
//! `Action: *` and resource patterns built to make wildcard matching backtrack, and a request
//! naming a 2 KiB resource that none of them matches (so every pattern is tried).

use std::time::{Duration, Instant};

use capstan_iam::{evaluate, Applicable, Context, Limits, Policy, PolicyKind, Request, Source};
use serde_json::json;

/// Policies one decision can read at the caps: 20 + 10 × 20.
const POLICIES: usize = 220;

/// The slowest of `runs` decisions, for two shapes of pattern: many wildcards (`spread`), or one
/// wildcard before a long literal (each tried at every position of the resource).
pub fn measure(runs: usize, spread: bool) -> Result<(Duration, usize), String> {
    let pattern = |i: usize| {
        let mut p = format!("crn:capstan:x:t:{i}");
        if spread {
            // 16 wildcards (the limit) through a run of `a`s ending in a `b` never present.
            for _ in 0..15 {
                p.push('*');
                p.push_str(&"a".repeat(20));
            }
            p.push('*');
        } else {
            p.push('*');
            p.push_str(&"a".repeat(1_000));
        }
        p.push('b');
        p
    };
    let limits = Limits::default();
    let plen = pattern(0).len() + 10;
    let mut policies = Vec::new();
    for n in 0..POLICIES {
        let mut resources = Vec::new();
        let mut size = 0;
        let mut i = 0;
        while size + plen < limits.max_chars - 200 && resources.len() < limits.max_values {
            let p = pattern(n * 1000 + i);
            size += p.len();
            resources.push(p);
            i += 1;
        }
        let doc = json!({"Version": "2012-10-17", "Statement": {"Effect": "Allow",
            "Action": "*", "Resource": resources}});
        let parsed = Policy::parse(&doc.to_string(), PolicyKind::Identity, &limits)
            .map_err(|e| format!("{e:?}"))?;
        policies.push(parsed.policy);
    }
    let resource = format!("crn:capstan:x:t:{}", "a".repeat(2048 - 16));
    let ctx = Context::new();
    let names: Vec<String> = (0..POLICIES).map(|i| format!("p{i}")).collect();
    let sources: Vec<Source> = policies
        .iter()
        .zip(&names)
        .map(|(policy, name)| Source {
            name,
            version: 1,
            policy,
        })
        .collect();
    let applicable = Applicable {
        identity: sources,
        identity_index: None,
        resource: Vec::new(),
        boundary: None,
        guardrails: Vec::new(),
    };
    let mut worst = Duration::ZERO;
    for _ in 0..runs {
        let start = Instant::now();
        let o = evaluate(
            &Request {
                principal: "svc_x",
                action: "x:Get",
                resource: &resource,
                context: &ctx,
            },
            &applicable,
        );
        worst = worst.max(start.elapsed());
        std::hint::black_box(o);
    }
    let patterns = policies.iter().map(|p| p.statements.len()).sum::<usize>();
    Ok((worst, patterns))
}
