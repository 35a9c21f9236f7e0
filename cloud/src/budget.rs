//! A request budget per GCP project: every call the crate sends (retries included) takes
//! one token from its project's bucket, so however many Gateways are stuck retrying, the
//! operator never sends a project more than the budget allows and never exhausts the
//! project's API quotas, which every other Gateway and every other tool in that project
//! shares. Pure apart from the clock and the one sleep a caller may be given.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// The budget's settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Budget {
    /// Sustained calls per second per project.
    pub per_second: f64,
    /// Calls a project may receive at once after a quiet period.
    pub burst: f64,
}

impl Budget {
    /// The default: 20 calls a second per project (1,200 a minute, across all three APIs),
    /// bursts of 100: under GCP's default per-project quotas (Compute alone allows 1,500
    /// reads and 1,500 writes a minute by default), leaving room for other tools.
    pub const DEFAULT: Self = Self {
        per_second: 20.0,
        burst: 100.0,
    };
}

/// Token buckets by project.
#[derive(Debug)]
pub struct RequestBudget {
    budget: Budget,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl RequestBudget {
    /// Empty buckets fill up to `budget.burst`.
    pub fn new(budget: Budget) -> Self {
        Self {
            budget,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes a token for `project` and says how long the caller must wait before sending.
    /// Tokens may go negative: each caller reserves its slot at once, so waiters are served
    /// in order, each with a single wait and no polling loop.
    pub fn reserve(&self, project: &str, now: Instant) -> Duration {
        let Budget { per_second, burst } = self.budget;
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        let (tokens, last) = buckets.entry(project.to_owned()).or_insert((burst, now));
        *tokens = self.refilled(*tokens, *last, now) - 1.0;
        *last = now;
        if *tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-*tokens / per_second)
        }
    }

    /// Whether `project`'s bucket holds at least half its burst at `now`: calls that can
    /// wait for another pass (a poll of a VM's progress) are sent only then, so they never
    /// take the tokens that creating and repairing Gateways need. Takes nothing.
    pub fn has_spare(&self, project: &str, now: Instant) -> bool {
        let buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        buckets.get(project).is_none_or(|(tokens, last)| {
            self.refilled(*tokens, *last, now) >= self.budget.burst / 2.0
        })
    }

    /// A bucket holding `tokens` at `last`, refilled until `now` (up to the burst).
    fn refilled(&self, tokens: f64, last: Instant, now: Instant) -> f64 {
        let Budget { per_second, burst } = self.budget;
        (tokens + now.saturating_duration_since(last).as_secs_f64() * per_second).min(burst)
    }

    /// Waits for `project`'s next token.
    pub async fn acquire(&self, project: &str) {
        let wait = self.reserve(project, Instant::now());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

/// The project a request path names (`projects/<id>/...`), if any.
pub fn project_of(path: &str) -> Option<&str> {
    let rest = path.trim_start_matches('/').strip_prefix("projects/")?;
    let id = rest.split(['/', '?', ':']).next()?;
    (!id.is_empty()).then_some(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_passes_then_calls_are_spaced_at_the_rate() {
        let b = RequestBudget::new(Budget {
            per_second: 10.0,
            burst: 3.0,
        });
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(b.reserve("p", t0), Duration::ZERO);
        }
        // The 4th and 5th wait one and two tenths of a second: in order, each once.
        assert_eq!(b.reserve("p", t0), Duration::from_millis(100));
        assert_eq!(b.reserve("p", t0), Duration::from_millis(200));
        // Another project has its own bucket.
        assert_eq!(b.reserve("q", t0), Duration::ZERO);
        // A quiet second refills, up to the burst only.
        let later = t0 + Duration::from_secs(10);
        for _ in 0..3 {
            assert_eq!(b.reserve("p", later), Duration::ZERO);
        }
        assert!(b.reserve("p", later) > Duration::ZERO);
    }

    #[test]
    fn spare_means_half_the_burst_left_and_takes_nothing() {
        let b = RequestBudget::new(Budget {
            per_second: 10.0,
            burst: 4.0,
        });
        let t0 = Instant::now();
        assert!(b.has_spare("p", t0), "a project never called has its burst");
        b.reserve("p", t0);
        b.reserve("p", t0);
        assert!(b.has_spare("p", t0), "2 of 4 left");
        assert!(b.has_spare("p", t0), "asking took nothing");
        b.reserve("p", t0);
        assert!(!b.has_spare("p", t0), "1 of 4 left");
        // A fifth of a second refills two.
        assert!(b.has_spare("p", t0 + Duration::from_millis(100)));
        assert!(b.has_spare("q", t0));
    }

    #[test]
    fn the_project_comes_from_the_path() {
        assert_eq!(project_of("projects/p1/zones/z/instances/x"), Some("p1"));
        assert_eq!(project_of("projects/p1/secrets/s:addVersion"), Some("p1"));
        assert_eq!(project_of("projects/p1/secrets?filter=x"), Some("p1"));
        assert_eq!(project_of("/projects/p2"), Some("p2"));
        assert_eq!(project_of("token"), None);
    }
}
