//! The emulator's state and the semantics of every API it serves: Compute networks,
//! firewalls, addresses, instances and operations; IAM service accounts; Secret Manager
//! secrets, versions and IAM policies; per-instance metadata and guest attributes.
//!
//! Pure apart from the clock: every entry point takes `now`, and long-running operations
//! take effect in [`World::tick`] when their time (from the latency profile) has come.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use base64::Engine as _;
use regex::Regex;
use serde_json::{Map, Value, json};

use super::error::GcpError;
use super::{InventoryItem, LatencyProfile};
use crate::clock::now_rfc3339;

/// Key of a global resource: (project, name).
type GKey = (String, String);
/// Key of a regional or zonal resource: (project, region or zone, name).
type SKey = (String, String, String);

/// What finishing an operation does to the world.
#[derive(Clone, Debug)]
enum Effect {
    RemoveNetwork(GKey),
    RemoveFirewall(GKey),
    RemoveAddress(SKey),
    RemoveInstance(SKey),
    InstanceStatus(SKey, &'static str),
    AddressReserved(SKey),
}

#[derive(Debug)]
struct Op {
    value: Value,
    done_at: Instant,
    polls: u32,
    effect: Option<Effect>,
    done: bool,
    /// Ends the operation with this (code, message) instead of its effect.
    failure: Option<(String, String)>,
}

#[derive(Debug)]
struct Instance {
    value: Value,
    guest: BTreeMap<String, String>,
    metadata_version: u64,
}

#[derive(Debug)]
struct ServiceAccount {
    value: Value,
    created: Instant,
}

#[derive(Debug)]
struct Secret {
    value: Value,
    versions: Vec<(Vec<u8>, Value)>,
    bindings: Value,
    policy_version: u64,
}

/// Everything the emulator holds.
#[derive(Debug)]
pub struct World {
    /// Project id to project number.
    pub projects: BTreeMap<String, u64>,
    /// Operation durations.
    pub profile: LatencyProfile,
    /// Base URL of the emulator, for `selfLink`s.
    pub base: String,
    networks: BTreeMap<GKey, Value>,
    firewalls: BTreeMap<GKey, Value>,
    addresses: BTreeMap<SKey, Value>,
    instances: BTreeMap<SKey, Instance>,
    ops: HashMap<String, Op>,
    request_ids: HashMap<(String, String), String>,
    /// Set by a `FailOperation` fault: the next operation started ends with this error.
    pub fail_next_operation: Option<(String, String)>,
    /// The largest page any list answers (GCP may page below the size asked for).
    pub page_cap: Option<usize>,
    /// Operations that ended in error so far.
    pub failed_operations: usize,
    service_accounts: BTreeMap<(String, String), ServiceAccount>,
    secrets: BTreeMap<GKey, Secret>,
    counter: u64,
    next_static: u32,
    /// Static addresses from 198.18.0.0/15 (see `GcpEmulator::use_benchmark_addresses`).
    pub benchmark_addresses: bool,
    next_ephemeral: u32,
    next_internal: u32,
}

/// Whether `name` is a machine type of one of GCP's general-purpose and compute families
/// (shared-core e2, predefined shapes, custom shapes). Real zones offer these by family;
/// a closed list here would refuse real types such as `e2-standard-8` or `n2d-standard-2`.
fn machine_type_ok(name: &str) -> bool {
    static RE: std::sync::OnceLock<Regex> = std::sync::OnceLock::new();
    RE.get_or_init(|| {
        Regex::new(
            r"^(e2-(micro|small|medium)|f1-micro|g1-small|(e2|n1|n2|n2d|n4|t2a|t2d|c2|c2d|c3|c3d|c4|m1|m3)-(standard|highmem|highcpu)-[0-9]{1,3}|(e2|n1|n2|n2d|n4)-custom-[0-9]{1,3}-[0-9]{3,7})$",
        )
        .expect("static regex")
    })
    .is_match(name)
}

/// GCP's regions and their zones (a representative set; others answer "Unknown zone"
/// here as a mistyped one does on GCP).
const ZONES: &[(&str, &[&str])] = &[
    ("us-central1", &["a", "b", "c", "f"]),
    ("us-east1", &["b", "c", "d"]),
    ("us-east4", &["a", "b", "c"]),
    ("us-west1", &["a", "b", "c"]),
    ("us-west2", &["a", "b", "c"]),
    ("northamerica-northeast1", &["a", "b", "c"]),
    ("southamerica-east1", &["a", "b", "c"]),
    ("europe-west1", &["b", "c", "d"]),
    ("europe-west2", &["a", "b", "c"]),
    ("europe-west3", &["a", "b", "c"]),
    ("europe-west4", &["a", "b", "c"]),
    ("europe-north1", &["a", "b", "c"]),
    ("asia-east1", &["a", "b", "c"]),
    ("asia-northeast1", &["a", "b", "c"]),
    ("asia-south1", &["a", "b", "c"]),
    ("asia-southeast1", &["a", "b", "c"]),
    ("australia-southeast1", &["a", "b", "c"]),
];

/// 400 for a region or zone GCP does not have.
pub fn check_location(kind: &str, value: &str) -> Result<(), GcpError> {
    let known = match kind {
        "regions" => ZONES.iter().any(|(r, _)| *r == value),
        _ => ZONES.iter().any(|(r, zs)| {
            value
                .strip_prefix(r)
                .and_then(|z| z.strip_prefix('-'))
                .is_some_and(|z| zs.contains(&z))
        }),
    };
    if known {
        return Ok(());
    }
    let (field, what) = if kind == "regions" {
        ("region", "region")
    } else {
        ("zone", "zone")
    };
    Err(GcpError::invalid(format!(
        "Invalid value for field '{field}': '{value}'. Unknown {what}."
    )))
}

/// Public image families: (project, family).
const IMAGE_FAMILIES: &[(&str, &str)] = &[
    ("debian-cloud", "debian-12"),
    ("debian-cloud", "debian-12-arm64"),
    ("debian-cloud", "debian-13"),
    ("debian-cloud", "debian-11"),
    ("ubuntu-os-cloud", "ubuntu-2404-lts-amd64"),
];

fn name_ok(name: &str) -> bool {
    static RE: std::sync::OnceLock<Regex> = std::sync::OnceLock::new();
    RE.get_or_init(|| Regex::new(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$").expect("static regex"))
        .is_match(name)
}

fn label_ok(k: &str, v: &str) -> bool {
    static K: std::sync::OnceLock<Regex> = std::sync::OnceLock::new();
    static V: std::sync::OnceLock<Regex> = std::sync::OnceLock::new();
    K.get_or_init(|| Regex::new(r"^[a-z][a-z0-9_-]{0,62}$").expect("static regex"))
        .is_match(k)
        && V.get_or_init(|| Regex::new(r"^[a-z0-9_-]{0,63}$").expect("static regex"))
            .is_match(v)
}

fn check_labels(v: &Value) -> Result<(), GcpError> {
    if let Some(labels) = v.get("labels").and_then(Value::as_object) {
        if labels.len() > 64 {
            return Err(GcpError::invalid("Too many labels (at most 64)."));
        }
        for (k, val) in labels {
            if !label_ok(k, val.as_str().unwrap_or("")) {
                return Err(GcpError::invalid(format!(
                    "Invalid value for field 'resource.labels': '{k}'. Label keys and values must be lowercase letters, digits, '_' and '-', at most 63 characters."
                )));
            }
        }
    }
    Ok(())
}

fn uuid_ok(s: &str) -> bool {
    static RE: std::sync::OnceLock<Regex> = std::sync::OnceLock::new();
    RE.get_or_init(|| {
        Regex::new(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
            .expect("static regex")
    })
    .is_match(s)
        && s.chars().any(|c| c != '0' && c != '-')
}

/// The last path segment of a resource URL or partial path.
fn last_segment(s: &str) -> &str {
    s.rsplit('/').next().unwrap_or(s)
}

fn str_at<'a>(v: &'a Value, ptr: &str) -> Option<&'a str> {
    v.pointer(ptr).and_then(Value::as_str)
}

impl World {
    /// An empty world serving `projects`.
    pub fn new(projects: &[String], profile: LatencyProfile, base: String) -> Self {
        Self {
            projects: projects
                .iter()
                .enumerate()
                .map(|(i, p)| (p.clone(), 100_000_000_000 + i as u64 * 7919))
                .collect(),
            profile,
            base,
            networks: BTreeMap::new(),
            firewalls: BTreeMap::new(),
            addresses: BTreeMap::new(),
            instances: BTreeMap::new(),
            ops: HashMap::new(),
            request_ids: HashMap::new(),
            fail_next_operation: None,
            page_cap: None,
            failed_operations: 0,
            service_accounts: BTreeMap::new(),
            secrets: BTreeMap::new(),
            counter: 0,
            next_static: 0,
            benchmark_addresses: false,
            next_ephemeral: 130,
            next_internal: 2,
        }
    }

    fn next_id(&mut self) -> u64 {
        self.counter += 1;
        4_000_000_000_000_000_000 + self.counter * 104_729
    }

    /// Checks the project exists; GCP answers 403 for projects the caller cannot see.
    pub fn project(&self, p: &str) -> Result<(), GcpError> {
        if self.projects.contains_key(p) {
            Ok(())
        } else {
            // GCP answers a project that does not exist with 404, naming the project.
            Err(GcpError::not_found(&format!("projects/{p}")))
        }
    }

    fn link(&self, path: &str) -> String {
        format!("{}/compute/v1/{path}", self.base)
    }

    // ---------------------------------------------------------------- operations

    /// Applies every operation whose time has come.
    pub fn tick(&mut self, now: Instant) {
        let due: Vec<String> = self
            .ops
            .iter()
            .filter(|(_, op)| !op.done && op.done_at <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for k in due {
            self.finish(&k);
        }
    }

    fn finish(&mut self, key: &str) {
        let Some(op) = self.ops.get_mut(key) else {
            return;
        };
        op.done = true;
        op.value["status"] = json!("DONE");
        op.value["progress"] = json!(100);
        op.value["endTime"] = json!(now_rfc3339());
        if let Some((code, message)) = op.failure.take() {
            self.failed_operations += 1;
            // Failed: the change does not happen, a failed insert leaves nothing, and a
            // failed start leaves the VM stopped.
            let stopped = match op.effect.take() {
                Some(Effect::InstanceStatus(k, _)) => Some(k),
                _ => None,
            };
            op.value["error"] = json!({"errors": [{"code": code, "message": message}]});
            op.value["httpErrorStatusCode"] = json!(400);
            let insert = op.value["operationType"] == "insert";
            let target = op.value["targetLink"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            if insert {
                self.remove_by_link(&target);
            }
            if let Some(inst) = stopped.and_then(|k| self.instances.get_mut(&k)) {
                inst.value["status"] = json!("TERMINATED");
            }
            return;
        }
        let effect = op.effect.take();
        match effect {
            Some(Effect::RemoveNetwork(k)) => {
                self.networks.remove(&k);
            }
            Some(Effect::RemoveFirewall(k)) => {
                self.firewalls.remove(&k);
            }
            Some(Effect::RemoveAddress(k)) => {
                self.addresses.remove(&k);
            }
            Some(Effect::RemoveInstance(k)) => {
                if let Some(inst) = self.instances.remove(&k) {
                    self.release_address(&inst.value);
                }
            }
            Some(Effect::InstanceStatus(k, s)) => {
                if let Some(inst) = self.instances.get_mut(&k) {
                    inst.value["status"] = json!(s);
                    if s == "RUNNING" {
                        inst.value["lastStartTimestamp"] = json!(now_rfc3339());
                    }
                }
            }
            Some(Effect::AddressReserved(k)) => {
                if let Some(a) = self.addresses.get_mut(&k)
                    && a["status"] == "RESERVING"
                {
                    a["status"] = json!("RESERVED");
                }
            }
            None => {}
        }
    }

    fn release_address(&mut self, inst: &Value) {
        let Some(ip) = str_at(inst, "/networkInterfaces/0/accessConfigs/0/natIP") else {
            return;
        };
        for a in self.addresses.values_mut() {
            if a["address"] == ip {
                if let Some(m) = a.as_object_mut() {
                    m.remove("users");
                }
                if a["status"] == "IN_USE" {
                    a["status"] = json!("RESERVED");
                }
            }
        }
    }

    /// Starts an operation on `target` in `scope` (`global`, `regions/r`, `zones/z`).
    #[allow(clippy::too_many_arguments)]
    fn start_op(
        &mut self,
        now: Instant,
        project: &str,
        scope: &str,
        kind: &str,
        target: &str,
        target_id: Option<&Value>,
        duration: Duration,
        effect: Option<Effect>,
        user: &str,
        request_id: Option<&str>,
    ) -> Value {
        let id = self.next_id();
        let name = format!("operation-{}-{:x}", self.counter, id % 0xffff_ffff);
        let mut v = json!({
            "kind": "compute#operation",
            "id": id.to_string(),
            "name": name,
            "operationType": kind,
            "targetLink": self.link(target),
            "status": "PENDING",
            "progress": 0,
            "user": user,
            "insertTime": now_rfc3339(),
            "startTime": now_rfc3339(),
            "selfLink": self.link(&format!("projects/{project}/{scope}/operations/{name}")),
        });
        if let Some(t) = target_id {
            v["targetId"] = t.clone();
        }
        if let Some(r) = scope.strip_prefix("regions/") {
            v["region"] = json!(self.link(&format!("projects/{project}/regions/{r}")));
        }
        if let Some(z) = scope.strip_prefix("zones/") {
            v["zone"] = json!(self.link(&format!("projects/{project}/zones/{z}")));
        }
        if let Some(r) = request_id {
            v["clientOperationId"] = json!(r);
        }
        let key = format!("{project}/{scope}/{name}");
        let done_at = if self.profile.advance_on_poll {
            // Only polls move it; effectively never by time.
            now + Duration::from_secs(86_400 * 365)
        } else {
            now + self.profile.scaled(duration)
        };
        self.ops.insert(
            key.clone(),
            Op {
                value: v,
                done_at,
                polls: 0,
                effect,
                done: false,
                failure: self.fail_next_operation.take(),
            },
        );
        if let Some(r) = request_id {
            self.request_ids
                .insert((project.to_owned(), r.to_owned()), key.clone());
        }
        if done_at <= now {
            self.finish(&key);
        } else if !self.profile.advance_on_poll
            && let Some(op) = self.ops.get_mut(&key)
        {
            op.value["status"] = json!("RUNNING");
        }
        self.ops[&key].value.clone()
    }

    /// When a retried insert carries a `requestId` already seen, GCP returns the original
    /// operation and does nothing else.
    fn replay(&self, project: &str, request_id: Option<&str>) -> Result<Option<Value>, GcpError> {
        let Some(r) = request_id else {
            return Ok(None);
        };
        if !uuid_ok(r) {
            return Err(GcpError::invalid(format!(
                "Invalid value for field 'requestId': '{r}'. The requestId must be a valid UUID other than the zero UUID."
            )));
        }
        Ok(self
            .request_ids
            .get(&(project.to_owned(), r.to_owned()))
            .and_then(|k| self.ops.get(k))
            .map(|op| op.value.clone()))
    }

    /// One poll of a poll-driven profile's unfinished operation: the second finishes it.
    fn poll_op(&mut self, key: &str) {
        let Some(op) = self.ops.get_mut(key) else {
            return;
        };
        op.polls += 1;
        if op.polls >= 2 {
            self.finish(key);
        } else {
            op.value["status"] = json!("RUNNING");
        }
    }

    /// A read of the resource at `path` (`projects/…`): in a poll-driven profile it counts
    /// as a poll of the unfinished operations aimed at it. GCP finishes an operation
    /// whether or not its caller still follows it, and a caller whose every answer to an
    /// insert was lost knows no operation to poll, only the resource to read.
    pub fn look_at(&mut self, path: &str) {
        if !self.profile.advance_on_poll {
            return;
        }
        let link = self.link(path);
        let aimed: Vec<String> = self
            .ops
            .iter()
            .filter(|(_, op)| !op.done && op.value["targetLink"] == link.as_str())
            .map(|(k, _)| k.clone())
            .collect();
        for k in aimed {
            self.poll_op(&k);
        }
    }

    /// `operations.get` (and `wait`'s final answer): a poll advances poll-driven profiles.
    pub fn get_operation(
        &mut self,
        project: &str,
        scope: &str,
        name: &str,
        count_poll: bool,
    ) -> Result<Value, GcpError> {
        let key = format!("{project}/{scope}/{name}");
        let Some(op) = self.ops.get_mut(&key) else {
            return Err(GcpError::not_found(&format!(
                "projects/{project}/{scope}/operations/{name}"
            )));
        };
        if count_poll && self.profile.advance_on_poll && !op.done {
            self.poll_op(&key);
        }
        Ok(self.ops[&key].value.clone())
    }

    /// When an operation will be done, for `wait` (None when done or poll-driven).
    pub fn operation_due(&self, project: &str, scope: &str, name: &str) -> Option<Instant> {
        let op = self.ops.get(&format!("{project}/{scope}/{name}"))?;
        (!op.done && !self.profile.advance_on_poll).then_some(op.done_at)
    }

    /// Finishes a poll-driven operation at once (what `wait` does for it).
    pub fn complete_operation(&mut self, project: &str, scope: &str, name: &str) {
        let key = format!("{project}/{scope}/{name}");
        if self.ops.get(&key).is_some_and(|op| !op.done) {
            self.finish(&key);
        }
    }

    // ---------------------------------------------------------------- networks

    /// `networks.insert`.
    pub fn insert_network(
        &mut self,
        now: Instant,
        project: &str,
        mut body: Value,
        user: &str,
        request_id: Option<&str>,
    ) -> Result<Value, GcpError> {
        if let Some(op) = self.replay(project, request_id)? {
            return Ok(op);
        }
        let name = required_name(&body)?;
        let key = (project.to_owned(), name.clone());
        let path = format!("projects/{project}/global/networks/{name}");
        if self.networks.contains_key(&key) {
            return Err(GcpError::already_exists(&path));
        }
        if body.get("IPv4Range").is_some() && body.get("autoCreateSubnetworks").is_some() {
            return Err(GcpError::invalid(
                "Invalid value for field 'resource.IPv4Range': legacy networks cannot set autoCreateSubnetworks.",
            ));
        }
        let id = self.next_id();
        let obj = as_obj(&mut body)?;
        obj.insert("kind".into(), json!("compute#network"));
        obj.insert("id".into(), json!(id.to_string()));
        obj.insert("creationTimestamp".into(), json!(now_rfc3339()));
        obj.insert("selfLink".into(), json!(self.link(&path)));
        obj.entry("mtu").or_insert(json!(1460));
        obj.entry("routingConfig")
            .or_insert(json!({"routingMode": "REGIONAL"}));
        // An auto-mode network lists the subnetwork GCP made in every region.
        if obj.get("autoCreateSubnetworks") == Some(&json!(true)) {
            let subnets: Vec<Value> = ZONES
                .iter()
                .map(|(r, _)| {
                    json!(self.link(&format!(
                        "projects/{project}/regions/{r}/subnetworks/{}",
                        last_segment(&path)
                    )))
                })
                .collect();
            if let Some(m) = body.as_object_mut() {
                m.insert("subnetworks".into(), json!(subnets));
            }
        }
        self.networks.insert(key, body);
        let d = self.profile.network_insert;
        Ok(self.start_op(
            now,
            project,
            "global",
            "insert",
            &path,
            Some(&json!(id.to_string())),
            d,
            None,
            user,
            request_id,
        ))
    }

    /// `networks.get`.
    pub fn get_network(&self, project: &str, name: &str) -> Result<Value, GcpError> {
        self.networks
            .get(&(project.to_owned(), name.to_owned()))
            .cloned()
            .ok_or_else(|| {
                GcpError::not_found(&format!("projects/{project}/global/networks/{name}"))
            })
    }

    /// `networks.delete`: accepted, but its operation fails while a firewall or instance
    /// uses the network.
    pub fn delete_network(
        &mut self,
        now: Instant,
        project: &str,
        name: &str,
        user: &str,
        request_id: Option<&str>,
    ) -> Result<Value, GcpError> {
        if let Some(op) = self.replay(project, request_id)? {
            return Ok(op);
        }
        let path = format!("projects/{project}/global/networks/{name}");
        let v = self.get_network(project, name)?;
        let link = v["selfLink"].as_str().unwrap_or_default().to_owned();
        let user_of = self
            .firewalls
            .iter()
            .find(|((p, _), f)| p == project && f["network"] == link.as_str())
            .map(|(_, f)| f["selfLink"].as_str().unwrap_or_default().to_owned())
            .or_else(|| {
                self.instances
                    .iter()
                    .find(|((p, _, _), i)| {
                        p == project && i.value["networkInterfaces"][0]["network"] == link.as_str()
                    })
                    .map(|(_, i)| i.value["selfLink"].as_str().unwrap_or_default().to_owned())
            });
        // GCP accepts the delete and fails its operation (RESOURCE_IN_USE_BY_ANOTHER_RESOURCE).
        if let Some(u) = user_of {
            self.fail_next_operation = Some((
                "RESOURCE_IN_USE_BY_ANOTHER_RESOURCE".into(),
                format!("The network resource '{path}' is already being used by '{u}'"),
            ));
        }
        let d = self.profile.network_delete;
        let id = v["id"].clone();
        Ok(self.start_op(
            now,
            project,
            "global",
            "delete",
            &path,
            Some(&id),
            d,
            Some(Effect::RemoveNetwork((project.to_owned(), name.to_owned()))),
            user,
            request_id,
        ))
    }

    fn network_link(&self, project: &str, reference: &str) -> Result<String, GcpError> {
        let name = last_segment(reference);
        let net = self
            .networks
            .get(&(project.to_owned(), name.to_owned()))
            .ok_or_else(|| {
                GcpError::not_found(&format!("projects/{project}/global/networks/{name}"))
            })?;
        Ok(net["selfLink"].as_str().unwrap_or_default().to_owned())
    }

    // ---------------------------------------------------------------- firewalls

    fn check_firewall(&self, project: &str, fw: &mut Value) -> Result<(), GcpError> {
        if let Some(n) = fw.get("network").and_then(Value::as_str) {
            let link = self.network_link(project, n)?;
            fw["network"] = json!(link);
        }
        for r in fw
            .get("sourceRanges")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let s = r.as_str().unwrap_or_default();
            if !cidr_ok(s) {
                return Err(GcpError::invalid(format!(
                    "Invalid value for field 'resource.sourceRanges[0]': '{s}'. Must be a CIDR address range that is contained in the network."
                )));
            }
        }
        for a in fw
            .get("allowed")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let proto = a.get("IPProtocol").and_then(Value::as_str).unwrap_or("");
            if !matches!(
                proto,
                "tcp" | "udp" | "icmp" | "all" | "sctp" | "esp" | "ah"
            ) {
                return Err(GcpError::invalid(format!(
                    "Invalid value for field 'resource.allowed[0].IPProtocol': '{proto}'."
                )));
            }
            for p in a
                .get("ports")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let s = p.as_str().unwrap_or_default();
                let ok = s.split('-').count() <= 2
                    && s.split('-').all(|x| x.parse::<u16>().is_ok_and(|n| n > 0));
                if !ok {
                    return Err(GcpError::invalid(format!(
                        "Invalid value for field 'resource.allowed[0].ports[0]': '{s}'. Invalid port specification."
                    )));
                }
            }
        }
        Ok(())
    }

    /// `firewalls.insert`.
    pub fn insert_firewall(
        &mut self,
        now: Instant,
        project: &str,
        mut body: Value,
        user: &str,
        request_id: Option<&str>,
    ) -> Result<Value, GcpError> {
        if let Some(op) = self.replay(project, request_id)? {
            return Ok(op);
        }
        let name = required_name(&body)?;
        let key = (project.to_owned(), name.clone());
        let path = format!("projects/{project}/global/firewalls/{name}");
        if self.firewalls.contains_key(&key) {
            return Err(GcpError::already_exists(&path));
        }
        if body.get("network").is_none() {
            body["network"] = json!("global/networks/default");
        }
        self.check_firewall(project, &mut body)?;
        let id = self.next_id();
        let obj = as_obj(&mut body)?;
        obj.insert("kind".into(), json!("compute#firewall"));
        obj.insert("id".into(), json!(id.to_string()));
        obj.insert("creationTimestamp".into(), json!(now_rfc3339()));
        obj.insert("selfLink".into(), json!(self.link(&path)));
        obj.entry("direction").or_insert(json!("INGRESS"));
        obj.entry("priority").or_insert(json!(1000));
        obj.entry("disabled").or_insert(json!(false));
        self.firewalls.insert(key, body);
        let d = self.profile.firewall_insert;
        Ok(self.start_op(
            now,
            project,
            "global",
            "insert",
            &path,
            Some(&json!(id.to_string())),
            d,
            None,
            user,
            request_id,
        ))
    }

    /// `firewalls.get`.
    pub fn get_firewall(&self, project: &str, name: &str) -> Result<Value, GcpError> {
        self.firewalls
            .get(&(project.to_owned(), name.to_owned()))
            .cloned()
            .ok_or_else(|| {
                GcpError::not_found(&format!("projects/{project}/global/firewalls/{name}"))
            })
    }

    /// `firewalls.patch`: the fields present replace the stored ones.
    pub fn patch_firewall(
        &mut self,
        now: Instant,
        project: &str,
        name: &str,
        mut body: Value,
        user: &str,
        request_id: Option<&str>,
    ) -> Result<Value, GcpError> {
        if let Some(op) = self.replay(project, request_id)? {
            return Ok(op);
        }
        let path = format!("projects/{project}/global/firewalls/{name}");
        let mut current = self.get_firewall(project, name)?;
        if body.get("name").is_some_and(|n| n != name) {
            return Err(GcpError::invalid(
                "Invalid value for field 'resource.name': the name of a firewall cannot change.",
            ));
        }
        self.check_firewall(project, &mut body)?;
        for (k, v) in as_obj(&mut body)? {
            if !matches!(k.as_str(), "id" | "selfLink" | "creationTimestamp" | "kind") {
                current[k.as_str()] = v.clone();
            }
        }
        let id = current["id"].clone();
        self.firewalls
            .insert((project.to_owned(), name.to_owned()), current);
        let d = self.profile.firewall_patch;
        Ok(self.start_op(
            now,
            project,
            "global",
            "patch",
            &path,
            Some(&id),
            d,
            None,
            user,
            request_id,
        ))
    }

    /// `firewalls.delete`.
    pub fn delete_firewall(
        &mut self,
        now: Instant,
        project: &str,
        name: &str,
        user: &str,
        request_id: Option<&str>,
    ) -> Result<Value, GcpError> {
        if let Some(op) = self.replay(project, request_id)? {
            return Ok(op);
        }
        let path = format!("projects/{project}/global/firewalls/{name}");
        let id = self.get_firewall(project, name)?["id"].clone();
        let d = self.profile.firewall_delete;
        Ok(self.start_op(
            now,
            project,
            "global",
            "delete",
            &path,
            Some(&id),
            d,
            Some(Effect::RemoveFirewall((
                project.to_owned(),
                name.to_owned(),
            ))),
            user,
            request_id,
        ))
    }

    /// Replaces a firewall's fields out of band (a test's "someone edited it").
    /// Sets one instance metadata entry out of band (as someone with console access
    /// would); the metadata server's waiters see the change.
    pub fn edit_instance_metadata(
        &mut self,
        project: &str,
        zone: &str,
        name: &str,
        key: &str,
        value: &str,
    ) -> bool {
        let n = self.next_id();
        let Some(inst) =
            self.instances
                .get_mut(&(project.to_owned(), zone.to_owned(), name.to_owned()))
        else {
            return false;
        };
        let items = inst.value["metadata"]["items"]
            .as_array_mut()
            .map(std::mem::take)
            .unwrap_or_default();
        let mut items: Vec<Value> = items.into_iter().filter(|i| i["key"] != key).collect();
        items.push(json!({"key": key, "value": value}));
        inst.value["metadata"]["items"] = json!(items);
        inst.value["metadata"]["fingerprint"] = json!(fingerprint(n));
        inst.metadata_version += 1;
        true
    }

    pub fn edit_firewall(&mut self, project: &str, name: &str, field: &str, value: Value) -> bool {
        match self
            .firewalls
            .get_mut(&(project.to_owned(), name.to_owned()))
        {
            Some(f) => {
                f[field] = value;
                true
            }
            None => false,
        }
    }

    // ---------------------------------------------------------------- addresses

    /// `addresses.insert`.
    #[allow(clippy::too_many_arguments)]
    pub fn insert_address(
        &mut self,
        now: Instant,
        project: &str,
        region: &str,
        mut body: Value,
        user: &str,
        request_id: Option<&str>,
    ) -> Result<Value, GcpError> {
        if let Some(op) = self.replay(project, request_id)? {
            return Ok(op);
        }
        let name = required_name(&body)?;
        check_labels(&body)?;
        let key = (project.to_owned(), region.to_owned(), name.clone());
        let path = format!("projects/{project}/regions/{region}/addresses/{name}");
        if self.addresses.contains_key(&key) {
            return Err(GcpError::already_exists(&path));
        }
        if body
            .get("addressType")
            .and_then(Value::as_str)
            .unwrap_or("EXTERNAL")
            != "EXTERNAL"
        {
            return Err(GcpError::invalid(
                "The emulator serves EXTERNAL addresses only.",
            ));
        }
        // Static addresses come from documentation ranges only (203.0.113.10-249, then
        // 192.0.2.10-249; ephemeral ones use 198.51.100.130-249, and 198.51.100.0/25 is
        // the test harness's, see `netns::Subnet`), never one still reserved: 480 in all,
        // then GCP's own answer for a full region.
        let in_use: std::collections::BTreeSet<&str> = self
            .addresses
            .values()
            .filter_map(|a| a["address"].as_str())
            .collect();
        // A scale bench draws from the benchmarking range 198.18.0.0/15 instead (131,072
        // addresses; nothing is routed to them).
        let wide = self.benchmark_addresses;
        let pool = |n: u32| -> Ipv4Addr {
            if wide {
                return Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 0, 0)) + n);
            }
            let (base, first, n) = match n {
                0..240 => (Ipv4Addr::new(203, 0, 113, 0), 10, n),
                _ => (Ipv4Addr::new(192, 0, 2, 0), 10, n - 240),
            };
            Ipv4Addr::from(u32::from(base) + first + n)
        };
        let size: u32 = if wide { 1 << 17 } else { 480 };
        let Some(n) = (0..size)
            .map(|i| (self.next_static + i) % size)
            .find(|n| !in_use.contains(pool(*n).to_string().as_str()))
        else {
            return Err(GcpError::new(
                403,
                "quotaExceeded",
                format!("Quota 'STATIC_ADDRESSES' exceeded.  Limit: {size}.0 in region {region}."),
            ));
        };
        self.next_static = (n + 1) % size;
        let ip = pool(n);
        let id = self.next_id();
        let region_link = self.link(&format!("projects/{project}/regions/{region}"));
        let obj = as_obj(&mut body)?;
        obj.insert("kind".into(), json!("compute#address"));
        obj.insert("id".into(), json!(id.to_string()));
        obj.insert("creationTimestamp".into(), json!(now_rfc3339()));
        obj.insert("address".into(), json!(ip.to_string()));
        obj.insert("status".into(), json!("RESERVING"));
        obj.insert("region".into(), json!(region_link));
        obj.insert("addressType".into(), json!("EXTERNAL"));
        obj.entry("networkTier").or_insert(json!("PREMIUM"));
        obj.insert("labelFingerprint".into(), json!(fingerprint(id)));
        self.addresses.insert(key.clone(), body);
        let link = self.link(&path);
        if let Some(a) = self.addresses.get_mut(&key) {
            a["selfLink"] = json!(link);
        }
        let d = self.profile.address_insert;
        Ok(self.start_op(
            now,
            project,
            &format!("regions/{region}"),
            "insert",
            &path,
            Some(&json!(id.to_string())),
            d,
            Some(Effect::AddressReserved(key)),
            user,
            request_id,
        ))
    }

    /// `addresses.get`.
    pub fn get_address(&self, project: &str, region: &str, name: &str) -> Result<Value, GcpError> {
        self.addresses
            .get(&(project.to_owned(), region.to_owned(), name.to_owned()))
            .cloned()
            .ok_or_else(|| {
                GcpError::not_found(&format!(
                    "projects/{project}/regions/{region}/addresses/{name}"
                ))
            })
    }

    /// `addresses.delete`: refused while an instance uses the address.
    pub fn delete_address(
        &mut self,
        now: Instant,
        project: &str,
        region: &str,
        name: &str,
        user: &str,
        request_id: Option<&str>,
    ) -> Result<Value, GcpError> {
        if let Some(op) = self.replay(project, request_id)? {
            return Ok(op);
        }
        let path = format!("projects/{project}/regions/{region}/addresses/{name}");
        let a = self.get_address(project, region, name)?;
        if let Some(u) = a["users"].as_array().and_then(|u| u.first()) {
            return Err(GcpError::new(
                400,
                "resourceInUseByAnotherResource",
                format!(
                    "The address resource '{path}' is already being used by '{}'",
                    u.as_str().unwrap_or_default()
                ),
            ));
        }
        let d = self.profile.address_delete;
        Ok(self.start_op(
            now,
            project,
            &format!("regions/{region}"),
            "delete",
            &path,
            Some(&a["id"]),
            d,
            Some(Effect::RemoveAddress((
                project.to_owned(),
                region.to_owned(),
                name.to_owned(),
            ))),
            user,
            request_id,
        ))
    }

    // ---------------------------------------------------------------- instances

    /// `instances.insert`: checks machine type, image, network, address and service account.
    #[allow(clippy::too_many_arguments)]
    pub fn insert_instance(
        &mut self,
        now: Instant,
        project: &str,
        zone: &str,
        mut body: Value,
        user: &str,
        request_id: Option<&str>,
    ) -> Result<Value, GcpError> {
        if let Some(op) = self.replay(project, request_id)? {
            return Ok(op);
        }
        let name = required_name(&body)?;
        check_labels(&body)?;
        let key = (project.to_owned(), zone.to_owned(), name.clone());
        let path = format!("projects/{project}/zones/{zone}/instances/{name}");
        if self.instances.contains_key(&key) {
            return Err(GcpError::already_exists(&path));
        }
        let mt = str_at(&body, "/machineType").unwrap_or_default();
        if !machine_type_ok(last_segment(mt)) {
            return Err(GcpError::invalid(format!(
                "Invalid value for field 'resource.machineType': '{mt}'. Machine type with name '{}' does not exist in zone '{zone}'.",
                last_segment(mt)
            )));
        }
        let boot = body["disks"]
            .as_array()
            .and_then(|d| d.iter().find(|d| d["boot"] == true))
            .cloned()
            .ok_or_else(|| {
                GcpError::invalid(
                    "Invalid value for field 'resource.disks': a boot disk is required.",
                )
            })?;
        let image = str_at(&boot, "/initializeParams/sourceImage").unwrap_or_default();
        let image_ok = IMAGE_FAMILIES
            .iter()
            .any(|(p, f)| image.ends_with(&format!("projects/{p}/global/images/family/{f}")));
        if !image_ok {
            return Err(GcpError::not_found(image));
        }
        let size = boot
            .pointer("/initializeParams/diskSizeGb")
            .and_then(|v| v.as_str().and_then(|s| s.parse().ok()).or(v.as_i64()))
            .unwrap_or(10);
        if size < 10 {
            return Err(GcpError::invalid(format!(
                "Invalid value for field 'resource.disks[0].initializeParams.diskSizeGb': '{size}'. Requested disk size cannot be smaller than the image size (10 GB)."
            )));
        }
        let net = str_at(&body, "/networkInterfaces/0/network")
            .unwrap_or("global/networks/default")
            .to_owned();
        let net_link = self.network_link(project, &net)?;
        body["networkInterfaces"][0]["network"] = json!(net_link);
        let internal = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 128, 0, 0)) + self.next_internal);
        self.next_internal += 1;
        body["networkInterfaces"][0]["networkIP"] = json!(internal.to_string());
        body["networkInterfaces"][0]["name"] = json!("nic0");
        let link = self.link(&path);
        if body
            .pointer("/networkInterfaces/0/accessConfigs/0")
            .is_some()
        {
            let region = zone.rsplit_once('-').map_or(zone, |(r, _)| r);
            let nat = match str_at(&body, "/networkInterfaces/0/accessConfigs/0/natIP") {
                Some(ip) => {
                    let found = self
                        .addresses
                        .iter_mut()
                        .find(|((p, r, _), a)| p == project && r == region && a["address"] == ip);
                    let Some((_, a)) = found else {
                        return Err(GcpError::invalid(format!(
                            "Invalid value for field 'resource.networkInterfaces[0].accessConfigs[0].natIP': '{ip}'. The specified external IP address '{ip}' was not found in region '{region}'."
                        )));
                    };
                    if a["users"].as_array().is_some_and(|u| !u.is_empty()) {
                        return Err(GcpError::invalid(format!(
                            "IP '{ip}' is already being used by another resource."
                        )));
                    }
                    a["users"] = json!([link]);
                    a["status"] = json!("IN_USE");
                    ip.to_owned()
                }
                None => {
                    let ip = Ipv4Addr::from(
                        u32::from(Ipv4Addr::new(198, 51, 100, 0)) + self.next_ephemeral,
                    );
                    self.next_ephemeral = 130 + (self.next_ephemeral - 129) % 120;
                    ip.to_string()
                }
            };
            let ac = &mut body["networkInterfaces"][0]["accessConfigs"][0];
            ac["natIP"] = json!(nat);
            ac["type"] = json!("ONE_TO_ONE_NAT");
            ac["name"] = ac.get("name").cloned().unwrap_or(json!("External NAT"));
        }
        if let Some(email) = str_at(&body, "/serviceAccounts/0/email") {
            let exists = email == "default"
                || self
                    .service_accounts
                    .contains_key(&(project.to_owned(), email.to_owned()));
            if !exists {
                return Err(GcpError::invalid(format!(
                    "The resource 'projects/{project}/serviceAccounts/{email}' was not found"
                )));
            }
        }
        let meta = body
            .get("metadata")
            .cloned()
            .unwrap_or_else(|| json!({"items": []}));
        check_metadata(&meta)?;
        let id = self.next_id();
        let obj = as_obj(&mut body)?;
        obj.insert("kind".into(), json!("compute#instance"));
        obj.insert("id".into(), json!(id.to_string()));
        obj.insert("creationTimestamp".into(), json!(now_rfc3339()));
        obj.insert("status".into(), json!("PROVISIONING"));
        obj.insert("selfLink".into(), json!(link));
        obj.insert("labelFingerprint".into(), json!(fingerprint(id)));
        obj.insert("fingerprint".into(), json!(fingerprint(id + 1)));
        let mut meta = meta;
        meta["kind"] = json!("compute#metadata");
        meta["fingerprint"] = json!(fingerprint(id + 2));
        obj.insert("metadata".into(), meta);
        self.server_fields(&mut body, project, zone, &name, id);
        self.instances.insert(
            key.clone(),
            Instance {
                value: body,
                guest: BTreeMap::new(),
                metadata_version: 1,
            },
        );
        let d = self.profile.instance_insert;
        Ok(self.start_op(
            now,
            project,
            &format!("zones/{zone}"),
            "insert",
            &path,
            Some(&json!(id.to_string())),
            d,
            Some(Effect::InstanceStatus(key, "RUNNING")),
            user,
            request_id,
        ))
    }

    /// What GCP fills in on an instance, replacing what it only takes on insert: the zone
    /// and machine type as full URLs, attached disks (no `initializeParams`), each
    /// interface's subnetwork, name and fingerprint, the tags' fingerprint, the CPU
    /// platform. Drift checks then read the shapes GCP really returns.
    fn server_fields(&self, body: &mut Value, project: &str, zone: &str, name: &str, id: u64) {
        let region = zone.rsplit_once('-').map_or(zone, |(r, _)| r);
        body["zone"] = json!(self.link(&format!("projects/{project}/zones/{zone}")));
        if let Some(mt) = body["machineType"].as_str() {
            let mt = last_segment(mt).to_owned();
            body["machineType"] = json!(self.link(&format!(
                "projects/{project}/zones/{zone}/machineTypes/{mt}"
            )));
        }
        let disks: Vec<Value> = body["disks"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .enumerate()
            .map(|(i, d)| {
                let size = d
                    .pointer("/initializeParams/diskSizeGb")
                    .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
                    .unwrap_or_else(|| "10".into());
                let disk = if i == 0 {
                    name.to_owned()
                } else {
                    format!("{name}-{i}")
                };
                json!({
                    "kind": "compute#attachedDisk",
                    "type": "PERSISTENT",
                    "mode": "READ_WRITE",
                    "source": self.link(&format!("projects/{project}/zones/{zone}/disks/{disk}")),
                    "deviceName": format!("persistent-disk-{i}"),
                    "index": i,
                    "boot": d["boot"] == true,
                    "autoDelete": d["autoDelete"] == true,
                    "interface": "SCSI",
                    "diskSizeGb": size,
                })
            })
            .collect();
        body["disks"] = json!(disks);
        let mut nics = body["networkInterfaces"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        for (i, nic) in nics.iter_mut().enumerate() {
            let net = last_segment(nic["network"].as_str().unwrap_or("default")).to_owned();
            nic["kind"] = json!("compute#networkInterface");
            nic["name"] = json!(format!("nic{i}"));
            nic["subnetwork"] = json!(self.link(&format!(
                "projects/{project}/regions/{region}/subnetworks/{net}"
            )));
            nic["fingerprint"] = json!(fingerprint(id + 10 + i as u64));
            nic["stackType"] = json!("IPV4_ONLY");
        }
        body["networkInterfaces"] = json!(nics);
        let items = body["tags"]["items"].clone();
        body["tags"] = json!({"items": if items.is_null() { json!([]) } else { items }, "fingerprint": fingerprint(id + 3)});
        body["cpuPlatform"] = json!("Intel Broadwell");
        body["startRestricted"] = json!(false);
    }

    fn instance(&self, project: &str, zone: &str, name: &str) -> Result<&Instance, GcpError> {
        self.instances
            .get(&(project.to_owned(), zone.to_owned(), name.to_owned()))
            .ok_or_else(|| {
                GcpError::not_found(&format!("projects/{project}/zones/{zone}/instances/{name}"))
            })
    }

    /// `instances.get`.
    pub fn get_instance(&self, project: &str, zone: &str, name: &str) -> Result<Value, GcpError> {
        self.instance(project, zone, name).map(|i| i.value.clone())
    }

    /// The instance's metadata and a version that changes with every `setMetadata`.
    pub fn instance_metadata(&self, project: &str, zone: &str, name: &str) -> Option<(Value, u64)> {
        self.instances
            .get(&(project.to_owned(), zone.to_owned(), name.to_owned()))
            .map(|i| (i.value.clone(), i.metadata_version))
    }

    /// Instance actions: delete, start, stop, setMetadata, setLabels.
    #[allow(clippy::too_many_arguments)]
    pub fn instance_action(
        &mut self,
        now: Instant,
        project: &str,
        zone: &str,
        name: &str,
        action: &str,
        body: Value,
        user: &str,
        request_id: Option<&str>,
    ) -> Result<Value, GcpError> {
        if let Some(op) = self.replay(project, request_id)? {
            return Ok(op);
        }
        let key = (project.to_owned(), zone.to_owned(), name.to_owned());
        let path = format!("projects/{project}/zones/{zone}/instances/{name}");
        let scope = format!("zones/{zone}");
        let current = self.instance(project, zone, name)?.value.clone();
        let id = current["id"].clone();
        let status = current["status"].as_str().unwrap_or_default().to_owned();
        let (duration, effect) = match action {
            "delete" => (
                self.profile.instance_delete,
                Some(Effect::RemoveInstance(key.clone())),
            ),
            "start" => {
                if status == "RUNNING" || status == "PROVISIONING" || status == "STAGING" {
                    // Starting a running instance is a no-op operation in GCP.
                    (Duration::ZERO, None)
                } else {
                    self.set_status(&key, "STAGING");
                    (
                        self.profile.instance_start,
                        Some(Effect::InstanceStatus(key.clone(), "RUNNING")),
                    )
                }
            }
            "stop" => {
                self.set_status(&key, "STOPPING");
                (
                    self.profile.instance_stop,
                    Some(Effect::InstanceStatus(key.clone(), "TERMINATED")),
                )
            }
            "setMetadata" => {
                let want = current.pointer("/metadata/fingerprint").cloned();
                if body.get("fingerprint") != want.as_ref() {
                    return Err(GcpError::new(
                        412,
                        "conditionNotMet",
                        "Supplied fingerprint does not match current metadata fingerprint.",
                    ));
                }
                check_metadata(&body)?;
                let n = self.next_id();
                let inst = self.instances.get_mut(&key).expect("checked above");
                let mut meta = body;
                meta["kind"] = json!("compute#metadata");
                meta["fingerprint"] = json!(fingerprint(n));
                inst.value["metadata"] = meta;
                inst.metadata_version += 1;
                (self.profile.instance_set_metadata, None)
            }
            "setLabels" => {
                if body.get("labelFingerprint") != current.get("labelFingerprint") {
                    return Err(GcpError::new(
                        412,
                        "conditionNotMet",
                        "Labels fingerprint either invalid or resource labels have changed",
                    ));
                }
                check_labels(&body)?;
                let n = self.next_id();
                let inst = self.instances.get_mut(&key).expect("checked above");
                inst.value["labels"] = body.get("labels").cloned().unwrap_or(json!({}));
                inst.value["labelFingerprint"] = json!(fingerprint(n));
                (self.profile.set_labels, None)
            }
            _ => {
                return Err(GcpError::new(
                    400,
                    "invalid",
                    format!("The emulator does not serve instances.{action}"),
                ));
            }
        };
        Ok(self.start_op(
            now,
            project,
            &scope,
            action,
            &path,
            Some(&id),
            duration,
            effect,
            user,
            request_id,
        ))
    }

    fn set_status(&mut self, key: &SKey, status: &str) {
        if let Some(i) = self.instances.get_mut(key) {
            i.value["status"] = json!(status);
        }
    }

    /// Stops an instance at once, as a Spot preemption does.
    pub fn preempt(&mut self, project: &str, zone: &str, name: &str) -> bool {
        let key = (project.to_owned(), zone.to_owned(), name.to_owned());
        let found = self.instances.contains_key(&key);
        self.set_status(&key, "TERMINATED");
        found
    }

    /// Removes the resource a Compute self link names (a failed insert's).
    fn remove_by_link(&mut self, link: &str) {
        let Some(i) = link.find("/projects/") else {
            return;
        };
        let segs: Vec<&str> = link[i + 1..].split('/').collect();
        let (kind, project, scope, name) = match segs.as_slice() {
            ["projects", p, "global", "networks", n] => ("network", *p, "global", *n),
            ["projects", p, "global", "firewalls", n] => ("firewall", *p, "global", *n),
            ["projects", p, "regions", r, "addresses", n] => ("address", *p, *r, *n),
            ["projects", p, "zones", z, "instances", n] => ("instance", *p, *z, *n),
            _ => return,
        };
        self.remove(kind, project, scope, name);
    }

    /// Deletes any resource at once, out of band (a test's "someone deleted it").
    pub fn remove(&mut self, kind: &str, project: &str, scope: &str, name: &str) -> bool {
        let g = (project.to_owned(), name.to_owned());
        let s = (project.to_owned(), scope.to_owned(), name.to_owned());
        match kind {
            "network" => self.networks.remove(&g).is_some(),
            "firewall" => self.firewalls.remove(&g).is_some(),
            "address" => self.addresses.remove(&s).is_some(),
            "instance" => match self.instances.remove(&s) {
                Some(i) => {
                    self.release_address(&i.value);
                    true
                }
                None => false,
            },
            "serviceAccount" => {
                // As IAM does: the account's grants stay in policies under a `deleted:`
                // member, which a new account of the same email does not inherit.
                let member = format!("serviceAccount:{name}");
                let gone = format!("deleted:serviceAccount:{name}?uid=1");
                for ((p, _), s) in self.secrets.iter_mut() {
                    if p != project {
                        continue;
                    }
                    for b in s.bindings.as_array_mut().into_iter().flatten() {
                        for m in b["members"].as_array_mut().into_iter().flatten() {
                            if m == member.as_str() {
                                *m = Value::String(gone.clone());
                            }
                        }
                    }
                }
                self.service_accounts.remove(&g).is_some()
            }
            "secret" => self.secrets.remove(&g).is_some(),
            _ => false,
        }
    }

    /// Empties a secret's IAM policy out of band (someone removed the grants).
    pub fn clear_secret_bindings(&mut self, project: &str, id: &str) -> bool {
        match self.secrets.get_mut(&(project.to_owned(), id.to_owned())) {
            Some(s) => {
                s.bindings = Value::Array(Vec::new());
                s.policy_version += 1;
                true
            }
            None => false,
        }
    }

    /// The members bound to `role` on a secret (for assertions).
    pub fn secret_members(&self, project: &str, id: &str, role: &str) -> Vec<String> {
        self.secrets
            .get(&(project.to_owned(), id.to_owned()))
            .map(|s| {
                s.bindings
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|b| b["role"] == role)
                    .flat_map(|b| b["members"].as_array().cloned().unwrap_or_default())
                    .filter_map(|m| m.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Guest attributes under `query_path` (`ns/` or `ns/key`).
    pub fn guest_attributes(
        &self,
        project: &str,
        zone: &str,
        name: &str,
        query_path: &str,
    ) -> Result<Value, GcpError> {
        let inst = self.instance(project, zone, name)?;
        let items: Vec<Value> = inst
            .guest
            .iter()
            .filter(|(k, _)| k.starts_with(query_path))
            .filter_map(|(k, v)| {
                let (ns, key) = k.split_once('/')?;
                Some(json!({"namespace": ns, "key": key, "value": v}))
            })
            .collect();
        if items.is_empty() {
            return Err(GcpError::not_found(&format!(
                "projects/{project}/zones/{zone}/instances/{name}/guestAttributes/{query_path}"
            )));
        }
        Ok(json!({
            "kind": "compute#guestAttributes",
            "queryPath": query_path,
            "queryValue": {"items": items},
        }))
    }

    /// Writes one guest attribute (`ns/key`) from inside the VM.
    pub fn put_guest_attribute(
        &mut self,
        project: &str,
        zone: &str,
        name: &str,
        path: &str,
        value: String,
    ) -> bool {
        match self
            .instances
            .get_mut(&(project.to_owned(), zone.to_owned(), name.to_owned()))
        {
            Some(i) if path.split('/').count() == 2 && value.len() <= 256 * 1024 => {
                i.guest.insert(path.to_owned(), value);
                true
            }
            _ => false,
        }
    }

    /// A guest attribute as written by the VM.
    pub fn guest_attribute(
        &self,
        project: &str,
        zone: &str,
        name: &str,
        path: &str,
    ) -> Option<String> {
        self.instances
            .get(&(project.to_owned(), zone.to_owned(), name.to_owned()))?
            .guest
            .get(path)
            .cloned()
    }

    /// `list` of a Compute collection with an optional filter.
    pub fn list(
        &self,
        kind: &str,
        project: &str,
        scope: Option<&str>,
        filter: Option<&str>,
    ) -> Result<Value, GcpError> {
        let f = filter.map(Filter::parse).transpose()?;
        let values: Vec<&Value> = match kind {
            "networks" => self
                .networks
                .iter()
                .filter(|((p, _), _)| p == project)
                .map(|(_, v)| v)
                .collect(),
            "firewalls" => self
                .firewalls
                .iter()
                .filter(|((p, _), _)| p == project)
                .map(|(_, v)| v)
                .collect(),
            "addresses" => self
                .addresses
                .iter()
                .filter(|((p, s, _), _)| p == project && Some(s.as_str()) == scope)
                .map(|(_, v)| v)
                .collect(),
            _ => self
                .instances
                .iter()
                .filter(|((p, s, _), _)| p == project && Some(s.as_str()) == scope)
                .map(|(_, i)| &i.value)
                .collect(),
        };
        let items: Vec<Value> = values
            .into_iter()
            .filter(|v| f.as_ref().is_none_or(|f| f.matches(v)))
            .cloned()
            .collect();
        let mut out = json!({"kind": format!("compute#{}List", kind.trim_end_matches('s')), "id": format!("projects/{project}/{kind}")});
        if kind == "addresses" {
            out["kind"] = json!("compute#addressList");
        }
        if !items.is_empty() {
            out["items"] = json!(items);
        }
        Ok(out)
    }

    /// `instances.aggregatedList` or `addresses.aggregatedList`, flat: `items` holds
    /// `{"scope": "zones/<z>" or "regions/<r>", "item": …}` in a stable order, for the
    /// caller to page and then group by scope.
    pub fn aggregated(
        &self,
        kind: &str,
        project: &str,
        filter: Option<&str>,
    ) -> Result<Value, GcpError> {
        let f = filter.map(Filter::parse).transpose()?;
        let keep = |p: &String, v: &Value| p == project && f.as_ref().is_none_or(|f| f.matches(v));
        let mut items: Vec<(String, &String, &Value)> = match kind {
            "addresses" => self
                .addresses
                .iter()
                .filter(|((p, _, _), v)| keep(p, v))
                .map(|((_, r, n), v)| (format!("regions/{r}"), n, v))
                .collect(),
            _ => self
                .instances
                .iter()
                .filter(|((p, _, _), i)| keep(p, &i.value))
                .map(|((_, z, n), i)| (format!("zones/{z}"), n, &i.value))
                .collect(),
        };
        items.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
        let flat: Vec<Value> = items
            .into_iter()
            .map(|(scope, _, v)| json!({"scope": scope, "item": v}))
            .collect();
        let singular = if kind == "addresses" {
            "address"
        } else {
            "instance"
        };
        Ok(json!({
            "kind": format!("compute#{singular}AggregatedList"),
            "id": format!("projects/{project}/aggregated/{kind}"),
            "items": flat,
        }))
    }

    // ---------------------------------------------------------------- IAM

    /// `serviceAccounts.create`.
    pub fn create_service_account(
        &mut self,
        now: Instant,
        project: &str,
        body: &Value,
    ) -> Result<Value, GcpError> {
        let id = body["accountId"].as_str().unwrap_or_default();
        static RE: std::sync::OnceLock<Regex> = std::sync::OnceLock::new();
        let ok = RE
            .get_or_init(|| Regex::new(r"^[a-z]([-a-z0-9]*[a-z0-9])$").expect("static regex"))
            .is_match(id)
            && (6..=30).contains(&id.len());
        if !ok {
            return Err(GcpError::invalid(format!(
                "Invalid account ID {id:?}: it must be 6-30 characters, lowercase letters, digits and hyphens, start with a letter and not end with a hyphen."
            )));
        }
        let email = format!("{id}@{project}.iam.gserviceaccount.com");
        let key = (project.to_owned(), email.clone());
        if self.service_accounts.contains_key(&key) {
            return Err(GcpError::new(
                409,
                "alreadyExists",
                format!("Service account {id} already exists within project projects/{project}."),
            ));
        }
        let sa = &body["serviceAccount"];
        // IAM's limits (bytes): displayName 100, description 256.
        for (field, max) in [("displayName", 100), ("description", 256)] {
            let len = sa.get(field).and_then(Value::as_str).map_or(0, str::len);
            if len > max {
                return Err(GcpError::invalid(format!(
                    "ServiceAccount {field} must be at most {max} bytes, got {len}."
                )));
            }
        }
        let uid = self.next_id();
        let v = json!({
            "name": format!("projects/{project}/serviceAccounts/{email}"),
            "projectId": project,
            "uniqueId": uid.to_string(),
            "email": email,
            "displayName": sa.get("displayName").cloned().unwrap_or(json!("")),
            "description": sa.get("description").cloned().unwrap_or(json!("")),
            "etag": base64::engine::general_purpose::STANDARD.encode(uid.to_be_bytes()),
            "oauth2ClientId": uid.to_string(),
        });
        self.service_accounts.insert(
            key,
            ServiceAccount {
                value: v.clone(),
                created: now,
            },
        );
        Ok(v)
    }

    /// `serviceAccounts.get` (`-` as project means any).
    pub fn get_service_account(&self, project: &str, email: &str) -> Result<Value, GcpError> {
        self.service_accounts
            .iter()
            .find(|((p, e), _)| (p == project || project == "-") && e == email)
            .map(|(_, s)| s.value.clone())
            .ok_or_else(|| {
                GcpError::new(404, "notFound", format!("Unknown service account {email}"))
            })
    }

    /// `serviceAccounts.delete`.
    pub fn delete_service_account(
        &mut self,
        project: &str,
        email: &str,
    ) -> Result<Value, GcpError> {
        self.get_service_account(project, email)?;
        self.service_accounts
            .retain(|(p, e), _| !((p == project || project == "-") && e == email));
        // Like GCP, bindings naming the account stay behind as deleted:... members; the
        // emulator drops them instead, which no caller can tell apart.
        Ok(json!({}))
    }

    /// `serviceAccounts.list`.
    pub fn list_service_accounts(&self, project: &str) -> Value {
        let accounts: Vec<Value> = self
            .service_accounts
            .iter()
            .filter(|((p, _), _)| p == project)
            .map(|(_, s)| s.value.clone())
            .collect();
        if accounts.is_empty() {
            json!({})
        } else {
            json!({"accounts": accounts})
        }
    }

    /// Whether `email` exists and has propagated (usable in IAM bindings).
    fn propagated(&self, email: &str, now: Instant) -> bool {
        self.service_accounts.iter().any(|((_, e), s)| {
            e == email
                && now.duration_since(s.created)
                    >= self.profile.scaled(self.profile.iam_propagation)
        })
    }

    // ---------------------------------------------------------------- Secret Manager

    fn secret_path(&self, project: &str, id: &str) -> String {
        format!(
            "projects/{}/secrets/{id}",
            self.projects.get(project).copied().unwrap_or(0)
        )
    }

    /// `secrets.create`.
    pub fn create_secret(
        &mut self,
        project: &str,
        id: &str,
        mut body: Value,
    ) -> Result<Value, GcpError> {
        static RE: std::sync::OnceLock<Regex> = std::sync::OnceLock::new();
        if !RE
            .get_or_init(|| Regex::new(r"^[a-zA-Z0-9_-]{1,255}$").expect("static regex"))
            .is_match(id)
        {
            return Err(GcpError::invalid(format!("Invalid secret id {id:?}.")));
        }
        check_labels(&body)?;
        if body.get("replication").is_none() {
            return Err(GcpError::invalid("Secret.replication is required."));
        }
        let key = (project.to_owned(), id.to_owned());
        let path = self.secret_path(project, id);
        if self.secrets.contains_key(&key) {
            return Err(GcpError::new(
                409,
                "alreadyExists",
                format!("Secret [{path}] already exists."),
            ));
        }
        let n = self.next_id();
        let obj = as_obj(&mut body)?;
        obj.insert("name".into(), json!(path));
        obj.insert("createTime".into(), json!(now_rfc3339()));
        obj.insert("etag".into(), json!(format!("\"{}\"", fingerprint(n))));
        self.secrets.insert(
            key,
            Secret {
                value: body.clone(),
                versions: Vec::new(),
                bindings: json!([]),
                policy_version: 1,
            },
        );
        Ok(body)
    }

    fn secret(&self, project: &str, id: &str) -> Result<&Secret, GcpError> {
        self.secrets
            .get(&(project.to_owned(), id.to_owned()))
            .ok_or_else(|| {
                GcpError::new(
                    404,
                    "notFound",
                    format!(
                        "Secret [{}] not found or has no versions.",
                        self.secret_path(project, id)
                    ),
                )
            })
    }

    /// `secrets.get`.
    pub fn get_secret(&self, project: &str, id: &str) -> Result<Value, GcpError> {
        self.secret(project, id).map(|s| s.value.clone())
    }

    /// `secrets.delete`.
    pub fn delete_secret(&mut self, project: &str, id: &str) -> Result<Value, GcpError> {
        self.secret(project, id)?;
        self.secrets.remove(&(project.to_owned(), id.to_owned()));
        Ok(json!({}))
    }

    /// `secrets.list` with an optional label filter.
    pub fn list_secrets(&self, project: &str, filter: Option<&str>) -> Result<Value, GcpError> {
        let f = filter.map(Filter::parse).transpose()?;
        let secrets: Vec<Value> = self
            .secrets
            .iter()
            .filter(|((p, _), s)| p == project && f.as_ref().is_none_or(|f| f.matches(&s.value)))
            .map(|(_, s)| s.value.clone())
            .collect();
        Ok(if secrets.is_empty() {
            json!({})
        } else {
            json!({"secrets": secrets, "totalSize": secrets.len()})
        })
    }

    /// `secrets.addVersion`.
    pub fn add_version(
        &mut self,
        project: &str,
        id: &str,
        body: &Value,
    ) -> Result<Value, GcpError> {
        let path = self.secret_path(project, id);
        self.secret(project, id)?;
        let data = body
            .pointer("/payload/data")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(data)
            .map_err(|_| GcpError::invalid("payload.data must be base64"))?;
        if bytes.len() > 64 * 1024 {
            return Err(GcpError::invalid("Secret payload is larger than 64 KiB."));
        }
        let s = self
            .secrets
            .get_mut(&(project.to_owned(), id.to_owned()))
            .expect("checked above");
        let n = s.versions.len() + 1;
        let v = json!({
            "name": format!("{path}/versions/{n}"),
            "createTime": now_rfc3339(),
            "state": "ENABLED",
            "replicationStatus": {"automatic": {}},
        });
        s.versions.push((bytes, v.clone()));
        Ok(v)
    }

    /// `versions.access`; `allowed` is false for callers without access to the secret.
    pub fn access(
        &self,
        project: &str,
        id: &str,
        version: &str,
        caller: &str,
        admin: bool,
        now: Instant,
    ) -> Result<Value, GcpError> {
        let path = self.secret_path(project, id);
        let denied = || {
            GcpError::new(
                403,
                "forbidden",
                format!(
                    "Permission 'secretmanager.versions.access' denied for resource '{path}/versions/{version}' (or it may not exist)."
                ),
            )
        };
        let Some(s) = self.secrets.get(&(project.to_owned(), id.to_owned())) else {
            return Err(if admin {
                GcpError::new(
                    404,
                    "notFound",
                    format!("Secret [{path}] not found or has no versions."),
                )
            } else {
                denied()
            });
        };
        if !admin {
            let member = format!("serviceAccount:{caller}");
            let bound = s.bindings.as_array().into_iter().flatten().any(|b| {
                matches!(
                    b["role"].as_str(),
                    Some("roles/secretmanager.secretAccessor" | "roles/owner")
                ) && b["members"]
                    .as_array()
                    .is_some_and(|m| m.iter().any(|x| x == member.as_str()))
            });
            if !bound || !self.propagated(caller, now) {
                return Err(denied());
            }
        }
        let idx = if version == "latest" {
            s.versions.len()
        } else {
            version.parse::<usize>().unwrap_or(0)
        };
        let Some((bytes, v)) = idx.checked_sub(1).and_then(|i| s.versions.get(i)) else {
            return Err(GcpError::new(
                404,
                "notFound",
                format!("Secret Version [{path}/versions/{version}] not found."),
            ));
        };
        Ok(json!({
            "name": v["name"],
            "payload": {
                "data": base64::engine::general_purpose::STANDARD.encode(bytes),
                "dataCrc32c": crc32c(bytes).to_string(),
            },
        }))
    }

    /// How many versions a secret holds.
    pub fn secret_versions(&self, project: &str, id: &str) -> Option<usize> {
        self.secrets
            .get(&(project.to_owned(), id.to_owned()))
            .map(|s| s.versions.len())
    }

    fn policy(s: &Secret) -> Value {
        let mut p = json!({"version": 1, "etag": policy_etag(s.policy_version)});
        if s.bindings.as_array().is_some_and(|b| !b.is_empty()) {
            p["bindings"] = s.bindings.clone();
        }
        p
    }

    /// `secrets.getIamPolicy`.
    pub fn get_secret_policy(&self, project: &str, id: &str) -> Result<Value, GcpError> {
        self.secret(project, id).map(Self::policy)
    }

    /// `secrets.setIamPolicy`: a stale etag is 409 ABORTED; members must exist and have
    /// propagated, or GCP answers 400 "does not exist".
    pub fn set_secret_policy(
        &mut self,
        now: Instant,
        project: &str,
        id: &str,
        body: &Value,
    ) -> Result<Value, GcpError> {
        let current = self.secret(project, id)?.policy_version;
        let policy = &body["policy"];
        if let Some(etag) = policy.get("etag").and_then(Value::as_str)
            && etag != policy_etag(current)
        {
            return Err(GcpError::new(
                409,
                "aborted",
                "There were concurrent policy changes. Please retry the whole read-modify-write with exponential backoff.",
            ));
        }
        let bindings = policy.get("bindings").cloned().unwrap_or(json!([]));
        for b in bindings.as_array().into_iter().flatten() {
            for m in b["members"].as_array().into_iter().flatten() {
                let m = m.as_str().unwrap_or_default();
                if let Some(email) = m.strip_prefix("serviceAccount:")
                    && !self.propagated(email, now)
                {
                    return Err(GcpError::invalid(format!(
                        "Service account {email} does not exist."
                    )));
                }
                if !m.contains(':') {
                    return Err(GcpError::invalid(format!("Invalid member {m:?}.")));
                }
            }
        }
        let s = self
            .secrets
            .get_mut(&(project.to_owned(), id.to_owned()))
            .expect("checked above");
        s.bindings = bindings;
        s.policy_version += 1;
        Ok(Self::policy(s))
    }

    // ---------------------------------------------------------------- inventory

    /// Every live resource, for leak checks.
    pub fn inventory(&self) -> Vec<InventoryItem> {
        let labels = |v: &Value| -> BTreeMap<String, String> {
            v["labels"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                        .collect()
                })
                .unwrap_or_default()
        };
        let item =
            |kind: &'static str, project: &str, scope: &str, name: &str, v: &Value| InventoryItem {
                kind,
                project: project.to_owned(),
                scope: scope.to_owned(),
                name: name.to_owned(),
                labels: labels(v),
                description: v["description"].as_str().unwrap_or_default().to_owned(),
            };
        let mut out = Vec::new();
        for ((p, n), v) in &self.networks {
            out.push(item("network", p, "global", n, v));
        }
        for ((p, n), v) in &self.firewalls {
            out.push(item("firewall", p, "global", n, v));
        }
        for ((p, r, n), v) in &self.addresses {
            out.push(item("address", p, r, n, v));
        }
        for ((p, z, n), i) in &self.instances {
            out.push(item("instance", p, z, n, &i.value));
        }
        for ((p, e), s) in &self.service_accounts {
            out.push(item("serviceAccount", p, "global", e, &s.value));
        }
        for ((p, n), s) in &self.secrets {
            out.push(item("secret", p, "global", n, &s.value));
        }
        out
    }
}

fn policy_etag(version: u64) -> String {
    base64::engine::general_purpose::STANDARD.encode(format!("policy-{version}"))
}

fn fingerprint(n: u64) -> String {
    base64::engine::general_purpose::STANDARD
        .encode(n.wrapping_mul(0x9E37_79B9_7F4A_7C15).to_be_bytes())
}

fn as_obj(v: &mut Value) -> Result<&mut Map<String, Value>, GcpError> {
    v.as_object_mut()
        .ok_or_else(|| GcpError::invalid("The request body must be a JSON object."))
}

fn required_name(body: &Value) -> Result<String, GcpError> {
    let name = body.get("name").and_then(Value::as_str).unwrap_or_default();
    if name.is_empty() {
        return Err(GcpError::new(
            400,
            "required",
            "Required field 'resource.name' not specified",
        ));
    }
    if !name_ok(name) {
        return Err(GcpError::invalid(format!(
            "Invalid value for field 'resource.name': '{name}'. Must be a match of regex '(?:[a-z](?:[-a-z0-9]{{0,61}}[a-z0-9])?)'"
        )));
    }
    Ok(name.to_owned())
}

fn check_metadata(meta: &Value) -> Result<(), GcpError> {
    static RE: std::sync::OnceLock<Regex> = std::sync::OnceLock::new();
    let re = RE.get_or_init(|| Regex::new(r"^[a-zA-Z0-9_-]{1,128}$").expect("static regex"));
    let mut total = 0;
    for item in meta["items"].as_array().into_iter().flatten() {
        let k = item["key"].as_str().unwrap_or_default();
        if !re.is_match(k) {
            return Err(GcpError::invalid(format!(
                "Invalid value for field 'resource.metadata.items[0].key': '{k}'."
            )));
        }
        let v = item["value"].as_str().unwrap_or_default();
        if v.len() > 256 * 1024 {
            return Err(GcpError::invalid(format!(
                "Metadata value for key '{k}' exceeds 256 KiB."
            )));
        }
        total += k.len() + v.len();
    }
    if total > 512 * 1024 {
        return Err(GcpError::invalid("Metadata exceeds 512 KiB in total."));
    }
    Ok(())
}

fn cidr_ok(s: &str) -> bool {
    let Some((ip, len)) = s.split_once('/') else {
        return s.parse::<Ipv4Addr>().is_ok();
    };
    ip.parse::<Ipv4Addr>().is_ok() && len.parse::<u8>().is_ok_and(|l| l <= 32)
}

/// CRC32C (Castagnoli), the checksum Secret Manager reports with each payload.
fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A list filter in the subset of Google's syntax callers use: `field = "v"`, `field != v`,
/// `field eq regex`, `field ne regex`, `labels.k:*`, joined by spaces or `AND`.
#[derive(Debug)]
struct Filter {
    /// Clauses that must all hold, each true when any of its terms holds (AIP-160: `OR`
    /// binds tighter than `AND`, which may also be left implicit).
    clauses: Vec<Vec<(String, String, String)>>,
}

impl Filter {
    fn parse(s: &str) -> Result<Self, GcpError> {
        static RE: std::sync::OnceLock<Regex> = std::sync::OnceLock::new();
        let re = RE.get_or_init(|| {
            Regex::new(r#"^\s*\(?\s*([A-Za-z0-9_.\-]+)\s*(!=|=|:|\beq\b|\bne\b)\s*("[^"]*"|'[^']*'|[^\s)]+)\s*\)?\s*(?:(AND|OR)\s+)?"#)
                .expect("static regex")
        });
        let mut rest = s.trim();
        let mut clauses: Vec<Vec<(String, String, String)>> = vec![Vec::new()];
        while !rest.is_empty() {
            let Some(c) = re.captures(rest) else {
                return Err(GcpError::invalid(format!(
                    "Invalid list filter expression '{s}'."
                )));
            };
            let value = c[3].trim_matches(|ch| ch == '"' || ch == '\'').to_owned();
            if let Some(last) = clauses.last_mut() {
                last.push((c[1].to_owned(), c[2].to_owned(), value));
            }
            if c.get(4).map(|m| m.as_str()) != Some("OR") {
                clauses.push(Vec::new());
            }
            rest = &rest[c[0].len()..];
        }
        clauses.retain(|c| !c.is_empty());
        Ok(Self { clauses })
    }

    fn matches(&self, v: &Value) -> bool {
        self.clauses
            .iter()
            .all(|clause| clause.iter().any(|term| Self::term(v, term)))
    }

    fn term(v: &Value, (field, op, want): &(String, String, String)) -> bool {
        let ptr = format!("/{}", field.replace('.', "/"));
        let got = v.pointer(&ptr).map(|x| match x {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        });
        match op.as_str() {
            "=" => got.as_deref() == Some(want.as_str()),
            "!=" => got.as_deref() != Some(want.as_str()),
            // "has": present (`*`), or a substring of a string field.
            ":" => {
                (want == "*" && got.is_some())
                    || got.as_deref().is_some_and(|g| g.contains(want.as_str()))
            }
            "eq" | "ne" => {
                let re = Regex::new(&format!("^(?:{want})$"));
                let m = re.is_ok_and(|re| got.as_deref().is_some_and(|g| re.is_match(g)));
                (op == "eq") == m
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_subset() {
        let v = json!({"name": "wg-abc", "labels": {"wgnet-install": "x"}, "description": "d"});
        let ok = |f: &str| Filter::parse(f).expect("parses").matches(&v);
        assert!(ok("labels.wgnet-install = \"x\""));
        assert!(ok("labels.wgnet-install:*"));
        assert!(ok("name eq wg-.* AND labels.wgnet-install=x"));
        assert!(!ok("name ne wg-.*"));
        assert!(!ok("labels.other:*"));
        assert!(Filter::parse("name ~~ x").is_err());
        // OR (issue 18, item 8), binding tighter than AND, and `:` as a substring match.
        assert!(ok("name:abc"));
        assert!(!ok("name:xyz"));
        assert!(ok("labels.wgnet-install=y OR labels.wgnet-install=x"));
        assert!(ok("name:wg AND labels.wgnet-install=y OR description=d"));
        assert!(!ok("name:zz AND labels.wgnet-install=y OR description=d"));
    }

    #[test]
    fn crc32c_matches_the_standard_check_value() {
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
    }
}
