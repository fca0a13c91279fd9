//! Prometheus metrics in the text exposition format: requests by route and status, a latency
//! histogram per route, generated and prompt tokens, decode time, queue depth.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds of the latency histogram's buckets, in seconds.
const BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

#[derive(Default)]
struct RouteStats {
    by_status: BTreeMap<u16, u64>,
    /// Count per bucket (not cumulative); the last slot is +Inf.
    buckets: [u64; BUCKETS.len() + 1],
    sum: f64,
    count: u64,
}

/// Counters shared by all handlers.
#[derive(Default)]
pub struct Metrics {
    routes: Mutex<BTreeMap<String, RouteStats>>,
    pub generated_tokens: AtomicU64,
    pub prompt_tokens: AtomicU64,
    /// Decode time of the generation worker, in microseconds.
    pub decode_micros: AtomicU64,
    /// Requests waiting for the generation worker.
    pub queue_depth: AtomicI64,
    /// Reward items scored.
    pub rewarded: AtomicU64,
}

impl Metrics {
    /// Records one finished request.
    pub fn observe(&self, route: &str, status: u16, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        let slot = BUCKETS
            .iter()
            .position(|&b| secs <= b)
            .unwrap_or(BUCKETS.len());
        let mut routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        let r = match routes.get_mut(route) {
            Some(r) => r,
            None => routes.entry(route.to_string()).or_default(),
        };
        *r.by_status.entry(status).or_default() += 1;
        r.buckets[slot] += 1;
        r.sum += secs;
        r.count += 1;
    }

    /// The exposition text.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        let routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        out.push_str("# HELP srcode_requests_total HTTP requests by route and status.\n");
        out.push_str("# TYPE srcode_requests_total counter\n");
        for (route, r) in routes.iter() {
            for (status, n) in &r.by_status {
                let _ = writeln!(
                    out,
                    "srcode_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}"
                );
            }
        }
        out.push_str("# HELP srcode_request_duration_seconds Request latency by route.\n");
        out.push_str("# TYPE srcode_request_duration_seconds histogram\n");
        for (route, r) in routes.iter() {
            let mut acc = 0;
            for (i, b) in BUCKETS.iter().enumerate() {
                acc += r.buckets[i];
                let _ = writeln!(
                    out,
                    "srcode_request_duration_seconds_bucket{{route=\"{route}\",le=\"{b}\"}} {acc}"
                );
            }
            acc += r.buckets[BUCKETS.len()];
            let _ = writeln!(
                out,
                "srcode_request_duration_seconds_bucket{{route=\"{route}\",le=\"+Inf\"}} {acc}"
            );
            let _ = writeln!(
                out,
                "srcode_request_duration_seconds_sum{{route=\"{route}\"}} {}",
                r.sum
            );
            let _ = writeln!(
                out,
                "srcode_request_duration_seconds_count{{route=\"{route}\"}} {}",
                r.count
            );
        }
        drop(routes);
        let gen = self.generated_tokens.load(Ordering::Relaxed);
        let micros = self.decode_micros.load(Ordering::Relaxed);
        let counters = [
            (
                "srcode_generated_tokens_total",
                "Tokens generated.",
                "counter",
                gen as f64,
            ),
            (
                "srcode_prompt_tokens_total",
                "Prompt tokens prefilled.",
                "counter",
                self.prompt_tokens.load(Ordering::Relaxed) as f64,
            ),
            (
                "srcode_decode_seconds_total",
                "Time the generation worker spent decoding.",
                "counter",
                micros as f64 / 1e6,
            ),
            (
                "srcode_tokens_per_second",
                "Generated tokens per second of decode time, over the server's life.",
                "gauge",
                if micros > 0 {
                    gen as f64 / (micros as f64 / 1e6)
                } else {
                    0.0
                },
            ),
            (
                "srcode_queue_depth",
                "Generation requests waiting or running.",
                "gauge",
                self.queue_depth.load(Ordering::Relaxed) as f64,
            ),
            (
                "srcode_rewarded_total",
                "Completions scored by the reward endpoints.",
                "counter",
                self.rewarded.load(Ordering::Relaxed) as f64,
            ),
        ];
        for (name, help, kind, v) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_counts_add_up() {
        let m = Metrics::default();
        m.observe("/a", 200, Duration::from_micros(500));
        m.observe("/a", 200, Duration::from_millis(7));
        m.observe("/a", 400, Duration::from_secs(60));
        let t = m.render();
        assert!(t.contains("srcode_requests_total{route=\"/a\",status=\"200\"} 2"));
        assert!(t.contains("srcode_requests_total{route=\"/a\",status=\"400\"} 1"));
        assert!(t.contains("srcode_request_duration_seconds_bucket{route=\"/a\",le=\"0.001\"} 1"));
        assert!(t.contains("srcode_request_duration_seconds_bucket{route=\"/a\",le=\"0.01\"} 2"));
        assert!(t.contains("srcode_request_duration_seconds_bucket{route=\"/a\",le=\"30\"} 2"));
        assert!(t.contains("srcode_request_duration_seconds_bucket{route=\"/a\",le=\"+Inf\"} 3"));
        assert!(t.contains("srcode_request_duration_seconds_count{route=\"/a\"} 3"));
    }
}
