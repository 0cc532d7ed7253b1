//! Wildcard patterns with policy variables.
//!
//! A pattern is a list of tokens: literal text, `*` (any run of characters, `/` and `:`
//! included), `?` (one character) and `${variable}` references resolved per request. Escapes
//! `${*}`, `${?}` and `${$}` are literal characters, never wildcards.

use crate::context::Context;

/// One token of a pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Tok {
    /// Literal text.
    Lit(String),
    /// `*`: any run of characters.
    Star,
    /// `?`: exactly one character.
    One,
    /// `${key}` or `${key, 'default'}` (key lowercased).
    Var {
        key: String,
        default: Option<String>,
    },
}

/// A parsed pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Pattern {
    toks: Vec<Tok>,
    has_vars: bool,
}

/// How to read a pattern's text.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Syntax {
    /// `*` and `?` are wildcards (Like operators, actions, resources) or literal (Equals).
    pub wildcards: bool,
    /// `${…}` is a variable (policy version 2012-10-17, where variables are allowed) or literal.
    pub variables: bool,
    /// Lowercase literal text (case-insensitive matching).
    pub fold_case: bool,
}

fn push_lit(toks: &mut Vec<Tok>, s: &str) {
    if s.is_empty() {
        return;
    }
    if let Some(Tok::Lit(prev)) = toks.last_mut() {
        prev.push_str(s);
    } else {
        toks.push(Tok::Lit(s.to_owned()));
    }
}

impl Pattern {
    /// Parses `text`; `Err` says what is wrong with a `${…}` reference.
    pub fn parse(text: &str, syntax: Syntax) -> Result<Pattern, String> {
        let mut toks = Vec::new();
        let mut rest = text;
        let mut has_vars = false;
        while !rest.is_empty() {
            if syntax.variables && rest.starts_with("${") {
                let end = rest
                    .find('}')
                    .ok_or_else(|| format!("unterminated variable in {text:?}"))?;
                let inner = &rest[2..end];
                rest = &rest[end + 1..];
                match inner {
                    "*" | "?" | "$" => push_lit(&mut toks, inner),
                    _ => {
                        let (key, default) = parse_variable(inner).ok_or_else(|| {
                            format!("malformed variable ${{{inner}}} in {text:?}")
                        })?;
                        toks.push(Tok::Var { key, default });
                        has_vars = true;
                    }
                }
                continue;
            }
            let c = rest.chars().next().unwrap_or_default();
            let len = c.len_utf8();
            match c {
                '*' if syntax.wildcards => {
                    if toks.last() != Some(&Tok::Star) {
                        toks.push(Tok::Star);
                    }
                }
                '?' if syntax.wildcards => toks.push(Tok::One),
                _ => {
                    let piece = &rest[..len];
                    if syntax.fold_case {
                        push_lit(&mut toks, &piece.to_lowercase());
                    } else {
                        push_lit(&mut toks, piece);
                    }
                }
            }
            rest = &rest[len..];
        }
        Ok(Pattern { toks, has_vars })
    }

    /// Whether the pattern references variables.
    pub fn has_vars(&self) -> bool {
        self.has_vars
    }

    /// The literal text before the first wildcard or variable.
    pub fn literal_prefix(&self) -> &str {
        match self.toks.first() {
            Some(Tok::Lit(s)) => s,
            _ => "",
        }
    }

    /// Whether the pattern is exactly `*`.
    pub fn is_star(&self) -> bool {
        self.toks == [Tok::Star]
    }

    /// Resolves variables against `ctx`: `None` when one cannot be resolved. A pattern without
    /// variables is borrowed, not copied (the common case, on the hot path).
    pub fn resolve(&self, ctx: &Context, fold_case: bool) -> Option<std::borrow::Cow<'_, Pattern>> {
        if !self.has_vars {
            return Some(std::borrow::Cow::Borrowed(self));
        }
        let mut toks = Vec::with_capacity(self.toks.len());
        for t in &self.toks {
            match t {
                Tok::Var { key, default } => {
                    let v = ctx
                        .single(key)
                        .map(str::to_owned)
                        .or_else(|| default.clone())?;
                    let v = if fold_case { v.to_lowercase() } else { v };
                    push_lit(&mut toks, &v);
                }
                Tok::Lit(s) => push_lit(&mut toks, s),
                other => toks.push(other.clone()),
            }
        }
        Some(std::borrow::Cow::Owned(Pattern {
            toks,
            has_vars: false,
        }))
    }

    /// Whether `text` matches (variables must be resolved first; an unresolved one never
    /// matches).
    pub fn matches(&self, text: &str) -> bool {
        if self.has_vars {
            return false;
        }
        glob(&self.toks, text)
    }

    /// The pattern as literal text, if it has no wildcard or variable.
    pub fn as_literal(&self) -> Option<&str> {
        match self.toks.as_slice() {
            [] => Some(""),
            [Tok::Lit(s)] => Some(s),
            _ => None,
        }
    }
}

/// `key` or `key, 'default'`.
fn parse_variable(inner: &str) -> Option<(String, Option<String>)> {
    let (key, default) = match inner.split_once(',') {
        Some((k, d)) => {
            let d = d.trim();
            let d = d.strip_prefix('\'')?.strip_suffix('\'')?;
            (k.trim(), Some(d.to_owned()))
        }
        None => (inner.trim(), None),
    };
    let ok = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ":/_-.".contains(c));
    ok.then(|| (key.to_ascii_lowercase(), default))
}

fn char_len_at(s: &str, i: usize) -> usize {
    s[i..].chars().next().map_or(1, char::len_utf8)
}

/// Wildcard matching with backtracking to the last `*` (linear in practice).
fn glob(p: &[Tok], t: &str) -> bool {
    let (mut pi, mut ti) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    loop {
        if pi < p.len() {
            match &p[pi] {
                Tok::Star => {
                    star = Some((pi + 1, ti));
                    pi += 1;
                    continue;
                }
                Tok::One if ti < t.len() => {
                    ti += char_len_at(t, ti);
                    pi += 1;
                    continue;
                }
                Tok::Lit(s) if t[ti..].starts_with(s.as_str()) => {
                    ti += s.len();
                    pi += 1;
                    continue;
                }
                _ => {}
            }
        } else if ti == t.len() {
            return true;
        }
        match star {
            Some((sp, st)) if st < t.len() => {
                let next = st + char_len_at(t, st);
                star = Some((sp, next));
                pi = sp;
                ti = next;
            }
            _ => return false,
        }
    }
}

/// Splits an ARN or CRN into its colon-separated parts: a CRN
/// (`crn:capstan:<service>:<tenant>:<path>`) has five, an ARN six; the last part keeps any
/// further colons.
pub(crate) fn arn_parts(s: &str) -> Vec<&str> {
    let n = if s.starts_with("crn:") { 5 } else { 6 };
    s.splitn(n, ':').collect()
}

/// ARN-style matching: every colon-separated part is matched on its own, so `*` does not cross a
/// colon except in the last part.
#[cfg(test)]
fn arn_match(pattern: &str, value: &str) -> bool {
    ArnPattern::parse(pattern, false).is_ok_and(|p| p.matches(&Context::new(), value))
}

/// An ARN/CRN pattern (`ArnLike`, `ArnEquals`), compiled once, part by part. Variables are
/// resolved into each part as literal text: a substituted `*` is never a wildcard, and a
/// substituted `:` never splits a part.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ArnPattern {
    /// `None` for `*` (any ARN).
    parts: Option<Vec<Pattern>>,
}

impl ArnPattern {
    /// Compiles `text`; `${…}` is a variable when `variables` (policy version 2012-10-17).
    pub(crate) fn parse(text: &str, variables: bool) -> Result<ArnPattern, String> {
        if text == "*" {
            return Ok(ArnPattern { parts: None });
        }
        let syntax = Syntax {
            wildcards: true,
            variables,
            fold_case: false,
        };
        let parts = split_outside_variables(text, if text.starts_with("crn:") { 5 } else { 6 })
            .into_iter()
            .map(|p| Pattern::parse(p, syntax))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ArnPattern { parts: Some(parts) })
    }

    /// Whether `value` matches, with variables taken from `ctx` (an unresolved one never
    /// matches).
    pub(crate) fn matches(&self, ctx: &Context, value: &str) -> bool {
        let Some(parts) = &self.parts else {
            return true;
        };
        let values = arn_parts(value);
        values.len() == parts.len()
            && parts
                .iter()
                .zip(values)
                .all(|(p, v)| p.resolve(ctx, false).is_some_and(|p| p.matches(v)))
    }
}

/// Splits at `:` into at most `n` parts, never inside `${…}` (a variable such as
/// `${capstan:tenant}` is one token of one part).
pub(crate) fn split_outside_variables(s: &str, n: usize) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut start, mut depth) = (0usize, 0usize);
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'$' if bytes.get(i + 1) == Some(&b'{') => {
                depth += 1;
                i += 1;
            }
            b'}' if depth > 0 => depth -= 1,
            b':' if depth == 0 && parts.len() + 1 < n => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    parts.push(&s[start..]);
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIKE: Syntax = Syntax {
        wildcards: true,
        variables: true,
        fold_case: false,
    };

    fn m(p: &str, t: &str) -> bool {
        Pattern::parse(p, LIKE).unwrap().matches(t)
    }

    #[test]
    fn wildcards_cross_slashes_and_colons() {
        assert!(m("bucket/*/test/*", "bucket/1/2/test/3/object.jpg"));
        assert!(m("bucket/*/test/*", "bucket//test/object.jpg"));
        assert!(!m("bucket/*/test/*", "bucket/1/2/tes/3"));
        assert!(m("a?c", "abc") && !m("a?c", "ac") && m("a?c", "aéc"));
        assert!(m("*", "") && m("*", "anything:at/all"));
        assert!(m("a*b*c", "axxbyyc") && !m("a*b*c", "axxbyy"));
        assert!(!m("abc", "abcd") && !m("abc", "ab"));
    }

    #[test]
    fn aws_string_like_vs_arn_like() {
        let p = "arn:aws:someservice:*:111122223333:finance/*";
        let v = "arn:aws:someservice:us-east-2:999999999999:store/abc:111122223333:finance/document.txt";
        assert!(m(p, v), "StringLike matches");
        assert!(!arn_match(p, v), "ArnLike does not");
        assert!(arn_match(
            p,
            "arn:aws:someservice:us-east-2:111122223333:finance/x:y"
        ));
        assert!(arn_match(
            "arn:aws:s3:::bucket/*/test/*",
            "arn:aws:s3:::bucket/1/2/test/3/object.jpg"
        ));
        assert!(arn_match(
            "crn:capstan:config:*:ns/*",
            "crn:capstan:config:acme:ns/a:b"
        ));
        assert!(!arn_match(
            "crn:capstan:config:*:ns/*",
            "crn:capstan:orders:acme:ns/a"
        ));
    }

    #[test]
    fn escapes_are_literal_and_variables_resolve() {
        let p = Pattern::parse("a${*}b${?}${$}", LIKE).unwrap();
        assert!(p.matches("a*b?$") && !p.matches("axb?$"));
        let ctx = Context::new().with("capstan:principal", ["svc_1"]);
        let p = Pattern::parse("home/${capstan:principal}/*", LIKE).unwrap();
        assert!(
            !p.matches("home/svc_1/x"),
            "unresolved patterns never match"
        );
        let r = p.resolve(&ctx, false).unwrap();
        assert!(r.matches("home/svc_1/x") && !r.matches("home/svc_2/x"));
        let p = Pattern::parse("${capstan:PrincipalTag/team, 'none'}", LIKE).unwrap();
        assert!(p.resolve(&ctx, false).unwrap().matches("none"));
        let p = Pattern::parse("${capstan:nothing}", LIKE).unwrap();
        assert!(p.resolve(&ctx, false).is_none());
        // A value substituted into a pattern is literal: its `*` is no wildcard.
        let ctx = Context::new().with("k", ["a*"]);
        let p = Pattern::parse("${k}", LIKE).unwrap();
        let p = p.resolve(&ctx, false).unwrap();
        assert!(p.matches("a*") && !p.matches("abc"));
        assert!(Pattern::parse("${unterminated", LIKE).is_err());
        assert!(Pattern::parse("${bad key}", LIKE).is_err());
    }
}
