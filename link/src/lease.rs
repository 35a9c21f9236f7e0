//! Leader election on a coordination.k8s.io Lease, so that of several link replicas only
//! one holds wg0 and the table. Expiry is judged by how long the Lease's resourceVersion
//! has stood still on our own monotonic clock (as client-go does), never by comparing
//! wall clocks across nodes. A holder that cannot renew within `renew_deadline` steps
//! down (and the caller fences) before anyone else may take over at `duration`.
//! I/O boundary: the Lease API.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::Api;
use kube::api::PostParams;
use tokio::sync::watch;

/// Election timing.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// How long a Lease that stopped changing is still honoured.
    pub duration: Duration,
    /// A holder that has not renewed for this long steps down.
    pub renew_deadline: Duration,
    /// How often to try.
    pub retry: Duration,
}

impl Timing {
    /// client-go's defaults scaled down: failover within about 10 s.
    pub fn standard() -> Self {
        Self {
            duration: Duration::from_secs(8),
            renew_deadline: Duration::from_secs(5),
            retry: Duration::from_secs(1),
        }
    }
}

/// One candidate.
pub struct Elector {
    api: Api<Lease>,
    name: String,
    identity: String,
    timing: Timing,
    stopping: AtomicBool,
    /// Annotations the holder writes with every renewal (the last handshake's time), so the
    /// operator learns them from the Lease it already reads, at no extra request.
    annotations: std::sync::Mutex<std::collections::BTreeMap<String, String>>,
}

/// The Lease annotation carrying the time of the tunnel's last handshake (RFC 3339).
pub const LAST_HANDSHAKE_ANNOTATION: &str = "wgnet.dev/last-handshake";

enum Step {
    Holding,
    Standby,
}

fn now() -> MicroTime {
    MicroTime(k8s_openapi::jiff::Timestamp::now())
}

impl Elector {
    /// A candidate for the Lease `name` in `ns`.
    pub fn new(
        client: kube::Client,
        ns: &str,
        name: &str,
        identity: &str,
        timing: Timing,
    ) -> Arc<Self> {
        Arc::new(Self {
            api: Api::namespaced(client, ns),
            name: name.to_owned(),
            identity: identity.to_owned(),
            timing,
            stopping: AtomicBool::new(false),
            annotations: std::sync::Mutex::new(std::collections::BTreeMap::new()),
        })
    }

    /// Sets (or with `None` removes) an annotation the holder writes on its next renewal.
    pub fn annotate(&self, key: &str, value: Option<String>) {
        let mut a = self
            .annotations
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match value {
            Some(v) => a.insert(key.to_owned(), v),
            None => a.remove(key),
        };
    }

    /// Whether [`Elector::release`] was called.
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    fn write_annotations(&self, meta: &mut ObjectMeta) {
        let a = self
            .annotations
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !a.is_empty() {
            meta.annotations
                .get_or_insert_with(Default::default)
                .extend(a.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
    }

    /// Runs the election, publishing leadership on `tx`, until [`Elector::release`].
    pub async fn run(self: Arc<Self>, tx: watch::Sender<bool>) {
        let mut observed: Option<(String, Instant)> = None;
        let mut last_renew: Option<Instant> = None;
        while !self.stopping.load(Ordering::SeqCst) {
            let step = self.try_once(&mut observed).await;
            let leading = match step {
                Ok(Step::Holding) => {
                    last_renew = Some(Instant::now());
                    true
                }
                Ok(Step::Standby) => {
                    last_renew = None;
                    false
                }
                Err(e) => {
                    tracing::warn!(error = %e, lease = %self.name, "lease request failed");
                    // Keep leading only while the last renewal is recent enough.
                    last_renew.is_some_and(|t| t.elapsed() < self.timing.renew_deadline)
                }
            };
            if self.stopping.load(Ordering::SeqCst) {
                break;
            }
            tx.send_if_modified(|cur| {
                if *cur != leading {
                    tracing::info!(lease = %self.name, identity = %self.identity, leading, "leadership changed");
                    *cur = leading;
                    true
                } else {
                    false
                }
            });
            tokio::time::sleep(self.timing.retry).await;
        }
    }

    async fn try_once(
        &self,
        observed: &mut Option<(String, Instant)>,
    ) -> Result<Step, kube::Error> {
        let duration_s = i32::try_from(self.timing.duration.as_secs().max(1)).unwrap_or(i32::MAX);
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            let mut lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.identity.clone()),
                    lease_duration_seconds: Some(duration_s),
                    acquire_time: Some(now()),
                    renew_time: Some(now()),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            self.write_annotations(&mut lease.metadata);
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(Step::Holding),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(Step::Standby),
                Err(e) => Err(e),
            };
        };
        let rv = lease.metadata.resource_version.clone().unwrap_or_default();
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let mine = holder == self.identity;
        if !mine && !holder.is_empty() {
            let honoured = Duration::from_secs(
                u64::try_from(spec.lease_duration_seconds.unwrap_or(duration_s)).unwrap_or(1),
            );
            let expired = match observed {
                Some((seen, at)) if *seen == rv => at.elapsed() >= honoured,
                _ => {
                    *observed = Some((rv.clone(), Instant::now()));
                    false
                }
            };
            if !expired {
                return Ok(Step::Standby);
            }
        }
        if !mine {
            spec.holder_identity = Some(self.identity.clone());
            spec.acquire_time = Some(now());
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        spec.renew_time = Some(now());
        spec.lease_duration_seconds = Some(duration_s);
        self.write_annotations(&mut lease.metadata);
        // The replace carries the resourceVersion we read, so two candidates racing for
        // an expired Lease cannot both win: the second gets 409.
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(Step::Holding),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(Step::Standby),
            Err(e) => Err(e),
        }
    }

    /// Stops the loop and, if we hold the Lease, hands it back at once. Call only after
    /// fencing, so the next holder never overlaps with us.
    pub async fn release(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        let Ok(Some(mut lease)) = self.api.get_opt(&self.name).await else {
            return;
        };
        let Some(spec) = lease.spec.as_mut() else {
            return;
        };
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        spec.renew_time = Some(now());
        spec.lease_duration_seconds = Some(1);
        if let Err(e) = self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            tracing::warn!(error = %e, "releasing the lease failed; the next holder waits for expiry");
        }
    }
}
