//! A server-sent events parser (the WHATWG HTML "event stream interpretation"), fed the body's
//! bytes as they arrive in chunks of any size.
//!
//! Lines end in CRLF, LF or CR (a CRLF split across two chunks is one line end); a line
//! starting with `:` is a comment; `data` lines of one event are joined with `\n`; an `id`
//! holding NUL is ignored; a blank line dispatches the event, unless it has no data. A leading
//! byte-order mark is dropped.

use std::time::Duration;

use crate::Error;

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// Its type (`event:`), `message` when it named none.
    pub event: String,
    /// Its data lines, joined with `\n`.
    pub data: String,
    /// The last event ID at dispatch (the stream's, which persists across events), if any.
    pub id: Option<String>,
}

/// An incremental event-stream parser.
#[derive(Debug)]
pub struct SseParser {
    /// The bytes of an unfinished line.
    line: Vec<u8>,
    /// The previous chunk ended in CR: an LF starting this one ends nothing.
    after_cr: bool,
    /// Nothing has been read yet (a byte-order mark may come).
    at_start: bool,
    event: String,
    data: String,
    last_id: String,
    retry: Option<Duration>,
    max_event: usize,
}

impl Default for SseParser {
    fn default() -> Self {
        SseParser::new()
    }
}

/// The most an event (or an unfinished line) may hold by default: a snapshot is one event.
pub const DEFAULT_MAX_EVENT_BYTES: usize = 64 << 20;

impl SseParser {
    /// A parser at the start of a stream.
    pub fn new() -> SseParser {
        SseParser::with_max_event_bytes(DEFAULT_MAX_EVENT_BYTES)
    }

    /// A parser that refuses events (or lines) longer than `max` bytes, so a broken or hostile
    /// server cannot make it hold unbounded memory.
    pub fn with_max_event_bytes(max: usize) -> SseParser {
        SseParser {
            line: Vec::new(),
            after_cr: false,
            at_start: true,
            event: String::new(),
            data: String::new(),
            last_id: String::new(),
            retry: None,
            max_event: max,
        }
    }

    /// The last event ID the stream set (empty ones are none).
    pub fn last_event_id(&self) -> Option<&str> {
        Some(self.last_id.as_str()).filter(|s| !s.is_empty())
    }

    /// The reconnection time the stream asked for (`retry:`), if any.
    pub fn retry(&self) -> Option<Duration> {
        self.retry
    }

    /// Reads `bytes`; the events they complete, in order. An error means an event or line
    /// over the size limit: abandon the stream.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Vec<SseEvent>, Error> {
        const BOM: &[u8] = b"\xEF\xBB\xBF";
        let mut out = Vec::new();
        let mut bytes = bytes;
        let held;
        if self.at_start {
            // The BOM may itself be split across chunks: hold a prefix of it back.
            self.line.extend_from_slice(bytes);
            if self.line.len() < BOM.len() && BOM.starts_with(&self.line) {
                return Ok(out);
            }
            self.at_start = false;
            held = std::mem::take(&mut self.line);
            bytes = held.strip_prefix(BOM).unwrap_or(&held);
        }
        for &b in bytes {
            if std::mem::take(&mut self.after_cr) && b == b'\n' {
                continue;
            }
            match b {
                b'\n' => self.end_line(&mut out)?,
                b'\r' => {
                    self.end_line(&mut out)?;
                    self.after_cr = true;
                }
                _ => {
                    if self.line.len() >= self.max_event {
                        return Err(self.too_long());
                    }
                    self.line.push(b);
                }
            }
        }
        Ok(out)
    }

    fn too_long(&self) -> Error {
        Error::Protocol(format!(
            "an event of the stream is over {} bytes",
            self.max_event
        ))
    }

    fn end_line(&mut self, out: &mut Vec<SseEvent>) -> Result<(), Error> {
        let line = std::mem::take(&mut self.line);
        if line.is_empty() {
            self.dispatch(out);
            return Ok(());
        }
        if line[0] == b':' {
            return Ok(());
        }
        let (field, value): (&[u8], &[u8]) = match line.iter().position(|&c| c == b':') {
            Some(i) => {
                let v = &line[i + 1..];
                (&line[..i], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (&line, &[]),
        };
        let value = String::from_utf8_lossy(value);
        match field {
            b"event" => self.event = value.into_owned(),
            b"data" => {
                if self.data.len() + value.len() + 1 > self.max_event {
                    return Err(self.too_long());
                }
                self.data.push_str(&value);
                self.data.push('\n');
            }
            b"id" if !value.contains('\0') => self.last_id = value.into_owned(),
            b"retry" if !value.is_empty() && value.bytes().all(|c| c.is_ascii_digit()) => {
                self.retry = value.parse::<u64>().ok().map(Duration::from_millis);
            }
            _ => {}
        }
        Ok(())
    }

    fn dispatch(&mut self, out: &mut Vec<SseEvent>) {
        let event = std::mem::take(&mut self.event);
        let mut data = std::mem::take(&mut self.data);
        if data.is_empty() {
            return;
        }
        data.pop();
        out.push(SseEvent {
            event: if event.is_empty() {
                "message".to_owned()
            } else {
                event
            },
            data,
            id: self.last_event_id().map(str::to_owned),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(event: &str, data: &str, id: Option<&str>) -> SseEvent {
        SseEvent {
            event: event.into(),
            data: data.into(),
            id: id.map(Into::into),
        }
    }

    /// Feeds `input` in chunks of `n` bytes.
    fn parse_in_chunks(input: &[u8], n: usize) -> Vec<SseEvent> {
        let mut p = SseParser::new();
        input.chunks(n).flat_map(|c| p.feed(c).unwrap()).collect()
    }

    #[test]
    fn events_with_ids_types_and_multi_line_data() {
        let input = b"event: reset\nid: 3\ndata: {\"a\":\ndata:  1}\n\n: heartbeat\n\nevent: change\nid: 4\ndata: x\n\n";
        let want = vec![
            ev("reset", "{\"a\":\n 1}", Some("3")),
            ev("change", "x", Some("4")),
        ];
        for n in 1..=input.len() {
            assert_eq!(parse_in_chunks(input, n), want, "chunks of {n}");
        }
    }

    #[test]
    fn crlf_and_cr_line_ends_even_split_across_chunks() {
        let input = b"id: 7\r\ndata: a\r\n\r\ndata: b\r\rdata: c\n\n";
        let want = vec![
            ev("message", "a", Some("7")),
            ev("message", "b", Some("7")),
            ev("message", "c", Some("7")),
        ];
        for n in 1..=input.len() {
            assert_eq!(parse_in_chunks(input, n), want, "chunks of {n}");
        }
    }

    #[test]
    fn comments_and_events_without_data_dispatch_nothing() {
        let mut p = SseParser::new();
        assert!(p.feed(b": heartbeat\n\n").unwrap().is_empty());
        // An event with a type and an id but no data dispatches nothing; its id stays.
        assert!(p.feed(b"event: change\nid: 9\n\n").unwrap().is_empty());
        assert_eq!(p.last_event_id(), Some("9"));
        // ...and its type does not leak into the next event.
        assert_eq!(
            p.feed(b"data: x\n\n").unwrap(),
            vec![ev("message", "x", Some("9"))]
        );
    }

    #[test]
    fn field_edge_cases() {
        let mut p = SseParser::new();
        // No space after the colon; a bare `data` line is an empty data line; unknown fields
        // are ignored; only one leading space is stripped.
        let got = p.feed(b"data:a\ndata\nfoo: bar\ndata:   b\n\n").unwrap();
        assert_eq!(got, vec![ev("message", "a\n\n  b", None)]);
        // `data:` alone is one empty line: an event with empty data.
        assert_eq!(p.feed(b"data:\n\n").unwrap(), vec![ev("message", "", None)]);
        // An id with NUL is ignored; an empty id clears it.
        p.feed(b"id: 5\ndata: x\n\nid: 6\0\ndata: y\n\n").unwrap();
        assert_eq!(p.last_event_id(), Some("5"));
        p.feed(b"id\ndata: z\n\n").unwrap();
        assert_eq!(p.last_event_id(), None);
        // retry takes digits only.
        p.feed(b"retry: 1500\nretry: 2s\n").unwrap();
        assert_eq!(p.retry(), Some(Duration::from_millis(1500)));
        // An unfinished event is not dispatched.
        assert!(p.feed(b"data: half").unwrap().is_empty());
    }

    #[test]
    fn a_byte_order_mark_is_dropped_even_when_split() {
        let input = b"\xEF\xBB\xBFdata: x\n\n";
        for n in 1..=input.len() {
            assert_eq!(parse_in_chunks(input, n), vec![ev("message", "x", None)]);
        }
        // Only at the very start.
        let mut p = SseParser::new();
        p.feed(b"data: a\n\n").unwrap();
        assert_eq!(
            p.feed(b"\xEF\xBB\xBFdata: b\n\n").unwrap(),
            Vec::<SseEvent>::new(),
            "a BOM later is part of a field name"
        );
    }

    #[test]
    fn invalid_utf8_is_replaced_not_fatal() {
        let mut p = SseParser::new();
        assert_eq!(
            p.feed(b"data: \xFFok\n\n").unwrap(),
            vec![ev("message", "\u{FFFD}ok", None)]
        );
    }

    #[test]
    fn oversized_lines_and_events_are_refused() {
        let mut p = SseParser::with_max_event_bytes(16);
        assert!(p.feed(&[b'a'; 17]).is_err());
        let mut p = SseParser::with_max_event_bytes(16);
        p.feed(b"data: 0123456\n").unwrap();
        assert!(p.feed(b"data: 0123456789\n").is_err());
    }
}
