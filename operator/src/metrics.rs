//! The operator's Prometheus metrics, kept in memory and rendered as text on `/metrics`.
//! No I/O here; `http` serves the rendering.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

use wgnet_cloud::api::CallRecord;

/// Counters and gauges.
#[derive(Debug, Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    reconciles: BTreeMap<&'static str, u64>,
    duration_sum: BTreeMap<&'static str, f64>,
    polls: BTreeMap<&'static str, u64>,
    errors: BTreeMap<(&'static str, &'static str, String), u64>,
    gcp_calls: BTreeMap<(String, String, u16), u64>,
    states: BTreeMap<String, String>,
    sweeps: u64,
    swept: u64,
}

impl Metrics {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// One reconcile of `kind` took `took`.
    pub fn reconciled(&self, kind: &'static str, took: Duration) {
        let mut m = self.lock();
        *m.reconciles.entry(kind).or_default() += 1;
        *m.duration_sum.entry(kind).or_default() += took.as_secs_f64();
    }

    /// A reconcile of `kind` only polled what no watch covers (it is counted by
    /// [`Metrics::reconciled`] too).
    pub fn polled(&self, kind: &'static str) {
        *self.lock().polls.entry(kind).or_default() += 1;
    }

    /// Polls of `kind` so far.
    pub fn polls(&self, kind: &str) -> u64 {
        self.lock().polls.get(kind).copied().unwrap_or(0)
    }

    /// Reconciles of `kind` so far, polls included.
    pub fn reconciles(&self, kind: &str) -> u64 {
        self.lock().reconciles.get(kind).copied().unwrap_or(0)
    }

    /// A reconcile of `kind` failed in `step` with `reason`.
    pub fn error(&self, kind: &'static str, step: &'static str, reason: &str) {
        *self
            .lock()
            .errors
            .entry((kind, step, reason.to_owned()))
            .or_default() += 1;
    }

    /// One GCP call finished.
    pub fn gcp_call(&self, c: &CallRecord) {
        *self
            .lock()
            .gcp_calls
            .entry((format!("{} {}", c.api, c.op), c.method.clone(), c.status))
            .or_default() += 1;
    }

    /// The state (the Ready reason) of one Gateway, by `namespace/name`; `None` forgets it.
    pub fn gateway_state(&self, key: &str, state: Option<&str>) {
        let mut m = self.lock();
        match state {
            Some(s) => m.states.insert(key.to_owned(), s.to_owned()),
            None => m.states.remove(key),
        };
    }

    /// An orphan sweep ran and deleted `deleted` gateways' resources.
    pub fn swept(&self, deleted: usize) {
        let mut m = self.lock();
        m.sweeps += 1;
        m.swept += deleted as u64;
    }

    /// GCP calls so far, for benchmarks.
    pub fn gcp_calls_total(&self) -> u64 {
        self.lock().gcp_calls.values().sum()
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let m = self.lock();
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP wgnet_reconciles_total Reconciles run, by kind.\n# TYPE wgnet_reconciles_total counter"
        );
        for (k, v) in &m.reconciles {
            let _ = writeln!(out, "wgnet_reconciles_total{{kind=\"{k}\"}} {v}");
        }
        let _ = writeln!(
            out,
            "# HELP wgnet_reconcile_seconds_sum Time spent reconciling, by kind.\n# TYPE wgnet_reconcile_seconds_sum counter"
        );
        for (k, v) in &m.duration_sum {
            let _ = writeln!(out, "wgnet_reconcile_seconds_sum{{kind=\"{k}\"}} {v:.6}");
        }
        let _ = writeln!(
            out,
            "# HELP wgnet_polls_total Reconciles that only polled what no watch covers (a waiting Gateway's VM report), by kind.\n# TYPE wgnet_polls_total counter"
        );
        for (k, v) in &m.polls {
            let _ = writeln!(out, "wgnet_polls_total{{kind=\"{k}\"}} {v}");
        }
        let _ = writeln!(
            out,
            "# HELP wgnet_reconcile_errors_total Failed reconciles, by kind, step and reason.\n# TYPE wgnet_reconcile_errors_total counter"
        );
        for ((k, step, r), v) in &m.errors {
            let _ = writeln!(
                out,
                "wgnet_reconcile_errors_total{{kind=\"{k}\",step=\"{step}\",reason=\"{}\"}} {v}",
                escape(r)
            );
        }
        let _ = writeln!(
            out,
            "# HELP wgnet_gcp_calls_total GCP API calls, by operation, method and HTTP status (0: no answer).\n# TYPE wgnet_gcp_calls_total counter"
        );
        for ((op, method, status), v) in &m.gcp_calls {
            let _ = writeln!(
                out,
                "wgnet_gcp_calls_total{{op=\"{}\",method=\"{method}\",status=\"{status}\"}} {v}",
                escape(op)
            );
        }
        let mut by_state: BTreeMap<&str, u64> = BTreeMap::new();
        for s in m.states.values() {
            *by_state.entry(s).or_default() += 1;
        }
        let _ = writeln!(
            out,
            "# HELP wgnet_gateways Gateways by the reason of their Ready condition.\n# TYPE wgnet_gateways gauge"
        );
        for (s, v) in by_state {
            let _ = writeln!(out, "wgnet_gateways{{state=\"{}\"}} {v}", escape(s));
        }
        let _ = writeln!(
            out,
            "# HELP wgnet_orphan_sweeps_total Orphan sweeps run.\n# TYPE wgnet_orphan_sweeps_total counter\nwgnet_orphan_sweeps_total {}",
            m.sweeps
        );
        let _ = writeln!(
            out,
            "# HELP wgnet_orphans_deleted_total Orphaned gateways whose GCP resources a sweep deleted.\n# TYPE wgnet_orphans_deleted_total counter\nwgnet_orphans_deleted_total {}",
            m.swept
        );
        out
    }
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_state_gauges() {
        let m = Metrics::default();
        m.reconciled("Gateway", Duration::from_millis(5));
        m.polled("Gateway");
        m.error("Gateway", "cloud", "PermissionDenied");
        m.error("Gateway", "children", "say \"x\"");
        m.gateway_state("a/b", Some("Ready"));
        m.gateway_state("a/c", Some("Ready"));
        m.gateway_state("a/d", Some("Provisioning"));
        m.gateway_state("a/d", None);
        let text = m.render();
        assert!(
            text.contains("wgnet_reconciles_total{kind=\"Gateway\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("wgnet_polls_total{kind=\"Gateway\"} 1"),
            "{text}"
        );
        assert_eq!((m.reconciles("Gateway"), m.polls("Gateway")), (1, 1));
        assert!(
            text.contains(
                "wgnet_reconcile_errors_total{kind=\"Gateway\",step=\"cloud\",reason=\"PermissionDenied\"} 1"
            ),
            "{text}"
        );
        assert!(text.contains("reason=\"say \\\"x\\\"\""), "{text}");
        assert!(text.contains("wgnet_gateways{state=\"Ready\"} 2"), "{text}");
        assert!(!text.contains("Provisioning"), "{text}");
    }
}
