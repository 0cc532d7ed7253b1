//! `config`: each command one call through the SDK's typed [`ConfigClient`]; `watch` follows
//! the SDK's resuming event stream.

use std::collections::BTreeMap;
use std::future::Future;

use capstan_proto::config::{PatchRequest, RolloutMatch, RolloutRequest};
use capstan_sdk::config::{ConfigClient, ConfigEvent, PutOptions};
use capstan_sdk::Error;
use serde::Serialize;
use serde_json::{json, Value};

use super::{io_err, spin, Res, Run};
use crate::cli::{ConfigCommand, Format, NsEnv, RolloutCommand, SchemaCommand};
use crate::{exit, Failure, Io};

/// A command-line value: JSON when it parses, else the text as a JSON string.
fn parse_value(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|_| Value::String(s.to_owned()))
}

fn usage(message: String) -> Failure {
    Failure {
        message,
        hint: None,
        code: exit::USAGE,
    }
}

/// `KEY=VALUE` flags as a map, VALUE as [`parse_value`].
fn assignments(flag: &str, items: &[String]) -> Result<BTreeMap<String, Value>, Failure> {
    let mut out = BTreeMap::new();
    for kv in items {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| usage(format!("{flag} {kv:?} must be KEY=VALUE")))?;
        out.insert(k.to_owned(), parse_value(v));
    }
    Ok(out)
}

/// A document from a file or stdin (`-`), JSON or YAML, as a `T`.
fn read_doc<T: serde::de::DeserializeOwned>(io: &mut Io<'_>, file: &str) -> Result<T, Failure> {
    let name = if file == "-" { "stdin" } else { file };
    let text = if file == "-" {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut *io.stdin, &mut s)
            .map_err(|e| Failure::new(format!("cannot read stdin: {e}")))?;
        s
    } else {
        std::fs::read_to_string(file)
            .map_err(|e| Failure::new(format!("cannot read {file}: {e}")))?
    };
    match serde_json::from_str::<T>(&text) {
        Ok(v) => Ok(v),
        Err(json_err) => serde_yaml::from_str::<T>(&text).map_err(|yaml_err| {
            // Report the JSON error for what looks like JSON.
            let e = if text.trim_start().starts_with(['{', '[']) {
                json_err.to_string()
            } else {
                yaml_err.to_string()
            };
            Failure::new(format!("{name} is not a valid document: {e}"))
        }),
    }
}

fn to_json(v: &impl Serialize) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

impl Run<'_, '_> {
    /// One call through the config client with the saved login (a refused token is renewed
    /// once), behind the spinner.
    async fn cfg<T, F, Fut>(&mut self, f: F) -> Result<T, Failure>
    where
        F: Fn(ConfigClient) -> Fut,
        Fut: Future<Output = Result<T, Error>>,
    {
        let mut forced = false;
        loop {
            let client = ConfigClient::new(self.client(forced).await?);
            match spin(self.io.interactive, f(client)).await {
                Err(Error::Api { status: 401, .. }) if !forced => forced = true,
                Err(e) => return Err(self.s.failure(e)),
                Ok(v) => return Ok(v),
            }
        }
    }

    /// Prints a JSON value as itself in table mode (strings bare), as the format says
    /// otherwise.
    fn print_value(&mut self, v: &Value) -> Res {
        if self.format != Format::Table {
            return self.print(v, &[]);
        }
        let text = match v {
            Value::String(s) => format!("{s}\n"),
            other => format!(
                "{}\n",
                serde_json::to_string_pretty(other).unwrap_or_default()
            ),
        };
        self.io.out.write_all(text.as_bytes()).map_err(io_err)?;
        Ok(exit::OK)
    }

    pub(super) async fn config(&mut self, c: ConfigCommand) -> Res {
        match c {
            ConfigCommand::Get { at, key: None } => {
                let (ns, env) = (&at.ns, &at.env);
                let snap = self
                    .cfg(|c| async move { c.snapshot(ns, env).await })
                    .await?;
                if self.format != Format::Table {
                    return self.print(&to_json(&snap), &[]);
                }
                let rows: Vec<Value> = snap
                    .values
                    .iter()
                    .map(|(k, v)| json!({"key": k, "value": v, "secret": snap.secrets.contains(k)}))
                    .collect();
                let _ = writeln!(self.io.err, "{ns}/{env} at revision {}", snap.revision);
                self.print(&Value::Array(rows), &["key", "value", "secret"])
            }
            ConfigCommand::Get { at, key: Some(key) } => {
                let (ns, env, key) = (&at.ns, &at.env, &key);
                let v = self
                    .cfg(|c| async move { c.get(ns, env, key).await })
                    .await?;
                if self.format == Format::Table {
                    return self.print_value(&v.value);
                }
                self.print(&to_json(&v), &[])
            }
            ConfigCommand::Set {
                at,
                key,
                value,
                secret,
                if_match,
            } => {
                let (ns, env, key) = (&at.ns, &at.env, &key);
                let value = &parse_value(&value);
                let opts = PutOptions { secret, if_match };
                let w = self
                    .cfg(|c| async move { c.put(ns, env, key, value, opts).await })
                    .await?;
                self.print(&to_json(&w), &[])
            }
            ConfigCommand::Delete { at, key, if_match } => {
                let (ns, env, key) = (&at.ns, &at.env, &key);
                let w = self
                    .cfg(|c| async move { c.delete(ns, env, key, if_match).await })
                    .await?;
                self.print(&to_json(&w), &[])
            }
            ConfigCommand::Patch {
                at,
                file,
                set,
                delete,
                secret,
                expect_revision,
            } => {
                let mut patch: PatchRequest = match &file {
                    Some(f) => read_doc(self.io, f)?,
                    None => PatchRequest::default(),
                };
                patch.set.extend(assignments("--set", &set)?);
                patch.delete.extend(delete);
                patch.secret.extend(secret);
                if expect_revision.is_some() {
                    patch.expect_revision = expect_revision;
                }
                if patch.set.is_empty() && patch.delete.is_empty() {
                    return Err(usage(
                        "nothing to change: give --file, --set KEY=VALUE or --delete KEY".into(),
                    ));
                }
                let (ns, env, patch) = (&at.ns, &at.env, &patch);
                let w = self
                    .cfg(|c| async move { c.patch(ns, env, patch).await })
                    .await?;
                self.print(&to_json(&w), &[])
            }
            ConfigCommand::History { at, limit, before } => {
                let (ns, env) = (&at.ns, &at.env);
                let h = self
                    .cfg(|c| async move { c.history(ns, env, limit, before).await })
                    .await?;
                if self.format != Format::Table {
                    return self.print(&to_json(&h), &[]);
                }
                let _ = writeln!(self.io.err, "oldest revision kept: {}", h.oldest);
                self.print(
                    &to_json(&h.entries),
                    &["revision", "at", "actor", "kind", "keys", "rollout"],
                )
            }
            ConfigCommand::Diff { at, from, to } => {
                let (ns, env) = (&at.ns, &at.env);
                let d = self
                    .cfg(|c| async move { c.diff(ns, env, from, to).await })
                    .await?;
                if self.format != Format::Table {
                    return self.print(&to_json(&d), &[]);
                }
                let rows: Vec<Value> = d
                    .changes
                    .iter()
                    .map(|c| json!({"key": c.key, "before": c.before, "after": c.after}))
                    .collect();
                self.print(&Value::Array(rows), &["key", "before", "after"])
            }
            ConfigCommand::Rollback { at, to } => {
                let (ns, env) = (&at.ns, &at.env);
                let w = self
                    .cfg(|c| async move { c.rollback(ns, env, to).await })
                    .await?;
                self.print(&to_json(&w), &[])
            }
            ConfigCommand::Watch { at, since, count } => self.watch(at, since, count).await,
            ConfigCommand::Schema(s) => self.schema(s).await,
            ConfigCommand::Rollout(r) => self.rollout(r).await,
        }
    }

    /// Prints events as JSON lines until interrupted (or `count` events). Interruptions are
    /// reported on stderr and resumed from the last revision; a refusal ends the command.
    async fn watch(&mut self, at: NsEnv, since: Option<i64>, count: Option<u64>) -> Res {
        let client = ConfigClient::new(self.client(false).await?);
        let mut events = client.events(&at.ns, &at.env, since);
        let interrupted = tokio::signal::ctrl_c();
        tokio::pin!(interrupted);
        let mut printed = 0u64;
        let mut renewed = false;
        while count.is_none_or(|n| printed < n) {
            let next = tokio::select! {
                r = events.next() => r,
                _ = &mut interrupted => return Ok(exit::OK),
            };
            let line = match next {
                Ok(ConfigEvent::Reset(s)) => {
                    let mut v = to_json(&s);
                    v["event"] = json!("reset");
                    v
                }
                Ok(ConfigEvent::Change(c)) => {
                    let mut v = to_json(&c);
                    v["event"] = json!("change");
                    v
                }
                Err(Error::Api { status: 401, .. }) if !renewed => {
                    // The saved token expired during a long watch: a new one, same place.
                    renewed = true;
                    let client = ConfigClient::new(self.client(true).await?);
                    events = client.events(&at.ns, &at.env, events.revision());
                    continue;
                }
                Err(e) if e.is_transient() => {
                    let _ = writeln!(
                        self.io.err,
                        "watch interrupted ({e}); resuming{}",
                        events
                            .revision()
                            .map(|r| format!(" after revision {r}"))
                            .unwrap_or_default()
                    );
                    continue;
                }
                Err(e) => return Err(self.s.failure(e)),
            };
            renewed = false;
            writeln!(self.io.out, "{line}").map_err(io_err)?;
            self.io.out.flush().map_err(io_err)?;
            printed += 1;
        }
        Ok(exit::OK)
    }

    async fn schema(&mut self, s: SchemaCommand) -> Res {
        match s {
            SchemaCommand::Get { ns } => {
                let ns = &ns;
                let v = self.cfg(|c| async move { c.schema(ns).await }).await?;
                self.print_value(&v)
            }
            SchemaCommand::Set { ns, file } => {
                let doc: Value = read_doc(self.io, &file)?;
                let (n, doc) = (&ns, &doc);
                self.cfg(|c| async move { c.put_schema(n, doc).await })
                    .await?;
                self.done(format!("set the schema of {ns}"))
            }
            SchemaCommand::Delete { ns } => {
                let n = &ns;
                self.cfg(|c| async move { c.delete_schema(n).await })
                    .await?;
                self.done(format!("removed the schema of {ns}"))
            }
        }
    }

    async fn rollout(&mut self, r: RolloutCommand) -> Res {
        const COLUMNS: [&str; 4] = ["name", "match", "set", "revision"];
        match r {
            RolloutCommand::List { at } => {
                let (ns, env) = (&at.ns, &at.env);
                let v = self
                    .cfg(|c| async move { c.rollouts(ns, env).await })
                    .await?;
                self.print(&to_json(&v), &COLUMNS)
            }
            RolloutCommand::Get { at, name } => {
                let (ns, env, name) = (&at.ns, &at.env, &name);
                let v = self
                    .cfg(|c| async move { c.rollout(ns, env, name).await })
                    .await?;
                self.print(&to_json(&v), &[])
            }
            RolloutCommand::Set {
                at,
                name,
                file,
                percentage,
                principals,
                tags,
                set,
            } => {
                let req: RolloutRequest = match &file {
                    Some(f) => read_doc(self.io, f)?,
                    None => {
                        let mut matcher = RolloutMatch {
                            percentage,
                            ..RolloutMatch::default()
                        };
                        if !principals.is_empty() {
                            matcher.principals = Some(principals);
                        }
                        if !tags.is_empty() {
                            let mut t = BTreeMap::new();
                            for (k, v) in assignments("--tag", &tags)? {
                                let v = match v {
                                    Value::String(s) => s,
                                    other => other.to_string(),
                                };
                                t.insert(k, v);
                            }
                            matcher.tags = Some(t);
                        }
                        if matcher == RolloutMatch::default() {
                            return Err(usage(
                                "whom does it match? give --percentage, --principal or --tag (or --file)"
                                    .into(),
                            ));
                        }
                        RolloutRequest {
                            matcher,
                            set: assignments("--set", &set)?,
                        }
                    }
                };
                let (ns, env, n, req) = (&at.ns, &at.env, &name, &req);
                let v = self
                    .cfg(|c| async move { c.put_rollout(ns, env, n, req).await })
                    .await?;
                self.print(&to_json(&v), &[])
            }
            RolloutCommand::Promote { at, name } => {
                let (ns, env, n) = (&at.ns, &at.env, &name);
                let w = self
                    .cfg(|c| async move { c.promote_rollout(ns, env, n).await })
                    .await?;
                self.print(&to_json(&w), &[])
            }
            RolloutCommand::Abort { at, name } => {
                let (ns, env, n) = (&at.ns, &at.env, &name);
                let w = self
                    .cfg(|c| async move { c.abort_rollout(ns, env, n).await })
                    .await?;
                self.print(&to_json(&w), &[])
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_json_or_else_strings() {
        assert_eq!(parse_value("42"), json!(42));
        assert_eq!(parse_value("true"), json!(true));
        assert_eq!(parse_value("{\"a\": [1]}"), json!({"a": [1]}));
        assert_eq!(parse_value("\"true\""), json!("true"));
        assert_eq!(parse_value("hello world"), json!("hello world"));
        assert_eq!(parse_value("042"), json!("042"), "not a JSON number");
        assert_eq!(parse_value(""), json!(""));
    }

    #[test]
    fn assignments_split_at_the_first_equals_sign() {
        let m = assignments("--set", &["a=1".into(), "b=x=y".into(), "c=".into()]).unwrap();
        assert_eq!(m["a"], json!(1));
        assert_eq!(m["b"], json!("x=y"));
        assert_eq!(m["c"], json!(""));
        assert_eq!(
            assignments("--set", &["nope".into()]).unwrap_err().code,
            exit::USAGE
        );
    }
}
