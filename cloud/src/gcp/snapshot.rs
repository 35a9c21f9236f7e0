//! Per-project snapshots (issue 23, goal 2): what a project holds of this install's
//! firewalls, instances, addresses, service accounts and secrets, read with one paged list per kind
//! and shared by every gateway of the project for [`GcpConfig::verify_every`], so that a
//! resync of N steady gateways costs five lists instead of N times five reads.
//!
//! A snapshot only ever answers "this resource exists and looks like this". An absent
//! entry proves nothing (the list may predate a creation, or a zone may have been
//! unreachable) and sends the pass to a GET. A gateway that wrote, waited on an operation
//! or was deleted after a snapshot began reads its resources itself until the next one, so
//! a snapshot never hides the pass's own changes. What a snapshot can hide is a change
//! made out of band after it was taken: that is repaired by the next one, at most one
//! window later, the same latency the steady resources already had.
//!
//! I/O: the list calls, through [`GcpCloud::list_all`] and [`GcpCloud::list_all_as`]; the rest is bookkeeping in memory.
//!
//! [`GcpConfig::verify_every`]: super::GcpConfig::verify_every

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, RandomState};
use std::marker::PhantomData;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::wire::{
    Address, AddressAggregatedList, Firewall, FirewallList, Instance, InstanceAggregatedList,
    Secret, SecretList, ServiceAccount, ServiceAccountList,
};
use super::{GcpCloud, encode};
use crate::api::Service;
use crate::names;

/// Instances per page of a list with their metadata's entries (a project's first since
/// the operator started, see [`INSTANCE_FIELDS`]): each carries its startup script, so a
/// page of GCP's 500 would be about 7 MB of JSON held at once. Pages of 25 about halved
/// what a resync added to the operator's memory at 2,000 Gateways, but creating 5,000
/// took 1.17x as long (889 s against 762 s, one run each; likely because a project's
/// passes wait while its snapshot is taken, which took four times as many pages).
const FULL_INSTANCE_PAGE: usize = 100;

/// Instances per page of a list without their metadata's entries: an instance is then a
/// few hundred bytes, so a page of GCP's largest is smaller than 25 full ones were.
const INSTANCE_PAGE: usize = 500;

/// What an instance list asks GCP for (a partial response), but for a project's first
/// since the operator started: what a pass compares (see [`trim_instance`]), without the
/// metadata's entries. Those hold the startup script, about 14 KB a VM, which made the
/// instance pages 1.4 MB of JSON each, read at every resync in every project at once. The
/// metadata's fingerprint stands for them: GCP changes it with every change of the
/// entries, and the first list (or a read) learnt which entries each fingerprint holds
/// (see `instance::MetadataSeen`).
const INSTANCE_FIELDS: &str = "nextPageToken,items/*/instances(name,description,labels,labelFingerprint,status,metadata/fingerprint,networkInterfaces/accessConfigs/natIP)";

/// One kind of resource as a snapshot holds it: each resource's key and JSON, compressed
/// (LZ4) with the first one listed as the dictionary, by a hash of its key. Resources of
/// one kind made by one install differ in little but names, ids and addresses, so each
/// is mostly references into the first; held as Rust values they were a few dozen small
/// allocations each, and as plain JSON about 3 KB per gateway over the five kinds, in
/// every project's snapshot at once.
///
/// An entry is found by its key's hash and then checked against the key it holds: when
/// two keys share a hash, the one listed later is left out, and an absent entry sends the
/// pass to a GET.
struct Shelf<K, T> {
    /// The first resource's key and JSON, as listed.
    dict: Box<[u8]>,
    entries: HashMap<u64, Box<[u8]>>,
    hasher: RandomState,
    kind: PhantomData<fn() -> (K, T)>,
}

impl<K, T> Shelf<K, T>
where
    K: Hash + Eq + Serialize + DeserializeOwned,
    T: Serialize + DeserializeOwned,
{
    fn new() -> Self {
        Self {
            dict: Box::default(),
            entries: HashMap::new(),
            hasher: RandomState::new(),
            kind: PhantomData,
        }
    }

    /// Keeps `v` under `k`. Left out (read by its pass instead) if it cannot be encoded,
    /// which the wire types never are, or if an earlier key has the same hash.
    fn put(&mut self, k: K, v: T) {
        let Ok(json) = serde_json::to_vec(&(&k, &v)) else {
            return;
        };
        if self.dict.is_empty() {
            self.dict = json.clone().into_boxed_slice();
        }
        let packed = lz4_flex::block::compress_prepend_size_with_dict(&json, &self.dict);
        self.entries
            .entry(self.hasher.hash_one(&k))
            .or_insert_with(|| packed.into_boxed_slice());
    }

    fn unpack(&self, packed: &[u8]) -> Option<(K, T)> {
        let json = lz4_flex::block::decompress_size_prepended_with_dict(packed, &self.dict).ok()?;
        serde_json::from_slice(&json).ok()
    }

    /// The resource under `k`; `None` (read it instead) when absent, or if it does not
    /// decode, which would be a bug.
    fn get(&self, k: &K) -> Option<T> {
        let (key, v) = self.unpack(self.entries.get(&self.hasher.hash_one(k))?)?;
        (key == *k).then_some(v)
    }

    fn values(&self) -> impl Iterator<Item = T> + '_ {
        self.entries
            .values()
            .filter_map(|p| self.unpack(p).map(|(_, v)| v))
    }

    /// Bytes held, for the tests.
    #[cfg(test)]
    fn bytes(&self) -> usize {
        self.dict.len() + self.entries.values().map(|p| p.len()).sum::<usize>()
    }
}

impl<K, T> std::fmt::Debug for Shelf<K, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Shelf({} entries)", self.entries.len())
    }
}

/// What a paged list does with each resource: `split` gives its key and the resource
/// (`None`: left out, read by its pass instead), which go on `shelf`.
fn shelve<'a, I, K, T>(
    shelf: &'a mut Shelf<K, T>,
    split: impl Fn(I) -> Option<(K, T)> + 'a,
) -> impl FnMut(I) + 'a
where
    K: Hash + Eq + Serialize + DeserializeOwned,
    T: Serialize + DeserializeOwned,
{
    move |item| {
        if let Some((k, v)) = split(item) {
            shelf.put(k, v);
        }
    }
}

/// One project's resources as five lists saw them. A kind whose list failed is `None`:
/// its resources are read one by one until the next snapshot.
#[derive(Debug, Default)]
pub(super) struct Snapshot {
    /// When the first list was sent: a gateway touched after this is not trusted to it.
    started: Option<Instant>,
    firewalls: Option<Shelf<String, Firewall>>,
    /// By (zone, name), as [`trim_instance`] leaves them.
    instances: Option<Shelf<(String, String), Instance>>,
    /// By (region, name).
    addresses: Option<Shelf<(String, String), Address>>,
    /// By email.
    accounts: Option<Shelf<String, ServiceAccount>>,
    /// By secret id.
    secrets: Option<Shelf<String, Secret>>,
}

impl Snapshot {
    pub(super) fn firewall(&self, name: &str) -> Option<Firewall> {
        self.firewalls.as_ref()?.get(&name.to_owned())
    }

    /// The instance without its metadata's entries (see [`INSTANCE_FIELDS`]).
    pub(super) fn instance(&self, zone: &str, name: &str) -> Option<Instance> {
        self.instances
            .as_ref()?
            .get(&(zone.to_owned(), name.to_owned()))
    }

    pub(super) fn address(&self, region: &str, name: &str) -> Option<Address> {
        self.addresses
            .as_ref()?
            .get(&(region.to_owned(), name.to_owned()))
    }

    pub(super) fn account(&self, email: &str) -> Option<ServiceAccount> {
        self.accounts.as_ref()?.get(&email.to_owned())
    }

    pub(super) fn secret(&self, id: &str) -> Option<Secret> {
        self.secrets.as_ref()?.get(&id.to_owned())
    }

    /// Every firewall listed (named `wg-…`), unless that list failed.
    pub(super) fn all_firewalls(&self) -> Option<impl Iterator<Item = Firewall> + '_> {
        Some(self.firewalls.as_ref()?.values())
    }

    /// Every service account of the project, unless that list failed.
    pub(super) fn all_accounts(&self) -> Option<impl Iterator<Item = ServiceAccount> + '_> {
        Some(self.accounts.as_ref()?.values())
    }

    /// Every secret with this install's and cluster's labels, unless that list failed.
    pub(super) fn all_secrets(&self) -> Option<impl Iterator<Item = Secret> + '_> {
        Some(self.secrets.as_ref()?.values())
    }
}

/// An instance as a pass reads it from a snapshot: only what `ensure_instance` compares
/// (name, marker, labels and their fingerprint, status, public IP, the metadata's
/// fingerprint), which is what [`INSTANCE_FIELDS`] asks GCP for, also when an answer
/// carries more.
fn trim_instance(i: Instance) -> Instance {
    let nat_ip = i
        .network_interfaces
        .into_iter()
        .next()
        .and_then(|n| n.access_configs.into_iter().next())
        .and_then(|a| a.nat_ip);
    Instance {
        name: i.name,
        description: i.description,
        labels: i.labels,
        label_fingerprint: i.label_fingerprint,
        status: i.status,
        metadata: Some(super::wire::Metadata {
            fingerprint: i.metadata.and_then(|m| m.fingerprint),
            items: Vec::new(),
        }),
        network_interfaces: vec![super::wire::NetworkInterface {
            access_configs: vec![super::wire::AccessConfig {
                nat_ip,
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// Snapshots by project, and when each gateway was last touched.
#[derive(Debug, Default)]
pub(super) struct Snapshots {
    by_project: Mutex<HashMap<String, Arc<Snapshot>>>,
    /// One snapshot taken at a time per project: gateways passing together wait for it.
    taking: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// (project, gateway resource name) → when a pass last wrote, waited on an operation
    /// or deleted there.
    touched: Mutex<HashMap<(String, String), Instant>>,
    /// Projects whose instances were listed with their metadata's entries since start.
    entries_listed: Mutex<std::collections::HashSet<String>>,
}

impl Snapshots {
    /// Records that gateway `name` of `project` changed (or may have) just now.
    pub(super) fn touch(&self, project: &str, name: &str) {
        let mut t = self.touched.lock().unwrap_or_else(PoisonError::into_inner);
        // Bounded by the gateways this operator serves; a deleted one's entry is dropped
        // by the snapshot that no longer needs it (see `forget_older_than`).
        t.insert((project.to_owned(), name.to_owned()), Instant::now());
    }

    /// Whether gateway `name` was touched at or after `since`.
    fn touched_since(&self, project: &str, name: &str, since: Instant) -> bool {
        let t = self.touched.lock().unwrap_or_else(PoisonError::into_inner);
        t.get(&(project.to_owned(), name.to_owned()))
            .is_some_and(|at| *at >= since)
    }

    /// Drops touch records older than `before` in `project`: a snapshot that began after
    /// them already shows what those passes did.
    fn forget_older_than(&self, project: &str, before: Instant) {
        let mut t = self.touched.lock().unwrap_or_else(PoisonError::into_inner);
        t.retain(|(p, _), at| p != project || *at >= before);
    }

    fn current(&self, project: &str, window: Duration) -> Option<Arc<Snapshot>> {
        let s = self
            .by_project
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        s.get(project)
            .filter(|s| s.started.is_some_and(|at| at.elapsed() < window))
            .cloned()
    }

    fn taking_lock(&self, project: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.taking
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(project.to_owned())
            .or_default()
            .clone()
    }
}

impl GcpCloud {
    /// The snapshot gateway `name` of `project` may trust this pass: a current one (taken
    /// now when none is), unless snapshots are off (a zero window) or the gateway was
    /// touched since it began.
    pub(super) async fn snapshot_for(&self, project: &str, name: &str) -> Option<Arc<Snapshot>> {
        let snap = self.project_snapshot(project).await?;
        let started = snap.started?;
        (!self.snapshots.touched_since(project, name, started)).then_some(snap)
    }

    /// The project's current snapshot (taken now when none is), or `None` when snapshots
    /// are off (a zero window).
    async fn project_snapshot(&self, project: &str) -> Option<Arc<Snapshot>> {
        if self.verify_every.is_zero() {
            return None;
        }
        if let Some(s) = self.snapshots.current(project, self.verify_every) {
            return Some(s);
        }
        let lock = self.snapshots.taking_lock(project);
        let _one_at_a_time = lock.lock().await;
        if let Some(s) = self.snapshots.current(project, self.verify_every) {
            return Some(s);
        }
        Some(self.install_snapshot(project).await)
    }

    /// A snapshot taken now, which becomes the project's current one, or `None` when
    /// snapshots are off. The orphan sweep needs what the project holds now (it looks for
    /// what a deletion left behind); its lists then serve the gateways' passes too.
    pub(super) async fn fresh_snapshot(&self, project: &str) -> Option<Arc<Snapshot>> {
        if self.verify_every.is_zero() {
            return None;
        }
        let lock = self.snapshots.taking_lock(project);
        let _one_at_a_time = lock.lock().await;
        Some(self.install_snapshot(project).await)
    }

    /// Takes a snapshot and makes it the project's current one (the caller holds the
    /// project's taking lock).
    async fn install_snapshot(&self, project: &str) -> Arc<Snapshot> {
        let s = Arc::new(self.take_snapshot(project).await);
        self.snapshots
            .by_project
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(project.to_owned(), s.clone());
        s
    }

    /// Records that a pass wrote, waited or deleted for gateway `name`.
    pub(super) fn touch(&self, project: &str, name: &str) {
        self.snapshots.touch(project, name);
    }

    /// Five paged lists, in parallel. A failed list leaves its kind out (logged: an older
    /// custom role may lack a `list` permission, and the pass then reads one by one).
    async fn take_snapshot(&self, project: &str) -> Snapshot {
        let started = Instant::now();
        let install = names::label_value(&self.install);
        let cluster = names::label_value(&self.cluster);
        let by_install = format!("labels.{}={install}", names::LABEL_INSTALL);
        let secrets_filter = format!("{by_install} AND labels.{}={cluster}", names::LABEL_CLUSTER);
        // Every gateway resource is named `wg-…` (see `GatewayId::resource_name`); firewalls
        // carry no labels, so the name is what narrows their list.
        let firewall_filter = "name eq \"wg-.*\"";
        let addresses_path = format!(
            "projects/{project}/aggregated/addresses?filter={}&returnPartialSuccess=true",
            encode(&by_install)
        );
        let with_entries = !self
            .snapshots
            .entries_listed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(project);
        let instances_path = if with_entries {
            format!(
                "projects/{project}/aggregated/instances?filter={}&returnPartialSuccess=true&maxResults={FULL_INSTANCE_PAGE}",
                encode(&by_install)
            )
        } else {
            format!(
                "projects/{project}/aggregated/instances?filter={}&returnPartialSuccess=true&maxResults={INSTANCE_PAGE}&fields={}",
                encode(&by_install),
                encode(INSTANCE_FIELDS)
            )
        };
        // Each page is shelved as it arrives: a list is never held as Rust values.
        let mut firewalls = Shelf::new();
        let mut instances = Shelf::new();
        let mut addresses = Shelf::new();
        let mut accounts = Shelf::new();
        let mut secrets = Shelf::new();
        let addrs = self.list_all_as::<AddressAggregatedList, _>(
            Service::Compute,
            &addresses_path,
            "list addresses",
            project,
            shelve(&mut addresses, |(region, a): (String, Address)| {
                Some(((region, a.name.clone()), a))
            }),
        );
        let ((fw, inst, sa, sec), addrs) = futures_util::future::join(
            futures_util::future::join4(
                self.list_all_as::<FirewallList, _>(
                    Service::Compute,
                    &format!(
                        "projects/{project}/global/firewalls?filter={}",
                        encode(firewall_filter)
                    ),
                    "list firewalls",
                    project,
                    shelve(&mut firewalls, |f: Firewall| Some((f.name.clone(), f))),
                ),
                self.list_all_as::<InstanceAggregatedList, _>(
                    Service::Compute,
                    &instances_path,
                    "list instances",
                    project,
                    shelve(&mut instances, |(zone, i): (String, Instance)| {
                        if with_entries && let Some(m) = &i.metadata {
                            self.note_metadata(
                                super::instance::seen_key(project, &zone, &i.name),
                                m,
                            );
                        }
                        let i = trim_instance(i);
                        Some(((zone, i.name.clone()), i))
                    }),
                ),
                self.list_all_as::<ServiceAccountList, _>(
                    Service::Iam,
                    &format!("projects/{project}/serviceAccounts?pageSize=100"),
                    "list service accounts",
                    project,
                    shelve(&mut accounts, |a: ServiceAccount| {
                        Some((a.email.clone()?, a))
                    }),
                ),
                self.list_all_as::<SecretList, _>(
                    Service::Secrets,
                    &format!(
                        "projects/{project}/secrets?filter={}",
                        encode(&secrets_filter)
                    ),
                    "list secrets",
                    project,
                    shelve(&mut secrets, |s: Secret| {
                        let id = s.name.rsplit('/').next()?.to_owned();
                        (!id.is_empty()).then_some((id, s))
                    }),
                ),
            ),
            addrs,
        )
        .await;
        fn kept<T>(project: &str, what: &str, r: Result<T, crate::CloudError>) -> Option<T> {
            match r {
                Ok(v) => Some(v),
                Err(e) => {
                    tracing::warn!(project, error = %e, "cannot list {what}; reading them one by one until the next snapshot");
                    None
                }
            }
        }
        let firewalls = kept(project, "firewalls", fw).map(|_| firewalls);
        let instances = kept(project, "instances", inst).map(|_| instances);
        if with_entries && instances.is_some() {
            self.snapshots
                .entries_listed
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(project.to_owned());
        }
        let addresses = kept(project, "addresses", addrs).map(|_| addresses);
        let accounts = kept(project, "service accounts", sa).map(|_| accounts);
        let secrets = kept(project, "secrets", sec).map(|_| secrets);
        self.snapshots.forget_older_than(project, started);
        Snapshot {
            started: Some(started),
            firewalls,
            instances,
            addresses,
            accounts,
            secrets,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::wire::{Address, Firewall, Instance, Secret, ServiceAccount};
    use super::{Shelf, trim_instance};
    use std::hash::BuildHasher;

    fn json<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
        serde_json::from_value(v).expect("a wire body")
    }

    /// Every kind a snapshot holds comes back from its shelf as it went in, by its key.
    #[test]
    fn shelved_resources_come_back_unchanged() {
        fn round_trip<T>(v: T)
        where
            T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + Clone + std::fmt::Debug,
        {
            let mut shelf = Shelf::new();
            shelf.put("wg-a".to_owned(), v.clone());
            assert_eq!(shelf.get(&"wg-a".to_owned()).as_ref(), Some(&v));
            assert_eq!(shelf.values().collect::<Vec<_>>(), [v]);
            assert_eq!(shelf.get(&"wg-b".to_owned()), None);
        }
        round_trip::<Firewall>(json(serde_json::json!({
            "name": "wg-a", "description": "m", "network": "n", "direction": "INGRESS",
            "priority": 1000, "allowed": [{"IPProtocol": "udp", "ports": ["51820"]}],
            "sourceRanges": ["0.0.0.0/0"], "targetTags": ["wg-a"],
            "creationTimestamp": "2026-01-01T00:00:00Z"
        })));
        round_trip::<Address>(json(serde_json::json!({
            "name": "wg-a", "description": "m", "labels": {"k": "v"},
            "status": "IN_USE", "address": "198.18.0.1"
        })));
        round_trip::<ServiceAccount>(json(serde_json::json!({
            "email": "wg-a@p.iam.gserviceaccount.com", "displayName": "d", "description": "m"
        })));
        round_trip::<Secret>(json(serde_json::json!({
            "name": "projects/p/secrets/wg-a", "labels": {"k": "v"},
            "replication": {"automatic": {}}, "createTime": "2026-01-01T00:00:00Z"
        })));
    }

    /// A firewall as this install makes it, for gateway `n`.
    fn firewall(n: usize) -> Firewall {
        let uid = format!("{n:08x}-3f1c-4b7e-9d2a-{:012x}", n * 7919);
        json(serde_json::json!({
            "name": format!("wg-{n:010x}"),
            "description": format!("wgnet install=wgnet cluster=0b7a4c1e-5d3f-4e8a-b2c6-9f1d3e5a7c9b gateway=team-{}/gw-{n} uid={uid} region=europe-west1 zone=europe-west1-b", n % 7),
            "network": "projects/p/global/networks/wg-net", "direction": "INGRESS",
            "priority": 1000, "allowed": [{"IPProtocol": "udp", "ports": ["51820"]},
                {"IPProtocol": "tcp", "ports": ["443", "80"]}],
            "sourceRanges": ["0.0.0.0/0"], "targetTags": [format!("wg-{n:010x}")],
            "creationTimestamp": format!("2026-12-07T10:{:02}:{:02}.{n:03}-08:00", n / 60 % 60, n % 60)
        }))
    }

    /// A project's resources of one kind are mostly alike: on a shelf, a thousand firewalls
    /// hold less than a fifth of their JSON (each plain is about 600 bytes).
    #[test]
    fn a_shelf_holds_much_less_than_the_json_of_what_is_on_it() {
        let mut shelf = Shelf::new();
        let mut plain = 0;
        for n in 0..1000 {
            let f = firewall(n);
            plain += serde_json::to_vec(&(&f.name, &f)).expect("encodes").len();
            shelf.put(f.name.clone(), f);
        }
        assert_eq!(shelf.values().count(), 1000);
        assert_eq!(shelf.get(&firewall(517).name), Some(firewall(517)));
        assert!(
            shelf.bytes() * 5 < plain,
            "{} bytes shelved of {plain}",
            shelf.bytes()
        );
    }

    /// An entry is returned only for the key it holds: another key that lands on the same
    /// hash finds nothing (and its pass reads the resource instead).
    #[test]
    fn an_entry_answers_only_for_its_own_key() {
        let mut shelf = Shelf::new();
        let (a, b) = (firewall(1), firewall(2));
        shelf.put(a.name.clone(), a.clone());
        let held = shelf.entries.values().next().expect("one entry").clone();
        shelf.entries.insert(shelf.hasher.hash_one(&b.name), held);
        assert_eq!(shelf.get(&b.name), None);
        assert_eq!(shelf.get(&a.name), Some(a));
    }

    /// A listed instance keeps what a pass compares, and of its metadata the fingerprint.
    #[test]
    fn seen_instances_keep_what_a_pass_compares() {
        let listed: Instance = json(serde_json::json!({
            "name": "wg-a", "description": "m", "machineType": "zones/z/machineTypes/e2-micro",
            "labels": {"k": "v"}, "labelFingerprint": "lf", "status": "RUNNING",
            "tags": {"items": ["wg-a"]},
            "disks": [{"boot": true, "autoDelete": true}],
            "networkInterfaces": [{"network": "n", "accessConfigs": [
                {"name": "external", "type": "ONE_TO_ONE_NAT", "networkTier": "PREMIUM",
                 "natIP": "198.18.0.1"}]}],
            "serviceAccounts": [{"email": "e", "scopes": ["s"]}],
            "metadata": {"fingerprint": "mf", "items": [
                {"key": "startup-script", "value": "#!/bin/sh"}]}
        }));
        let mut shelf = Shelf::new();
        let key = ("zones/z".to_owned(), "wg-a".to_owned());
        shelf.put(key.clone(), trim_instance(listed));
        let i = shelf.get(&key).expect("unpacks");
        assert_eq!((i.name.as_str(), i.description.as_str()), ("wg-a", "m"));
        assert_eq!(i.labels.get("k").map(String::as_str), Some("v"));
        assert_eq!(i.label_fingerprint.as_deref(), Some("lf"));
        assert_eq!(i.status.as_deref(), Some("RUNNING"));
        assert_eq!(i.nat_ip(), Some("198.18.0.1"));
        let m = i.metadata.expect("the metadata's fingerprint");
        assert_eq!((m.fingerprint.as_deref(), m.items.len()), (Some("mf"), 0));
        assert!(i.disks.is_empty() && i.service_accounts.is_empty() && i.tags.is_none());
        assert!(i.machine_type.is_empty());
        assert_eq!(shelf.get(&("zones/y".to_owned(), "wg-a".to_owned())), None);
    }
}
