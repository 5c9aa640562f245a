//! Metrics in the Prometheus text format, served at `GET /metrics`.
//!
//! - [`Metrics`]: a small registry of labelled counters and histograms; the engine, the
//!   sweeper and the alert sink record into it.
//! - [`router`]: the `/metrics` route, merged into the service's router (the webhook
//!   crate stays free of engine knowledge).
//!
//! Families (every name is listed in [`FAMILIES`] with its help text):
//! `kv_rotator_rotations_total{outcome,trigger}`, `kv_rotator_rotation_attempts_total`,
//! `kv_rotator_rotation_duration_seconds{outcome}`, `kv_rotator_step_duration_seconds{step}`,
//! `kv_rotator_sweeps_total{result}`, `kv_rotator_sweep_enqueued_total{reason}`,
//! `kv_rotator_failure_tags_total{result}`, `kv_rotator_alerts_total{result}`.
//! Labels carry names of outcomes, steps and triggers only — never a secret's value.
//!
//! A registry of this size is written here rather than pulled in: it needs no global
//! state, no macros and no dependency beyond `std`.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::{Arc, Mutex};

use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

/// Upper bounds of the histogram buckets, seconds.
const BUCKETS: &[f64] = &[0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0];

/// Every family: name, type, help.
pub const FAMILIES: &[(&str, &str, &str)] = &[
    ("kv_rotator_rotations_total", "counter", "Rotation requests finished, by outcome and trigger."),
    ("kv_rotator_rotation_attempts_total", "counter", "Protocol attempts made (retries included)."),
    ("kv_rotator_rotation_duration_seconds", "histogram", "Time from dequeue to the end of a request, by outcome."),
    ("kv_rotator_step_duration_seconds", "histogram", "Time spent in each protocol step."),
    ("kv_rotator_sweeps_total", "counter", "Scans of the vault for journals and secrets near expiry, by result."),
    ("kv_rotator_sweep_enqueued_total", "counter", "Rotations the sweeper enqueued, by reason."),
    ("kv_rotator_failure_tags_total", "counter", "Failure tags written on secrets after the retry cap, by result."),
    ("kv_rotator_alerts_total", "counter", "Alerts sent to the configured sinks, by result."),
];

type Labels = Vec<(String, String)>;

#[derive(Debug, Clone, Default)]
struct Histogram {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

#[derive(Debug, Default)]
struct State {
    counters: BTreeMap<(&'static str, Labels), u64>,
    histograms: BTreeMap<(&'static str, Labels), Histogram>,
}

/// The registry. Cheap to share (`Arc`); recording takes a short lock.
#[derive(Debug, Default)]
pub struct Metrics {
    state: Mutex<State>,
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

impl Metrics {
    /// Adds `by` to counter `name` with `pairs` as labels.
    pub fn add(&self, name: &'static str, pairs: &[(&str, &str)], by: u64) {
        let mut state = self.state.lock().expect("metrics poisoned");
        *state.counters.entry((name, labels(pairs))).or_default() += by;
    }

    /// Adds one to counter `name`.
    pub fn inc(&self, name: &'static str, pairs: &[(&str, &str)]) {
        self.add(name, pairs, 1);
    }

    /// Records `seconds` in histogram `name`.
    pub fn observe(&self, name: &'static str, pairs: &[(&str, &str)], seconds: f64) {
        let mut state = self.state.lock().expect("metrics poisoned");
        let h = state.histograms.entry((name, labels(pairs))).or_default();
        if h.counts.is_empty() {
            h.counts = vec![0; BUCKETS.len()];
        }
        for (i, bound) in BUCKETS.iter().enumerate() {
            if seconds <= *bound {
                h.counts[i] += 1;
            }
        }
        h.sum += seconds;
        h.count += 1;
    }

    /// The value of counter `name` with exactly these labels (0 if never recorded).
    pub fn counter(&self, name: &str, pairs: &[(&str, &str)]) -> u64 {
        let state = self.state.lock().expect("metrics poisoned");
        let want = labels(pairs);
        state.counters.iter().find(|((n, l), _)| *n == name && *l == want).map_or(0, |(_, v)| *v)
    }

    /// The Prometheus text exposition (format 0.0.4) of everything recorded.
    pub fn render(&self) -> String {
        let state = self.state.lock().expect("metrics poisoned");
        let mut out = String::new();
        for (family, kind, help) in FAMILIES {
            let _ = writeln!(out, "# HELP {family} {help}\n# TYPE {family} {kind}");
            for ((name, l), value) in &state.counters {
                if name == family {
                    let _ = writeln!(out, "{name}{} {value}", render_labels(l, None));
                }
            }
            for ((name, l), h) in &state.histograms {
                if name != family {
                    continue;
                }
                for (bound, count) in BUCKETS.iter().zip(&h.counts) {
                    let _ = writeln!(out, "{name}_bucket{} {count}", render_labels(l, Some(&bound.to_string())));
                }
                let _ = writeln!(out, "{name}_bucket{} {}", render_labels(l, Some("+Inf")), h.count);
                let _ = writeln!(out, "{name}_sum{} {}", render_labels(l, None), h.sum);
                let _ = writeln!(out, "{name}_count{} {}", render_labels(l, None), h.count);
            }
        }
        out
    }
}

fn render_labels(l: &Labels, le: Option<&str>) -> String {
    let mut parts: Vec<String> = l.iter().map(|(k, v)| format!("{k}=\"{}\"", escape(v))).collect();
    if let Some(le) = le {
        parts.push(format!("le=\"{le}\""));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", parts.join(","))
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// `GET /metrics` over `metrics`.
pub fn router(metrics: Arc<Metrics>) -> Router {
    Router::new().route(
        "/metrics",
        get(move || {
            let body = metrics.render();
            async move { ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], body).into_response() }
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_and_histograms_render_in_the_text_format() {
        let m = Metrics::default();
        m.inc("kv_rotator_rotations_total", &[("outcome", "rotated"), ("trigger", "manual")]);
        m.inc("kv_rotator_rotations_total", &[("outcome", "rotated"), ("trigger", "manual")]);
        m.observe("kv_rotator_rotation_duration_seconds", &[("outcome", "rotated")], 0.3);
        let text = m.render();
        assert!(text.contains("# TYPE kv_rotator_rotations_total counter"), "{text}");
        assert!(text.contains("kv_rotator_rotations_total{outcome=\"rotated\",trigger=\"manual\"} 2"), "{text}");
        assert!(
            text.contains("kv_rotator_rotation_duration_seconds_bucket{outcome=\"rotated\",le=\"0.25\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("kv_rotator_rotation_duration_seconds_bucket{outcome=\"rotated\",le=\"0.5\"} 1"),
            "{text}"
        );
        assert!(text.contains("kv_rotator_rotation_duration_seconds_bucket{outcome=\"rotated\",le=\"+Inf\"} 1"));
        assert!(text.contains("kv_rotator_rotation_duration_seconds_count{outcome=\"rotated\"} 1"));
        assert_eq!(m.counter("kv_rotator_rotations_total", &[("outcome", "rotated"), ("trigger", "manual")]), 2);
    }

    #[test]
    fn label_values_are_escaped() {
        let m = Metrics::default();
        m.inc("kv_rotator_alerts_total", &[("result", "a\"b\\c\nd")]);
        assert!(m.render().contains(r#"kv_rotator_alerts_total{result="a\"b\\c\nd"} 1"#));
    }
}
