//! W3C Trace Context (level 1): the `traceparent` header a caller sends so that what Capstan
//! does for a request (its decisions, above all) can be found from the caller's trace.
//!
//! `traceparent` is `version-traceid-parentid-flags`, all lowercase hex: `00-` then 32 digits of
//! trace id, 16 of parent (span) id and 2 of flags. A value that does not parse is ignored, as
//! the specification says: the request is simply not part of a known trace.

/// A parsed `traceparent` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceParent {
    /// The trace id: 32 lowercase hex digits, not all zero.
    pub trace_id: String,
    /// The caller's span id: 16 lowercase hex digits, not all zero.
    pub parent_id: String,
    /// The trace flags (bit 0: sampled).
    pub flags: u8,
}

impl TraceParent {
    /// Whether the caller recorded its span (the `sampled` flag).
    pub fn sampled(&self) -> bool {
        self.flags & 1 == 1
    }
}

/// `version-traceid-parentid-flags`: 2 + 1 + 32 + 1 + 16 + 1 + 2.
const VERSION_00_LEN: usize = 55;

/// Parses a `traceparent` header value; `None` when it is not a valid one.
///
/// Version `00` is exactly four fields. A later version (any but the invalid `ff`) may append
/// fields after a `-`, which are skipped, so that a caller on a newer version is still in its
/// trace. Leading and trailing spaces and tabs (HTTP's optional whitespace) are allowed;
/// uppercase hex, wrong lengths and all-zero ids are not.
pub fn parse_traceparent(value: &str) -> Option<TraceParent> {
    let value = value.trim_matches([' ', '\t']);
    let b = value.as_bytes();
    if b.len() < VERSION_00_LEN || b[2] != b'-' || b[35] != b'-' || b[52] != b'-' {
        return None;
    }
    let (version, trace_id, parent_id, flags) = (&b[..2], &b[3..35], &b[36..52], &b[53..55]);
    let lower_hex = |f: &[u8]| f.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'));
    let all_zero = |f: &[u8]| f.iter().all(|&c| c == b'0');
    if ![version, trace_id, parent_id, flags]
        .into_iter()
        .all(lower_hex)
        || version == b"ff"
        || all_zero(trace_id)
        || all_zero(parent_id)
    {
        return None;
    }
    // Version 00 ends after the flags; a later version may go on, after a dash.
    match b.get(VERSION_00_LEN) {
        None => {}
        Some(b'-') if version != b"00" => {}
        Some(_) => return None,
    }
    // The first 55 bytes are ASCII (checked above), so these are character boundaries.
    Some(TraceParent {
        trace_id: value.get(3..35)?.to_owned(),
        parent_id: value.get(36..52)?.to_owned(),
        flags: u8::from_str_radix(value.get(53..55)?, 16).ok()?,
    })
}

/// Whether `s` is a W3C trace id: 32 lowercase hex digits, not all zero.
pub fn is_trace_id(s: &str) -> bool {
    s.len() == 32
        && s.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
        && s.bytes().any(|c| c != b'0')
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const PARENT: &str = "00f067aa0ba902b7";

    fn valid(v: &str) -> TraceParent {
        parse_traceparent(v).unwrap_or_else(|| panic!("{v:?} should parse"))
    }

    #[test]
    fn version_00_parses() {
        let tp = valid(&format!("00-{TRACE}-{PARENT}-01"));
        assert_eq!(tp.trace_id, TRACE);
        assert_eq!(tp.parent_id, PARENT);
        assert_eq!(tp.flags, 1);
        assert!(tp.sampled());
        let tp = valid(&format!("00-{TRACE}-{PARENT}-00"));
        assert!(!tp.sampled());
        // Flags other than `sampled` are kept, not refused.
        assert_eq!(valid(&format!("00-{TRACE}-{PARENT}-fe")).flags, 0xfe);
    }

    #[test]
    fn optional_whitespace_around_the_value_is_allowed() {
        for v in [
            format!(" 00-{TRACE}-{PARENT}-01"),
            format!("\t00-{TRACE}-{PARENT}-01"),
            format!("00-{TRACE}-{PARENT}-01 "),
            format!("\t 00-{TRACE}-{PARENT}-01 \t"),
        ] {
            assert_eq!(valid(&v).trace_id, TRACE);
        }
    }

    #[test]
    fn future_versions_keep_the_first_four_fields() {
        assert_eq!(valid(&format!("cc-{TRACE}-{PARENT}-01")).trace_id, TRACE);
        let tp = valid(&format!(
            "cc-{TRACE}-{PARENT}-01-what-the-future-will-be-like"
        ));
        assert_eq!((tp.trace_id.as_str(), tp.flags), (TRACE, 1));
        // The flags must still end at a dash.
        assert_eq!(
            parse_traceparent(&format!("cc-{TRACE}-{PARENT}-01.what-the-future")),
            None
        );
    }

    #[test]
    fn invalid_values_are_refused() {
        let t = TRACE;
        let p = PARENT;
        for v in [
            String::new(),
            "garbage".into(),
            // Version 00 has exactly four fields.
            format!("00-{t}-{p}-01-extra"),
            format!("00-{t}-{p}-01."),
            // Version ff is invalid; versions are two lowercase hex digits.
            format!("ff-{t}-{p}-01"),
            format!("0-{t}-{p}-01"),
            format!("000-{t}-{p}-01"),
            format!(".0-{t}-{p}-01"),
            format!("CC-{t}-{p}-01"),
            // Trace ids: 32 lowercase hex, not all zero.
            format!("00-{}-{p}-01", "0".repeat(32)),
            format!("00-{}-{p}-01", t.to_uppercase()),
            format!("00-{}-{p}-01", &t[..31]),
            format!("00-{t}0-{p}-01"),
            format!("00-.{}-{p}-01", &t[1..]),
            // Parent ids: 16 lowercase hex, not all zero.
            format!("00-{t}-{}-01", "0".repeat(16)),
            format!("00-{t}-{}-01", p.to_uppercase()),
            format!("00-{t}-{}-01", &p[..15]),
            format!("00-{t}-{p}0-01"),
            // Flags: two lowercase hex digits.
            format!("00-{t}-{p}-1"),
            format!("00-{t}-{p}-001"),
            format!("00-{t}-{p}-0."),
            format!("00-{t}-{p}-0F"),
            // Wrong separators, and non-ASCII where a dash belongs.
            format!("00_{t}-{p}-01"),
            format!("00-{t}é{p}-01"),
        ] {
            assert_eq!(parse_traceparent(&v), None, "{v:?}");
        }
    }

    #[test]
    fn trace_ids() {
        assert!(is_trace_id(TRACE));
        assert!(!is_trace_id(&TRACE.to_uppercase()));
        assert!(!is_trace_id(&"0".repeat(32)));
        assert!(!is_trace_id(&TRACE[..31]));
        assert!(!is_trace_id(&format!("{TRACE}0")));
        assert!(!is_trace_id("4bf92f3577b34da6a3ce929d0e0e473g"));
    }
}
