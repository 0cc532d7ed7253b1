//! The document grammar: every field checked at its JSON path, errors collected (not the first
//! only), warnings for legal but dangerous shapes, limits counted.

use super::*;

pub(super) fn depth(v: &Value) -> usize {
    let mut max = 0;
    let mut stack = vec![(v, 1usize)];
    while let Some((v, d)) = stack.pop() {
        match v {
            Value::Array(a) => {
                max = max.max(d);
                stack.extend(a.iter().map(|x| (x, d + 1)));
            }
            Value::Object(o) => {
                max = max.max(d);
                stack.extend(o.values().map(|x| (x, d + 1)));
            }
            _ => {}
        }
    }
    max
}

pub(super) struct Parser<'l> {
    pub(super) kind: PolicyKind,
    pub(super) limits: &'l Limits,
    pub(super) errors: Vec<Issue>,
    pub(super) warnings: Vec<Issue>,
    pub(super) version: Version,
}

impl Parser<'_> {
    fn err(&mut self, path: &str, m: impl Into<String>) {
        self.errors.push(Issue {
            path: path.into(),
            message: m.into(),
        });
    }

    fn warn(&mut self, path: &str, m: impl Into<String>) {
        self.warnings.push(Issue {
            path: path.into(),
            message: m.into(),
        });
    }

    pub(super) fn document(&mut self, v: &Value) -> Option<Policy> {
        let Some(obj) = v.as_object() else {
            self.err("$", "a policy must be a JSON object");
            return None;
        };
        for k in obj.keys() {
            if !["Version", "Id", "Statement"].contains(&k.as_str()) {
                self.err(
                    &format!("$.{k}"),
                    format!("unknown element {k:?} (expected Version, Id, Statement)"),
                );
            }
        }
        match obj.get("Version") {
            None => {}
            Some(Value::String(s)) if s == "2012-10-17" => self.version = Version::V2012,
            Some(Value::String(s)) if s == "2008-10-17" => {}
            Some(_) => self.err(
                "$.Version",
                "Version must be \"2012-10-17\" or \"2008-10-17\"",
            ),
        }
        let id = match obj.get("Id") {
            None => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => {
                self.err("$.Id", "Id must be a string");
                None
            }
        };
        let raw: Vec<&Value> = match obj.get("Statement") {
            Some(Value::Array(a)) => a.iter().collect(),
            Some(v @ Value::Object(_)) => vec![v],
            Some(_) => {
                self.err(
                    "$.Statement",
                    "Statement must be an object or an array of objects",
                );
                return None;
            }
            None => {
                self.err("$", "Statement is required");
                return None;
            }
        };
        if raw.is_empty() {
            self.err("$.Statement", "at least one statement is required");
        }
        if raw.len() > self.limits.max_statements {
            self.err(
                "$.Statement",
                format!(
                    "{} statements; the limit is {}",
                    raw.len(),
                    self.limits.max_statements
                ),
            );
            return None;
        }
        let single = matches!(obj.get("Statement"), Some(Value::Object(_)));
        let mut statements = Vec::new();
        let mut sids = HashSet::new();
        for (i, s) in raw.iter().enumerate() {
            let path = if single {
                "$.Statement".to_owned()
            } else {
                format!("$.Statement[{i}]")
            };
            if let Some(st) = self.statement(s, i, &path) {
                if !sids.insert(st.sid.clone()) {
                    self.err(
                        &format!("{path}.Sid"),
                        format!("Sid {:?} is used twice", st.sid),
                    );
                }
                statements.push(st);
            }
        }
        let mut by_action: HashMap<String, Vec<usize>> = HashMap::new();
        let mut by_service: HashMap<String, Vec<usize>> = HashMap::new();
        let mut any_service = Vec::new();
        let push = |map: &mut HashMap<String, Vec<usize>>, key: String, i: usize| {
            let list = map.entry(key).or_default();
            if list.last() != Some(&i) {
                list.push(i);
            }
        };
        for (i, st) in statements.iter().enumerate() {
            match index_keys(&st.actions) {
                Some(keys) => {
                    for k in keys {
                        match k {
                            IndexKey::Action(a) => push(&mut by_action, a, i),
                            IndexKey::Service(s) => push(&mut by_service, s, i),
                        }
                    }
                }
                None => any_service.push(i),
            }
        }
        Some(Policy {
            version: self.version,
            id,
            statements,
            by_action,
            by_service,
            any_service,
        })
    }

    fn strings(&mut self, v: &Value, path: &str) -> Option<Vec<String>> {
        let items: Vec<&Value> = match v {
            Value::Array(a) => a.iter().collect(),
            other => vec![other],
        };
        if items.is_empty() {
            self.err(path, "must not be empty");
            return None;
        }
        if items.len() > self.limits.max_values {
            self.err(
                path,
                format!(
                    "{} values; the limit is {}",
                    items.len(),
                    self.limits.max_values
                ),
            );
            return None;
        }
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            match item {
                Value::String(s) if !s.is_empty() => {
                    let wildcards = s.chars().filter(|c| *c == '*' || *c == '?').count();
                    if wildcards > self.limits.max_wildcards {
                        let p = if v.is_array() {
                            format!("{path}[{i}]")
                        } else {
                            path.to_owned()
                        };
                        self.err(
                            &p,
                            format!(
                                "{wildcards} wildcard characters (* or ?); the limit is {}",
                                self.limits.max_wildcards
                            ),
                        );
                        return None;
                    }
                    out.push(s.clone())
                }
                Value::Number(n) => out.push(n.to_string()),
                Value::Bool(b) => out.push(b.to_string()),
                _ => {
                    let p = if v.is_array() {
                        format!("{path}[{i}]")
                    } else {
                        path.to_owned()
                    };
                    self.err(
                        &p,
                        "must be a non-empty string (or a number or boolean in a condition)",
                    );
                    return None;
                }
            }
        }
        Some(out)
    }

    fn statement(&mut self, v: &Value, index: usize, path: &str) -> Option<Statement> {
        let Some(obj) = v.as_object() else {
            self.err(path, "a statement must be a JSON object");
            return None;
        };
        const KNOWN: [&str; 9] = [
            "Sid",
            "Effect",
            "Action",
            "NotAction",
            "Resource",
            "NotResource",
            "Principal",
            "NotPrincipal",
            "Condition",
        ];
        for k in obj.keys() {
            if !KNOWN.contains(&k.as_str()) {
                self.err(&format!("{path}.{k}"), format!("unknown element {k:?}"));
            }
        }
        let sid = match obj.get("Sid") {
            None => format!("#{index}"),
            Some(Value::String(s))
                if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric()) =>
            {
                s.clone()
            }
            Some(_) => {
                self.err(
                    &format!("{path}.Sid"),
                    "Sid must be letters and digits only",
                );
                format!("#{index}")
            }
        };
        let effect = match obj.get("Effect").and_then(Value::as_str) {
            Some("Allow") => Effect::Allow,
            Some("Deny") => Effect::Deny,
            _ => {
                self.err(
                    &format!("{path}.Effect"),
                    "Effect must be \"Allow\" or \"Deny\"",
                );
                Effect::Deny
            }
        };
        let actions = self.pair(obj, path, "Action", "NotAction", |p, s, at| {
            if s != "*" && !s.contains(':') {
                p.err(
                    at,
                    format!("action {s:?} must be \"*\" or \"<service>:<Action>\""),
                );
                return None;
            }
            let syntax = Syntax {
                wildcards: true,
                variables: false,
                fold_case: true,
            };
            Pattern::parse(s, syntax).map_err(|e| p.err(at, e)).ok()
        });
        let variables = self.version == Version::V2012;
        let resources = self.pair(obj, path, "Resource", "NotResource", |p, s, at| {
            resource_pattern(s, variables)
                .map_err(|e| p.err(at, e))
                .ok()
        });
        let principals = match (obj.get("Principal"), obj.get("NotPrincipal"), self.kind) {
            (None, None, PolicyKind::Identity) => None,
            (None, None, PolicyKind::Resource) => {
                self.err(
                    path,
                    "a resource policy statement needs Principal or NotPrincipal",
                );
                None
            }
            (Some(_), _, PolicyKind::Identity) | (_, Some(_), PolicyKind::Identity) => {
                self.err(
                    path,
                    "Principal and NotPrincipal are only allowed in resource policies",
                );
                None
            }
            (Some(_), Some(_), _) => {
                self.err(path, "use Principal or NotPrincipal, not both");
                None
            }
            (Some(v), None, _) => self
                .principals(v, &format!("{path}.Principal"))
                .map(|p| Targets::Only(vec![p])),
            (None, Some(v), _) => self
                .principals(v, &format!("{path}.NotPrincipal"))
                .map(|p| Targets::Except(vec![p])),
        };
        let conditions = match obj.get("Condition") {
            None => Vec::new(),
            Some(c) => self.conditions(c, &format!("{path}.Condition"), variables),
        };
        if effect == Effect::Allow {
            if conditions.iter().any(Condition::is_for_all_values) {
                self.warn(
                    &format!("{path}.Condition"),
                    "ForAllValues with Allow is true when the key is missing or empty; add a Null check or use ForAnyValue",
                );
            }
            if matches!(resources, Some(Targets::Except(_))) {
                let all =
                    matches!(&actions, Some(Targets::Only(a)) if a.iter().any(Pattern::is_star));
                self.warn(
                    &format!("{path}.NotResource"),
                    if all {
                        "Allow with NotResource and Action \"*\" grants every action on every other resource"
                    } else {
                        "Allow with NotResource grants the actions on every resource not listed"
                    },
                );
            }
            if matches!(actions, Some(Targets::Except(_))) {
                self.warn(
                    &format!("{path}.NotAction"),
                    "Allow with NotAction grants every action not listed",
                );
            }
        }
        Some(Statement {
            sid,
            effect,
            actions: actions?,
            resources: resources?,
            principals,
            conditions,
        })
    }

    /// Reads `X` or `NotX` (exactly one of them).
    fn pair<T>(
        &mut self,
        obj: &Map<String, Value>,
        path: &str,
        yes: &str,
        no: &str,
        mut each: impl FnMut(&mut Self, &str, &str) -> Option<T>,
    ) -> Option<Targets<T>> {
        let (key, negate, v) = match (obj.get(yes), obj.get(no)) {
            (Some(v), None) => (yes, false, v),
            (None, Some(v)) => (no, true, v),
            (Some(_), Some(_)) => {
                self.err(path, format!("use {yes} or {no}, not both"));
                return None;
            }
            (None, None) => {
                self.err(path, format!("{yes} or {no} is required"));
                return None;
            }
        };
        let at = format!("{path}.{key}");
        let values = self.strings(v, &at)?;
        let mut out = Vec::new();
        for (i, s) in values.iter().enumerate() {
            let p = if v.is_array() {
                format!("{at}[{i}]")
            } else {
                at.clone()
            };
            out.push(each(self, s, &p)?);
        }
        Some(if negate {
            Targets::Except(out)
        } else {
            Targets::Only(out)
        })
    }

    fn principals(&mut self, v: &Value, path: &str) -> Option<Principals> {
        match v {
            Value::String(s) if s == "*" => Some(Principals {
                any: true,
                ids: vec![],
            }),
            Value::Object(o) => {
                let mut ids = Vec::new();
                for (k, v) in o {
                    if k != "Capstan" {
                        self.err(
                            &format!("{path}.{k}"),
                            format!("unknown principal type {k:?} (expected \"Capstan\")"),
                        );
                        continue;
                    }
                    ids.extend(self.strings(v, &format!("{path}.{k}"))?);
                }
                let any = ids.iter().any(|i| i == "*");
                Some(Principals { any, ids })
            }
            _ => {
                self.err(
                    path,
                    "must be \"*\" or {\"Capstan\": <principal id or list>}",
                );
                None
            }
        }
    }

    fn conditions(&mut self, v: &Value, path: &str, variables: bool) -> Vec<Condition> {
        let Some(ops) = v.as_object() else {
            self.err(path, "Condition must be an object of operators");
            return Vec::new();
        };
        let mut out = Vec::new();
        for (op_name, keys) in ops {
            let op_path = format!("{path}.{op_name}");
            let op = match Operator::parse(op_name) {
                Ok(op) => op,
                Err(e) => {
                    self.err(&op_path, e);
                    continue;
                }
            };
            let Some(keys) = keys.as_object() else {
                self.err(&op_path, "must be an object of condition keys");
                continue;
            };
            for (key, values) in keys {
                let key_path = format!("{op_path}.{key}");
                let Some(values) = self.strings(values, &key_path) else {
                    continue;
                };
                match Condition::new(op, key, &values, variables) {
                    Ok(c) => out.push(c),
                    Err(e) => self.err(&key_path, e),
                }
            }
        }
        out
    }
}

/// A resource pattern without variables (resource-policy keys).
pub(crate) fn compile_resource(s: &str) -> Result<ResourcePattern, String> {
    resource_pattern(s, false)
}

fn resource_pattern(s: &str, variables: bool) -> Result<ResourcePattern, String> {
    if s == "*" {
        return Ok(ResourcePattern::Any);
    }
    if !(s.starts_with("crn:") || s.starts_with("arn:")) {
        return Err(format!(
            "resource {s:?} must be \"*\" or a CRN (crn:capstan:<service>:<tenant>:<path>)"
        ));
    }
    // Split like the ARN it matches, but never inside `${…}`: a variable such as
    // `${capstan:tenant}` may stand for any part (the tenant's, like IAM's
    // `${aws:PrincipalAccount}`), and is resolved into that part as literal text.
    let syntax = Syntax {
        wildcards: true,
        variables,
        fold_case: false,
    };
    let parts = if variables {
        split_outside_variables(s, if s.starts_with("crn:") { 5 } else { 6 })
    } else {
        arn_parts(s)
    };
    parts
        .into_iter()
        .map(|p| Pattern::parse(p, syntax))
        .collect::<Result<Vec<_>, _>>()
        .map(ResourcePattern::Parts)
}
