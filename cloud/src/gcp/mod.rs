//! [`GcpCloud`]: the [`Cloud`] trait over the Compute, IAM and Secret Manager REST APIs.
//!
//! Dependency order, written down once (everything on one line runs in parallel):
//!
//! 1. network, service account, secret (+ key version), static address
//! 2. firewall (needs the network); secretAccessor binding (needs the account and the
//!    secret); instance (needs the network, the account, the address and the key's secret
//!    version, which its metadata names exactly)
//!
//! Deletion runs the other way: instance, account and secret; then firewall and address
//! (the address is in use until the instance is gone); then the shared network, which GCP
//! refuses to delete while another gateway's firewall or VM uses it.
//!
//! Nothing here waits on a long-running operation: inserts record their operation in
//! [`Recorded::pending`] and the next call polls it once. An unchanged resync reads the
//! firewall and the instance (drift repair) and writes nothing.
//!
//! One file per resource ([`network`], [`firewall`], [`address`], [`instance`], [`iam`]
//! for the service account and its binding, [`secret`]), [`ops`] for Compute operations
//! and deletion, [`sweep`] for listing what an install owns, [`wire`] for the typed bodies.
//! This module holds the pass, ownership checks and the [`Cloud`] implementation.
//!
//! I/O boundary: all HTTP goes through [`Api`].

mod address;
mod firewall;
mod iam;
mod instance;
mod network;
mod ops;
mod secret;
mod snapshot;
mod sweep;
pub mod wire;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures_util::future::{join3, join4};
use reqwest::Method;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use self::ops::Deletion;
use crate::api::{Api, CallObserver, Credentials, Endpoints, Retry, RetryPolicy, Service};
use crate::error::CloudError;
use crate::names::{self, GatewayId};
use crate::{
    Cloud, DeleteProgress, Desired, Owned, PendingOp, Progress, Recorded, ResourceKind, Target,
};

/// Settings of the GCP implementation.
#[derive(Clone)]
pub struct GcpConfig {
    /// Token source.
    pub credentials: Credentials,
    /// API base URLs.
    pub endpoints: Endpoints,
    /// Retries inside one call.
    pub retry: RetryPolicy,
    /// Install name, the `wgnet-install` label (several operators can share a project).
    pub install: String,
    /// Cluster id of this operator, for orphan sweeps.
    pub cluster: String,
    /// Name of the shared VPC network.
    pub network: String,
    /// Receives every HTTP call, for metrics.
    pub observer: Option<CallObserver>,
    /// How often a gateway's steady resources (network, service account, secret, IAM
    /// binding) are read back to repair what was deleted or changed out of band. Between
    /// those passes, what the status records as done is trusted, saving their reads; the
    /// VM and firewall are read on every pass. Zero: every pass reads everything.
    pub verify_every: Duration,
    /// Calls per second (and burst) each project receives at most, retries included.
    pub budget: crate::budget::Budget,
}

/// [`GcpConfig::verify_every`] for an operator that sets none: the operator's own default
/// resync, so each resync pass repairs drift.
pub const DEFAULT_VERIFY_EVERY: Duration = Duration::from_secs(300);

impl std::fmt::Debug for GcpConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GcpConfig")
            .field("credentials", &self.credentials)
            .field("endpoints", &self.endpoints)
            .field("install", &self.install)
            .field("network", &self.network)
            .finish_non_exhaustive()
    }
}

/// The GCP cloud.
#[derive(Debug)]
pub struct GcpCloud {
    api: Api,
    install: String,
    cluster: String,
    network: String,
    verify_every: Duration,
    /// When each gateway (by uid) last had a pass that read every resource back, for which
    /// desired state, and how it last saw the VM. In memory: a restarted operator verifies
    /// everything on its first pass.
    verified: Mutex<HashMap<String, Verified>>,
    /// Hashes desired states for [`Verified::desired`] (random keys: nothing a tenant's
    /// spec could aim a collision at).
    hasher: std::hash::RandomState,
    /// When the shared network was last read back and found ours, by project. Every
    /// gateway of a project shares it, so one read per project per `verify_every` stands
    /// for all of them (issue 23: calls that do not grow with the number of Gateways).
    networks_seen: Mutex<HashMap<String, Instant>>,
    /// One network read at a time per project: gateways passing together wait for the
    /// first one's answer instead of each asking.
    network_reads: Mutex<HashMap<String, std::sync::Arc<tokio::sync::Mutex<()>>>>,
    /// What each project holds, listed once per `verify_every` (see [`snapshot`]).
    snapshots: snapshot::Snapshots,
    /// When each gateway (by uid) last had a deep pass: one that also read its IAM grant
    /// and its secret's latest version, which no list shows.
    deep_verified: Mutex<HashMap<String, Instant>>,
    /// Each VM's metadata as the last read of its entries found it (see
    /// [`instance::MetadataSeen`]; by [`instance::seen_key`]): snapshots list instances
    /// without the entries.
    metadata_seen: Mutex<HashMap<String, instance::MetadataSeen>>,
}

/// What the last verifying pass over a gateway knew.
#[derive(Debug)]
struct Verified {
    at: Instant,
    /// [`GcpCloud::desired_digest`] of what that pass converged to: another desired state
    /// (a spec edit, a new key) is verified at once, whatever the time.
    desired: u64,
    /// The VM's external address and when a pass last found it RUNNING: passes within
    /// [`RUNNING_TRUSTED`] of that report it without reading it again.
    running: Option<(Option<String>, Instant)>,
}

/// How long a VM found RUNNING is reported so without a read, between verifications: a
/// Gateway waiting for its VM's report polls its guest attributes every few seconds, and
/// the VM read was half of each poll; a preempted or stopped VM is still noticed within
/// this long by such polls.
const RUNNING_TRUSTED: Duration = Duration::from_secs(30);

/// A deep pass (the IAM grant and the secret's latest version, one read each per
/// gateway) comes every this many verify windows: hourly at the default resync. Those
/// two matter when the VM next boots or the key rotates, and both of those read them anyway.
const DEEP_EVERY: u32 = 12;

/// Outcome of one resource's step in a pass.
#[derive(Debug)]
enum Step<T> {
    Ready(T),
    Waiting(String),
    Failed(CloudError),
}

impl<T> Step<T> {
    fn ready(&self) -> Option<&T> {
        match self {
            Step::Ready(t) => Some(t),
            _ => None,
        }
    }
}

/// Sorts a step's outcome into the pass's waiting and error lists.
fn absorb<T>(step: Step<T>, waiting: &mut Vec<String>, errors: &mut Vec<CloudError>) -> Option<T> {
    match step {
        Step::Ready(t) => Some(t),
        Step::Waiting(w) => {
            waiting.push(w);
            None
        }
        Step::Failed(e) => {
            errors.push(e);
            None
        }
    }
}

/// 128 random bits, hex: a pass's `requestId` salt. Without randomness (never seen on
/// Linux) the time serves, since a repeat only costs a de-duplicated request.
fn pass_salt() -> String {
    use ring::rand::SecureRandom as _;
    let mut b = [0u8; 16];
    if ring::rand::SystemRandom::new().fill(&mut b).is_err() {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        b = t.to_le_bytes();
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// One pass over one gateway.
struct Pass<'a> {
    d: &'a Desired,
    rec: &'a Recorded,
    name: String,
    writes: AtomicUsize,
    /// Random per pass: retries inside one call reuse a `requestId` (so GCP de-duplicates
    /// them), while the next pass, which reads before it writes, asks anew.
    salt: String,
    /// Requests issued this pass, so two of one kind get different ids.
    issued: AtomicU64,
    /// Read back what the record says is done (see [`GcpConfig::verify_every`]).
    verify: bool,
    /// Read the IAM grant and the secret's latest version back too (see [`DEEP_EVERY`]).
    deep: bool,
    /// The project's snapshot, when this gateway may trust it.
    snap: Option<std::sync::Arc<snapshot::Snapshot>>,
    /// The service account or the secret was created this pass: the grant is made anew.
    recreated: std::sync::atomic::AtomicBool,
    /// The VM was reported as the last read found it, not read.
    vm_as_last_read: std::sync::atomic::AtomicBool,
}

impl Pass<'_> {
    fn project(&self) -> &str {
        &self.d.target.project
    }

    fn id(&self) -> &GatewayId {
        &self.d.target.id
    }

    fn request_id(&self, what: &str) -> String {
        let n = self.issued.fetch_add(1, Ordering::Relaxed) + 1;
        names::request_id(&[
            what,
            self.project(),
            &self.name,
            &self.id().uid,
            &self.salt,
            &n.to_string(),
        ])
    }

    fn wrote(&self) {
        self.writes.fetch_add(1, Ordering::Relaxed);
    }

    fn pending(&self, kind: ResourceKind) -> Option<&PendingOp> {
        self.rec.pending.iter().find(|p| p.resource == kind)
    }

    /// The ownership labels of this gateway's resources.
    fn labels(&self, install: &str) -> BTreeMap<String, String> {
        let t = &self.d.target;
        t.id.labels(install, &t.region, &t.zone)
    }

    /// The ownership marker (a description) of this gateway's resources.
    fn marker(&self, install: &str) -> String {
        let t = &self.d.target;
        t.id.marker(install, &t.region, &t.zone)
    }
}

/// Whether labels say the resource is this gateway's: same install, cluster, namespace and
/// name. The uid may differ (a Gateway recreated under the same name adopts what its
/// predecessor left behind).
fn labels_ours(labels: &BTreeMap<String, String>, install: &str, id: &GatewayId) -> bool {
    let is = |k: &str, v: &str| labels.get(k).map(String::as_str) == Some(&names::label_value(v));
    is(names::LABEL_INSTALL, install)
        && is(names::LABEL_CLUSTER, &id.cluster)
        && is(names::LABEL_NAMESPACE, &id.namespace)
        && is(names::LABEL_NAME, &id.name)
}

/// Whether a description marker says the resource is this gateway's (same test as
/// [`labels_ours`]).
fn marker_ours(description: &str, install: &str, id: &GatewayId) -> bool {
    names::parse_marker(description).is_some_and(|m| {
        m.install == install
            && m.cluster == id.cluster
            && m.namespace == id.namespace
            && m.name == id.name
    })
}

/// A resource with our name that is not ours.
fn collision(kind: &'static str, name: &str, description: &str) -> CloudError {
    CloudError::NameCollision {
        kind,
        name: name.to_owned(),
        detail: if description.is_empty() {
            "no wgnet labels".to_owned()
        } else {
            format!("description {description:?}")
        },
    }
}

/// A resource already read as a JSON tree, in the shape `T`, or a protocol error that
/// names the call (never the value, which serde would quote).
fn decode<T: DeserializeOwned>(v: Value, op: &str, what: &str) -> Result<T, CloudError> {
    serde_json::from_value(v).map_err(|e| {
        CloudError::Protocol(format!(
            "{op} {what}: GCP's answer does not have the expected shape ({:?} error)",
            e.classify()
        ))
    })
}

/// A request body as JSON.
fn encode_body<T: Serialize>(t: &T) -> Result<Value, CloudError> {
    serde_json::to_value(t)
        .map_err(|e| CloudError::Protocol(format!("a request body cannot be encoded: {e}")))
}

impl GcpCloud {
    /// Loads credentials and builds the client.
    pub async fn new(config: GcpConfig) -> Result<Self, CloudError> {
        if config.install.is_empty() || config.network.is_empty() {
            return Err(CloudError::Config(
                "install and network names must not be empty".to_owned(),
            ));
        }
        if config.install.len() > names::MAX_INSTALL_LEN
            || config.cluster.len() > names::MAX_CLUSTER_LEN
        {
            return Err(CloudError::Config(format!(
                "the install name may have at most {} characters and the cluster id at most {}: both go into every service account's description, which GCP caps at 256 bytes",
                names::MAX_INSTALL_LEN,
                names::MAX_CLUSTER_LEN
            )));
        }
        let api = Api::new(
            &config.credentials,
            config.endpoints,
            config.retry,
            config.observer,
            config.budget,
        )
        .await?;
        Ok(Self {
            api,
            install: config.install,
            cluster: config.cluster,
            network: config.network,
            verify_every: config.verify_every,
            verified: Mutex::new(HashMap::new()),
            hasher: std::hash::RandomState::new(),
            networks_seen: Mutex::new(HashMap::new()),
            network_reads: Mutex::new(HashMap::new()),
            snapshots: snapshot::Snapshots::default(),
            deep_verified: Mutex::new(HashMap::new()),
            metadata_seen: Mutex::new(HashMap::new()),
        })
    }

    /// Changes [`GcpConfig::budget`] (buckets start full again).
    pub fn set_budget(&mut self, budget: crate::budget::Budget) {
        self.api.set_budget(budget);
    }

    /// Changes [`GcpConfig::verify_every`].
    pub fn set_verify_every(&mut self, every: Duration) {
        self.verify_every = every;
    }

    /// Whether this pass over gateway `uid`, wanting `desired` (its digest), reads its
    /// resources back: when none was verified within `verify_every`, or for another
    /// desired state.
    fn verify_due(&self, uid: &str, desired: u64) -> bool {
        let verified = self.verified.lock().unwrap_or_else(PoisonError::into_inner);
        verified
            .get(uid)
            .is_none_or(|v| v.desired != desired || v.at.elapsed() >= self.verify_every)
    }

    /// A digest of everything in `d` a resource's shape depends on (the key itself only
    /// through its version, which changes with it).
    fn desired_digest(&self, d: &Desired) -> u64 {
        use std::hash::{BuildHasher as _, Hash as _, Hasher as _};
        let mut h = self.hasher.build_hasher();
        let t = &d.target;
        (&t.id, &t.project, &t.region, &t.zone).hash(&mut h);
        (
            &d.machine_type,
            &d.image,
            d.disk_size_gb,
            d.reserved_ip,
            d.spot,
        )
            .hash(&mut h);
        (
            d.listen_port,
            &d.ports,
            &d.source_ranges,
            &d.metadata,
            d.key_version,
        )
            .hash(&mut h);
        h.finish()
    }

    /// The VM's external address as the last read found it RUNNING, when a pass between
    /// verifications of the same desired state may report that instead of reading again.
    fn running_as_last_read(&self, p: &Pass<'_>) -> Option<Option<String>> {
        if p.verify {
            return None;
        }
        let verified = self.verified.lock().unwrap_or_else(PoisonError::into_inner);
        let (nat, at) = verified.get(&p.d.target.id.uid)?.running.clone()?;
        (at.elapsed() < RUNNING_TRUSTED.min(self.verify_every)).then_some(nat)
    }

    /// Records how this pass left the VM: RUNNING with `nat`, or unknown (`None`: the
    /// next pass reads it).
    fn note_running(&self, uid: &str, running: Option<Option<String>>, read: bool) {
        let mut verified = self.verified.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(v) = verified.get_mut(uid) {
            v.running = match (running, v.running.take()) {
                (None, _) => None,
                // Reported from the last read: that read's time stands.
                (Some(nat), Some((_, at))) if !read => Some((nat, at)),
                (Some(nat), _) => Some((nat, Instant::now())),
            };
        }
    }

    /// Whether this pass over gateway `uid` is a deep one (see [`DEEP_EVERY`]). A gateway
    /// first seen starts its clock instead: a restarted operator serving thousands of
    /// gateways does not read two things of each at once, and a new one makes its grant
    /// and key version in its first passes anyway.
    fn deep_due(&self, uid: &str) -> bool {
        if self.verify_every.is_zero() {
            return true;
        }
        let mut deep = self
            .deep_verified
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match deep.get(uid) {
            Some(at) => at.elapsed() >= self.verify_every * DEEP_EVERY,
            None => {
                deep.insert(uid.to_owned(), Instant::now());
                false
            }
        }
    }

    /// Records that a pass over `uid` for desired state `desired` read everything back
    /// (`Some`), so the record is trusted until the next verification is due; or forgets
    /// the gateway (`None`).
    fn note_verified(&self, uid: &str, read_back: Option<u64>, deep: bool) {
        let mut verified = self.verified.lock().unwrap_or_else(PoisonError::into_inner);
        let mut deep_verified = self
            .deep_verified
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match read_back {
            Some(desired) => {
                verified.insert(
                    uid.to_owned(),
                    Verified {
                        at: Instant::now(),
                        desired,
                        running: None,
                    },
                );
                if deep {
                    deep_verified.insert(uid.to_owned(), Instant::now());
                }
            }
            None => {
                verified.remove(uid);
                deep_verified.remove(uid);
            }
        }
    }

    /// Whether some pass read the shared network of `project` back within `verify_every`.
    fn network_seen(&self, project: &str) -> bool {
        let seen = self
            .networks_seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        seen.get(project)
            .is_some_and(|at| at.elapsed() < self.verify_every)
    }

    /// The lock serialising network reads in `project`.
    fn network_read_lock(&self, project: &str) -> std::sync::Arc<tokio::sync::Mutex<()>> {
        self.network_reads
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(project.to_owned())
            .or_default()
            .clone()
    }

    /// Records that the network of `project` was read back and is ours (`true`), or
    /// forgets that (`false`: a pass failed, and the network may be why).
    fn note_network(&self, project: &str, seen: bool) {
        let mut s = self
            .networks_seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if seen {
            s.insert(project.to_owned(), Instant::now());
        } else {
            s.remove(project);
        }
    }

    /// GETs `path` as a `T`.
    async fn get<T: DeserializeOwned>(
        &self,
        s: Service,
        path: &str,
        op: &'static str,
        what: &str,
    ) -> Result<T, CloudError> {
        self.api
            .call(s, Method::GET, path, None, op, what, Retry::Transient)
            .await
    }

    /// Every item of a paged list at `path`, following `nextPageToken` (GCP pages every
    /// list: IAM returns 20 accounts unless asked, Compute at most 500). Bounded, so a
    /// server repeating a token cannot loop a pass forever.
    async fn list_all<L: wire::Page>(
        &self,
        s: Service,
        path: &str,
        op: &'static str,
        what: &str,
    ) -> Result<Vec<L::Item>, CloudError> {
        self.list_all_as::<L, _>(s, path, op, what, |i| i).await
    }

    /// [`GcpCloud::list_all`], keeping `keep(item)` of each item as its page arrives: a
    /// project's instances carry their startup scripts (14 KB each), and keeping only what
    /// is needed of them page by page holds one page of scripts at a time, not hundreds.
    async fn list_all_as<L: wire::Page, T>(
        &self,
        s: Service,
        path: &str,
        op: &'static str,
        what: &str,
        mut keep: impl FnMut(L::Item) -> T,
    ) -> Result<Vec<T>, CloudError> {
        const MAX_PAGES: usize = 1000;
        let sep = if path.contains('?') { '&' } else { '?' };
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let url = match &token {
                None => path.to_owned(),
                Some(t) => format!("{path}{sep}pageToken={}", encode(t)),
            };
            let (items, next) = self
                .api
                .list_page::<L>(s, &url, op, what)
                .await?
                .into_parts();
            out.extend(items.into_iter().map(&mut keep));
            match next.filter(|t| !t.is_empty()) {
                Some(t) => token = Some(t),
                None => return Ok(out),
            }
        }
        Err(CloudError::Protocol(format!(
            "{op} {what}: more than {MAX_PAGES} pages"
        )))
    }

    /// GETs `path` as a `T`; `None` when it does not exist.
    async fn get_opt<T: DeserializeOwned>(
        &self,
        s: Service,
        path: &str,
        op: &'static str,
        what: &str,
    ) -> Result<Option<T>, CloudError> {
        match self.get(s, path, op, what).await {
            Ok(v) => Ok(Some(v)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Sends a body to IAM or Secret Manager and reads the answer as a `T`.
    async fn send<B: Serialize, T: DeserializeOwned>(
        &self,
        s: Service,
        path: &str,
        body: &B,
        op: &'static str,
        what: &str,
        retry: Retry,
    ) -> Result<T, CloudError> {
        let body = encode_body(body)?;
        self.api
            .call(s, Method::POST, path, Some(&body), op, what, retry)
            .await
    }
}

/// `rec` with only the pending operations that can be `target`'s own (see
/// [`PendingOp::belongs_to`]); the others are dropped with a warning, and the resources'
/// own state tells the pass what to do.
fn own_operations(rec: &Recorded, target: &Target) -> Recorded {
    let mut clean = rec.clone();
    clean.pending.retain(|op| {
        let ok = op.belongs_to(target);
        if !ok {
            tracing::warn!(
                resource = %op.resource,
                "Ignoring a recorded operation that is not this gateway's"
            );
        }
        ok
    });
    clean
}

impl Cloud for GcpCloud {
    async fn ensure(&self, d: &Desired, rec: &Recorded) -> Progress {
        let rec = &own_operations(rec, &d.target);
        let name = d.target.id.resource_name();
        let project = d.target.project.as_str();
        // Only a gateway whose resources the record says exist, with nothing in flight,
        // reads them from the project's snapshot: a new one would find nothing there, and
        // one whose operation just ended would find the state before it.
        let steady = rec.pending.is_empty() && rec.firewall.is_some() && rec.instance.is_some();
        let snap = if steady {
            self.snapshot_for(project, &name).await
        } else {
            None
        };
        let desired = self.desired_digest(d);
        let verify = self.verify_due(&d.target.id.uid, desired);
        let p = Pass {
            d,
            rec,
            name,
            writes: AtomicUsize::new(0),
            salt: pass_salt(),
            issued: AtomicU64::new(0),
            verify,
            deep: verify && self.deep_due(&d.target.id.uid),
            snap,
            recreated: std::sync::atomic::AtomicBool::new(false),
            vm_as_last_read: std::sync::atomic::AtomicBool::new(false),
        };
        let mut waiting = Vec::new();
        let mut errors = Vec::new();
        let mut pending = Vec::new();

        let ((net, net_ops), sa, secret, (addr, addr_ops)) = join4(
            self.ensure_network(&p),
            self.ensure_service_account(&p),
            self.ensure_secret(&p),
            self.ensure_address(&p),
        )
        .await;
        pending.extend(net_ops);
        pending.extend(addr_ops);
        let net_ready = net.ready().is_some();
        let email = sa.ready().cloned();
        let secret_ids = secret.ready().cloned();
        let ip = addr.ready().cloned();

        let fw_fut = async {
            if net_ready {
                Some(self.ensure_firewall(&p).await)
            } else {
                None
            }
        };
        let bind_fut = async {
            match (&email, &secret_ids) {
                (Some(e), Some((s, _))) => Some(self.ensure_binding(&p, e, s).await),
                _ => None,
            }
        };
        // The VM is told of a key version only once it exists (a failed addVersion leaves
        // the VM on the version it has), so it waits for the secret step too.
        let inst_fut = async {
            match (net_ready, &email, &ip, &secret_ids) {
                (true, Some(e), Some(ip), Some((_, version))) => {
                    Some(self.ensure_instance(&p, e, ip.as_deref(), version).await)
                }
                _ => None,
            }
        };
        let (fw, bind, inst) = join3(fw_fut, bind_fut, inst_fut).await;

        let mut recorded = rec.clone();
        let net_ok = absorb(net, &mut waiting, &mut errors).is_some();
        // Unconfirmed this pass (another gateway may have just deleted it): look again next time.
        recorded.network = net_ok.then(|| self.network.clone());
        let sa_ok = absorb(sa, &mut waiting, &mut errors);
        if let Some(e) = &sa_ok {
            recorded.service_account_email = Some(e.clone());
        }
        match absorb(secret, &mut waiting, &mut errors) {
            Some((s, v)) => {
                recorded.secret = Some(s);
                recorded.secret_version = Some(v);
                recorded.key_version = Some(d.key_version);
            }
            None => {
                if recorded.key_version != Some(d.key_version) {
                    recorded.secret_version = None;
                }
            }
        }
        let addr_ok = absorb(addr, &mut waiting, &mut errors);
        if let Some(Some(ip)) = &addr_ok {
            recorded.address_name = Some(p.name.clone());
            recorded.address = Some(ip.clone());
        }
        let mut all =
            net_ok && sa_ok.is_some() && recorded.secret_version.is_some() && addr_ok.is_some();
        match fw {
            Some((s, ops)) => {
                pending.extend(ops);
                if absorb(s, &mut waiting, &mut errors).is_some() {
                    recorded.firewall = Some(p.name.clone());
                } else {
                    all = false;
                }
            }
            None => all = false,
        }
        match bind {
            Some(s) => {
                recorded.iam_bound = absorb(s, &mut waiting, &mut errors).is_some();
                all &= recorded.iam_bound;
            }
            None => all = false,
        }
        let mut vm_status = None;
        let mut running = None;
        let mut address = recorded.address.clone().filter(|_| d.reserved_ip);
        match inst {
            Some((s, ops)) => {
                pending.extend(ops);
                match absorb(s, &mut waiting, &mut errors) {
                    Some((status, nat)) => {
                        running = (status == "RUNNING").then(|| nat.clone());
                        recorded.instance = Some(p.name.clone());
                        vm_status = Some(status);
                        if address.is_none() {
                            address = nat.clone();
                            recorded.address = nat;
                        }
                    }
                    None => all = false,
                }
            }
            None => all = false,
        }
        if !d.reserved_ip && recorded.instance.is_none() {
            recorded.address = None;
        }
        recorded.pending = pending;
        if !errors.is_empty() {
            // A deleted network makes the firewall and VM steps fail: read it next pass.
            self.note_network(&d.target.project, false);
        }
        let ready = all && errors.is_empty() && vm_status.as_deref() == Some("RUNNING");
        if p.verify {
            self.note_verified(&d.target.id.uid, Some(desired), p.deep);
        }
        // The VM as this pass left it, for the passes until the next verification.
        self.note_running(
            &d.target.id.uid,
            running.filter(|_| recorded.pending.is_empty() && errors.is_empty()),
            !p.vm_as_last_read.load(Ordering::Relaxed),
        );
        if p.writes.load(Ordering::Relaxed) > 0
            || !recorded.pending.is_empty()
            || !rec.pending.is_empty()
        {
            self.touch(project, &p.name);
        }
        Progress {
            ready,
            address,
            vm_status,
            waiting,
            errors,
            writes: p.writes.load(Ordering::Relaxed),
            recorded,
        }
    }

    async fn delete(&self, target: &Target, rec: &Recorded) -> DeleteProgress {
        self.note_verified(&target.id.uid, None, false);
        let rec = &own_operations(rec, target);
        let name = target.id.resource_name();
        self.forget_metadata(&instance::seen_key(&target.project, &target.zone, &name));
        // A Gateway recreated under this name must not find these resources in a snapshot.
        self.touch(&target.project, &name);
        let project = target.project.as_str();
        let mut waiting = Vec::new();
        let mut errors = Vec::new();
        let mut pending = Vec::new();
        let email = iam::email(&name, project);
        let install = self.install.as_str();
        let id = &target.id;
        let salt = pass_salt();
        let compute = |kind: ResourceKind, path: String, name: &str| Deletion {
            kind,
            path,
            name: name.to_owned(),
            scope: kind.scope(target),
            salt: &salt,
        };

        let ((inst, ops), sa, secret) = join3(
            self.delete_compute(
                project,
                compute(
                    ResourceKind::Instance,
                    instance::path(project, &target.zone, &name),
                    &name,
                ),
                rec,
                |v: &wire::Instance| labels_ours(&v.labels, install, id),
            ),
            self.delete_rpc(
                Service::Iam,
                &iam::path(project, &email),
                ("get service account", "delete service account"),
                &email,
                |v: &wire::ServiceAccount| marker_ours(&v.description, install, id),
            ),
            self.delete_rpc(
                Service::Secrets,
                &secret::path(project, &name),
                ("get secret", "delete secret"),
                &name,
                |v: &wire::Secret| labels_ours(&v.labels, install, id),
            ),
        )
        .await;
        pending.extend(ops);
        let inst_gone = absorb(inst, &mut waiting, &mut errors).is_some();
        let sa_gone = absorb(sa, &mut waiting, &mut errors).is_some();
        let secret_gone = absorb(secret, &mut waiting, &mut errors).is_some();
        let mut done = inst_gone && sa_gone && secret_gone;
        let mut recorded = rec.clone();
        if inst_gone {
            recorded.instance = None;
        }
        if sa_gone {
            recorded.service_account_email = None;
            recorded.iam_bound = false;
        }
        if secret_gone {
            recorded.secret = None;
            recorded.secret_version = None;
        }
        if inst_gone {
            let tunnel = firewall::tunnel_name(&name);
            let ((fw, fw_ops), (tun, tun_ops), (addr, addr_ops)) = join3(
                self.delete_compute(
                    project,
                    compute(
                        ResourceKind::Firewall,
                        firewall::path(project, &name),
                        &name,
                    ),
                    rec,
                    |v: &wire::Firewall| marker_ours(&v.description, install, id),
                ),
                self.delete_compute(
                    project,
                    compute(
                        ResourceKind::TunnelFirewall,
                        firewall::path(project, &tunnel),
                        &tunnel,
                    ),
                    rec,
                    |v: &wire::Firewall| marker_ours(&v.description, install, id),
                ),
                self.delete_compute(
                    project,
                    compute(
                        ResourceKind::Address,
                        address::path(project, &target.region, &name),
                        &name,
                    ),
                    rec,
                    |v: &wire::Address| labels_ours(&v.labels, install, id),
                ),
            )
            .await;
            pending.extend(fw_ops);
            pending.extend(tun_ops);
            pending.extend(addr_ops);
            let tun_gone = absorb(tun, &mut waiting, &mut errors).is_some();
            let fw_gone = absorb(fw, &mut waiting, &mut errors).is_some() && tun_gone;
            let addr_gone = absorb(addr, &mut waiting, &mut errors).is_some();
            if fw_gone {
                recorded.firewall = None;
            }
            if addr_gone {
                recorded.address_name = None;
                recorded.address = None;
            }
            done &= fw_gone && addr_gone;
            if fw_gone {
                let marker = names::network_marker(install);
                let (net, net_ops) = self
                    .delete_compute(
                        project,
                        compute(
                            ResourceKind::Network,
                            network::path(project, &self.network),
                            &self.network,
                        ),
                        rec,
                        |v: &wire::Network| v.description == marker,
                    )
                    .await;
                pending.extend(net_ops);
                match net {
                    Step::Failed(e) if e.is_in_use() => {
                        // Another gateway's firewall or VM still uses it; the last one out removes it.
                        recorded.network = None;
                    }
                    other => {
                        if absorb(other, &mut waiting, &mut errors).is_some() {
                            recorded.network = None;
                        } else {
                            done = false;
                        }
                    }
                }
            }
        } else {
            done = false;
        }
        recorded.pending = pending;
        DeleteProgress {
            done: done && errors.is_empty(),
            recorded,
            waiting,
            errors,
        }
    }

    async fn list_owned(&self, project: &str) -> Result<Vec<Owned>, CloudError> {
        self.owned(project).await
    }

    async fn vm_report(&self, target: &Target) -> Result<BTreeMap<String, String>, CloudError> {
        self.guest_report(target).await
    }

    async fn vm_report_if_spare(
        &self,
        target: &Target,
    ) -> Result<Option<BTreeMap<String, String>>, CloudError> {
        if !self.api.has_spare(&target.project) {
            return Ok(None);
        }
        self.guest_report(target).await.map(Some)
    }

    async fn wait_any(&self, target: &Target, recorded: &Recorded) {
        self.wait_for_any(target, recorded).await;
    }
}

/// Percent-encodes a query value.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_bytes_never_print() {
        let s = crate::SecretBytes::new(b"private".to_vec());
        assert!(!format!("{s:?}").contains("private"));
    }

    #[test]
    fn encodes_filters() {
        assert_eq!(encode("labels.a=b c"), "labels.a%3Db%20c");
    }

    #[test]
    fn ownership_is_install_cluster_namespace_and_name() {
        let id = GatewayId {
            cluster: "c1".into(),
            namespace: "apps".into(),
            name: "edge".into(),
            uid: "u1".into(),
        };
        let labels = id.labels("wgnet", "r", "z");
        assert!(labels_ours(&labels, "wgnet", &id));
        let other = GatewayId {
            uid: "u2".into(),
            ..id.clone()
        };
        assert!(
            labels_ours(&labels, "wgnet", &other),
            "a recreated Gateway adopts"
        );
        let elsewhere = GatewayId {
            namespace: "other".into(),
            ..id.clone()
        };
        assert!(!labels_ours(&labels, "wgnet", &elsewhere));
        assert!(!labels_ours(&labels, "another-install", &id));
        assert!(marker_ours(&id.marker("wgnet", "r", "z"), "wgnet", &id));
        assert!(!marker_ours("hand-made", "wgnet", &id));
    }
}
