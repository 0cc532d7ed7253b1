//! The request context: condition keys and their values.

use std::collections::HashMap;

/// Condition keys (case-insensitive) with one or more string values each.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Context {
    keys: HashMap<String, Vec<String>>,
}

impl Context {
    /// An empty context.
    pub fn new() -> Context {
        Context::default()
    }

    /// Sets `key` to `values` (builder style). An empty list is a present-but-empty key.
    pub fn with<I, S>(mut self, key: &str, values: I) -> Context
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.set(key, values);
        self
    }

    /// Sets `key` to `values`.
    pub fn set<I, S>(&mut self, key: &str, values: I)
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.keys.insert(
            key.to_ascii_lowercase(),
            values.into_iter().map(Into::into).collect(),
        );
    }

    /// The values of `key` (already lowercased), if present.
    pub fn get(&self, key: &str) -> Option<&[String]> {
        self.keys.get(key).map(Vec::as_slice)
    }

    /// The value of a single-valued key, for policy variables.
    pub fn single(&self, key: &str) -> Option<&str> {
        match self.keys.get(key).map(Vec::as_slice) {
            Some([v]) => Some(v),
            _ => None,
        }
    }
}
