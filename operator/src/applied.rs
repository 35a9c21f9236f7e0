//! What this process last server-side applied, so that a pass whose objects have not changed
//! sends none of them again.
//!
//! Every pass over a Gateway or EgressGateway builds the link's objects (ServiceAccount,
//! Role, RoleBinding, key Secret, ConfigMap, NetworkPolicy, Deployment, ...) and used to
//! apply each of them, with a read before each to refuse taking over a stranger's object:
//! about 15 API requests a pass, 7 of them server-side applies, the API server's most
//! expensive write. While thousands of Gateways were being created (a dozen passes each)
//! that saturated the API server. Here each applied object leaves a digest of what was sent
//! and the resourceVersion the API server answered with; an object whose digest and version
//! still match is skipped.
//!
//! An entry stops counting when:
//! - the desired object changes (its digest differs);
//! - a watch sees the object at another resourceVersion (anyone wrote it, or deleted it):
//!   [`Applied::observed`] drops the entry, so drift in a watched kind is repaired by the
//!   pass the same event starts;
//! - it is older than `max_age` ([`RESYNCS`] resync periods). Every kind the operator
//!   writes is watched (metadata only), so this only covers what a watch cannot report:
//!   an object deleted while its watch was down (a re-list reports what exists, not what
//!   went). Before every kind was watched this was one resync period, and at 5,000
//!   Gateways re-applying seven objects each per period was most of the API server's load.
//!
//! Memory only (no I/O): one small entry per applied object, keys and values hashed with
//! this process's random keys so the entries hold no names, no contents and nothing a
//! tenant could aim a collision at.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use kube::Resource;

/// How many resync periods an entry counts for at most (see the module documentation).
pub const RESYNCS: u32 = 10;

/// Which object an entry is about: a hash of its kind, namespace and name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ObjectKey(u64);

/// What was sent: a hash of the object's JSON.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Digest(u64);

#[derive(Clone, Copy, Debug)]
struct Entry {
    digest: Digest,
    /// A hash of the resourceVersion the API server answered with.
    version: u64,
    at: Instant,
}

/// The memo of applied objects (see the module documentation).
#[derive(Debug)]
pub struct Applied {
    hasher: std::hash::RandomState,
    max_age: Duration,
    entries: Mutex<HashMap<ObjectKey, Entry>>,
}

/// Feeds bytes written to it into a hasher, so an object's JSON is hashed without being
/// held.
struct HashWriter<'a, H: Hasher>(&'a mut H);

impl<H: Hasher> std::io::Write for HashWriter<'_, H> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Applied {
    /// An empty memo whose entries count for `max_age` at most.
    pub fn new(max_age: Duration) -> Self {
        Self {
            hasher: std::hash::RandomState::new(),
            max_age,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// The key of the `K` named `name` in `namespace`.
    pub fn key<K: Resource<DynamicType = ()>>(&self, namespace: &str, name: &str) -> ObjectKey {
        ObjectKey(
            self.hasher
                .hash_one((K::group(&()), K::kind(&()), namespace, name)),
        )
    }

    /// The digest of `obj` as it would be sent; `None` if it cannot be serialised (it is
    /// then always applied, and the apply reports the error).
    pub fn digest<T: serde::Serialize>(&self, obj: &T) -> Option<Digest> {
        let mut h = self.hasher.build_hasher();
        serde_json::to_writer(HashWriter(&mut h), obj).ok()?;
        Some(Digest(h.finish()))
    }

    /// The digest that stands for "pruned: no such object": a JSON object never serialises
    /// to these bytes.
    pub fn absent(&self) -> Digest {
        let mut h = self.hasher.build_hasher();
        h.write(b"absent");
        Digest(h.finish())
    }

    fn version(&self, resource_version: Option<&str>) -> u64 {
        self.hasher.hash_one(resource_version)
    }

    /// Whether `key` was applied as `digest` less than `max_age` before `now`, and no
    /// watch has seen it change since.
    pub fn is_current(&self, key: ObjectKey, digest: Digest, now: Instant) -> bool {
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries.get(&key).is_some_and(|e| {
            e.digest == digest && now.saturating_duration_since(e.at) < self.max_age
        })
    }

    /// Records that `key` was applied as `digest` and the API server answered with
    /// `resource_version`.
    pub fn record(
        &self,
        key: ObjectKey,
        digest: Digest,
        resource_version: Option<&str>,
        now: Instant,
    ) {
        let version = self.version(resource_version);
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries.insert(
            key,
            Entry {
                digest,
                version,
                at: now,
            },
        );
    }

    /// Forgets `key` (an apply failed, so what the object holds is unknown).
    pub fn forget(&self, key: ObjectKey) {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries.remove(&key);
    }

    /// A watch saw `obj` (created, changed or deleted): unless it is at the version this
    /// process's own apply left, the entry no longer says what the object holds.
    pub fn observed<K: Resource<DynamicType = ()>>(&self, obj: &K) {
        let meta = obj.meta();
        let (Some(ns), Some(name)) = (&meta.namespace, &meta.name) else {
            return;
        };
        let key = self.key::<K>(ns, name);
        let version = self.version(meta.resource_version.as_deref());
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if entries.get(&key).is_some_and(|e| e.version != version) {
            entries.remove(&key);
        }
    }

    /// Whether no object has an entry.
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
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::core::PartialObjectMeta;
    use serde_json::json;

    use super::*;

    fn cm(data: &str) -> ConfigMap {
        serde_json::from_value(json!({
            "metadata": {"name": "gw-link", "namespace": "apps"},
            "data": {"config.json": data}
        }))
        .expect("configmap")
    }

    fn seen(name: &str, rv: &str) -> PartialObjectMeta<ConfigMap> {
        serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": "apps", "resourceVersion": rv}
        }))
        .expect("metadata")
    }

    #[test]
    fn an_unchanged_object_is_current_until_it_changes_ages_or_is_written_by_another() {
        let a = Applied::new(Duration::from_secs(60));
        let t0 = Instant::now();
        let key = a.key::<ConfigMap>("apps", "gw-link");
        let d = a.digest(&cm("one")).expect("digest");
        assert!(!a.is_current(key, d, t0), "never applied");
        a.record(key, d, Some("7"), t0);
        assert!(a.is_current(key, d, t0 + Duration::from_secs(59)));
        // Another spec: another digest.
        let other = a.digest(&cm("two")).expect("digest");
        assert_ne!(d, other);
        assert!(!a.is_current(key, other, t0));
        // Older than the resync period: applied again.
        assert!(!a.is_current(key, d, t0 + Duration::from_secs(60)));
        // Its own write seen by the watch changes nothing; anyone else's drops the entry.
        a.observed(&seen("gw-link", "7"));
        assert!(a.is_current(key, d, t0));
        a.observed(&seen("gw-link", "8"));
        assert!(!a.is_current(key, d, t0));
        assert!(a.is_empty());
    }

    #[test]
    fn keys_tell_kinds_namespaces_and_names_apart() {
        let a = Applied::new(Duration::from_secs(60));
        let k = a.key::<ConfigMap>("apps", "gw-link");
        assert_eq!(k, a.key::<ConfigMap>("apps", "gw-link"));
        assert_eq!(k, a.key::<PartialObjectMeta<ConfigMap>>("apps", "gw-link"));
        for other in [
            a.key::<Deployment>("apps", "gw-link"),
            a.key::<ConfigMap>("web", "gw-link"),
            a.key::<ConfigMap>("apps", "gw2-link"),
            a.key::<ConfigMap>("appsg", "w-link"),
        ] {
            assert_ne!(k, other);
        }
        let d = a.digest(&cm("x")).expect("digest");
        a.record(k, d, Some("1"), Instant::now());
        a.forget(k);
        assert!(!a.is_current(k, d, Instant::now()));
        assert_ne!(a.absent(), d);
    }
}
