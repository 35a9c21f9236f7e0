//! Strategic merge patch and server-side apply, approximated for the fields this project uses.
//!
//! Pure functions over JSON values. JSON patch (RFC 6902) and JSON merge patch (RFC 7386)
//! come from the `json-patch` crate; they need no approximation.
//!
//! Approximations, compared with the real API server:
//! - Lists merge by key only for the fields in [`merge_key`] (containers, volumes, env,
//!   ports, conditions, ownerReferences, ...); other lists are atomic (replaced whole).
//!   `finalizers` merges as a set under strategic merge, and is atomic under apply.
//! - Directives: `$patch: delete|replace` and `$deleteFromPrimitiveList/<field>`; others
//!   (`$setElementOrder`, `$retainKeys`) are ignored.
//! - Field ownership is tracked per leaf path. An apply conflicts with another manager only
//!   where that manager owns the very same path and the values differ. Writes other than
//!   apply take ownership of the leaf paths whose values they changed.

use std::collections::BTreeSet;

use serde_json::{Map, Value, json};

/// The key that identifies list items of a field under strategic merge and apply, if any.
/// `ports` is keyed by `containerPort` inside containers and by `port` in Services.
pub fn merge_key(field: &str, items: &[Value]) -> Option<&'static str> {
    Some(match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "volumes"
        | "env"
        | "imagePullSecrets"
        | "hostAliases"
        | "resourceClaims" => "name",
        "volumeMounts" | "volumeDevices" => "mountPath",
        "conditions" => "type",
        "ownerReferences" => "uid",
        "ports" => {
            if items.iter().any(|i| i.get("containerPort").is_some()) {
                "containerPort"
            } else {
                "port"
            }
        }
        _ => return None,
    })
}

/// Applies a strategic merge patch to `target` in place.
pub fn strategic_merge(target: &mut Value, patch: &Value) {
    let Value::Object(patch_map) = patch else {
        *target = patch.clone();
        return;
    };
    if patch_map.get("$patch").and_then(Value::as_str) == Some("replace") {
        let mut replacement = patch.clone();
        if let Value::Object(m) = &mut replacement {
            m.remove("$patch");
        }
        *target = replacement;
        return;
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(target_map) = target else {
        return;
    };
    for (key, value) in patch_map {
        if let Some(field) = key.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(list)), Value::Array(remove)) =
                (target_map.get_mut(field), value)
            {
                list.retain(|x| !remove.contains(x));
            }
            continue;
        }
        if key.starts_with('$') {
            continue;
        }
        match value {
            Value::Null => {
                target_map.remove(key);
            }
            Value::Array(items) => {
                let existing = target_map
                    .entry(key.clone())
                    .or_insert(Value::Array(Vec::new()));
                if key == "finalizers" {
                    if let Value::Array(list) = existing {
                        for item in items {
                            if !list.contains(item) {
                                list.push(item.clone());
                            }
                        }
                    }
                } else if let (Some(k), Value::Array(list)) =
                    (merge_key(key, items), &mut *existing)
                {
                    merge_list_by_key(list, items, k);
                } else {
                    *existing = value.clone();
                }
            }
            Value::Object(_) => {
                let existing = target_map
                    .entry(key.clone())
                    .or_insert(Value::Object(Map::new()));
                strategic_merge(existing, value);
            }
            _ => {
                target_map.insert(key.clone(), value.clone());
            }
        }
    }
}

fn merge_list_by_key(list: &mut Vec<Value>, items: &[Value], key: &str) {
    for item in items {
        let id = item.get(key);
        let pos = list.iter().position(|x| id.is_some() && x.get(key) == id);
        let delete = item.get("$patch").and_then(Value::as_str) == Some("delete");
        match (pos, delete) {
            (Some(i), true) => {
                list.remove(i);
            }
            (None, true) => {}
            (Some(i), false) => strategic_merge(&mut list[i], item),
            (None, false) => list.push(item.clone()),
        }
    }
}

/// One step of a field path: an object key, or a list item picked by its merge key.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Seg {
    /// An object field.
    Key(String),
    /// A list item identified by its merge key and that key's value as JSON text.
    Item(String, String),
}

/// A field path from the object root.
pub type Path = Vec<Seg>;

/// Renders a path for messages, such as `.spec.template.spec.containers[name="link"].image`.
pub fn path_string(path: &Path) -> String {
    let mut s = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) => {
                s.push('.');
                s.push_str(k);
            }
            Seg::Item(k, v) => s.push_str(&format!("[{k}={v}]")),
        }
    }
    s
}

/// Metadata fields owned by the server, never by a manager.
const SERVER_METADATA: &[&str] = &[
    "managedFields",
    "resourceVersion",
    "uid",
    "creationTimestamp",
    "generation",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "selfLink",
];

/// The leaf paths an object sets (what a manager owns after applying it).
pub fn leaf_paths(obj: &Value) -> BTreeSet<Path> {
    let mut out = BTreeSet::new();
    if let Value::Object(map) = obj {
        for (k, v) in map {
            if k == "apiVersion" || k == "kind" {
                continue;
            }
            if k == "metadata" {
                if let Value::Object(meta) = v {
                    for (mk, mv) in meta {
                        if SERVER_METADATA.contains(&mk.as_str())
                            || mk == "name"
                            || mk == "namespace"
                            || mk == "generateName"
                        {
                            continue;
                        }
                        walk(
                            mv,
                            vec![Seg::Key("metadata".into()), Seg::Key(mk.clone())],
                            mk,
                            &mut out,
                        );
                    }
                }
                continue;
            }
            walk(v, vec![Seg::Key(k.clone())], k, &mut out);
        }
    }
    out
}

fn walk(v: &Value, path: Path, field: &str, out: &mut BTreeSet<Path>) {
    match v {
        Value::Object(map) if !map.is_empty() => {
            for (k, child) in map {
                let mut p = path.clone();
                p.push(Seg::Key(k.clone()));
                walk(child, p, k, out);
            }
        }
        Value::Array(items) if field != "finalizers" => match merge_key(field, items) {
            Some(key) if !items.is_empty() && items.iter().all(|i| i.get(key).is_some()) => {
                for item in items {
                    let mut p = path.clone();
                    p.push(Seg::Item(key.to_owned(), item[key].to_string()));
                    walk(item, p, "", out);
                }
            }
            _ => {
                out.insert(path);
            }
        },
        _ => {
            out.insert(path);
        }
    }
}

fn item_is(item: &Value, key: &str, text: &str) -> bool {
    // The segment holds the key's JSON text; compare as JSON values, not as strings.
    item.get(key)
        .is_some_and(|v| serde_json::from_str::<Value>(text).is_ok_and(|t| t == *v))
}

/// The value at a path, if present.
pub fn get<'a>(obj: &'a Value, path: &Path) -> Option<&'a Value> {
    let mut cur = obj;
    for seg in path {
        cur = match seg {
            Seg::Key(k) => cur.get(k)?,
            Seg::Item(k, v) => cur.as_array()?.iter().find(|i| item_is(i, k, v))?,
        };
    }
    Some(cur)
}

/// Removes the value at a path (and list items / objects left empty by it).
pub fn remove(obj: &mut Value, path: &Path) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut cur = &mut *obj;
    for seg in parents {
        let next = match seg {
            Seg::Key(k) => cur.get_mut(k),
            Seg::Item(k, v) => cur
                .as_array_mut()
                .and_then(|a| a.iter_mut().find(|i| item_is(i, k, v))),
        };
        match next {
            Some(n) => cur = n,
            None => return,
        }
    }
    match last {
        Seg::Key(k) => {
            if let Value::Object(m) = cur {
                m.remove(k);
            }
        }
        Seg::Item(k, v) => {
            if let Value::Array(a) = cur {
                a.retain(|i| !item_is(i, k, v));
            }
        }
    }
}

/// Merges an applied configuration into the live object: objects field by field, keyed lists
/// item by item, everything else replaced.
pub fn apply_merge(live: &mut Value, applied: &Value, field: &str) {
    match (live, applied) {
        (Value::Object(l), Value::Object(a)) => {
            for (k, v) in a {
                match l.get_mut(k) {
                    Some(existing) if !v.is_null() => apply_merge(existing, v, k),
                    _ => {
                        l.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (Value::Array(l), Value::Array(a)) if field != "finalizers" => match merge_key(field, a) {
            Some(key) => {
                for item in a {
                    match l.iter_mut().find(|x| x.get(key) == item.get(key)) {
                        Some(existing) => apply_merge(existing, item, ""),
                        None => l.push(item.clone()),
                    }
                }
            }
            None => *l = a.clone(),
        },
        (l, a) => *l = a.clone(),
    }
}

/// Paths whose values differ between two objects (present in `new`), for ownership by
/// non-apply writers.
pub fn changed_paths(old: &Value, new: &Value) -> BTreeSet<Path> {
    leaf_paths(new)
        .into_iter()
        .filter(|p| get(old, p) != get(new, p))
        .collect()
}

/// Encodes a path set as `fieldsV1`, the format of `metadata.managedFields[].fieldsV1`.
pub fn to_fields_v1(paths: &BTreeSet<Path>) -> Value {
    let mut root = json!({});
    for path in paths {
        let mut cur = &mut root;
        for seg in path {
            let key = match seg {
                Seg::Key(k) => format!("f:{k}"),
                Seg::Item(k, v) => {
                    let mut m = Map::new();
                    m.insert(k.clone(), serde_json::from_str(v).unwrap_or(Value::Null));
                    format!("k:{}", Value::Object(m))
                }
            };
            let is_item = matches!(seg, Seg::Item(..));
            cur = cur
                .as_object_mut()
                .map(|m| m.entry(key).or_insert_with(|| json!({})))
                .expect("fieldsV1 nodes are objects");
            if is_item {
                cur.as_object_mut().map(|m| m.insert(".".into(), json!({})));
            }
        }
    }
    root
}

/// Decodes `fieldsV1` into its leaf path set.
pub fn from_fields_v1(fields: &Value) -> BTreeSet<Path> {
    let mut out = BTreeSet::new();
    decode(fields, Vec::new(), &mut out);
    out
}

fn decode(node: &Value, path: Path, out: &mut BTreeSet<Path>) {
    let Some(map) = node.as_object() else { return };
    let children: Vec<_> = map.iter().filter(|(k, _)| k.as_str() != ".").collect();
    if children.is_empty() && !path.is_empty() {
        out.insert(path);
        return;
    }
    for (k, child) in children {
        let seg = if let Some(f) = k.strip_prefix("f:") {
            Seg::Key(f.to_owned())
        } else if let Some(item) = k.strip_prefix("k:") {
            match serde_json::from_str::<Map<String, Value>>(item)
                .ok()
                .and_then(|m| m.into_iter().next())
            {
                Some((mk, mv)) => Seg::Item(mk, mv.to_string()),
                None => continue,
            }
        } else {
            continue;
        };
        let mut p = path.clone();
        p.push(seg);
        decode(child, p, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Containers merge by name, env by name, a null removes a field, and `$patch: delete`
    /// removes a list item, as kubectl's strategic merge patches expect.
    #[test]
    fn strategic_merge_merges_keyed_lists() {
        let mut d = json!({"spec": {"replicas": 1, "paused": true, "containers": [
            {"name": "a", "image": "a:1", "env": [{"name": "X", "value": "1"}]},
            {"name": "b", "image": "b:1"}]}});
        strategic_merge(
            &mut d,
            &json!({"spec": {"paused": null, "containers": [
            {"name": "a", "image": "a:2", "env": [{"name": "Y", "value": "2"}]},
            {"name": "b", "$patch": "delete"},
            {"name": "c", "image": "c:1"}]}}),
        );
        assert_eq!(
            d,
            json!({"spec": {"replicas": 1, "containers": [
            {"name": "a", "image": "a:2", "env": [{"name": "X", "value": "1"}, {"name": "Y", "value": "2"}]},
            {"name": "c", "image": "c:1"}]}})
        );
    }

    /// Finalizers merge as a set and can be removed with the primitive-list directive.
    #[test]
    fn strategic_merge_handles_finalizers_as_a_set() {
        let mut d = json!({"metadata": {"finalizers": ["a"]}});
        strategic_merge(&mut d, &json!({"metadata": {"finalizers": ["a", "b"]}}));
        assert_eq!(d["metadata"]["finalizers"], json!(["a", "b"]));
        strategic_merge(
            &mut d,
            &json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["a"]}}),
        );
        assert_eq!(d["metadata"]["finalizers"], json!(["b"]));
    }

    /// fieldsV1 round-trips through the path-set form, keyed list items included.
    #[test]
    fn fields_v1_round_trips() {
        let obj = json!({"metadata": {"labels": {"app": "x"}}, "spec": {"replicas": 2,
            "template": {"spec": {"containers": [{"name": "link", "image": "i"}]}}}});
        let paths = leaf_paths(&obj);
        let encoded = to_fields_v1(&paths);
        assert!(encoded["f:spec"]["f:template"]["f:spec"]["f:containers"]["k:{\"name\":\"link\"}"]["f:image"].is_object(), "{encoded}");
        assert_eq!(from_fields_v1(&encoded), paths);
    }

    /// Apply merges keyed lists and replaces atomic ones.
    #[test]
    fn apply_merge_keeps_other_list_items() {
        let mut live = json!({"spec": {"ports": [{"port": 80, "name": "http"}], "args": ["a"]}});
        apply_merge(
            &mut live,
            &json!({"spec": {"ports": [{"port": 443, "name": "https"}], "args": ["b"]}}),
            "",
        );
        assert_eq!(
            live,
            json!({"spec": {"ports": [{"port": 80, "name": "http"}, {"port": 443, "name": "https"}], "args": ["b"]}})
        );
    }
}
