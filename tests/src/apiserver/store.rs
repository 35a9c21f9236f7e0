//! The stand-in API server's state and its object lifecycle rules: resource versions from one
//! counter, uid/creationTimestamp/generation, status subresource separation, finalizers and
//! deletionTimestamp, ownerReference garbage collection, namespace cascade, CRD registration
//! and schema admission, field ownership for server-side apply, and the watch event history.
//!
//! Pure state transitions behind one lock; the HTTP layer in `http.rs` does the I/O.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use base64::Engine as _;
use serde_json::{Map, Value, json};
use tokio::sync::broadcast;

use super::patch::{self, Path};
use super::registry::{Registry, ResourceType};
use super::selector::Selector;
use super::util::{ApiError, now_rfc3339, uid};

/// What happened to an object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// Created.
    Added,
    /// Changed.
    Modified,
    /// Removed for good.
    Deleted,
}

impl EventKind {
    /// The watch event `type`.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Added => "ADDED",
            EventKind::Modified => "MODIFIED",
            EventKind::Deleted => "DELETED",
        }
    }
}

/// One change, as kept in the history and broadcast to watchers.
#[derive(Clone, Debug)]
pub struct WatchEvent {
    /// Resource version of the change.
    pub rv: u64,
    /// [`ResourceType::key`] of the object.
    pub type_key: String,
    /// What happened.
    pub kind: EventKind,
    /// The object after the change (for deletions: as it was, with the deletion's version).
    pub object: Value,
    /// The object before the change, for modifications (selectors need both sides).
    pub old: Option<Value>,
}

/// Which part of an object a write addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sub {
    /// The main resource.
    Main,
    /// The `/status` subresource.
    Status,
}

/// Options of a write.
#[derive(Clone, Debug, Default)]
pub struct WriteOpts {
    /// `fieldManager`, or the client's name.
    pub manager: String,
    /// `fieldValidation=Strict`: unknown fields are errors instead of being pruned.
    pub strict: bool,
    /// Server-side apply: whether this write is an apply, and with `force`.
    pub apply: Option<bool>,
}

/// Everything the server stores.
pub struct State {
    /// Served kinds.
    pub registry: Registry,
    rv: u64,
    objects: BTreeMap<String, BTreeMap<(String, String), Value>>,
    history: VecDeque<Arc<WatchEvent>>,
    history_cap: usize,
    /// Oldest resource version a watch may start from.
    pub oldest_rv: u64,
    seed: u64,
    next_ip: u32,
    next_node_port: u32,
    tx: broadcast::Sender<Arc<WatchEvent>>,
}

impl State {
    /// A fresh server with the `default`, `kube-system` and `kube-public` namespaces, keeping
    /// the last `history_cap` changes for watches.
    pub fn new(history_cap: usize) -> Self {
        let (tx, _) = broadcast::channel(16_384);
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(7, |d| d.as_nanos() as u64);
        let mut state = Self {
            registry: Registry::default(),
            rv: 0,
            objects: BTreeMap::new(),
            history: VecDeque::new(),
            history_cap: history_cap.max(1),
            oldest_rv: 0,
            seed,
            next_ip: 10,
            next_node_port: 0,
            tx,
        };
        let ns = state
            .registry
            .get("", "v1", "namespaces")
            .expect("namespaces are built in");
        for name in ["default", "kube-system", "kube-public"] {
            let obj = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}});
            state
                .create(&ns, None, obj, &WriteOpts::default())
                .expect("built-in namespaces are valid");
        }
        state
    }

    /// Current resource version.
    pub fn rv(&self) -> u64 {
        self.rv
    }

    /// Subscribes to changes from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<WatchEvent>> {
        self.tx.subscribe()
    }

    /// Changes after `rv` still in the history, or `None` if some were already dropped.
    pub fn history_since(&self, rv: u64) -> Option<Vec<Arc<WatchEvent>>> {
        if rv < self.oldest_rv {
            return None;
        }
        Some(self.history.iter().filter(|e| e.rv > rv).cloned().collect())
    }

    fn bump(&mut self) -> u64 {
        self.rv += 1;
        self.rv
    }

    fn emit(&mut self, event: WatchEvent) {
        let event = Arc::new(event);
        self.history.push_back(event.clone());
        while self.history.len() > self.history_cap {
            if let Some(old) = self.history.pop_front() {
                self.oldest_rv = old.rv;
            }
        }
        // No receivers is fine: nobody is watching.
        let _ = self.tx.send(event);
    }

    fn bucket(&mut self, rt: &ResourceType) -> &mut BTreeMap<(String, String), Value> {
        self.objects.entry(rt.key()).or_default()
    }

    /// Reads one object.
    pub fn get(&self, rt: &ResourceType, ns: Option<&str>, name: &str) -> Result<Value, ApiError> {
        self.objects
            .get(&rt.key())
            .and_then(|b| b.get(&(ns.unwrap_or("").to_owned(), name.to_owned())))
            .cloned()
            .ok_or_else(|| ApiError::not_found(&rt.qualified(), name))
    }

    /// Lists objects of a type, optionally in one namespace and filtered by selectors.
    pub fn list(
        &self,
        rt: &ResourceType,
        ns: Option<&str>,
        labels: &Selector,
        fields: &Selector,
    ) -> Vec<Value> {
        self.objects
            .get(&rt.key())
            .map(|b| {
                b.iter()
                    .filter(|((n, _), _)| ns.is_none_or(|want| want == n))
                    .map(|(_, o)| o)
                    .filter(|o| labels.matches_labels(o) && fields.matches_fields(o))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    fn namespace_exists(&self, ns: &str) -> bool {
        self.objects
            .get("/v1/namespaces")
            .is_some_and(|b| b.contains_key(&(String::new(), ns.to_owned())))
    }

    fn uid_exists(&self, uid: &str) -> bool {
        self.objects
            .values()
            .flat_map(|b| b.values())
            .any(|o| o["metadata"]["uid"] == uid)
    }

    /// Creates an object. `ns` is the namespace of the URL (for namespaced kinds).
    pub fn create(
        &mut self,
        rt: &Arc<ResourceType>,
        ns: Option<&str>,
        mut obj: Value,
        opts: &WriteOpts,
    ) -> Result<Value, ApiError> {
        if !obj.is_object() {
            return Err(ApiError::bad_request(
                "the body of the request was not a JSON object",
            ));
        }
        obj["apiVersion"] = json!(rt.api_version());
        obj["kind"] = json!(rt.kind);
        if !obj["metadata"].is_object() {
            obj["metadata"] = json!({});
        }
        let meta = &mut obj["metadata"];
        if meta["name"].as_str().is_none_or(str::is_empty) {
            let Some(prefix) = meta["generateName"].as_str() else {
                return Err(invalid(
                    rt,
                    "",
                    vec![cause(
                        "metadata.name",
                        "Required value: name or generateName is required",
                    )],
                ));
            };
            let suffix: String = uid(self.rv + 1, self.seed)
                .chars()
                .filter(char::is_ascii_alphanumeric)
                .take(5)
                .collect();
            meta["name"] = json!(format!("{prefix}{suffix}"));
        }
        let name = meta["name"].as_str().unwrap_or_default().to_owned();
        let ns = if rt.namespaced {
            let body_ns = meta["namespace"].as_str().map(str::to_owned);
            let ns = match (ns, body_ns.as_deref()) {
                (Some(u), Some(b)) if u != b => {
                    return Err(ApiError::bad_request(
                        "the namespace of the provided object does not match the namespace sent on the request",
                    ));
                }
                (Some(u), _) => u.to_owned(),
                (None, Some(b)) => b.to_owned(),
                (None, None) => {
                    return Err(ApiError::bad_request(
                        "a namespace is required for a namespaced kind",
                    ));
                }
            };
            if !self.namespace_exists(&ns) {
                return Err(ApiError::not_found("namespaces", &ns));
            }
            meta["namespace"] = json!(ns);
            ns
        } else {
            if let Some(m) = meta.as_object_mut() {
                m.remove("namespace");
            }
            String::new()
        };
        if self.bucket(rt).contains_key(&(ns.clone(), name.clone())) {
            return Err(ApiError::new(
                409,
                "AlreadyExists",
                format!("{} \"{name}\" already exists", rt.qualified()),
            ))
            .map_err(|e| with_details(e, rt, &name));
        }
        if rt.status_subresource
            && let Some(m) = obj.as_object_mut()
        {
            m.remove("status");
        }
        self.admit(rt, &mut obj, None, opts.strict)?;
        self.normalise_new(rt, &mut obj)?;

        let paths = patch::leaf_paths(&obj);
        let rv = self.bump();
        let meta = &mut obj["metadata"];
        meta["uid"] = json!(uid(rv, self.seed));
        meta["creationTimestamp"] = json!(now_rfc3339());
        meta["resourceVersion"] = json!(rv.to_string());
        meta["generation"] = json!(1);
        if let Some(m) = meta.as_object_mut() {
            for k in [
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "selfLink",
            ] {
                m.remove(k);
            }
        }
        if !opts.manager.is_empty() {
            let op = if opts.apply.is_some() {
                "Apply"
            } else {
                "Update"
            };
            set_managed(&mut obj, &opts.manager, op, rt, &paths, Sub::Main);
        }
        self.bucket(rt).insert((ns, name), obj.clone());
        self.emit(WatchEvent {
            rv,
            type_key: rt.key(),
            kind: EventKind::Added,
            object: obj.clone(),
            old: None,
        });
        if rt.is_crd_kind() {
            self.crd_changed(&obj);
        }
        Ok(obj)
    }

    /// Replaces an object (PUT, or the result of a patch). Enforces the resourceVersion
    /// precondition, keeps server-owned fields, separates status, bumps generation on spec
    /// changes, and does nothing (same resourceVersion) when nothing changed.
    pub fn update(
        &mut self,
        rt: &Arc<ResourceType>,
        ns: Option<&str>,
        name: &str,
        mut new: Value,
        sub: Sub,
        opts: &WriteOpts,
    ) -> Result<Value, ApiError> {
        let old = self.get(rt, ns, name)?;
        if !new.is_object() {
            return Err(ApiError::bad_request(
                "the body of the request was not a JSON object",
            ));
        }
        if let Some(body_name) = new["metadata"]["name"].as_str()
            && body_name != name
        {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({body_name}) does not match the name on the URL ({name})"
            )));
        }
        if let Some(want) = new["metadata"]["resourceVersion"].as_str()
            && !want.is_empty()
            && Some(want) != old["metadata"]["resourceVersion"].as_str()
        {
            return Err(with_details(
                ApiError::new(
                    409,
                    "Conflict",
                    format!(
                        "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
                        rt.qualified()
                    ),
                ),
                rt,
                name,
            ));
        }
        new["apiVersion"] = json!(rt.api_version());
        new["kind"] = json!(rt.kind);
        // Status separation: each endpoint changes only its own part.
        if rt.status_subresource {
            match sub {
                Sub::Main => set_or_remove(&mut new, "status", old.get("status").cloned()),
                Sub::Status => {
                    let status = new.get("status").cloned();
                    let mut merged = old.clone();
                    set_or_remove(&mut merged, "status", status);
                    // Ownership bookkeeping is part of metadata the status writer may touch.
                    merged["metadata"]["managedFields"] = new["metadata"]["managedFields"].clone();
                    new = merged;
                }
            }
        }
        // Server-owned metadata always comes from the stored object.
        for key in [
            "uid",
            "creationTimestamp",
            "generation",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "namespace",
            "name",
        ] {
            set_or_remove(&mut new["metadata"], key, old["metadata"].get(key).cloned());
        }
        if new["metadata"]["managedFields"].is_null()
            && let Some(m) = new["metadata"].as_object_mut()
        {
            m.remove("managedFields");
        }
        self.admit(rt, &mut new, Some(&old), opts.strict)?;
        self.normalise_update(rt, &mut new, &old);

        if opts.apply.is_none() && !opts.manager.is_empty() {
            let changed = patch::changed_paths(&old, &new);
            if !changed.is_empty() {
                take_ownership(&mut new, &opts.manager, "Update", rt, &changed, sub);
            }
        }
        new["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"].clone();
        keep_unchanged_timestamps(&mut new, &old);
        if new == old {
            return Ok(old);
        }
        if spec_changed(rt, &old, &new) {
            let generation = old["metadata"]["generation"].as_i64().unwrap_or(1) + 1;
            new["metadata"]["generation"] = json!(generation);
        }
        let rv = self.bump();
        new["metadata"]["resourceVersion"] = json!(rv.to_string());
        let key = (ns.unwrap_or("").to_owned(), name.to_owned());
        self.bucket(rt).insert(key, new.clone());
        self.emit(WatchEvent {
            rv,
            type_key: rt.key(),
            kind: EventKind::Modified,
            object: new.clone(),
            old: Some(old),
        });
        if rt.is_crd_kind() && sub == Sub::Main {
            self.crd_changed(&new);
        }
        if new["metadata"]["deletionTimestamp"].is_string() && finalizers(&new).is_empty() {
            self.remove(rt, ns, name);
        }
        Ok(new)
    }

    /// Server-side apply: creates the object when absent; otherwise merges the applied
    /// configuration, answering 409 when another manager owns a field with a different value
    /// (unless `force`), and removes fields this manager applied before but no longer does.
    pub fn apply(
        &mut self,
        rt: &Arc<ResourceType>,
        ns: Option<&str>,
        name: &str,
        mut applied: Value,
        sub: Sub,
        opts: &WriteOpts,
    ) -> Result<Value, ApiError> {
        if opts.manager.is_empty() {
            return Err(ApiError::bad_request(
                "PATCH, application/apply-patch+yaml requires fieldManager to be set",
            ));
        }
        if applied["metadata"]["name"]
            .as_str()
            .is_some_and(|n| n != name)
        {
            return Err(ApiError::bad_request(
                "the name of the applied object does not match the name on the URL",
            ));
        }
        if applied.get("apiVersion").and_then(Value::as_str) != Some(rt.api_version().as_str())
            || applied.get("kind").and_then(Value::as_str) != Some(rt.kind.as_str())
        {
            return Err(ApiError::bad_request(format!(
                "apply needs apiVersion {} and kind {} in the body",
                rt.api_version(),
                rt.kind
            )));
        }
        applied["metadata"]["name"] = json!(name);
        if rt.status_subresource
            && let Some(m) = applied.as_object_mut()
            && sub == Sub::Main
        {
            m.remove("status");
        }
        let live = match self.get(rt, ns, name) {
            Ok(live) => live,
            Err(e) if e.code == 404 && sub == Sub::Main => {
                return self.create(rt, ns, applied, opts);
            }
            Err(e) => return Err(e),
        };
        let force = opts.apply == Some(true);
        let mut applied_paths = patch::leaf_paths(&applied);
        if sub == Sub::Status {
            applied_paths.retain(|p| p.first() == Some(&patch::Seg::Key("status".into())));
        }
        let mut entries = managed_entries(&live);
        let mut conflicts = Vec::new();
        for (manager, op, entry_sub, owned) in &entries {
            if *manager == opts.manager && op == "Apply" && *entry_sub == sub {
                continue;
            }
            for p in owned.intersection(&applied_paths) {
                if patch::get(&live, p) != patch::get(&applied, p) {
                    conflicts.push((manager.clone(), p.clone()));
                }
            }
        }
        if !conflicts.is_empty() && !force {
            let list: Vec<String> = conflicts
                .iter()
                .map(|(m, p)| format!("conflict with \"{m}\": {}", patch::path_string(p)))
                .collect();
            let mut err = ApiError::new(
                409,
                "Conflict",
                format!(
                    "Apply failed with {} conflict(s): {}",
                    conflicts.len(),
                    list.join("; ")
                ),
            );
            err.details = Some(json!({"name": name, "group": rt.group, "kind": rt.plural,
                "causes": conflicts.iter().map(|(m, p)| json!({"reason": "FieldManagerConflict", "message": format!("conflict with \"{m}\""), "field": patch::path_string(p)})).collect::<Vec<_>>()}));
            return Err(err);
        }
        // Fields this manager stops applying are removed unless someone else owns them.
        let previous: BTreeSet<Path> = entries
            .iter()
            .filter(|(m, op, s, _)| *m == opts.manager && op == "Apply" && *s == sub)
            .flat_map(|(_, _, _, owned)| owned.clone())
            .collect();
        let others: BTreeSet<Path> = entries
            .iter()
            .filter(|(m, op, s, _)| !(*m == opts.manager && op == "Apply" && *s == sub))
            .flat_map(|(_, _, _, owned)| owned.clone())
            .collect();
        let mut merged = live.clone();
        for p in previous.difference(&applied_paths) {
            if !others.contains(p) {
                patch::remove(&mut merged, p);
            }
        }
        patch::apply_merge(&mut merged, &applied, "");
        if force {
            for (_, _, _, owned) in &mut entries {
                owned.retain(|p| !applied_paths.contains(p));
            }
        }
        // Rebuild managedFields: other managers (minus forced paths), then this one.
        let mut list = Vec::new();
        for (manager, op, entry_sub, owned) in entries {
            if (manager == opts.manager && op == "Apply" && entry_sub == sub) || owned.is_empty() {
                continue;
            }
            list.push(managed_entry(&manager, &op, rt, &owned, entry_sub));
        }
        list.push(managed_entry(
            &opts.manager,
            "Apply",
            rt,
            &applied_paths,
            sub,
        ));
        merged["metadata"]["managedFields"] = Value::Array(list);
        merged["metadata"]["resourceVersion"] = live["metadata"]["resourceVersion"].clone();
        self.update(rt, ns, name, merged, sub, opts)
    }

    /// Deletes an object: with finalizers it only gets a deletionTimestamp; without, it is
    /// removed and its dependents are garbage-collected.
    pub fn delete(
        &mut self,
        rt: &Arc<ResourceType>,
        ns: Option<&str>,
        name: &str,
    ) -> Result<Value, ApiError> {
        let mut obj = self.get(rt, ns, name)?;
        if obj["metadata"]["deletionTimestamp"].is_string() {
            return Ok(obj);
        }
        if rt.kind == "Namespace" && rt.group.is_empty() {
            return Ok(self.delete_namespace(rt, name, obj));
        }
        if finalizers(&obj).is_empty() {
            return Ok(self.remove(rt, ns, name).unwrap_or(obj));
        }
        let old = obj.clone();
        let rv = self.bump();
        obj["metadata"]["deletionTimestamp"] = json!(now_rfc3339());
        obj["metadata"]["deletionGracePeriodSeconds"] = json!(0);
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        if rt.schema.is_some() {
            let generation = obj["metadata"]["generation"].as_i64().unwrap_or(1) + 1;
            obj["metadata"]["generation"] = json!(generation);
        }
        self.bucket(rt)
            .insert((ns.unwrap_or("").to_owned(), name.to_owned()), obj.clone());
        self.emit(WatchEvent {
            rv,
            type_key: rt.key(),
            kind: EventKind::Modified,
            object: obj.clone(),
            old: Some(old),
        });
        Ok(obj)
    }

    fn delete_namespace(&mut self, rt: &Arc<ResourceType>, name: &str, mut obj: Value) -> Value {
        let old = obj.clone();
        let rv = self.bump();
        obj["metadata"]["deletionTimestamp"] = json!(now_rfc3339());
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        obj["status"] = json!({"phase": "Terminating"});
        self.bucket(rt)
            .insert((String::new(), name.to_owned()), obj.clone());
        self.emit(WatchEvent {
            rv,
            type_key: rt.key(),
            kind: EventKind::Modified,
            object: obj.clone(),
            old: Some(old),
        });
        let contents: Vec<(Arc<ResourceType>, String)> = self
            .objects
            .iter()
            .flat_map(|(key, b)| {
                b.keys()
                    .filter(|(n, _)| n == name)
                    .map(move |(_, o)| (key.clone(), o.clone()))
            })
            .filter_map(|(key, o)| self.type_by_key(&key).map(|t| (t, o)))
            .collect();
        for (t, o) in contents {
            // Already-gone objects (garbage-collected meanwhile) are fine.
            let _ = self.delete(&t, Some(name), &o);
        }
        self.sweep_namespaces();
        self.get(rt, None, name).unwrap_or(obj)
    }

    fn type_by_key(&self, key: &str) -> Option<Arc<ResourceType>> {
        let mut parts = key.splitn(3, '/');
        let (g, v, p) = (parts.next()?, parts.next()?, parts.next()?);
        self.registry.get(g, v, p)
    }

    /// Removes an object for good, then collects its dependents and empty terminating namespaces.
    fn remove(&mut self, rt: &ResourceType, ns: Option<&str>, name: &str) -> Option<Value> {
        let mut obj = self
            .bucket(rt)
            .remove(&(ns.unwrap_or("").to_owned(), name.to_owned()))?;
        let rv = self.bump();
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        self.emit(WatchEvent {
            rv,
            type_key: rt.key(),
            kind: EventKind::Deleted,
            object: obj.clone(),
            old: None,
        });
        if rt.is_crd_kind()
            && let Some(crd) = obj["metadata"]["name"].as_str()
        {
            self.registry.uninstall(crd);
        }
        self.collect_garbage();
        self.sweep_namespaces();
        Some(obj)
    }

    /// Background propagation: an object whose every owner is gone is deleted.
    fn collect_garbage(&mut self) {
        let orphans: Vec<(String, String, String)> = self
            .objects
            .iter()
            .flat_map(|(key, b)| b.iter().map(move |((ns, name), o)| (key, ns, name, o)))
            .filter(|(_, _, _, o)| {
                let owners = o["metadata"]["ownerReferences"].as_array();
                owners.is_some_and(|refs| {
                    !refs.is_empty()
                        && refs
                            .iter()
                            .all(|r| !self.uid_exists(r["uid"].as_str().unwrap_or("")))
                })
            })
            .map(|(key, ns, name, _)| (key.clone(), ns.clone(), name.clone()))
            .collect();
        for (key, ns, name) in orphans {
            if let Some(t) = self.type_by_key(&key) {
                let ns = (!ns.is_empty()).then_some(ns);
                let _ = self.delete(&t, ns.as_deref(), &name);
            }
        }
    }

    fn sweep_namespaces(&mut self) {
        let Some(ns_type) = self.registry.get("", "v1", "namespaces") else {
            return;
        };
        let terminating: Vec<String> = self
            .list(&ns_type, None, &Selector::default(), &Selector::default())
            .iter()
            .filter(|o| o["metadata"]["deletionTimestamp"].is_string())
            .filter_map(|o| o["metadata"]["name"].as_str().map(str::to_owned))
            .collect();
        for name in terminating {
            let empty = self
                .objects
                .iter()
                .filter(|(k, _)| k.as_str() != "/v1/namespaces")
                .all(|(_, b)| b.keys().all(|(n, _)| *n != name));
            if empty {
                self.remove(&ns_type, None, &name);
            }
        }
    }

    /// Custom resources: defaults, then pruning (or strict unknown-field errors), then the
    /// schema and CEL checks; 422 Invalid with every cause.
    fn admit(
        &self,
        rt: &ResourceType,
        obj: &mut Value,
        old: Option<&Value>,
        strict: bool,
    ) -> Result<(), ApiError> {
        let Some(schema) = &rt.schema else {
            return Ok(());
        };
        *obj = schema.apply_defaults(obj);
        let mut errors = schema.validate(obj, old);
        if !strict {
            let (unknown, rest): (Vec<_>, Vec<_>) = errors
                .into_iter()
                .partition(|e| e.message.starts_with("unknown field"));
            errors = rest;
            if !unknown.is_empty() {
                prune(obj, schema.schema(), true);
                errors = schema.validate(obj, old);
            }
        }
        if errors.is_empty() {
            return Ok(());
        }
        let name = obj["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        Err(invalid(
            rt,
            &name,
            errors.iter().map(|e| cause(&e.path, &e.message)).collect(),
        ))
    }

    fn normalise_new(&mut self, rt: &ResourceType, obj: &mut Value) -> Result<(), ApiError> {
        match (rt.group.as_str(), rt.kind.as_str()) {
            ("", "Namespace") => obj["status"] = json!({"phase": "Active"}),
            ("", "Secret") => fold_string_data(obj),
            ("", "Service") => self.default_service(obj),
            ("apiextensions.k8s.io", "CustomResourceDefinition") => {
                let types = Registry::types_of_crd(obj).map_err(|m| {
                    invalid(
                        rt,
                        obj["metadata"]["name"].as_str().unwrap_or(""),
                        vec![cause("spec", &m)],
                    )
                })?;
                if types.is_empty() {
                    return Err(invalid(
                        rt,
                        "",
                        vec![cause(
                            "spec.versions",
                            "Invalid value: at least one version must be served",
                        )],
                    ));
                }
                obj["status"] = crd_status(obj);
            }
            _ => {}
        }
        Ok(())
    }

    fn normalise_update(&mut self, rt: &ResourceType, new: &mut Value, old: &Value) {
        match (rt.group.as_str(), rt.kind.as_str()) {
            ("", "Secret") => fold_string_data(new),
            ("", "Service") => {
                if new["spec"]["clusterIP"].is_null() {
                    new["spec"]["clusterIP"] = old["spec"]["clusterIP"].clone();
                    new["spec"]["clusterIPs"] = old["spec"]["clusterIPs"].clone();
                }
                self.default_service(new);
            }
            ("", "Namespace") if new["status"].is_null() => new["status"] = old["status"].clone(),
            _ => {}
        }
    }

    /// Services get a ClusterIP from 10.96.0.0/16 (unless headless or ExternalName), port
    /// protocols and target ports defaulted and NodePort/LoadBalancer ports a node port, as
    /// the real server and kube-proxy expect.
    fn default_service(&mut self, obj: &mut Value) {
        if !obj["spec"].is_object() {
            obj["spec"] = json!({});
        }
        let spec = &mut obj["spec"];
        if spec["type"].is_null() {
            spec["type"] = json!("ClusterIP");
        }
        if spec["type"] != "ExternalName" && spec["clusterIP"].is_null() {
            self.next_ip += 1;
            let ip = format!(
                "10.96.{}.{}",
                (self.next_ip >> 8) & 0xff,
                self.next_ip & 0xff
            );
            spec["clusterIP"] = json!(ip);
            spec["clusterIPs"] = json!([ip]);
        }
        let node_ports = spec["type"] == "NodePort" || spec["type"] == "LoadBalancer";
        if let Some(ports) = spec["ports"].as_array_mut() {
            for p in ports {
                if p["protocol"].is_null() {
                    p["protocol"] = json!("TCP");
                }
                if p["targetPort"].is_null() {
                    p["targetPort"] = p["port"].clone();
                }
                if node_ports && p["nodePort"].is_null() {
                    // The default node-port range is 30000-32767.
                    p["nodePort"] = json!(30000 + self.next_node_port % 2768);
                    self.next_node_port += 1;
                }
            }
        }
    }

    /// A CRD was created or changed: serve its kinds (CRD validation already passed).
    fn crd_changed(&mut self, crd: &Value) {
        if let (Ok(types), Some(name)) = (
            Registry::types_of_crd(crd),
            crd["metadata"]["name"].as_str(),
        ) {
            self.registry.install(name, types);
        }
    }
}

fn crd_status(crd: &Value) -> Value {
    let now = now_rfc3339();
    json!({
        "acceptedNames": crd["spec"]["names"].clone(),
        "storedVersions": crd["spec"]["versions"].as_array().map(|vs| vs.iter().filter(|v| v["storage"] == true).map(|v| v["name"].clone()).collect::<Vec<_>>()).unwrap_or_default(),
        "conditions": [
            {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "message": "no conflicts found", "lastTransitionTime": now},
            {"type": "Established", "status": "True", "reason": "InitialNamesAccepted", "message": "the initial names have been accepted", "lastTransitionTime": now},
        ],
    })
}

fn fold_string_data(obj: &mut Value) {
    let Some(Value::Object(string_data)) = obj.as_object_mut().and_then(|m| m.remove("stringData"))
    else {
        return;
    };
    if !obj["data"].is_object() {
        obj["data"] = json!({});
    }
    for (k, v) in string_data {
        let text = v.as_str().unwrap_or_default();
        obj["data"][k] = json!(base64::engine::general_purpose::STANDARD.encode(text));
    }
}

fn finalizers(obj: &Value) -> Vec<&str> {
    obj["metadata"]["finalizers"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

fn set_or_remove(obj: &mut Value, key: &str, value: Option<Value>) {
    if let Value::Object(m) = obj {
        match value {
            Some(v) => {
                m.insert(key.to_owned(), v);
            }
            None => {
                m.remove(key);
            }
        }
    }
}

/// Whether a change touched anything but metadata (and status, where that is a subresource).
fn spec_changed(rt: &ResourceType, old: &Value, new: &Value) -> bool {
    let strip = |v: &Value| {
        let mut v = v.clone();
        if let Value::Object(m) = &mut v {
            m.remove("metadata");
            if rt.status_subresource {
                m.remove("status");
            }
        }
        v
    };
    strip(old) != strip(new)
}

/// Removes fields the schema does not declare, as the API server prunes them.
fn prune(obj: &mut Value, schema: &Value, root: bool) {
    if schema.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true)) {
        return;
    }
    match obj {
        Value::Object(map) => {
            let props = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties").filter(|a| a.is_object());
            map.retain(|k, _| {
                (root && matches!(k.as_str(), "apiVersion" | "kind" | "metadata"))
                    || props.is_some_and(|p| p.contains_key(k))
                    || additional.is_some()
            });
            for (k, v) in map.iter_mut() {
                if root && k == "metadata" {
                    continue;
                }
                if let Some(child) = props.and_then(|p| p.get(k)).or(additional) {
                    prune(v, child, false);
                }
            }
        }
        Value::Array(items) => {
            if let Some(item_schema) = schema.get("items") {
                items.iter_mut().for_each(|i| prune(i, item_schema, false));
            }
        }
        _ => {}
    }
}

fn cause(field: &str, message: &str) -> Value {
    json!({"reason": "FieldValueInvalid", "message": message, "field": field})
}

fn invalid(rt: &ResourceType, name: &str, causes: Vec<Value>) -> ApiError {
    let list: Vec<String> = causes
        .iter()
        .map(|c| {
            let (f, m) = (
                c["field"].as_str().unwrap_or(""),
                c["message"].as_str().unwrap_or(""),
            );
            if f.is_empty() {
                m.to_owned()
            } else {
                format!("{f}: {m}")
            }
        })
        .collect();
    let what = if rt.group.is_empty() {
        rt.kind.clone()
    } else {
        format!("{}.{}", rt.kind, rt.group)
    };
    let message = format!("{what} \"{name}\" is invalid: {}", list.join(", "));
    ApiError {
        code: 422,
        reason: "Invalid",
        message,
        details: Some(json!({"name": name, "group": rt.group, "kind": rt.kind, "causes": causes})),
    }
}

fn with_details(mut e: ApiError, rt: &ResourceType, name: &str) -> ApiError {
    e.details = Some(json!({"name": name, "group": rt.group, "kind": rt.plural}));
    e
}

type ManagedEntry = (String, String, Sub, BTreeSet<Path>);

fn managed_entries(obj: &Value) -> Vec<ManagedEntry> {
    obj["metadata"]["managedFields"]
        .as_array()
        .map(|list| {
            list.iter()
                .map(|e| {
                    let sub = if e["subresource"] == "status" {
                        Sub::Status
                    } else {
                        Sub::Main
                    };
                    (
                        e["manager"].as_str().unwrap_or("").to_owned(),
                        e["operation"].as_str().unwrap_or("Update").to_owned(),
                        sub,
                        patch::from_fields_v1(&e["fieldsV1"]),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// As kube-apiserver does, a managedFields entry whose fields did not change keeps its old
/// `time`, so a no-op apply leaves the object (and its resourceVersion) alone instead of
/// waking every watcher.
fn keep_unchanged_timestamps(new: &mut Value, old: &Value) {
    let Some(olds) = old["metadata"]["managedFields"].as_array() else {
        return;
    };
    let Some(news) = new["metadata"]["managedFields"].as_array_mut() else {
        return;
    };
    for e in news.iter_mut() {
        let same = olds.iter().find(|o| {
            [
                "manager",
                "operation",
                "subresource",
                "apiVersion",
                "fieldsV1",
            ]
            .iter()
            .all(|k| o.get(*k) == e.get(*k))
        });
        if let Some(o) = same {
            e["time"] = o["time"].clone();
        }
    }
}

fn managed_entry(
    manager: &str,
    op: &str,
    rt: &ResourceType,
    paths: &BTreeSet<Path>,
    sub: Sub,
) -> Value {
    let mut e = Map::new();
    e.insert("manager".into(), json!(manager));
    e.insert("operation".into(), json!(op));
    e.insert("apiVersion".into(), json!(rt.api_version()));
    e.insert("time".into(), json!(now_rfc3339()));
    e.insert("fieldsType".into(), json!("FieldsV1"));
    e.insert("fieldsV1".into(), patch::to_fields_v1(paths));
    if sub == Sub::Status {
        e.insert("subresource".into(), json!("status"));
    }
    Value::Object(e)
}

fn set_managed(
    obj: &mut Value,
    manager: &str,
    op: &str,
    rt: &ResourceType,
    paths: &BTreeSet<Path>,
    sub: Sub,
) {
    obj["metadata"]["managedFields"] = json!([managed_entry(manager, op, rt, paths, sub)]);
}

/// A non-apply write by `manager` takes the changed paths from every other manager.
fn take_ownership(
    obj: &mut Value,
    manager: &str,
    op: &str,
    rt: &ResourceType,
    changed: &BTreeSet<Path>,
    sub: Sub,
) {
    let mut entries = managed_entries(obj);
    let mut mine: BTreeSet<Path> = changed.clone();
    for (m, o, s, owned) in &mut entries {
        if m == manager && o == op && *s == sub {
            mine.extend(owned.iter().cloned());
            owned.clear();
        } else {
            owned.retain(|p| !changed.contains(p));
        }
    }
    let mut list: Vec<Value> = entries
        .into_iter()
        .filter(|(_, _, _, owned)| !owned.is_empty())
        .map(|(m, o, s, owned)| managed_entry(&m, &o, rt, &owned, s))
        .collect();
    // Status fields are owned through the status subresource only.
    mine.retain(|p| {
        (sub == Sub::Status) == (p.first() == Some(&patch::Seg::Key("status".into())))
            || !rt.status_subresource
    });
    if !mine.is_empty() {
        list.push(managed_entry(manager, op, rt, &mine, sub));
    }
    obj["metadata"]["managedFields"] = Value::Array(list);
}
