//! [`GcpCloud`]: the [`Cloud`] trait over the Compute, IAM and Secret Manager REST APIs.
//!
//! Dependency order, written down once (everything on one line runs in parallel):
//!
//! 1. network, service account, secret (+ key version), static address
//! 2. firewall (needs the network); secretAccessor binding (needs the account and the
//!    secret); instance (needs the network, the account and the address)
//!
//! Deletion runs the other way: instance, account and secret; then firewall and address
//! (the address is in use until the instance is gone); then the shared network, which GCP
//! refuses to delete while another gateway's firewall or VM uses it.
//!
//! Nothing here waits on a long-running operation: inserts record their operation in
//! [`Recorded::pending`] and the next call polls it once. An unchanged resync reads the
//! firewall and the instance (drift repair) and writes nothing.
//!
//! I/O boundary: all HTTP goes through [`Api`].

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use futures_util::future::{join, join3, join4};
use reqwest::Method;
use serde_json::{Value, json};

use crate::api::{Api, CallObserver, Credentials, Endpoints, Retry, RetryPolicy, Service};
use crate::error::CloudError;
use crate::names::{self, GatewayId};
use crate::{
    Cloud, DeleteProgress, Desired, Owned, PendingOp, Progress, Protocol, Recorded, Target,
    TargetKey,
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
}

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
}

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

    fn pending(&self, resource: &str) -> Option<&PendingOp> {
        self.rec.pending.iter().find(|p| p.resource == resource)
    }
}

/// State of a Compute operation after one look.
enum OpState {
    Done,
    Running(PendingOp),
}

fn op_scope(op: &Value, fallback: &str) -> String {
    let from = |k: &str, prefix: &str| {
        op[k]
            .as_str()
            .and_then(|u| u.rsplit('/').next())
            .map(|s| format!("{prefix}/{s}"))
    };
    from("zone", "zones")
        .or_else(|| from("region", "regions"))
        .unwrap_or_else(|| fallback.to_owned())
}

fn op_error(op: &Value, what: &str) -> Option<CloudError> {
    let e = op["error"]["errors"].get(0)?;
    Some(CloudError::Operation {
        operation: op["name"].as_str().unwrap_or_default().to_owned(),
        what: what.to_owned(),
        code: e["code"].as_str().unwrap_or_default().to_owned(),
        message: e["message"].as_str().unwrap_or_default().to_owned(),
    })
}

fn labels_json(l: &BTreeMap<String, String>) -> Value {
    Value::Object(l.iter().map(|(k, v)| (k.clone(), json!(v))).collect())
}

/// Whether labels (or a marker) say the resource is this gateway's: same install, cluster,
/// namespace and name. The uid may differ (a Gateway recreated under the same name adopts
/// what its predecessor left behind).
fn labels_ours(v: &Value, install: &str, id: &GatewayId) -> bool {
    let l = &v["labels"];
    l[names::LABEL_INSTALL] == names::label_value(install).as_str()
        && l[names::LABEL_CLUSTER] == names::label_value(&id.cluster).as_str()
        && l[names::LABEL_NAMESPACE] == names::label_value(&id.namespace).as_str()
        && l[names::LABEL_NAME] == names::label_value(&id.name).as_str()
}

fn marker_ours(description: &str, install: &str, id: &GatewayId) -> bool {
    names::parse_marker(description).is_some_and(|m| {
        m.install == install
            && m.cluster == id.cluster
            && m.namespace == id.namespace
            && m.name == id.name
    })
}

fn collision(kind: &'static str, name: &str, v: &Value) -> CloudError {
    let desc = v["description"].as_str().unwrap_or_default();
    CloudError::NameCollision {
        kind,
        name: name.to_owned(),
        detail: if desc.is_empty() {
            "no wgnet labels".to_owned()
        } else {
            format!("description {desc:?}")
        },
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The firewall's `allowed` list in a canonical order.
fn allowed(listen_port: u16, ports: &[(u16, Protocol)]) -> Value {
    let mut tcp = BTreeSet::new();
    let mut udp = BTreeSet::from([listen_port]);
    for (p, proto) in ports {
        match proto {
            Protocol::Tcp => tcp.insert(*p),
            Protocol::Udp => udp.insert(*p),
        };
    }
    let list = |s: &BTreeSet<u16>| s.iter().map(|p| json!(p.to_string())).collect::<Vec<_>>();
    let mut out = vec![json!({"IPProtocol": "udp", "ports": list(&udp)})];
    if !tcp.is_empty() {
        out.push(json!({"IPProtocol": "tcp", "ports": list(&tcp)}));
    }
    Value::Array(out)
}

/// The fields of a firewall this crate owns: (protocol, port) pairs, source ranges, target
/// tags, network name, disabled, direction.
type FirewallShape = (
    BTreeSet<(String, String)>,
    BTreeSet<String>,
    BTreeSet<String>,
    String,
    bool,
    String,
);

/// A comparable summary of a firewall: the fields we own.
fn firewall_shape(v: &Value) -> FirewallShape {
    let mut ports = BTreeSet::new();
    for a in v["allowed"].as_array().into_iter().flatten() {
        let proto = a["IPProtocol"].as_str().unwrap_or_default().to_owned();
        for p in a["ports"].as_array().into_iter().flatten() {
            ports.insert((proto.clone(), p.as_str().unwrap_or_default().to_owned()));
        }
    }
    let set = |k: &str| -> BTreeSet<String> {
        v[k].as_array()
            .into_iter()
            .flatten()
            .filter_map(|x| x.as_str().map(str::to_owned))
            .collect()
    };
    let network = v["network"]
        .as_str()
        .and_then(|n| n.rsplit('/').next())
        .unwrap_or_default()
        .to_owned();
    (
        ports,
        set("sourceRanges"),
        set("targetTags"),
        network,
        v["disabled"].as_bool().unwrap_or(false),
        v["direction"].as_str().unwrap_or("INGRESS").to_owned(),
    )
}

fn metadata_items(meta: &BTreeMap<String, String>) -> Value {
    Value::Array(
        meta.iter()
            .map(|(k, v)| json!({"key": k, "value": v}))
            .collect(),
    )
}

fn current_metadata(inst: &Value) -> BTreeMap<String, String> {
    inst["metadata"]["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| {
            Some((
                i["key"].as_str()?.to_owned(),
                i["value"].as_str()?.to_owned(),
            ))
        })
        .collect()
}

impl GcpCloud {
    /// Loads credentials and builds the client.
    pub async fn new(config: GcpConfig) -> Result<Self, CloudError> {
        if config.install.is_empty() || config.network.is_empty() {
            return Err(CloudError::Config(
                "install and network names must not be empty".to_owned(),
            ));
        }
        let api = Api::new(
            &config.credentials,
            config.endpoints,
            config.retry,
            config.observer,
        )
        .await?;
        Ok(Self {
            api,
            install: config.install,
            cluster: config.cluster,
            network: config.network,
        })
    }

    async fn get(
        &self,
        s: Service,
        path: &str,
        op: &'static str,
        what: &str,
    ) -> Result<Value, CloudError> {
        self.api
            .call(s, Method::GET, path, None, op, what, Retry::Transient)
            .await
    }

    async fn get_opt(
        &self,
        s: Service,
        path: &str,
        op: &'static str,
        what: &str,
    ) -> Result<Option<Value>, CloudError> {
        match self.get(s, path, op, what).await {
            Ok(v) => Ok(Some(v)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Sends a Compute mutation and turns its operation into a state.
    #[allow(clippy::too_many_arguments)]
    async fn mutate(
        &self,
        p: Option<&Pass<'_>>,
        method: Method,
        path: &str,
        body: Option<&Value>,
        op: &'static str,
        resource: &str,
        what: &str,
        scope: &str,
        request_id: &str,
    ) -> Result<OpState, CloudError> {
        let sep = if path.contains('?') { '&' } else { '?' };
        let full = format!("{path}{sep}requestId={request_id}");
        if let Some(p) = p {
            p.wrote();
        }
        let v = self
            .api
            .call(
                Service::Compute,
                method,
                &full,
                body,
                op,
                what,
                Retry::Transient,
            )
            .await?;
        self.op_state(&v, resource, &format!("{op} {what}"), scope)
    }

    fn op_state(
        &self,
        v: &Value,
        resource: &str,
        description: &str,
        scope: &str,
    ) -> Result<OpState, CloudError> {
        if let Some(e) = op_error(v, description) {
            return Err(e);
        }
        if v["status"] == "DONE" {
            return Ok(OpState::Done);
        }
        Ok(OpState::Running(PendingOp {
            resource: resource.to_owned(),
            name: v["name"].as_str().unwrap_or_default().to_owned(),
            scope: op_scope(v, scope),
            description: description.to_owned(),
        }))
    }

    /// Looks at a recorded operation once.
    async fn poll(&self, project: &str, op: &PendingOp) -> Result<OpState, CloudError> {
        let path = format!("projects/{project}/{}/operations/{}", op.scope, op.name);
        match self
            .get(Service::Compute, &path, "get operation", &op.name)
            .await
        {
            Ok(v) => self.op_state(&v, &op.resource, &op.description, &op.scope),
            // Operations are garbage-collected after a while; the resource tells the rest.
            Err(e) if e.is_not_found() => Ok(OpState::Done),
            Err(e) => Err(e),
        }
    }

    /// Polls `resource`'s pending operation; `Some` ends the step.
    async fn check_pending<T>(
        &self,
        p: &Pass<'_>,
        resource: &str,
        out: &mut Vec<PendingOp>,
    ) -> Option<Step<T>> {
        let op = p.pending(resource)?;
        match self.poll(p.project(), op).await {
            Ok(OpState::Done) => None,
            Ok(OpState::Running(op)) => {
                let desc = format!("waiting for {}", op.description);
                out.push(op);
                Some(Step::Waiting(desc))
            }
            Err(e) if e.is_retryable() => {
                out.push(op.clone());
                Some(Step::Failed(e))
            }
            Err(e) => Some(Step::Failed(e)),
        }
    }

    fn finish_op<T>(
        state: Result<OpState, CloudError>,
        ready: T,
        out: &mut Vec<PendingOp>,
    ) -> Step<T> {
        match state {
            Ok(OpState::Done) => Step::Ready(ready),
            Ok(OpState::Running(op)) => {
                let d = format!("waiting for {}", op.description);
                out.push(op);
                Step::Waiting(d)
            }
            Err(e) => Step::Failed(e),
        }
    }

    // ------------------------------------------------------------------ network

    async fn ensure_network(&self, p: &Pass<'_>) -> (Step<()>, Vec<PendingOp>) {
        let mut ops = Vec::new();
        if let Some(s) = self.check_pending(p, "network", &mut ops).await {
            return (s, ops);
        }
        let steady = p.rec.network.as_deref() == Some(self.network.as_str())
            && p.rec.firewall.is_some()
            && p.rec.instance.is_some();
        if steady {
            return (Step::Ready(()), ops);
        }
        let path = format!("projects/{}/global/networks/{}", p.project(), self.network);
        let step = match self
            .get_opt(Service::Compute, &path, "get network", &self.network)
            .await
        {
            Err(e) => Step::Failed(e),
            Ok(Some(v)) if v["description"] == names::network_marker(&self.install).as_str() => {
                Step::Ready(())
            }
            Ok(Some(v)) => Step::Failed(collision("network", &self.network, &v)),
            Ok(None) => {
                let body = json!({
                    "name": self.network,
                    "description": names::network_marker(&self.install),
                    "autoCreateSubnetworks": true,
                    "routingConfig": {"routingMode": "REGIONAL"},
                });
                let rid = p.request_id("network");
                let r = self
                    .mutate(
                        Some(p),
                        Method::POST,
                        &format!("projects/{}/global/networks", p.project()),
                        Some(&body),
                        "insert network",
                        "network",
                        &self.network,
                        "global",
                        &rid,
                    )
                    .await;
                Self::finish_op(r, (), &mut ops)
            }
        };
        (step, ops)
    }

    // ------------------------------------------------------------------ service account

    fn sa_email(&self, p: &Pass<'_>) -> String {
        format!("{}@{}.iam.gserviceaccount.com", p.name, p.project())
    }

    async fn ensure_service_account(&self, p: &Pass<'_>) -> Step<String> {
        let email = self.sa_email(p);
        if p.rec.service_account_email.as_deref() == Some(email.as_str()) && p.rec.iam_bound {
            return Step::Ready(email);
        }
        let t = &p.d.target;
        let path = format!("projects/{}/serviceAccounts/{email}", p.project());
        let check = |v: &Value| {
            if marker_ours(
                v["description"].as_str().unwrap_or_default(),
                &self.install,
                p.id(),
            ) {
                Step::Ready(email.clone())
            } else {
                Step::Failed(collision("service account", &email, v))
            }
        };
        match self
            .get_opt(Service::Iam, &path, "get service account", &email)
            .await
        {
            Err(e) => return Step::Failed(e),
            Ok(Some(v)) => return check(&v),
            Ok(None) => {}
        }
        let body = json!({
            "accountId": p.name,
            "serviceAccount": {
                "displayName": format!("wgnet gateway {}/{}", t.id.namespace, t.id.name),
                "description": t.id.marker(&self.install, &t.region, &t.zone),
            },
        });
        p.wrote();
        let created = self
            .api
            .call(
                Service::Iam,
                Method::POST,
                &format!("projects/{}/serviceAccounts", p.project()),
                Some(&body),
                "create service account",
                &email,
                Retry::Transient,
            )
            .await;
        match created {
            Ok(v) => check(&v),
            Err(e) if e.is_already_exists() => {
                // An earlier attempt whose answer was lost, or IAM's eventual consistency.
                match self
                    .get_opt(Service::Iam, &path, "get service account", &email)
                    .await
                {
                    Ok(Some(v)) => check(&v),
                    Ok(None) => Step::Waiting(format!(
                        "waiting for service account {email} to become visible"
                    )),
                    Err(e) => Step::Failed(e),
                }
            }
            Err(e) => Step::Failed(e),
        }
    }

    // ------------------------------------------------------------------ secret

    /// Returns (secret id, version name).
    async fn ensure_secret(&self, p: &Pass<'_>) -> Step<(String, String)> {
        let id = p.name.clone();
        if p.rec.secret.as_deref() == Some(id.as_str())
            && p.rec.key_version == Some(p.d.key_version)
            && let Some(v) = &p.rec.secret_version
        {
            return Step::Ready((id, v.clone()));
        }
        let t = &p.d.target;
        let path = format!("projects/{}/secrets/{id}", p.project());
        let check = |v: &Value| labels_ours(v, &self.install, p.id());
        match self
            .get_opt(Service::Secrets, &path, "get secret", &id)
            .await
        {
            Err(e) => return Step::Failed(e),
            Ok(Some(v)) if !check(&v) => return Step::Failed(collision("secret", &id, &v)),
            Ok(Some(_)) => {}
            Ok(None) => {
                let body = json!({
                    "replication": {"automatic": {}},
                    "labels": labels_json(&t.id.labels(&self.install, &t.region, &t.zone)),
                });
                p.wrote();
                let r = self
                    .api
                    .call(
                        Service::Secrets,
                        Method::POST,
                        &format!("projects/{}/secrets?secretId={id}", p.project()),
                        Some(&body),
                        "create secret",
                        &id,
                        Retry::Transient,
                    )
                    .await;
                match r {
                    Ok(_) => {}
                    Err(e) if e.is_already_exists() => {
                        match self
                            .get_opt(Service::Secrets, &path, "get secret", &id)
                            .await
                        {
                            Ok(Some(v)) if check(&v) => {}
                            Ok(Some(v)) => return Step::Failed(collision("secret", &id, &v)),
                            Ok(None) => return Step::Waiting(format!("waiting for secret {id}")),
                            Err(e) => return Step::Failed(e),
                        }
                    }
                    Err(e) => return Step::Failed(e),
                }
            }
        }
        // The key: adopt the latest version when it already holds it (a lost answer to an
        // earlier addVersion), otherwise add one.
        let latest = self
            .get_opt(
                Service::Secrets,
                &format!("{path}/versions/latest:access"),
                "access secret",
                &id,
            )
            .await;
        match latest {
            Err(e) => return Step::Failed(e),
            Ok(Some(v)) => {
                use base64::Engine as _;
                let data = v["payload"]["data"].as_str().unwrap_or_default();
                let same = base64::engine::general_purpose::STANDARD
                    .decode(data)
                    .is_ok_and(|b| constant_time_eq(&b, p.d.vm_key.expose()));
                if same {
                    let name = v["name"].as_str().unwrap_or_default().to_owned();
                    return Step::Ready((id, name));
                }
            }
            Ok(None) => {}
        }
        use base64::Engine as _;
        let body = json!({"payload": {"data": base64::engine::general_purpose::STANDARD.encode(p.d.vm_key.expose())}});
        p.wrote();
        match self
            .api
            .call(
                Service::Secrets,
                Method::POST,
                &format!("{path}:addVersion"),
                Some(&body),
                "add secret version",
                &id,
                Retry::AnsweredOnly,
            )
            .await
        {
            Ok(v) => Step::Ready((id, v["name"].as_str().unwrap_or_default().to_owned())),
            Err(e) => Step::Failed(e),
        }
    }

    async fn ensure_binding(&self, p: &Pass<'_>, email: &str, secret: &str) -> Step<()> {
        if p.rec.iam_bound && p.rec.service_account_email.as_deref() == Some(email) {
            return Step::Ready(());
        }
        let path = format!("projects/{}/secrets/{secret}", p.project());
        let member = format!("serviceAccount:{email}");
        const ROLE: &str = "roles/secretmanager.secretAccessor";
        // Read-modify-write with the etag; a concurrent change (409 ABORTED) re-reads.
        for _ in 0..3 {
            let policy = match self
                .get(
                    Service::Secrets,
                    &format!("{path}:getIamPolicy"),
                    "get secret policy",
                    secret,
                )
                .await
            {
                Ok(v) => v,
                Err(e) => return Step::Failed(e),
            };
            let mut bindings = policy["bindings"].as_array().cloned().unwrap_or_default();
            let present = bindings.iter().any(|b| {
                b["role"] == ROLE
                    && b["members"]
                        .as_array()
                        .is_some_and(|m| m.iter().any(|x| x == member.as_str()))
            });
            if present {
                return Step::Ready(());
            }
            match bindings.iter_mut().find(|b| b["role"] == ROLE) {
                Some(b) => {
                    if let Some(m) = b["members"].as_array_mut() {
                        m.push(json!(member));
                    }
                }
                None => bindings.push(json!({"role": ROLE, "members": [member]})),
            }
            let body = json!({"policy": {"bindings": bindings, "etag": policy["etag"]}});
            p.wrote();
            match self
                .api
                .call(
                    Service::Secrets,
                    Method::POST,
                    &format!("{path}:setIamPolicy"),
                    Some(&body),
                    "set secret policy",
                    secret,
                    Retry::AnsweredOnly,
                )
                .await
            {
                Ok(_) => return Step::Ready(()),
                Err(e) if e.is_aborted() => continue,
                Err(e) if e.is_invalid_argument() && e.to_string().contains("does not exist") => {
                    return Step::Waiting(format!(
                        "waiting for service account {email} to propagate in IAM"
                    ));
                }
                Err(e) => return Step::Failed(e),
            }
        }
        Step::Waiting(format!("secret {secret} policy keeps changing; retrying"))
    }

    // ------------------------------------------------------------------ address

    async fn ensure_address(&self, p: &Pass<'_>) -> (Step<Option<String>>, Vec<PendingOp>) {
        let mut ops = Vec::new();
        if !p.d.reserved_ip {
            return (Step::Ready(None), ops);
        }
        if let Some(s) = self.check_pending(p, "address", &mut ops).await {
            return (s, ops);
        }
        if p.rec.address_name.as_deref() == Some(p.name.as_str())
            && p.rec.instance.is_some()
            && let Some(ip) = &p.rec.address
        {
            return (Step::Ready(Some(ip.clone())), ops);
        }
        let t = &p.d.target;
        let path = format!(
            "projects/{}/regions/{}/addresses/{}",
            p.project(),
            t.region,
            p.name
        );
        let observe = |v: &Value| {
            if !labels_ours(v, &self.install, p.id()) {
                return Step::Failed(collision("address", &p.name, v));
            }
            match (v["status"].as_str(), v["address"].as_str()) {
                (Some("RESERVED" | "IN_USE"), Some(ip)) => Step::Ready(Some(ip.to_owned())),
                (s, _) => Step::Waiting(format!(
                    "address {} is {}",
                    p.name,
                    s.unwrap_or("being reserved")
                )),
            }
        };
        match self
            .get_opt(Service::Compute, &path, "get address", &p.name)
            .await
        {
            Err(e) => (Step::Failed(e), ops),
            Ok(Some(v)) => (observe(&v), ops),
            Ok(None) => {
                let body = json!({
                    "name": p.name,
                    "description": t.id.marker(&self.install, &t.region, &t.zone),
                    "addressType": "EXTERNAL",
                    "networkTier": "PREMIUM",
                    "labels": labels_json(&t.id.labels(&self.install, &t.region, &t.zone)),
                });
                let rid = p.request_id("address");
                let r = self
                    .mutate(
                        Some(p),
                        Method::POST,
                        &format!("projects/{}/regions/{}/addresses", p.project(), t.region),
                        Some(&body),
                        "insert address",
                        "address",
                        &p.name,
                        &format!("regions/{}", t.region),
                        &rid,
                    )
                    .await;
                match r {
                    Ok(OpState::Done) => match self
                        .get(Service::Compute, &path, "get address", &p.name)
                        .await
                    {
                        Ok(v) => (observe(&v), ops),
                        Err(e) => (Step::Failed(e), ops),
                    },
                    other => (Self::finish_op(other, None, &mut ops), ops),
                }
            }
        }
    }

    // ------------------------------------------------------------------ firewall

    fn firewall_body(&self, p: &Pass<'_>) -> Value {
        let t = &p.d.target;
        let mut ranges: Vec<&String> = p.d.source_ranges.iter().collect();
        ranges.sort();
        ranges.dedup();
        json!({
            "name": p.name,
            "description": t.id.marker(&self.install, &t.region, &t.zone),
            "network": format!("projects/{}/global/networks/{}", p.project(), self.network),
            "direction": "INGRESS",
            "priority": 1000,
            "disabled": false,
            "allowed": allowed(p.d.listen_port, &p.d.ports),
            "sourceRanges": ranges,
            "targetTags": [p.name],
        })
    }

    async fn ensure_firewall(&self, p: &Pass<'_>) -> (Step<()>, Vec<PendingOp>) {
        let mut ops = Vec::new();
        if let Some(s) = self.check_pending(p, "firewall", &mut ops).await {
            return (s, ops);
        }
        let path = format!("projects/{}/global/firewalls/{}", p.project(), p.name);
        let want = self.firewall_body(p);
        let step = match self
            .get_opt(Service::Compute, &path, "get firewall", &p.name)
            .await
        {
            Err(e) => Step::Failed(e),
            Ok(Some(v))
                if !marker_ours(
                    v["description"].as_str().unwrap_or_default(),
                    &self.install,
                    p.id(),
                ) =>
            {
                Step::Failed(collision("firewall", &p.name, &v))
            }
            Ok(Some(v)) if firewall_shape(&v) == firewall_shape(&want) => Step::Ready(()),
            Ok(Some(_)) => {
                let rid = p.request_id("firewall-patch");
                let r = self
                    .mutate(
                        Some(p),
                        Method::PATCH,
                        &path,
                        Some(&want),
                        "patch firewall",
                        "firewall",
                        &p.name,
                        "global",
                        &rid,
                    )
                    .await;
                Self::finish_op(r, (), &mut ops)
            }
            Ok(None) => {
                let rid = p.request_id("firewall");
                let r = self
                    .mutate(
                        Some(p),
                        Method::POST,
                        &format!("projects/{}/global/firewalls", p.project()),
                        Some(&want),
                        "insert firewall",
                        "firewall",
                        &p.name,
                        "global",
                        &rid,
                    )
                    .await;
                Self::finish_op(r, (), &mut ops)
            }
        };
        (step, ops)
    }

    // ------------------------------------------------------------------ instance

    fn desired_metadata(&self, p: &Pass<'_>) -> BTreeMap<String, String> {
        let mut m = p.d.metadata.clone();
        m.insert("enable-guest-attributes".into(), "TRUE".into());
        m.insert("block-project-ssh-keys".into(), "TRUE".into());
        m
    }

    fn instance_body(&self, p: &Pass<'_>, email: &str, ip: Option<&str>) -> Value {
        let t = &p.d.target;
        let mut access =
            json!({"name": "External NAT", "type": "ONE_TO_ONE_NAT", "networkTier": "PREMIUM"});
        if let Some(ip) = ip {
            access["natIP"] = json!(ip);
        }
        let scheduling = if p.d.spot {
            json!({"provisioningModel": "SPOT", "instanceTerminationAction": "STOP", "automaticRestart": false, "onHostMaintenance": "TERMINATE"})
        } else {
            json!({"provisioningModel": "STANDARD", "automaticRestart": true, "onHostMaintenance": "MIGRATE"})
        };
        json!({
            "name": p.name,
            "description": t.id.marker(&self.install, &t.region, &t.zone),
            "machineType": format!("zones/{}/machineTypes/{}", t.zone, p.d.machine_type),
            "labels": labels_json(&t.id.labels(&self.install, &t.region, &t.zone)),
            "tags": {"items": [p.name]},
            "disks": [{
                "boot": true,
                "autoDelete": true,
                "initializeParams": {
                    "sourceImage": p.d.image,
                    "diskSizeGb": p.d.disk_size_gb.to_string(),
                    "diskType": format!("zones/{}/diskTypes/pd-balanced", t.zone),
                },
            }],
            "networkInterfaces": [{
                "network": format!("projects/{}/global/networks/{}", p.project(), self.network),
                "accessConfigs": [access],
            }],
            "serviceAccounts": [{"email": email, "scopes": ["https://www.googleapis.com/auth/cloud-platform"]}],
            "metadata": {"items": metadata_items(&self.desired_metadata(p))},
            "shieldedInstanceConfig": {"enableSecureBoot": true, "enableVtpm": true, "enableIntegrityMonitoring": true},
            "scheduling": scheduling,
            "canIpForward": false,
            "deletionProtection": false,
        })
    }

    /// Returns the VM status when the step is ready.
    async fn ensure_instance(
        &self,
        p: &Pass<'_>,
        email: &str,
        ip: Option<&str>,
    ) -> (Step<(String, Option<String>)>, Vec<PendingOp>) {
        let mut ops = Vec::new();
        if let Some(s) = self.check_pending(p, "instance", &mut ops).await {
            return (s, ops);
        }
        let t = &p.d.target;
        let path = format!(
            "projects/{}/zones/{}/instances/{}",
            p.project(),
            t.zone,
            p.name
        );
        let scope = format!("zones/{}", t.zone);
        let v = match self
            .get_opt(Service::Compute, &path, "get instance", &p.name)
            .await
        {
            Err(e) => return (Step::Failed(e), ops),
            Ok(Some(v)) => v,
            Ok(None) => {
                let rid = p.request_id("instance");
                let body = self.instance_body(p, email, ip);
                let r = self
                    .mutate(
                        Some(p),
                        Method::POST,
                        &format!("projects/{}/zones/{}/instances", p.project(), t.zone),
                        Some(&body),
                        "insert instance",
                        "instance",
                        &p.name,
                        &scope,
                        &rid,
                    )
                    .await;
                return match r {
                    // Instances come up RUNNING when the insert is DONE; read the IP next pass.
                    Ok(OpState::Done) => {
                        (Step::Waiting(format!("instance {} created", p.name)), ops)
                    }
                    other => (Self::finish_op(other, (String::new(), None), &mut ops), ops),
                };
            }
        };
        if !labels_ours(&v, &self.install, p.id()) {
            return (Step::Failed(collision("instance", &p.name, &v)), ops);
        }
        let status = v["status"].as_str().unwrap_or_default().to_owned();
        let nat = v
            .pointer("/networkInterfaces/0/accessConfigs/0/natIP")
            .and_then(Value::as_str)
            .map(str::to_owned);
        match status.as_str() {
            "RUNNING" => {}
            "TERMINATED" | "STOPPED" => {
                let rid = p.request_id("instance-start");
                let r = self
                    .mutate(
                        Some(p),
                        Method::POST,
                        &format!("{path}/start"),
                        None,
                        "start instance",
                        "instance",
                        &p.name,
                        &scope,
                        &rid,
                    )
                    .await;
                return match r {
                    Ok(OpState::Done) => {
                        (Step::Waiting(format!("instance {} started", p.name)), ops)
                    }
                    other => (Self::finish_op(other, (status, nat), &mut ops), ops),
                };
            }
            s => return (Step::Waiting(format!("instance {} is {s}", p.name)), ops),
        }
        let want = self.desired_metadata(p);
        if current_metadata(&v) != want {
            let body = json!({"fingerprint": v["metadata"]["fingerprint"], "items": metadata_items(&want)});
            let rid = p.request_id("instance-metadata");
            let r = self
                .mutate(
                    Some(p),
                    Method::POST,
                    &format!("{path}/setMetadata"),
                    Some(&body),
                    "set instance metadata",
                    "instance",
                    &p.name,
                    &scope,
                    &rid,
                )
                .await;
            return (Self::finish_op(r, (status, nat), &mut ops), ops);
        }
        let want_labels = labels_json(&t.id.labels(&self.install, &t.region, &t.zone));
        if v["labels"] != want_labels {
            // The uid changed (adopted) or someone edited labels.
            let body = json!({"labelFingerprint": v["labelFingerprint"], "labels": want_labels});
            let rid = p.request_id("instance-labels");
            let r = self
                .mutate(
                    Some(p),
                    Method::POST,
                    &format!("{path}/setLabels"),
                    Some(&body),
                    "set instance labels",
                    "instance",
                    &p.name,
                    &scope,
                    &rid,
                )
                .await;
            return (Self::finish_op(r, (status, nat), &mut ops), ops);
        }
        (Step::Ready((status, nat)), ops)
    }

    // ------------------------------------------------------------------ delete

    #[allow(clippy::too_many_arguments)]
    async fn delete_compute(
        &self,
        project: &str,
        path: &str,
        kind: &'static str,
        name: &str,
        scope: &str,
        rec: &Recorded,
        ours: impl Fn(&Value) -> bool,
    ) -> (Step<()>, Vec<PendingOp>) {
        let mut ops = Vec::new();
        if let Some(op) = rec.pending.iter().find(|o| o.resource == kind) {
            match self.poll(project, op).await {
                Ok(OpState::Running(op)) => {
                    let d = format!("waiting for {}", op.description);
                    ops.push(op);
                    return (Step::Waiting(d), ops);
                }
                Ok(OpState::Done) => {}
                Err(e) => return (Step::Failed(e), ops),
            }
        }
        let (get_op, del_op) = match kind {
            "instance" => ("get instance", "delete instance"),
            "firewall" => ("get firewall", "delete firewall"),
            "address" => ("get address", "delete address"),
            _ => ("get network", "delete network"),
        };
        match self.get_opt(Service::Compute, path, get_op, name).await {
            Err(e) => (Step::Failed(e), ops),
            Ok(None) => (Step::Ready(()), ops),
            // Never delete what is not ours; to this gateway it is as good as gone.
            Ok(Some(v)) if !ours(&v) => (Step::Ready(()), ops),
            Ok(Some(v)) => {
                let rid = names::request_id(&[
                    del_op,
                    project,
                    name,
                    v["id"].as_str().unwrap_or_default(),
                ]);
                let r = self
                    .mutate(
                        None,
                        Method::DELETE,
                        path,
                        None,
                        del_op,
                        kind,
                        name,
                        scope,
                        &rid,
                    )
                    .await;
                match r {
                    Ok(OpState::Done) => (Step::Waiting(format!("{kind} {name} deleted")), ops),
                    Err(e) if e.is_not_found() => (Step::Ready(()), ops),
                    other => (Self::finish_op(other, (), &mut ops), ops),
                }
            }
        }
    }

    async fn delete_rpc(
        &self,
        s: Service,
        path: &str,
        name: &str,
        ours: impl Fn(&Value) -> bool,
    ) -> Step<()> {
        let (get_op, del_op) = if s == Service::Iam {
            ("get service account", "delete service account")
        } else {
            ("get secret", "delete secret")
        };
        match self.get_opt(s, path, get_op, name).await {
            Err(e) => Step::Failed(e),
            Ok(None) => Step::Ready(()),
            Ok(Some(v)) if !ours(&v) => Step::Ready(()),
            Ok(Some(_)) => match self
                .api
                .call(
                    s,
                    Method::DELETE,
                    path,
                    None,
                    del_op,
                    name,
                    Retry::Transient,
                )
                .await
            {
                Ok(_) => Step::Ready(()),
                Err(e) if e.is_not_found() => Step::Ready(()),
                Err(e) => Step::Failed(e),
            },
        }
    }
}

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
        let p = Pass {
            d,
            rec,
            name: d.target.id.resource_name(),
            writes: AtomicUsize::new(0),
            salt: pass_salt(),
            issued: AtomicU64::new(0),
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
        let inst_fut = async {
            match (net_ready, &email, &ip) {
                (true, Some(e), Some(ip)) => Some(self.ensure_instance(&p, e, ip.as_deref()).await),
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
        let mut address = recorded.address.clone().filter(|_| d.reserved_ip);
        match inst {
            Some((s, ops)) => {
                pending.extend(ops);
                match absorb(s, &mut waiting, &mut errors) {
                    Some((status, nat)) => {
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
        Progress {
            ready: all && errors.is_empty() && vm_status.as_deref() == Some("RUNNING"),
            address,
            vm_status,
            waiting,
            errors,
            writes: p.writes.load(Ordering::Relaxed),
            recorded,
        }
    }

    async fn delete(&self, target: &Target, rec: &Recorded) -> DeleteProgress {
        let rec = &own_operations(rec, target);
        let name = target.id.resource_name();
        let project = target.project.as_str();
        let mut waiting = Vec::new();
        let mut errors = Vec::new();
        let mut pending = Vec::new();
        let email = format!("{name}@{project}.iam.gserviceaccount.com");
        let install = self.install.as_str();
        let id = &target.id;

        let inst_path = format!("projects/{project}/zones/{}/instances/{name}", target.zone);
        let sa_path = format!("projects/{project}/serviceAccounts/{email}");
        let secret_path = format!("projects/{project}/secrets/{name}");
        let ((inst, ops), sa, secret) = join3(
            self.delete_compute(
                project,
                &inst_path,
                "instance",
                &name,
                &format!("zones/{}", target.zone),
                rec,
                |v| labels_ours(v, install, id),
            ),
            self.delete_rpc(Service::Iam, &sa_path, &email, |v| {
                marker_ours(v["description"].as_str().unwrap_or_default(), install, id)
            }),
            self.delete_rpc(Service::Secrets, &secret_path, &name, |v| {
                labels_ours(v, install, id)
            }),
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
            let fw_path = format!("projects/{project}/global/firewalls/{name}");
            let addr_path = format!(
                "projects/{project}/regions/{}/addresses/{name}",
                target.region
            );
            let ((fw, fw_ops), (addr, addr_ops)) = join(
                self.delete_compute(project, &fw_path, "firewall", &name, "global", rec, |v| {
                    marker_ours(v["description"].as_str().unwrap_or_default(), install, id)
                }),
                self.delete_compute(
                    project,
                    &addr_path,
                    "address",
                    &name,
                    &format!("regions/{}", target.region),
                    rec,
                    |v| labels_ours(v, install, id),
                ),
            )
            .await;
            pending.extend(fw_ops);
            pending.extend(addr_ops);
            let fw_gone = absorb(fw, &mut waiting, &mut errors).is_some();
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
                let net_path = format!("projects/{project}/global/networks/{}", self.network);
                let marker = names::network_marker(install);
                let (net, net_ops) = self
                    .delete_compute(
                        project,
                        &net_path,
                        "network",
                        &self.network,
                        "global",
                        rec,
                        |v| v["description"] == marker.as_str(),
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
        let mut found: BTreeMap<TargetKey, BTreeSet<&'static str>> = BTreeMap::new();
        let install = names::label_value(&self.install);
        let cluster = names::label_value(&self.cluster);
        let filter = format!(
            "labels.{}={install} AND labels.{}={cluster}",
            names::LABEL_INSTALL,
            names::LABEL_CLUSTER
        );
        let secrets = self
            .get(
                Service::Secrets,
                &format!("projects/{project}/secrets?filter={}", encode(&filter)),
                "list secrets",
                project,
            )
            .await?;
        for s in secrets["secrets"].as_array().into_iter().flatten() {
            let l = &s["labels"];
            let get = |k: &str| l[k].as_str().unwrap_or_default().to_owned();
            found
                .entry(TargetKey {
                    namespace: get(names::LABEL_NAMESPACE),
                    name: get(names::LABEL_NAME),
                    uid: get(names::LABEL_UID),
                    project: project.to_owned(),
                    region: get(names::LABEL_REGION),
                    zone: get(names::LABEL_ZONE),
                })
                .or_default()
                .insert("secret");
        }
        let mut add_marker = |desc: &str, kind: &'static str| {
            if let Some(m) = names::parse_marker(desc)
                && m.install == self.install
                && m.cluster == self.cluster
            {
                found
                    .entry(TargetKey {
                        namespace: m.namespace,
                        name: m.name,
                        uid: m.uid,
                        project: project.to_owned(),
                        region: m.region,
                        zone: m.zone,
                    })
                    .or_default()
                    .insert(kind);
            }
        };
        let fws = self
            .get(
                Service::Compute,
                &format!("projects/{project}/global/firewalls"),
                "list firewalls",
                project,
            )
            .await?;
        for f in fws["items"].as_array().into_iter().flatten() {
            add_marker(f["description"].as_str().unwrap_or_default(), "firewall");
        }
        let sas = self
            .get(
                Service::Iam,
                &format!("projects/{project}/serviceAccounts"),
                "list service accounts",
                project,
            )
            .await?;
        for a in sas["accounts"].as_array().into_iter().flatten() {
            add_marker(
                a["description"].as_str().unwrap_or_default(),
                "serviceAccount",
            );
        }
        Ok(found
            .into_iter()
            .map(|(target, kinds)| Owned {
                target,
                kinds: kinds.into_iter().collect(),
            })
            .collect())
    }

    async fn vm_report(&self, target: &Target) -> Result<BTreeMap<String, String>, CloudError> {
        let name = target.id.resource_name();
        let path = format!(
            "projects/{}/zones/{}/instances/{name}/getGuestAttributes?queryPath=wgnet%2F",
            target.project, target.zone
        );
        let v = match self
            .get_opt(Service::Compute, &path, "get guest attributes", &name)
            .await?
        {
            Some(v) => v,
            None => return Ok(BTreeMap::new()),
        };
        Ok(v["queryValue"]["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|i| {
                Some((
                    i["key"].as_str()?.to_owned(),
                    i["value"].as_str()?.to_owned(),
                ))
            })
            .collect())
    }

    async fn wait_any(&self, target: &Target, recorded: &Recorded) {
        let project = target.project.as_str();
        let waits: Vec<_> = recorded
            .pending
            .iter()
            .filter(|op| op.belongs_to(target))
            .map(|op| {
                let path = format!(
                    "projects/{project}/{}/operations/{}/wait",
                    op.scope, op.name
                );
                Box::pin(async move {
                    let _ = self
                        .api
                        .call(
                            Service::Compute,
                            Method::POST,
                            &path,
                            None,
                            "wait operation",
                            &op.name,
                            Retry::Transient,
                        )
                        .await;
                })
            })
            .collect();
        // select_all refuses an empty set: nothing to wait for.
        if waits.is_empty() {
            return;
        }
        futures_util::future::select_all(waits).await;
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
    fn firewall_allowed_is_canonical() {
        let a = allowed(
            51820,
            &[
                (443, Protocol::Tcp),
                (80, Protocol::Tcp),
                (53, Protocol::Udp),
            ],
        );
        assert_eq!(
            a,
            json!([{"IPProtocol": "udp", "ports": ["53", "51820"]}, {"IPProtocol": "tcp", "ports": ["80", "443"]}])
        );
        let b = allowed(51820, &[]);
        assert_eq!(b, json!([{"IPProtocol": "udp", "ports": ["51820"]}]));
    }

    #[test]
    fn firewall_shape_ignores_order_and_server_fields() {
        let ours = json!({"allowed": [{"IPProtocol": "tcp", "ports": ["80", "443"]}], "sourceRanges": ["0.0.0.0/0"], "targetTags": ["t"], "network": "projects/p/global/networks/n"});
        let theirs = json!({"allowed": [{"IPProtocol": "tcp", "ports": ["443", "80"]}], "sourceRanges": ["0.0.0.0/0"], "targetTags": ["t"], "network": "https://x/compute/v1/projects/p/global/networks/n", "id": "1", "priority": 1000, "direction": "INGRESS", "disabled": false});
        assert_eq!(firewall_shape(&ours), firewall_shape(&theirs));
        let edited = json!({"allowed": [{"IPProtocol": "tcp", "ports": ["22"]}], "sourceRanges": ["0.0.0.0/0"], "targetTags": ["t"], "network": "n"});
        assert_ne!(firewall_shape(&ours), firewall_shape(&edited));
    }

    #[test]
    fn secret_bytes_never_print() {
        let s = crate::SecretBytes::new(b"private".to_vec());
        assert!(!format!("{s:?}").contains("private"));
    }

    #[test]
    fn encodes_filters() {
        assert_eq!(encode("labels.a=b c"), "labels.a%3Db%20c");
    }
}
