//! A namespace's JSON Schema (draft 2020-12), which the object of an environment's values must
//! satisfy, and its secret annotations: a property with `"x-capstan-secret": true` is stored
//! sealed whatever the writer asked. References are resolved inside the document only: the
//! validator is built without HTTP or file retrieval, so a schema cannot make Capstan fetch.

use std::collections::BTreeSet;

use serde_json::{json, Value};

use crate::error::ConfigError;

/// The annotation that makes a property secret.
pub const SECRET_ANNOTATION: &str = "x-capstan-secret";
/// At most this many violations are reported.
const MAX_ERRORS: usize = 20;

/// A compiled schema.
pub struct Schema {
    validator: jsonschema::Validator,
    /// Top-level properties annotated secret.
    pub secret_keys: BTreeSet<String>,
    /// The document as given.
    pub source: Value,
}

impl std::fmt::Debug for Schema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Schema")
            .field("secret_keys", &self.secret_keys)
            .finish_non_exhaustive()
    }
}

impl Schema {
    /// Compiles `source` as draft 2020-12; a 400 saying why when it is not a valid schema.
    pub fn compile(source: Value) -> Result<Schema, ConfigError> {
        if !source.is_object() {
            return Err(ConfigError::BadRequest(
                "a schema must be a JSON object (draft 2020-12)".into(),
            ));
        }
        let validator = jsonschema::draft202012::options()
            .should_validate_formats(true)
            .build(&source)
            .map_err(|e| ConfigError::BadRequest(format!("invalid JSON Schema: {e}")))?;
        let secret_keys = source
            .get("properties")
            .and_then(Value::as_object)
            .map(|props| {
                props
                    .iter()
                    .filter(|(_, p)| p.get(SECRET_ANNOTATION) == Some(&Value::Bool(true)))
                    .map(|(k, _)| k.clone())
                    .collect()
            })
            .unwrap_or_default();
        Ok(Schema {
            validator,
            secret_keys,
            source,
        })
    }

    /// Checks `values` (an environment's values as one object); `what` names them in the
    /// message. A 422 listing each violation's path, rule and message (values masked, so a
    /// secret is never echoed).
    pub fn check(&self, values: &Value, what: &str) -> Result<(), ConfigError> {
        let errors: Vec<Value> = self
            .validator
            .iter_errors(values)
            .take(MAX_ERRORS)
            .map(|e| {
                let path = e.instance_path().to_string();
                json!({
                    "path": if path.is_empty() { "/".to_owned() } else { path },
                    "rule": e.kind().keyword(),
                    "message": e.masked().to_string(),
                })
            })
            .collect();
        if errors.is_empty() {
            return Ok(());
        }
        let first = &errors[0];
        Err(ConfigError::SchemaViolation {
            message: format!(
                "{what} would violate the namespace's schema at {}: {} ({})",
                first["path"].as_str().unwrap_or("/"),
                first["message"].as_str().unwrap_or(""),
                first["rule"].as_str().unwrap_or(""),
            ),
            errors: Value::Array(errors),
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn violations_name_path_and_rule() {
        let s = Schema::compile(json!({
            "type": "object",
            "properties": {
                "pool": {"type": "integer", "minimum": 1},
                "password": {"type": "string", "x-capstan-secret": true}
            }
        }))
        .unwrap();
        assert!(s.secret_keys.contains("password"));
        s.check(&json!({"pool": 3}), "the values").unwrap();
        let Err(ConfigError::SchemaViolation { message, errors }) =
            s.check(&json!({"pool": 0, "password": 7}), "the values")
        else {
            panic!("expected a violation")
        };
        assert!(
            message.contains("/pool") || message.contains("/password"),
            "{message}"
        );
        let paths: Vec<&str> = errors
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["path"].as_str().unwrap())
            .collect();
        assert!(
            paths.contains(&"/pool") && paths.contains(&"/password"),
            "{paths:?}"
        );
        assert!(errors
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["rule"] == "minimum"));
    }

    #[test]
    fn remote_refs_and_bad_schemas_refused() {
        assert!(Schema::compile(json!({"$ref": "http://169.254.169.254/x"})).is_err());
        assert!(Schema::compile(json!({"type": 7})).is_err());
        assert!(Schema::compile(json!([1])).is_err());
    }
}
