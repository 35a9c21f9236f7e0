//! The VM reports (guest attributes) read recently, by Gateway uid, so the passes that
//! watches start while a Gateway waits for its VM do not each read them again. Memory
//! only; the reads themselves are the caller's.
//!
//! A Gateway waiting for its VM is polled with growing patience (see
//! [`super::patience`]), but every change to its link's Deployment, pods or config also
//! starts a pass. At 1,000 Gateways being created those passes doubled the guest-attribute
//! reads. A report younger than half the Gateway's current patience is reused instead;
//! the scheduled poll, one patience after the last read, reads, and so does a pass whose
//! link holds a handshake (the VM just came up: Ready must not wait for a poll). A poll
//! reads only when its project's request budget has room to spare
//! ([`wgnet_cloud::Cloud::vm_report_if_spare`]); otherwise it keeps the last report, so
//! thousands of waiting Gateways never slow those being created.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// One VM report: its `wgnet/` guest attributes.
pub type Report = BTreeMap<String, String>;

/// Recent reports by Gateway uid.
#[derive(Debug, Default)]
pub struct Reports {
    entries: Mutex<HashMap<String, (Instant, Report)>>,
}

impl Reports {
    /// The report of `uid` if it was read less than `fresh_for` before `now`.
    pub fn recent(&self, uid: &str, fresh_for: Duration, now: Instant) -> Option<Report> {
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        let (at, report) = entries.get(uid)?;
        (now.saturating_duration_since(*at) < fresh_for).then(|| report.clone())
    }

    /// The last report of `uid`, however old.
    pub fn last(&self, uid: &str) -> Option<Report> {
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries.get(uid).map(|(_, r)| r.clone())
    }

    /// Keeps `report`, read for `uid` at `at`.
    pub fn put(&self, uid: &str, report: Report, at: Instant) {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries.insert(uid.to_owned(), (at, report));
    }

    /// Drops `uid`'s report (the Gateway settled, or is gone): entries are kept only for
    /// Gateways that wait.
    pub fn forget(&self, uid: &str) {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries.remove(uid);
    }

    /// Whether no Gateway has a report kept.
    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_is_reused_while_fresh_and_dropped_when_forgotten() {
        let r = Reports::default();
        let t0 = Instant::now();
        let report = Report::from([("state".to_owned(), "booting".to_owned())]);
        assert_eq!(r.recent("u", Duration::from_secs(5), t0), None);
        r.put("u", report.clone(), t0);
        assert_eq!(
            r.recent("u", Duration::from_secs(5), t0 + Duration::from_secs(4)),
            Some(report)
        );
        assert_eq!(
            r.recent("u", Duration::from_secs(5), t0 + Duration::from_secs(5)),
            None
        );
        assert_eq!(r.recent("other", Duration::from_secs(5), t0), None);
        assert!(r.last("u").is_some(), "the last one is kept however old");
        r.forget("u");
        assert!(r.is_empty());
    }
}
