//! An index across several identity policies (everything attached to one principal), so a
//! decision looks the request's action up once instead of once per policy. Profiling showed
//! the per-policy lookups, on cold memory, to be most of a decision's cost.

use std::collections::HashMap;
use std::sync::Arc;

use crate::document::{Policy, Statement};

/// (policy position, statement position).
type Slot = (u32, u32);

/// The merged statement index of a principal's identity policies.
#[derive(Debug, Default)]
pub struct IdentityIndex {
    pub(crate) policies: Vec<(String, u32, Arc<Policy>)>,
    by_action: HashMap<String, Vec<Slot>>,
    by_service: HashMap<String, Vec<Slot>>,
    any_service: Vec<Slot>,
}

impl IdentityIndex {
    /// Indexes `policies` (name, version, policy), in order; evaluation reports matches in the
    /// same order as scanning them one by one would.
    pub fn new(policies: Vec<(String, u32, Arc<Policy>)>) -> IdentityIndex {
        let mut ix = IdentityIndex::default();
        for (p, (_, _, policy)) in policies.iter().enumerate() {
            let p = p as u32;
            let slot = |i: &usize| (p, *i as u32);
            for (k, list) in &policy.by_action {
                ix.by_action
                    .entry(k.clone())
                    .or_default()
                    .extend(list.iter().map(slot));
            }
            for (k, list) in &policy.by_service {
                ix.by_service
                    .entry(k.clone())
                    .or_default()
                    .extend(list.iter().map(slot));
            }
            ix.any_service.extend(policy.any_service.iter().map(slot));
        }
        // Entries were appended policy by policy, each list in statement order: already sorted.
        ix.policies = policies;
        ix
    }

    /// Candidate statements for a lowercase action of a service, in (policy, statement) order.
    pub(crate) fn candidates<'a>(
        &'a self,
        action: &str,
        service: &str,
    ) -> impl Iterator<Item = (&'a (String, u32, Arc<Policy>), &'a Statement)> + 'a {
        let none: &[Slot] = &[];
        let lists = [
            self.by_action.get(action).map_or(none, Vec::as_slice),
            self.by_service.get(service).map_or(none, Vec::as_slice),
            self.any_service.as_slice(),
        ];
        crate::document::merge3(lists).map(move |(p, s)| {
            let entry = &self.policies[p as usize];
            (entry, &entry.2.statements[s as usize])
        })
    }
}
