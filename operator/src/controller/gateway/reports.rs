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
//!
//! It also keeps what a full pass of a Gateway that waits for nothing but its VM's report
//! leaves for the polls after it ([`Quiet`]): while no watch brings news of the Gateway
//! ([`super::news`]), such a poll reads the report and nothing else.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// One VM report: its `wgnet/` guest attributes.
pub type Report = BTreeMap<String, String>;

/// Recent reports by Gateway uid.
#[derive(Debug, Default)]
pub struct Reports {
    entries: Mutex<HashMap<String, (Instant, Report)>>,
    quiet: Mutex<HashMap<String, Quiet>>,
}

/// What a full pass left of a Gateway whose every GCP resource existed as wanted (nothing
/// written, nothing pending, the VM RUNNING) and that was not Ready: what it began from
/// and the report its status rests on.
#[derive(Clone, Debug, PartialEq)]
pub struct Quiet {
    /// The Gateway's news number when the pass began ([`super::news::News::of`]).
    pub news: u64,
    /// The generation it reconciled.
    pub generation: Option<i64>,
    /// When it began.
    pub at: Instant,
    /// The VM report it used.
    pub report: Report,
}

impl Quiet {
    /// Whether a pass at `now` may only poll the VM's report: no news and no spec change
    /// since, and the full pass less than `full_every` ago (what no watch covers, such as
    /// drift in GCP or the Lease, is looked at by a full pass at least that often).
    pub fn holds(
        &self,
        news: u64,
        generation: Option<i64>,
        now: Instant,
        full_every: Duration,
    ) -> bool {
        self.news == news
            && self.generation == generation
            && now.saturating_duration_since(self.at) < full_every
    }
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
        drop(entries);
        self.set_quiet(uid, None);
    }

    /// What the last full pass of `uid` left for polls, if anything.
    pub fn quiet(&self, uid: &str) -> Option<Quiet> {
        let quiet = self.quiet.lock().unwrap_or_else(PoisonError::into_inner);
        quiet.get(uid).cloned()
    }

    /// Keeps (or with `None` drops) what a full pass of `uid` leaves for polls.
    pub fn set_quiet(&self, uid: &str, q: Option<Quiet>) {
        let mut quiet = self.quiet.lock().unwrap_or_else(PoisonError::into_inner);
        match q {
            Some(q) => quiet.insert(uid.to_owned(), q),
            None => quiet.remove(uid),
        };
    }

    /// Whether nothing is kept of any Gateway.
    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_empty()
            && self
                .quiet
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
        r.set_quiet(
            "u",
            Some(Quiet {
                news: 1,
                generation: Some(1),
                at: t0,
                report: Report::new(),
            }),
        );
        r.forget("u");
        assert!(r.is_empty());
    }

    #[test]
    fn a_poll_is_quiet_only_without_news_spec_change_or_a_late_full_pass() {
        let t0 = Instant::now();
        let q = Quiet {
            news: 7,
            generation: Some(2),
            at: t0,
            report: Report::new(),
        };
        let every = Duration::from_secs(300);
        let soon = t0 + Duration::from_secs(10);
        assert!(q.holds(7, Some(2), soon, every));
        assert!(!q.holds(8, Some(2), soon, every), "news since");
        assert!(!q.holds(7, Some(3), soon, every), "spec changed");
        assert!(
            !q.holds(7, Some(2), t0 + every, every),
            "a full pass is due"
        );
    }
}
