//! Policy documents in IAM JSON: parsing, validation (errors with JSON paths, warnings, limits)
//! and compilation into matchers.

use std::collections::{HashMap, HashSet};

use serde_json::{Map, Value};

use crate::condition::{Condition, Operator};
use crate::pattern::{arn_parts, split_outside_variables, Pattern, Syntax};

mod parse;

pub(crate) use parse::compile_resource;
use parse::{depth, Parser};

/// Where a policy is attached, which decides whether `Principal` is allowed (resource policies)
/// or forbidden (identity policies, boundaries, guardrails).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyKind {
    /// Attached to principals or groups; also boundaries and guardrails.
    Identity,
    /// Attached to a resource; statements name principals.
    Resource,
}

/// Counted limits; beyond them a document is refused.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Non-whitespace characters of the document.
    pub max_chars: usize,
    /// Statements per policy.
    pub max_statements: usize,
    /// Values per element (actions, resources, principals, one condition key's values).
    pub max_values: usize,
    /// JSON nesting depth.
    pub max_depth: usize,
    /// Wildcard characters (`*`, `?`) in one value: matching costs grow with them, so a
    /// request's worst case stays small (see docs/BENCHMARKS.md).
    pub max_wildcards: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_chars: 6_144,
            max_statements: 100,
            max_values: 100,
            max_depth: 6,
            max_wildcards: 16,
        }
    }
}

/// A problem found in a document, at a JSON path such as `$.Statement[1].Action`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    /// JSON path.
    pub path: String,
    /// What is wrong, or what to watch out for.
    pub message: String,
}

/// `Allow` or `Deny`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// Grants.
    Allow,
    /// Denies, overriding every allow.
    Deny,
}

/// The policy language version: variables exist only in 2012-10-17.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// `2012-10-17`.
    V2012,
    /// `2008-10-17` (or no `Version`): `${…}` is literal text.
    V2008,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Targets<T> {
    Only(Vec<T>),
    Except(Vec<T>),
}

/// A resource pattern, matched colon part by colon part; variables only in the last part.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum ResourcePattern {
    Any,
    Parts(Vec<Pattern>),
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Principals {
    pub any: bool,
    pub ids: Vec<String>,
}

/// One compiled statement.
#[derive(Debug, Clone, PartialEq)]
pub struct Statement {
    /// `Sid`, or `#<index>` when absent.
    pub sid: String,
    /// The effect.
    pub effect: Effect,
    pub(crate) actions: Targets<Pattern>,
    pub(crate) resources: Targets<ResourcePattern>,
    pub(crate) principals: Option<Targets<Principals>>,
    pub(crate) conditions: Vec<Condition>,
}

/// A compiled policy with its statements indexed by action service.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// Language version.
    pub version: Version,
    /// `Id`, if given.
    pub id: Option<String>,
    /// The statements, in document order.
    pub statements: Vec<Statement>,
    /// Statement indexes by exact lowercase action (`orders:getorder`).
    pub(crate) by_action: HashMap<String, Vec<usize>>,
    /// Statement indexes by lowercase service, for action patterns with wildcards after it.
    pub(crate) by_service: HashMap<String, Vec<usize>>,
    /// Statements that may match any service (`*`, `NotAction`, wildcard services).
    pub(crate) any_service: Vec<usize>,
}

/// A parsed policy and the warnings about it.
#[derive(Debug, Clone)]
pub struct Parsed {
    /// The compiled policy.
    pub policy: Policy,
    /// Things that are legal but probably not meant.
    pub warnings: Vec<Issue>,
}

impl Policy {
    /// A policy that denies every action on every resource (to every principal): what a stored
    /// document that no longer compiles is replaced by, so a failure never widens access.
    pub fn deny_all(kind: PolicyKind) -> Policy {
        let text = match kind {
            PolicyKind::Identity => {
                r#"{"Version":"2012-10-17","Statement":{"Sid":"DoesNotCompile","Effect":"Deny","Action":"*","Resource":"*"}}"#
            }
            PolicyKind::Resource => {
                r#"{"Version":"2012-10-17","Statement":{"Sid":"DoesNotCompile","Effect":"Deny","Principal":"*","Action":"*","Resource":"*"}}"#
            }
        };
        match Policy::parse(text, kind, &Limits::default()) {
            Ok(p) => p.policy,
            // The constants parse (tested); were they not to, a policy with no Allow still
            // grants nothing.
            Err(_) => Policy {
                version: Version::V2012,
                id: None,
                statements: Vec::new(),
                by_action: HashMap::new(),
                by_service: HashMap::new(),
                any_service: Vec::new(),
            },
        }
    }

    /// Parses and validates `text`; all errors are reported at once.
    pub fn parse(text: &str, kind: PolicyKind, limits: &Limits) -> Result<Parsed, Vec<Issue>> {
        let issue = |path: &str, m: String| Issue {
            path: path.into(),
            message: m,
        };
        let chars = text.chars().filter(|c| !c.is_whitespace()).count();
        if chars > limits.max_chars {
            return Err(vec![issue(
                "$",
                format!(
                    "document has {chars} non-whitespace characters; the limit is {}",
                    limits.max_chars
                ),
            )]);
        }
        let value: Value = serde_json::from_str(text)
            .map_err(|e| vec![issue("$", format!("invalid JSON: {e}"))])?;
        let depth = depth(&value);
        if depth > limits.max_depth {
            return Err(vec![issue(
                "$",
                format!(
                    "document nests {depth} levels deep; the limit is {}",
                    limits.max_depth
                ),
            )]);
        }
        let mut p = Parser {
            kind,
            limits,
            errors: Vec::new(),
            warnings: Vec::new(),
            version: Version::V2008,
        };
        let policy = p.document(&value);
        match policy {
            Some(policy) if p.errors.is_empty() => Ok(Parsed {
                policy,
                warnings: p.warnings,
            }),
            _ => Err(p.errors),
        }
    }

    /// The statements that can match `action` (lowercase) of `service`, in document order:
    /// those naming exactly this action, those with a wildcard after this service, and those
    /// that may match any service. A merge of three sorted lists; nothing is allocated.
    pub(crate) fn candidates<'a>(
        &'a self,
        action: &str,
        service: &str,
    ) -> impl Iterator<Item = &'a Statement> + 'a {
        let none: &[usize] = &[];
        let lists = [
            self.by_action.get(action).map_or(none, Vec::as_slice),
            self.by_service.get(service).map_or(none, Vec::as_slice),
            self.any_service.as_slice(),
        ];
        merge3(lists).map(|i| &self.statements[i])
    }
}

/// Merges three sorted lists, without duplicates and without allocating.
pub(crate) fn merge3<T: Copy + Ord>(lists: [&[T]; 3]) -> impl Iterator<Item = T> + '_ {
    let mut pos = [0usize; 3];
    std::iter::from_fn(move || {
        let next = (0..3).filter_map(|l| lists[l].get(pos[l]).copied()).min()?;
        for l in 0..3 {
            if lists[l].get(pos[l]) == Some(&next) {
                pos[l] += 1;
            }
        }
        Some(next)
    })
}

enum IndexKey {
    Action(String),
    Service(String),
}

/// Where each action of an `Action` list is indexed: exact actions by name, patterns by their
/// service; `None` when one may match any service (`*`, `NotAction`, a wildcard in the service).
fn index_keys(actions: &Targets<Pattern>) -> Option<Vec<IndexKey>> {
    let Targets::Only(list) = actions else {
        return None;
    };
    let mut out = Vec::new();
    for a in list {
        if let Some(exact) = a.as_literal() {
            out.push(IndexKey::Action(exact.to_owned()));
            continue;
        }
        let (service, _) = a.literal_prefix().split_once(':')?;
        out.push(IndexKey::Service(service.to_owned()));
    }
    Some(out)
}
