//! Condition operators (IAM "Condition operators" and "Multivalued context keys").
//!
//! Across operators and keys: AND. Across the values of one key: OR for positive operators,
//! "matches none" for negated ones. A missing key makes positive operators false and negated
//! ones true; `…IfExists` makes it true; `ForAllValues` is true on a missing or empty key,
//! `ForAnyValue` false.

use std::net::IpAddr;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;

use crate::context::Context;
use crate::pattern::{ArnPattern, Pattern, Syntax};
use crate::time::parse_date_ms;

/// The comparison family of an operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    StringEquals,
    StringEqualsIgnoreCase,
    StringLike,
    NumericEquals,
    NumericLessThan,
    NumericLessThanEquals,
    NumericGreaterThan,
    NumericGreaterThanEquals,
    DateEquals,
    DateLessThan,
    DateLessThanEquals,
    DateGreaterThan,
    DateGreaterThanEquals,
    Bool,
    BinaryEquals,
    IpAddress,
    ArnLike,
    Null,
}

/// `ForAllValues:` / `ForAnyValue:` prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SetOp {
    None,
    ForAll,
    ForAny,
}

/// A parsed operator name such as `ForAnyValue:StringNotLikeIfExists`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Operator {
    pub kind: Kind,
    pub negated: bool,
    pub if_exists: bool,
    pub set: SetOp,
}

impl Operator {
    /// Parses an operator name, or says why not.
    pub fn parse(name: &str) -> Result<Operator, String> {
        let (set, rest) = if let Some(r) = strip_prefix_ci(name, "ForAllValues:") {
            (SetOp::ForAll, r)
        } else if let Some(r) = strip_prefix_ci(name, "ForAnyValue:") {
            (SetOp::ForAny, r)
        } else {
            (SetOp::None, name)
        };
        let (if_exists, base) = match rest.strip_suffix("IfExists") {
            Some(b) => (true, b),
            None => (false, rest),
        };
        use Kind::*;
        let (kind, negated) = match base {
            "StringEquals" => (StringEquals, false),
            "StringNotEquals" => (StringEquals, true),
            "StringEqualsIgnoreCase" => (StringEqualsIgnoreCase, false),
            "StringNotEqualsIgnoreCase" => (StringEqualsIgnoreCase, true),
            "StringLike" => (StringLike, false),
            "StringNotLike" => (StringLike, true),
            "NumericEquals" => (NumericEquals, false),
            "NumericNotEquals" => (NumericEquals, true),
            "NumericLessThan" => (NumericLessThan, false),
            "NumericLessThanEquals" => (NumericLessThanEquals, false),
            "NumericGreaterThan" => (NumericGreaterThan, false),
            "NumericGreaterThanEquals" => (NumericGreaterThanEquals, false),
            "DateEquals" => (DateEquals, false),
            "DateNotEquals" => (DateEquals, true),
            "DateLessThan" => (DateLessThan, false),
            "DateLessThanEquals" => (DateLessThanEquals, false),
            "DateGreaterThan" => (DateGreaterThan, false),
            "DateGreaterThanEquals" => (DateGreaterThanEquals, false),
            "Bool" => (Bool, false),
            "BinaryEquals" => (BinaryEquals, false),
            "IpAddress" => (IpAddress, false),
            "NotIpAddress" => (IpAddress, true),
            "ArnEquals" | "ArnLike" => (ArnLike, false),
            "ArnNotEquals" | "ArnNotLike" => (ArnLike, true),
            "Null" => (Null, false),
            _ => return Err(format!("unknown condition operator {name:?}")),
        };
        if kind == Null && (if_exists || set != SetOp::None) {
            return Err(format!(
                "{name:?}: Null takes no IfExists suffix or set prefix"
            ));
        }
        Ok(Operator {
            kind,
            negated,
            if_exists,
            set,
        })
    }

    /// Whether policy variables may appear in the values (String and Arn operators only).
    fn allows_variables(self) -> bool {
        matches!(
            self.kind,
            Kind::StringEquals | Kind::StringEqualsIgnoreCase | Kind::StringLike | Kind::ArnLike
        )
    }
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    (s.len() >= prefix.len() && s[..prefix.len()].eq_ignore_ascii_case(prefix))
        .then(|| &s[prefix.len()..])
}

/// One policy value, pre-parsed for its operator.
#[derive(Debug, Clone, PartialEq)]
enum Value {
    Text(Pattern),
    Number(f64),
    DateMs(i64),
    Bool(bool),
    Bytes(Vec<u8>),
    Net(IpAddr, u8),
    Arn(ArnPattern),
}

/// One `operator: { key: values }` entry.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Condition {
    op: Operator,
    key: String,
    values: Vec<Value>,
}

fn parse_number(s: &str) -> Option<f64> {
    s.trim().parse::<f64>().ok().filter(|f| f.is_finite())
}

fn parse_bool(s: &str) -> Option<bool> {
    if s.eq_ignore_ascii_case("true") {
        Some(true)
    } else if s.eq_ignore_ascii_case("false") {
        Some(false)
    } else {
        None
    }
}

fn parse_net(s: &str) -> Option<(IpAddr, u8)> {
    let (ip, bits) = match s.split_once('/') {
        Some((ip, bits)) => (ip.parse::<IpAddr>().ok()?, Some(bits.parse::<u8>().ok()?)),
        None => (s.parse::<IpAddr>().ok()?, None),
    };
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let bits = bits.unwrap_or(max);
    (bits <= max).then_some((ip, bits))
}

fn in_net(ip: IpAddr, net: IpAddr, bits: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = if bits == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(bits))
            };
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = if bits == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(bits))
            };
            u128::from(a) & mask == u128::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V4(_)) => a
            .to_ipv4_mapped()
            .is_some_and(|a4| in_net(IpAddr::V4(a4), net, bits)),
        _ => false,
    }
}

impl Condition {
    /// Builds a condition; `variables` is whether the policy version allows them.
    pub fn new(
        op: Operator,
        key: &str,
        raw: &[String],
        variables: bool,
    ) -> Result<Condition, String> {
        let variables = variables && op.allows_variables();
        let mut values = Vec::with_capacity(raw.len());
        for v in raw {
            let bad = |what: &str| format!("{v:?} is not {what}");
            let value = match op.kind {
                Kind::StringEquals | Kind::StringEqualsIgnoreCase | Kind::StringLike => {
                    let syntax = Syntax {
                        wildcards: op.kind == Kind::StringLike,
                        variables,
                        fold_case: op.kind == Kind::StringEqualsIgnoreCase,
                    };
                    Value::Text(Pattern::parse(v, syntax)?)
                }
                Kind::ArnLike => Value::Arn(ArnPattern::parse(v, variables)?),
                Kind::NumericEquals
                | Kind::NumericLessThan
                | Kind::NumericLessThanEquals
                | Kind::NumericGreaterThan
                | Kind::NumericGreaterThanEquals => {
                    Value::Number(parse_number(v).ok_or_else(|| bad("a number"))?)
                }
                Kind::DateEquals
                | Kind::DateLessThan
                | Kind::DateLessThanEquals
                | Kind::DateGreaterThan
                | Kind::DateGreaterThanEquals => Value::DateMs(
                    parse_date_ms(v).ok_or_else(|| bad("an ISO-8601 date or epoch seconds"))?,
                ),
                Kind::Bool | Kind::Null => {
                    Value::Bool(parse_bool(v).ok_or_else(|| bad("true or false"))?)
                }
                Kind::BinaryEquals => Value::Bytes(STANDARD.decode(v).map_err(|_| bad("base64"))?),
                Kind::IpAddress => {
                    let (ip, bits) =
                        parse_net(v).ok_or_else(|| bad("an IP address or CIDR block"))?;
                    Value::Net(ip, bits)
                }
            };
            values.push(value);
        }
        Ok(Condition {
            op,
            key: key.to_ascii_lowercase(),
            values,
        })
    }

    /// Whether the condition holds for `ctx`.
    pub fn holds(&self, ctx: &Context) -> bool {
        let present = ctx.get(&self.key);
        if self.op.kind == Kind::Null {
            // "true": the key must be absent; "false": present.
            let absent = present.is_none_or(<[String]>::is_empty);
            return self
                .values
                .iter()
                .any(|v| matches!(v, Value::Bool(want) if *want == absent));
        }
        match self.op.set {
            SetOp::ForAll => match present {
                None | Some([]) => true,
                Some(req) => req.iter().all(|r| self.one(r, ctx)),
            },
            SetOp::ForAny => match present {
                None | Some([]) => self.op.if_exists && present.is_none(),
                Some(req) => req.iter().any(|r| self.one(r, ctx)),
            },
            SetOp::None => match present {
                None => self.op.if_exists || self.op.negated,
                Some(req) if self.op.negated => req.iter().all(|r| self.one(r, ctx)),
                Some(req) => req.iter().any(|r| self.one(r, ctx)),
            },
        }
    }

    /// One request value against the policy values: for a positive operator, does any value
    /// match; for a negated one, does none. An unparseable request value matches nothing, for
    /// either polarity.
    fn one(&self, req: &str, ctx: &Context) -> bool {
        let parsed_ok = match self.op.kind {
            Kind::NumericEquals
            | Kind::NumericLessThan
            | Kind::NumericLessThanEquals
            | Kind::NumericGreaterThan
            | Kind::NumericGreaterThanEquals => parse_number(req).is_some(),
            Kind::DateEquals
            | Kind::DateLessThan
            | Kind::DateLessThanEquals
            | Kind::DateGreaterThan
            | Kind::DateGreaterThanEquals => parse_date_ms(req).is_some(),
            Kind::Bool => parse_bool(req).is_some(),
            Kind::IpAddress => req.parse::<IpAddr>().is_ok(),
            Kind::BinaryEquals => STANDARD.decode(req).is_ok(),
            _ => true,
        };
        if !parsed_ok {
            return false;
        }
        let any = self.values.iter().any(|v| self.value_matches(v, req, ctx));
        any != self.op.negated
    }

    fn value_matches(&self, v: &Value, req: &str, ctx: &Context) -> bool {
        match (self.op.kind, v) {
            (Kind::StringEquals, Value::Text(p)) | (Kind::StringLike, Value::Text(p)) => {
                p.resolve(ctx, false).is_some_and(|p| p.matches(req))
            }
            (Kind::StringEqualsIgnoreCase, Value::Text(p)) => p
                .resolve(ctx, true)
                .is_some_and(|p| p.matches(&req.to_lowercase())),
            (Kind::ArnLike, Value::Arn(a)) => a.matches(ctx, req),
            (k, Value::Number(n)) => parse_number(req).is_some_and(|r| match k {
                Kind::NumericEquals => r == *n,
                Kind::NumericLessThan => r < *n,
                Kind::NumericLessThanEquals => r <= *n,
                Kind::NumericGreaterThan => r > *n,
                _ => r >= *n,
            }),
            (k, Value::DateMs(d)) => parse_date_ms(req).is_some_and(|r| match k {
                Kind::DateEquals => r == *d,
                Kind::DateLessThan => r < *d,
                Kind::DateLessThanEquals => r <= *d,
                Kind::DateGreaterThan => r > *d,
                _ => r >= *d,
            }),
            (_, Value::Bool(b)) => parse_bool(req) == Some(*b),
            (_, Value::Bytes(b)) => STANDARD.decode(req).is_ok_and(|r| r == *b),
            (_, Value::Net(net, bits)) => req
                .parse::<IpAddr>()
                .is_ok_and(|ip| in_net(ip, *net, *bits)),
            _ => false,
        }
    }

    /// Whether this is a `ForAllValues` operator (the validator warns on it with Allow).
    pub fn is_for_all_values(&self) -> bool {
        self.op.set == SetOp::ForAll
    }
}
