//! The GCP emulator: a stateful stand-in for Compute v1, IAM v1, Secret Manager v1, the
//! OAuth2 token endpoint and the per-VM metadata server, over real HTTP, shaped by Google's
//! discovery documents. Tests and the sandbox point the cloud crate's configurable base URLs
//! at it; the code under test cannot tell it from GCP for everything the project uses.
//!
//! I/O boundary: one TCP listener (127.0.0.1:0 by default) served by hyper, and the
//! `openssl` binary for service-account key generation. State lives in [`world::World`].

pub mod auth;
pub mod discovery;
pub mod error;
mod fields;
mod http;
pub mod permissions;
pub mod world;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};

pub use http::{Fault, FaultAction, LoggedCall};

/// How long operations and calls take.
#[derive(Clone, Debug, PartialEq)]
pub struct LatencyProfile {
    /// Profile name (`instant`, `gcp-typical`, `polls`).
    pub name: &'static str,
    /// Added to every API call's response.
    pub request: Duration,
    /// `networks.insert` to DONE.
    pub network_insert: Duration,
    /// `networks.delete` to DONE.
    pub network_delete: Duration,
    /// `firewalls.insert` to DONE.
    pub firewall_insert: Duration,
    /// `firewalls.patch` to DONE.
    pub firewall_patch: Duration,
    /// `firewalls.delete` to DONE.
    pub firewall_delete: Duration,
    /// `addresses.insert` to DONE.
    pub address_insert: Duration,
    /// `addresses.delete` to DONE.
    pub address_delete: Duration,
    /// `instances.insert` to RUNNING.
    pub instance_insert: Duration,
    /// `instances.delete` to DONE.
    pub instance_delete: Duration,
    /// `instances.start` to RUNNING.
    pub instance_start: Duration,
    /// `instances.stop` to TERMINATED.
    pub instance_stop: Duration,
    /// `instances.setMetadata` to DONE.
    pub instance_set_metadata: Duration,
    /// `instances.setLabels` to DONE.
    pub set_labels: Duration,
    /// Time before a new service account can be named in IAM bindings.
    pub iam_propagation: Duration,
    /// Operations advance one state per poll instead of by time.
    pub advance_on_poll: bool,
    /// Multiplier on every duration (benchmarks shrink real-world figures).
    pub scale: f64,
}

impl LatencyProfile {
    /// Everything completes at once.
    pub fn instant() -> Self {
        Self {
            name: "instant",
            request: Duration::ZERO,
            network_insert: Duration::ZERO,
            network_delete: Duration::ZERO,
            firewall_insert: Duration::ZERO,
            firewall_patch: Duration::ZERO,
            firewall_delete: Duration::ZERO,
            address_insert: Duration::ZERO,
            address_delete: Duration::ZERO,
            instance_insert: Duration::ZERO,
            instance_delete: Duration::ZERO,
            instance_start: Duration::ZERO,
            instance_stop: Duration::ZERO,
            instance_set_metadata: Duration::ZERO,
            set_labels: Duration::ZERO,
            iam_propagation: Duration::ZERO,
            advance_on_poll: false,
            scale: 1.0,
        }
    }

    /// Operations go PENDING, RUNNING, DONE on successive polls (or at once on `wait`).
    pub fn polls() -> Self {
        Self {
            name: "polls",
            advance_on_poll: true,
            ..Self::instant()
        }
    }

    /// Typical GCP figures from public Terraform logs and Google's documentation (see
    /// docs/gcp-emulator.md): address 3 s, firewall 10 s, network 35 s, instance 18 s to
    /// RUNNING, IAM propagation of a new service account 10 s, 80 ms per call.
    pub fn gcp_typical() -> Self {
        let s = Duration::from_secs;
        Self {
            name: "gcp-typical",
            request: Duration::from_millis(80),
            network_insert: s(35),
            network_delete: s(25),
            firewall_insert: s(10),
            firewall_patch: s(8),
            firewall_delete: s(8),
            address_insert: s(3),
            address_delete: s(3),
            instance_insert: s(18),
            instance_delete: s(40),
            instance_start: s(15),
            instance_stop: s(30),
            instance_set_metadata: s(3),
            set_labels: s(2),
            iam_propagation: s(10),
            advance_on_poll: false,
            scale: 1.0,
        }
    }

    /// A profile by name.
    pub fn named(name: &str) -> Option<Self> {
        match name {
            "instant" => Some(Self::instant()),
            "polls" => Some(Self::polls()),
            "gcp-typical" => Some(Self::gcp_typical()),
            _ => None,
        }
    }

    /// The same profile with every duration multiplied by `scale`.
    pub fn scaled_by(mut self, scale: f64) -> Self {
        self.scale = scale;
        self
    }

    /// `d` under this profile's scale.
    pub fn scaled(&self, d: Duration) -> Duration {
        d.mul_f64(self.scale.max(0.0))
    }
}

/// One live resource, for leak checks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InventoryItem {
    /// `network`, `firewall`, `address`, `instance`, `serviceAccount` or `secret`.
    pub kind: &'static str,
    /// Project id.
    pub project: String,
    /// `global`, a region or a zone.
    pub scope: String,
    /// Resource name (the email for service accounts).
    pub name: String,
    /// Labels, where the resource has them.
    pub labels: BTreeMap<String, String>,
    /// Description, where the resource has one.
    pub description: String,
}

/// Emulator settings.
#[derive(Clone, Debug)]
pub struct Config {
    /// Listen address; port 0 picks a free one.
    pub addr: SocketAddr,
    /// Projects that exist.
    pub projects: Vec<String>,
    /// Operation and call latencies.
    pub profile: LatencyProfile,
    /// Lifetime of issued access tokens.
    pub token_ttl: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            projects: vec!["wgnet-test".to_owned()],
            profile: LatencyProfile::instant(),
            token_ttl: Duration::from_secs(3600),
        }
    }
}

/// A running emulator; it stops when dropped.
pub struct GcpEmulator {
    addr: SocketAddr,
    shared: Arc<http::Shared>,
    shutdown: watch::Sender<bool>,
}

impl std::fmt::Debug for GcpEmulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GcpEmulator")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Handlers never leave partial writes behind a panic, so a poisoned lock is usable.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl GcpEmulator {
    /// Binds and starts serving on the current tokio runtime.
    pub async fn start(config: Config) -> std::io::Result<Self> {
        let listener = TcpListener::bind(config.addr).await?;
        let addr = listener.local_addr()?;
        let base = format!("http://{addr}");
        let load = |f: &str| {
            discovery::Discovery::load(&[f]).map_err(|e| std::io::Error::other(e.to_string()))
        };
        let shared = Arc::new(http::Shared {
            world: Mutex::new(world::World::new(
                &config.projects,
                config.profile,
                base.clone(),
            )),
            controls: Mutex::new(http::Controls::default()),
            auth: Mutex::new(http::AuthState {
                token_ttl: config.token_ttl,
                ..http::AuthState::default()
            }),
            compute: load("compute.v1.json")?,
            iam: load("iam.v1.json")?,
            secrets: load("secretmanager.v1.json")?,
            metadata_changed: Notify::new(),
            base,
        });
        let shutdown = crate::serve::spawn(listener, shared.clone(), http::handle);
        Ok(Self {
            addr,
            shared,
            shutdown,
        })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:port`.
    pub fn url(&self) -> String {
        self.shared.base.clone()
    }

    /// Base URL to use in place of `https://compute.googleapis.com/compute/v1/`.
    pub fn compute_url(&self) -> String {
        format!("{}/compute/v1/", self.shared.base)
    }

    /// Base URL to use in place of `https://iam.googleapis.com/v1/`.
    pub fn iam_url(&self) -> String {
        format!("{}/v1/", self.shared.base)
    }

    /// Base URL to use in place of `https://secretmanager.googleapis.com/v1/`.
    pub fn secrets_url(&self) -> String {
        format!("{}/v1/", self.shared.base)
    }

    /// The OAuth2 token endpoint (`token_uri` of key files).
    pub fn token_url(&self) -> String {
        format!("{}/token", self.shared.base)
    }

    /// The metadata server root of one instance, in place of
    /// `http://metadata.google.internal` (append `/computeMetadata/v1/...`).
    pub fn metadata_url(&self, project: &str, zone: &str, instance: &str) -> String {
        format!("{}/metadata/{project}/{zone}/{instance}", self.shared.base)
    }

    /// Creates a key for `email` (an identity with every permission in the emulator's
    /// projects, like the operator's service account) and writes a Google-format JSON key
    /// file whose `token_uri` is this emulator.
    pub fn write_key_file(&self, email: &str, path: &Path) -> Result<(), String> {
        let pem = auth::generate_key_pem()?;
        let public = auth::public_key_der(&pem)?;
        let project = email
            .split('@')
            .nth(1)
            .and_then(|d| d.split('.').next())
            .unwrap_or("wgnet-test");
        let mut a = lock(&self.shared.auth);
        a.keys.entry(email.to_owned()).or_default().push(public);
        a.admins.insert(email.to_owned());
        let n = a.keys.len();
        drop(a);
        let key = json!({
            "type": "service_account",
            "project_id": project,
            "private_key_id": format!("{:040x}", n),
            "private_key": pem,
            "client_email": email,
            "client_id": format!("1{:020}", n),
            "auth_uri": "https://accounts.google.com/o/oauth2/auth",
            "token_uri": self.token_url(),
        });
        let text = serde_json::to_string_pretty(&key).map_err(|e| e.to_string())?;
        write_private(path, text.as_bytes()).map_err(|e| format!("writing {}: {e}", path.display()))
    }

    /// Issues a token directly (tests of the emulator itself); `admin` identities may call
    /// every API, others only what IAM grants them.
    pub fn issue_token(&self, email: &str, admin: bool) -> String {
        let mut a = lock(&self.shared.auth);
        if admin {
            a.admins.insert(email.to_owned());
        }
        a.issue(email).0
    }

    /// Sets how long newly issued tokens live.
    pub fn set_token_ttl(&self, ttl: Duration) {
        lock(&self.shared.auth).token_ttl = ttl;
    }

    /// How many tokens the token endpoint and metadata servers have issued.
    pub fn tokens_issued(&self) -> usize {
        lock(&self.shared.auth).issued
    }

    /// Adds a fault rule.
    pub fn add_fault(&self, fault: Fault) {
        lock(&self.shared.controls).faults.push(fault);
    }

    /// Fails the next `count` requests matching `method` and `path_contains` with `status`.
    pub fn fail_next(&self, method: Option<&str>, path_contains: &str, count: usize, status: u16) {
        self.add_fault(Fault {
            method: method.map(str::to_owned),
            path_contains: path_contains.to_owned(),
            remaining: Some(count),
            action: FaultAction::Status(status),
        });
    }

    /// Fails a random `rate` of API calls (not token or metadata requests) with one of
    /// `statuses`, reproducibly from `seed`.
    pub fn random_failures(&self, rate: f64, seed: u64, statuses: &[u16]) {
        let mut c = lock(&self.shared.controls);
        c.random_rate = rate;
        c.rng = seed.max(1);
        c.random_statuses = statuses.to_vec();
    }

    /// Leaves a share of writes unanswered after serving them, and makes a share of
    /// Compute mutations' operations fail with one of `codes` (drawn from the same seeded
    /// sequence as [`Self::random_failures`]).
    pub fn random_write_faults(&self, drop_rate: f64, op_failure_rate: f64, codes: &[&str]) {
        let mut c = lock(&self.shared.controls);
        c.random_drop_rate = drop_rate;
        c.random_op_failure_rate = op_failure_rate;
        c.random_op_codes = codes.iter().map(|s| (*s).to_owned()).collect();
    }

    /// Removes every fault rule and the random failure rates.
    pub fn clear_faults(&self) {
        let mut c = lock(&self.shared.controls);
        c.faults.clear();
        c.random_rate = 0.0;
        c.random_drop_rate = 0.0;
        c.random_op_failure_rate = 0.0;
    }

    /// Adds fixed latency to every API call.
    pub fn set_latency(&self, latency: Duration) {
        lock(&self.shared.controls).latency = latency;
    }

    /// Limits API calls per quota group per minute (None: unlimited).
    pub fn set_quota_per_minute(&self, limit: Option<u32>) {
        self.set_quota(limit, Duration::from_secs(60));
    }

    /// Calls per quota group per `period` (a shorter period than GCP's minute lets a test
    /// reach the limit in seconds).
    pub fn set_quota(&self, limit: Option<u32>, period: Duration) {
        let mut c = lock(&self.shared.controls);
        c.quota = limit;
        c.quota_limits.clear();
        c.quota_period = Some(period);
        c.quota_window = None;
    }

    /// GCP's default per-project rate quotas, per group and per minute: Compute's
    /// documented 1,500 requests a minute for each of its groups (mutations, reads, lists,
    /// operation reads), and 600 a minute for IAM and for Secret Manager reads and writes
    /// each (the lower of their defaults, so a bench passing here passes there).
    pub fn set_gcp_default_quotas(&self) {
        let mut c = lock(&self.shared.controls);
        c.quota = None;
        c.quota_limits = [
            ("compute-mutations", 1500),
            ("compute-reads", 1500),
            ("compute-lists", 1500),
            ("compute-operation-reads", 1500),
            ("iam", 600),
            ("secretmanager-reads", 600),
            ("secretmanager-writes", 600),
        ]
        .into_iter()
        .collect();
        c.quota_period = Some(Duration::from_secs(60));
        c.quota_window = None;
    }

    /// Static addresses come from the benchmarking range 198.18.0.0/15 (131,072 of them)
    /// instead of the 480 documentation addresses: for scale benches, whose addresses are
    /// never routed.
    pub fn use_benchmark_addresses(&self) {
        lock(&self.shared.world).benchmark_addresses = true;
    }

    /// Calls refused for a rate quota so far.
    pub fn quota_refusals(&self) -> u64 {
        lock(&self.shared.controls).quota_refusals
    }

    /// Replaces the latency profile.
    pub fn set_profile(&self, profile: LatencyProfile) {
        lock(&self.shared.world).profile = profile;
    }

    /// Every request served so far.
    pub fn request_log(&self) -> Vec<LoggedCall> {
        lock(&self.shared.controls).log.clone()
    }

    /// Forgets the request log.
    pub fn clear_request_log(&self) {
        lock(&self.shared.controls).log.clear();
    }

    /// Every live resource.
    pub fn inventory(&self) -> Vec<InventoryItem> {
        let mut w = lock(&self.shared.world);
        w.tick(std::time::Instant::now());
        w.inventory()
    }

    /// Reads one instance's status (`RUNNING`, `TERMINATED`, ...; `None` once deleted) from
    /// any thread: what a hypervisor stand-in follows to power its guest off and on.
    pub fn instance_status_reader(
        &self,
        project: &str,
        zone: &str,
        name: &str,
    ) -> impl Fn() -> Option<String> + Send + 'static {
        let shared = Arc::clone(&self.shared);
        let (project, zone, name) = (project.to_owned(), zone.to_owned(), name.to_owned());
        move || {
            let mut w = lock(&shared.world);
            w.tick(std::time::Instant::now());
            let inst = w.get_instance(&project, &zone, &name).ok()?;
            inst["status"].as_str().map(str::to_owned)
        }
    }

    /// Stops an instance at once, like a Spot preemption.
    pub fn preempt_instance(&self, project: &str, zone: &str, name: &str) -> bool {
        lock(&self.shared.world).preempt(project, zone, name)
    }

    /// Deletes a resource out of band (`kind` as in [`InventoryItem`]).
    pub fn remove_resource(&self, kind: &str, project: &str, scope: &str, name: &str) -> bool {
        lock(&self.shared.world).remove(kind, project, scope, name)
    }

    /// How many operations have ended in error.
    pub fn failed_operations(&self) -> usize {
        lock(&self.shared.world).failed_operations
    }

    /// Makes every list answer pages of at most `n` items (`None`: GCP's own sizes).
    pub fn set_page_cap(&self, n: Option<usize>) {
        lock(&self.shared.world).page_cap = n;
    }

    /// Empties a secret's IAM policy out of band.
    pub fn clear_secret_bindings(&self, project: &str, id: &str) -> bool {
        lock(&self.shared.world).clear_secret_bindings(project, id)
    }

    /// The members bound to `role` on a secret.
    pub fn secret_members(&self, project: &str, id: &str, role: &str) -> Vec<String> {
        lock(&self.shared.world).secret_members(project, id, role)
    }

    /// Sets one metadata entry of an instance out of band.
    pub fn edit_instance_metadata(
        &self,
        project: &str,
        zone: &str,
        name: &str,
        key: &str,
        value: &str,
    ) -> bool {
        lock(&self.shared.world).edit_instance_metadata(project, zone, name, key, value)
    }

    /// Overwrites one field of a firewall out of band.
    pub fn edit_firewall(&self, project: &str, name: &str, field: &str, value: Value) -> bool {
        lock(&self.shared.world).edit_firewall(project, name, field, value)
    }

    /// Reads a resource as the API would return it (for assertions), if it exists.
    pub fn get(&self, kind: &str, project: &str, scope: &str, name: &str) -> Option<Value> {
        let mut w = lock(&self.shared.world);
        w.tick(std::time::Instant::now());
        match kind {
            "network" => w.get_network(project, name).ok(),
            "firewall" => w.get_firewall(project, name).ok(),
            "address" => w.get_address(project, scope, name).ok(),
            "instance" => w.get_instance(project, scope, name).ok(),
            "serviceAccount" => w.get_service_account(project, name).ok(),
            "secret" => w.get_secret(project, name).ok(),
            "secretPolicy" => w.get_secret_policy(project, name).ok(),
            _ => None,
        }
    }

    /// The payload of a secret's latest version, as an admin would read it.
    pub fn secret_payload(&self, project: &str, secret: &str) -> Option<Vec<u8>> {
        use base64::Engine as _;
        let w = lock(&self.shared.world);
        let v = w
            .access(
                project,
                secret,
                "latest",
                "",
                true,
                std::time::Instant::now(),
            )
            .ok()?;
        base64::engine::general_purpose::STANDARD
            .decode(v["payload"]["data"].as_str()?)
            .ok()
    }

    /// How many versions a secret holds.
    pub fn secret_versions(&self, project: &str, secret: &str) -> Option<usize> {
        lock(&self.shared.world).secret_versions(project, secret)
    }

    /// Overwrites a guest attribute, as a VM that lost power leaves it stale.
    pub fn put_guest_attribute_for_test(
        &self,
        project: &str,
        zone: &str,
        name: &str,
        path: &str,
        value: &str,
    ) {
        lock(&self.shared.world).put_guest_attribute(project, zone, name, path, value.to_owned());
    }

    /// A guest attribute (`namespace/key`) the VM wrote.
    pub fn guest_attribute(
        &self,
        project: &str,
        zone: &str,
        name: &str,
        path: &str,
    ) -> Option<String> {
        lock(&self.shared.world).guest_attribute(project, zone, name, path)
    }
}

impl Drop for GcpEmulator {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}

/// Writes a file only its owner can read.
fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(data)
}
