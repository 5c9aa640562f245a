//! Metrics in the OpenMetrics text format (what Prometheus scrapes), served at `GET /metrics`.
//!
//! - [`Metrics`]: the labelled counters, gauges and histograms; the engine, the
//!   sweeper, the alert sink, the webhook (as its [`DeliveryObserver`]) and the vault
//!   client (through [`crate::vault_health`]) record into it.
//! - [`router`]: the `/metrics` route, merged into the admin listener's router
//!   ([`crate::admin`]), never the internet-facing webhook's.
//!
//! Families (every name is listed in [`FAMILIES`] with its help text):
//! `kv_rotator_rotations_total{outcome,rotator,trigger}`, `kv_rotator_rotation_attempts_total`,
//! `kv_rotator_rotation_duration_seconds{outcome}`, `kv_rotator_step_duration_seconds{step}`,
//! `kv_rotator_sweeps_total{result}`, `kv_rotator_sweep_enqueued_total{reason}`,
//! `kv_rotator_failure_tags_total{result}`, `kv_rotator_alerts_total{result}`,
//! `kv_rotator_notifications_total{event,result}`, `kv_rotator_finish_retries_total`,
//! `kv_rotator_webhook_deliveries_total{outcome}`, `kv_rotator_vault_throttled_total`,
//! `kv_rotator_vault_retries_total`, `kv_rotator_journals_kept_total{reason}`; gauges `kv_rotator_queue_depth`,
//! `kv_rotator_journal_age_seconds`, `kv_rotator_managed_secrets{state}`,
//! `kv_rotator_last_sweep_timestamp_seconds{result}`.
//! Labels carry names of outcomes, steps, rotator kinds, triggers and states only — never
//! a secret's value, nor its name (a label per secret would be unbounded, and tell
//! whoever scrapes which secrets exist).
//!
//! The registry is the `prometheus-client` crate's (no global state; the OpenMetrics text
//! format, which Prometheus scrapes); this module fixes the families and their labels.

use std::collections::HashMap;
use std::sync::Arc;

use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Upper bounds of the histogram buckets, seconds.
const BUCKETS: &[f64] = &[0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0];

/// Every family: name, type, help.
pub const FAMILIES: &[(&str, &str, &str)] = &[
    (
        "kv_rotator_rotations_total",
        "counter",
        "Rotation requests finished, by outcome, rotator (the target profile's kind; unknown before it is read) and trigger.",
    ),
    ("kv_rotator_rotation_attempts_total", "counter", "Protocol attempts made (retries included)."),
    ("kv_rotator_rotation_duration_seconds", "histogram", "Time from dequeue to the end of a request, by outcome."),
    ("kv_rotator_step_duration_seconds", "histogram", "Time spent in each protocol step."),
    ("kv_rotator_sweeps_total", "counter", "Scans of the vault for journals and secrets near expiry, by result."),
    ("kv_rotator_sweep_enqueued_total", "counter", "Rotations the sweeper enqueued, by reason."),
    ("kv_rotator_failure_tags_total", "counter", "Failure tags written on secrets after the retry cap, by result."),
    ("kv_rotator_alerts_total", "counter", "Alerts sent to the configured sinks, by result."),
    (
        "kv_rotator_notifications_total",
        "counter",
        "CloudEvents for consumers, by event and result (sent, failed after retries, dropped when the queue was full).",
    ),
    (
        "kv_rotator_finish_retries_total",
        "counter",
        "Slow-schedule attempts to finish rotations whose target may already have the new password.",
    ),
    (
        "kv_rotator_webhook_deliveries_total",
        "counter",
        "Event Grid deliveries answered by the webhook, by outcome.",
    ),
    ("kv_rotator_vault_throttled_total", "counter", "Key Vault answers 429 (throttled), retried or not."),
    ("kv_rotator_vault_retries_total", "counter", "Key Vault calls retried by the client's retry policy."),
    (
        "kv_rotator_journals_kept_total",
        "counter",
        "Leftover journal records kept for a later sweep, by reason (target_lag: younger than engine.target_lag_secs).",
    ),
    ("kv_rotator_queue_depth", "gauge", "Rotation requests waiting in the engine's queue."),
    (
        "kv_rotator_journal_age_seconds",
        "gauge",
        "Age of the oldest unfinished journal record at the last sweep (0: none).",
    ),
    (
        "kv_rotator_managed_secrets",
        "gauge",
        "Managed secrets at the last sweep, by state: not_due, due, waiting_for_window, expired, failed (carrying the failure tag).",
    ),
    (
        "kv_rotator_last_sweep_timestamp_seconds",
        "gauge",
        "Unix time of the last sweep, by result (ok, error): the sweep gauges are as old as the last ok one.",
    ),
];

type Labels = Vec<(String, String)>;
type HistogramFamily = Family<Labels, Histogram, fn() -> Histogram>;
type GaugeFamily = Family<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>;

fn new_histogram() -> Histogram {
    Histogram::new(BUCKETS.iter().copied())
}

/// The registry. Cheap to share (`Arc`); recording is lock-free but for new label sets.
pub struct Metrics {
    registry: Registry,
    counters: HashMap<&'static str, Family<Labels, Counter>>,
    histograms: HashMap<&'static str, HistogramFamily>,
    gauges: HashMap<&'static str, GaugeFamily>,
    /// Every counter series made so far, for [`Metrics::counter`] (the crate's families
    /// cannot be walked).
    series: std::sync::Mutex<std::collections::BTreeSet<(&'static str, Labels)>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").field("families", &FAMILIES.len()).finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let mut counters = HashMap::new();
        let mut histograms = HashMap::new();
        let mut gauges = HashMap::new();
        for (name, kind, help) in FAMILIES {
            let help = help.trim_end_matches('.');
            match *kind {
                "counter" => {
                    let family = Family::<Labels, Counter>::default();
                    // The crate appends `_total` to counter names itself.
                    registry.register(name.trim_end_matches("_total"), help, family.clone());
                    counters.insert(*name, family);
                }
                "gauge" => {
                    let family = GaugeFamily::default();
                    registry.register(*name, help, family.clone());
                    gauges.insert(*name, family);
                }
                _ => {
                    let family = HistogramFamily::new_with_constructor(new_histogram);
                    registry.register(*name, help, family.clone());
                    histograms.insert(*name, family);
                }
            }
        }
        Self { registry, counters, histograms, gauges, series: Default::default() }
    }
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

impl Metrics {
    /// Adds `by` to counter `name` with `pairs` as labels. `name` must be a counter of
    /// [`FAMILIES`]; an unknown name is a bug and panics in debug builds.
    pub fn add(&self, name: &'static str, pairs: &[(&str, &str)], by: u64) {
        let Some(family) = self.counters.get(name) else {
            debug_assert!(false, "unknown counter {name}");
            return;
        };
        let labels = labels(pairs);
        if family.get(&labels).is_none() {
            self.series.lock().unwrap_or_else(|p| p.into_inner()).insert((name, labels.clone()));
        }
        family.get_or_create(&labels).inc_by(by);
    }

    /// Adds one to counter `name`.
    pub fn inc(&self, name: &'static str, pairs: &[(&str, &str)]) {
        self.add(name, pairs, 1);
    }

    /// Records `seconds` in histogram `name` (one of [`FAMILIES`]).
    pub fn observe(&self, name: &'static str, pairs: &[(&str, &str)], seconds: f64) {
        match self.histograms.get(name) {
            Some(family) => family.get_or_create(&labels(pairs)).observe(seconds),
            None => debug_assert!(false, "unknown histogram {name}"),
        }
    }

    /// Sets gauge `name` (one of [`FAMILIES`]) with `pairs` as labels to `value`.
    pub fn set(&self, name: &'static str, pairs: &[(&str, &str)], value: f64) {
        match self.gauges.get(name) {
            Some(family) => {
                family.get_or_create(&labels(pairs)).set(value);
            }
            None => debug_assert!(false, "unknown gauge {name}"),
        }
    }

    /// The value of gauge `name` with exactly these labels (`None` if never set).
    pub fn gauge(&self, name: &str, pairs: &[(&str, &str)]) -> Option<f64> {
        self.gauges.get(name).and_then(|family| family.get(&labels(pairs)).map(|g| g.get()))
    }

    /// The sum of counter `name` over its series whose labels include `pairs` (all of
    /// them for `&[]`; 0 if none was recorded): `("outcome", "rotated")` counts every
    /// rotator and trigger.
    pub fn counter(&self, name: &str, pairs: &[(&str, &str)]) -> u64 {
        let Some(family) = self.counters.get(name) else { return 0 };
        let wanted = labels(pairs);
        let series = self.series.lock().unwrap_or_else(|p| p.into_inner());
        series
            .iter()
            .filter(|(series_name, labels)| *series_name == name && wanted.iter().all(|pair| labels.contains(pair)))
            .filter_map(|(_, labels)| family.get(labels).map(|c| c.get()))
            .sum()
    }

    /// The OpenMetrics text exposition of everything recorded.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        #[cfg(feature = "leak-ledger")]
        kv_rotator_leakscan::capture("metrics", &out);
        out
    }
}

/// Test builds (`leak-ledger`): every registry's last exposition goes to the leak scanner,
/// scraped or not.
#[cfg(feature = "leak-ledger")]
impl Drop for Metrics {
    fn drop(&mut self) {
        let _ = self.render();
    }
}

impl kv_rotator_webhook::DeliveryObserver for Metrics {
    fn delivered(&self, outcome: kv_rotator_webhook::DeliveryOutcome) {
        self.inc("kv_rotator_webhook_deliveries_total", &[("outcome", outcome.as_str())]);
    }
}

/// `GET /metrics` over `metrics`.
pub fn router(metrics: Arc<Metrics>) -> Router {
    router_refreshing(metrics, |_| {})
}

/// `GET /metrics` over `metrics`, calling `refresh` first on each scrape (for gauges read
/// at scrape time, such as the queue's depth).
pub fn router_refreshing(metrics: Arc<Metrics>, refresh: impl Fn(&Metrics) + Clone + Send + Sync + 'static) -> Router {
    Router::new().route(
        "/metrics",
        get(move || {
            refresh(&metrics);
            let body = metrics.render();
            async move {
                ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], body)
                    .into_response()
            }
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_and_histograms_render_in_the_text_format() {
        let m = Metrics::default();
        let rotated = [("outcome", "rotated"), ("rotator", "postgres"), ("trigger", "manual")];
        m.inc("kv_rotator_rotations_total", &rotated);
        m.inc("kv_rotator_rotations_total", &rotated);
        m.set("kv_rotator_managed_secrets", &[("state", "due")], 3.0);
        m.observe("kv_rotator_rotation_duration_seconds", &[("outcome", "rotated")], 0.3);
        let text = m.render();
        assert!(text.contains("# TYPE kv_rotator_rotations counter"), "{text}");
        assert!(text.contains("# HELP kv_rotator_rotations Rotation requests finished, by outcome, rotator"));
        assert!(
            text.contains("kv_rotator_rotations_total{outcome=\"rotated\",rotator=\"postgres\",trigger=\"manual\"} 2"),
            "{text}"
        );
        assert!(text.contains("# TYPE kv_rotator_managed_secrets gauge"), "{text}");
        assert!(text.contains("kv_rotator_managed_secrets{state=\"due\"} 3.0"), "{text}");
        assert!(
            text.contains("kv_rotator_rotation_duration_seconds_bucket{le=\"0.25\",outcome=\"rotated\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("kv_rotator_rotation_duration_seconds_bucket{le=\"0.5\",outcome=\"rotated\"} 1"),
            "{text}"
        );
        assert!(text.contains("kv_rotator_rotation_duration_seconds_bucket{le=\"+Inf\",outcome=\"rotated\"} 1"));
        assert!(text.contains("kv_rotator_rotation_duration_seconds_count{outcome=\"rotated\"} 1"));
        assert_eq!(m.counter("kv_rotator_rotations_total", &rotated), 2);
        m.inc("kv_rotator_rotations_total", &[("outcome", "failed"), ("rotator", "unknown"), ("trigger", "manual")]);
        assert_eq!(m.counter("kv_rotator_rotations_total", &[("outcome", "rotated")]), 2, "any rotator and trigger");
        assert_eq!(m.counter("kv_rotator_rotations_total", &[("trigger", "manual")]), 3);
        assert_eq!(m.counter("kv_rotator_rotations_total", &[("trigger", "sweeper")]), 0);
        assert_eq!(m.gauge("kv_rotator_managed_secrets", &[("state", "due")]), Some(3.0));
    }

    #[test]
    fn label_values_are_escaped() {
        let m = Metrics::default();
        m.inc("kv_rotator_alerts_total", &[("result", "a\"b\\c\nd")]);
        assert!(m.render().contains(r#"kv_rotator_alerts_total{result="a\"b\\c\nd"} 1"#));
    }
}
