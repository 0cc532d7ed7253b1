//! Prometheus metrics: request counts and latency histograms per route, plus service counters.
//! Rendered in the text exposition format at `/metrics`.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use capstan_http::Metric;

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

#[derive(Default)]
struct Series {
    by_status: BTreeMap<u16, u64>,
    buckets: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

/// Per-route HTTP metrics.
#[derive(Default)]
pub struct HttpMetrics {
    series: Mutex<BTreeMap<(String, String), Series>>,
    /// Event streams served outside hyper now ([`crate::direct`]).
    pub direct_streams: Arc<AtomicUsize>,
}

impl HttpMetrics {
    /// Records one request.
    pub fn observe(&self, route: &str, method: &str, status: u16, seconds: f64) {
        let mut map = self.series.lock().unwrap_or_else(PoisonError::into_inner);
        let key = (route.to_owned(), method.to_owned());
        let s = map.entry(key).or_default();
        *s.by_status.entry(status).or_default() += 1;
        if let Some(i) = BUCKETS.iter().position(|b| seconds <= *b) {
            s.buckets[i] += 1;
        }
        s.count += 1;
        s.sum += seconds;
    }

    /// The exposition text, followed by the services' own metrics.
    pub fn render(&self, services: &[Metric]) -> String {
        let map = self.series.lock().unwrap_or_else(PoisonError::into_inner);
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP capstan_http_requests_total HTTP requests by route, method and status."
        );
        let _ = writeln!(out, "# TYPE capstan_http_requests_total counter");
        for ((route, method), s) in map.iter() {
            for (status, n) in &s.by_status {
                let _ = writeln!(
                    out,
                    "capstan_http_requests_total{{route=\"{route}\",method=\"{method}\",status=\"{status}\"}} {n}"
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP capstan_http_errors_total HTTP responses with status >= 400, by class."
        );
        let _ = writeln!(out, "# TYPE capstan_http_errors_total counter");
        for ((route, method), s) in map.iter() {
            for (class, lo, hi) in [("4xx", 400, 499), ("5xx", 500, 599)] {
                let n: u64 = s.by_status.range(lo..=hi).map(|(_, n)| n).sum();
                if n > 0 {
                    let _ = writeln!(
                        out,
                        "capstan_http_errors_total{{route=\"{route}\",method=\"{method}\",class=\"{class}\"}} {n}"
                    );
                }
            }
        }
        let _ = writeln!(out, "# HELP capstan_http_request_duration_seconds HTTP request latency by route and method.");
        let _ = writeln!(
            out,
            "# TYPE capstan_http_request_duration_seconds histogram"
        );
        for ((route, method), s) in map.iter() {
            let labels = format!("route=\"{route}\",method=\"{method}\"");
            let mut cumulative = 0;
            for (b, n) in BUCKETS.iter().zip(s.buckets.iter()) {
                cumulative += n;
                let _ = writeln!(
                    out,
                    "capstan_http_request_duration_seconds_bucket{{{labels},le=\"{b}\"}} {cumulative}"
                );
            }
            let _ = writeln!(
                out,
                "capstan_http_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {}",
                s.count
            );
            let _ = writeln!(
                out,
                "capstan_http_request_duration_seconds_sum{{{labels}}} {}",
                s.sum
            );
            let _ = writeln!(
                out,
                "capstan_http_request_duration_seconds_count{{{labels}}} {}",
                s.count
            );
        }
        let _ = writeln!(
            out,
            "# HELP capstan_http_direct_streams HTTP/1.1 event streams served outside hyper's connection buffers now."
        );
        let _ = writeln!(out, "# TYPE capstan_http_direct_streams gauge");
        let _ = writeln!(
            out,
            "capstan_http_direct_streams {}",
            self.direct_streams.load(Ordering::Relaxed)
        );
        for m in services {
            let _ = writeln!(out, "# HELP {} {}", m.name, m.help);
            let _ = writeln!(out, "# TYPE {} {}", m.name, m.kind);
            let _ = writeln!(out, "{} {}", m.name, m.value);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counts_and_cumulative_buckets() {
        let m = HttpMetrics::default();
        m.observe("/x", "GET", 200, 0.0007);
        m.observe("/x", "GET", 500, 0.2);
        let text = m.render(&[Metric::counter("capstan_x_total", "X.", 3)]);
        assert!(text.contains("# TYPE capstan_x_total counter\ncapstan_x_total 3"));
        assert!(text
            .contains("capstan_http_requests_total{route=\"/x\",method=\"GET\",status=\"200\"} 1"));
        assert!(
            text.contains("capstan_http_errors_total{route=\"/x\",method=\"GET\",class=\"5xx\"} 1")
        );
        assert!(text.contains("le=\"0.001\"} 1"));
        assert!(text.contains("le=\"0.25\"} 2"));
        assert!(text.contains(
            "capstan_http_request_duration_seconds_count{route=\"/x\",method=\"GET\"} 2"
        ));
    }
}
