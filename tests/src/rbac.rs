//! Kubernetes RBAC, evaluated for tests: turns a logged API request into the access it needs
//! (verb, API group, resource, namespace, name) the way kube-apiserver's request-info
//! resolver does, and decides whether the rules bound to one ServiceAccount in a set of
//! rendered manifests allow it. Pure; used to prove the Helm chart grants what the operator
//! really does.

use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding};
use serde_yaml::Value;

/// The access one request needs.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Access {
    /// get, list, watch, create, update, patch, delete, deletecollection.
    pub verb: String,
    /// API group ("" for the core group).
    pub group: String,
    /// Resource, with `/subresource` when there is one.
    pub resource: String,
    /// Namespace of a namespaced request.
    pub namespace: Option<String>,
    /// Object name, when the request names one.
    pub name: Option<String>,
}

impl std::fmt::Display for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let group = if self.group.is_empty() {
            "core"
        } else {
            &self.group
        };
        write!(f, "{} {group}/{}", self.verb, self.resource)?;
        if let Some(ns) = &self.namespace {
            write!(f, " in {ns}")?;
        }
        if let Some(n) = &self.name {
            write!(f, " named {n}")?;
        }
        Ok(())
    }
}

/// The access a request needs; `None` for non-resource URLs (discovery, /version), which
/// every authenticated user may read.
pub fn access_of(method: &str, path: &str, query: &str) -> Option<Access> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, rest) = match segs.as_slice() {
        ["api", _version, rest @ ..] => ("", rest),
        ["apis", group, _version, rest @ ..] => (*group, rest),
        _ => return None,
    };
    let (namespace, resource, name, sub) = match rest {
        ["namespaces", ns, resource, tail @ ..] => (
            Some(ns.to_string()),
            *resource,
            tail.first().copied(),
            tail.get(1).copied(),
        ),
        [resource, tail @ ..] if !resource.is_empty() => {
            (None, *resource, tail.first().copied(), tail.get(1).copied())
        }
        _ => return None,
    };
    let watch = query
        .split('&')
        .any(|kv| kv == "watch=true" || kv == "watch=1");
    let verb = match (method, name.is_some()) {
        ("GET", true) => "get",
        ("GET", false) if watch => "watch",
        ("GET", false) => "list",
        ("POST", _) => "create",
        ("PUT", _) => "update",
        ("PATCH", _) => "patch",
        ("DELETE", true) => "delete",
        ("DELETE", false) => "deletecollection",
        _ => return None,
    };
    Some(Access {
        verb: verb.into(),
        group: group.into(),
        resource: match sub {
            Some(s) => format!("{resource}/{s}"),
            None => resource.into(),
        },
        namespace,
        name: name.map(str::to_owned),
    })
}

/// The rules bound to one ServiceAccount: cluster-wide ones and per-namespace ones.
#[derive(Clone, Debug, Default)]
pub struct Grants {
    /// Rules from ClusterRoleBindings (and RoleBindings' ClusterRoles, per namespace below).
    pub cluster: Vec<PolicyRule>,
    /// Rules that hold in one namespace only.
    pub namespaced: Vec<(String, PolicyRule)>,
}

fn kind_of(doc: &Value) -> &str {
    doc.get("kind").and_then(Value::as_str).unwrap_or_default()
}

fn parse<T: serde::de::DeserializeOwned>(doc: &Value) -> Result<T, String> {
    serde_yaml::from_value(doc.clone()).map_err(|e| format!("{}: {e}", kind_of(doc)))
}

impl Grants {
    /// The grants of ServiceAccount `namespace/name` in rendered manifests.
    pub fn for_service_account(
        docs: &[Value],
        namespace: &str,
        name: &str,
    ) -> Result<Self, String> {
        let mut cluster_roles = Vec::new();
        let mut roles = Vec::new();
        let mut crbs = Vec::new();
        let mut rbs = Vec::new();
        for d in docs {
            match kind_of(d) {
                "ClusterRole" => cluster_roles.push(parse::<ClusterRole>(d)?),
                "Role" => roles.push(parse::<Role>(d)?),
                "ClusterRoleBinding" => crbs.push(parse::<ClusterRoleBinding>(d)?),
                "RoleBinding" => rbs.push(parse::<RoleBinding>(d)?),
                _ => {}
            }
        }
        let binds = |subjects: &Option<Vec<k8s_openapi::api::rbac::v1::Subject>>,
                     binding_ns: Option<&str>| {
            subjects.iter().flatten().any(|s| {
                s.kind == "ServiceAccount"
                    && s.name == name
                    && s.namespace.as_deref().or(binding_ns) == Some(namespace)
            })
        };
        let cluster_rules = |role: &str| -> Vec<PolicyRule> {
            cluster_roles
                .iter()
                .filter(|r| r.metadata.name.as_deref() == Some(role))
                .flat_map(|r| r.rules.clone().unwrap_or_default())
                .collect()
        };
        let mut g = Grants::default();
        for b in crbs.iter().filter(|b| binds(&b.subjects, None)) {
            if b.role_ref.kind == "ClusterRole" {
                g.cluster.extend(cluster_rules(&b.role_ref.name));
            }
        }
        for b in &rbs {
            let ns = b.metadata.namespace.clone().unwrap_or_default();
            if !binds(&b.subjects, Some(&ns)) {
                continue;
            }
            let rules = match b.role_ref.kind.as_str() {
                "ClusterRole" => cluster_rules(&b.role_ref.name),
                _ => roles
                    .iter()
                    .filter(|r| {
                        r.metadata.name.as_deref() == Some(b.role_ref.name.as_str())
                            && r.metadata.namespace.as_deref() == Some(ns.as_str())
                    })
                    .flat_map(|r| r.rules.clone().unwrap_or_default())
                    .collect(),
            };
            g.namespaced
                .extend(rules.into_iter().map(|r| (ns.clone(), r)));
        }
        Ok(g)
    }

    /// Whether some rule allows `a`.
    pub fn allows(&self, a: &Access) -> bool {
        self.cluster.iter().any(|r| rule_allows(r, a))
            || self
                .namespaced
                .iter()
                .any(|(ns, r)| a.namespace.as_deref() == Some(ns.as_str()) && rule_allows(r, a))
    }
}

/// Whether one rule allows `a` (wildcards included, as RBAC defines them).
pub fn rule_allows(r: &PolicyRule, a: &Access) -> bool {
    let has =
        |list: &Option<Vec<String>>, v: &str| list.iter().flatten().any(|x| x == "*" || x == v);
    let (base, sub) = match a.resource.split_once('/') {
        Some((b, s)) => (b, Some(s)),
        None => (a.resource.as_str(), None),
    };
    let resource_ok = r.resources.iter().flatten().any(|x| {
        x == "*"
            || *x == a.resource
            || sub.is_some_and(|s| x.strip_prefix(base) == Some("/*") || *x == format!("*/{s}"))
    });
    let names_ok = match &r.resource_names {
        Some(names) if !names.is_empty() => a
            .name
            .as_ref()
            .is_some_and(|n| names.iter().any(|x| x == n)),
        _ => true,
    };
    let verb_ok = r.verbs.iter().any(|v| v == "*" || *v == a.verb);
    has(&r.api_groups, &a.group) && resource_ok && verb_ok && names_ok
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acc(
        verb: &str,
        group: &str,
        resource: &str,
        ns: Option<&str>,
        name: Option<&str>,
    ) -> Access {
        Access {
            verb: verb.into(),
            group: group.into(),
            resource: resource.into(),
            namespace: ns.map(Into::into),
            name: name.map(Into::into),
        }
    }

    #[test]
    fn requests_map_to_verbs_and_resources() {
        let cases = [
            (
                ("GET", "/api/v1/namespaces/kube-system", ""),
                Some(acc("get", "", "namespaces", None, Some("kube-system"))),
            ),
            (
                ("GET", "/api/v1/namespaces", "watch=true&resourceVersion=1"),
                Some(acc("watch", "", "namespaces", None, None)),
            ),
            (
                ("GET", "/api/v1/secrets", "labelSelector=a%3Db"),
                Some(acc("list", "", "secrets", None, None)),
            ),
            (
                ("GET", "/api/v1/namespaces/apps/secrets/k", ""),
                Some(acc("get", "", "secrets", Some("apps"), Some("k"))),
            ),
            (
                (
                    "PUT",
                    "/apis/wgnet.dev/v1alpha1/namespaces/apps/gateways/edge/status",
                    "",
                ),
                Some(acc(
                    "update",
                    "wgnet.dev",
                    "gateways/status",
                    Some("apps"),
                    Some("edge"),
                )),
            ),
            (
                (
                    "PATCH",
                    "/apis/apps/v1/namespaces/apps/deployments/edge-link",
                    "fieldManager=x",
                ),
                Some(acc(
                    "patch",
                    "apps",
                    "deployments",
                    Some("apps"),
                    Some("edge-link"),
                )),
            ),
            (
                ("POST", "/apis/events.k8s.io/v1/namespaces/apps/events", ""),
                Some(acc("create", "events.k8s.io", "events", Some("apps"), None)),
            ),
            (
                (
                    "DELETE",
                    "/apis/policy/v1/namespaces/apps/poddisruptionbudgets/p",
                    "",
                ),
                Some(acc(
                    "delete",
                    "policy",
                    "poddisruptionbudgets",
                    Some("apps"),
                    Some("p"),
                )),
            ),
            (("GET", "/apis", ""), None),
            (("GET", "/version", ""), None),
        ];
        for ((m, p, q), want) in cases {
            assert_eq!(access_of(m, p, q), want, "{m} {p}?{q}");
        }
    }

    #[test]
    fn rules_match_groups_verbs_subresources_names_and_namespaces() {
        let docs: Vec<Value> = [
            "kind: ClusterRole\napiVersion: rbac.authorization.k8s.io/v1\nmetadata: {name: op}\nrules:\n- {apiGroups: [wgnet.dev], resources: [gateways, gateways/status], verbs: [get, update]}\n- {apiGroups: [''], resources: [secrets], verbs: [get], resourceNames: [k]}",
            "kind: ClusterRoleBinding\napiVersion: rbac.authorization.k8s.io/v1\nmetadata: {name: op}\nroleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: op}\nsubjects: [{kind: ServiceAccount, name: op, namespace: sys}]",
            "kind: Role\napiVersion: rbac.authorization.k8s.io/v1\nmetadata: {name: lease, namespace: sys}\nrules:\n- {apiGroups: [coordination.k8s.io], resources: [leases], verbs: ['*']}",
            "kind: RoleBinding\napiVersion: rbac.authorization.k8s.io/v1\nmetadata: {name: lease, namespace: sys}\nroleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: lease}\nsubjects: [{kind: ServiceAccount, name: op}]",
        ]
        .iter()
        .map(|s| serde_yaml::from_str(s).expect("yaml"))
        .collect();
        let g = Grants::for_service_account(&docs, "sys", "op").expect("grants");
        assert!(g.allows(&acc("get", "wgnet.dev", "gateways", Some("a"), Some("x"))));
        assert!(g.allows(&acc(
            "update",
            "wgnet.dev",
            "gateways/status",
            Some("a"),
            Some("x")
        )));
        assert!(!g.allows(&acc("list", "wgnet.dev", "gateways", None, None)));
        assert!(!g.allows(&acc(
            "update",
            "wgnet.dev",
            "egressgateways/status",
            Some("a"),
            Some("x")
        )));
        assert!(g.allows(&acc("get", "", "secrets", Some("a"), Some("k"))));
        assert!(!g.allows(&acc("get", "", "secrets", Some("a"), Some("other"))));
        assert!(g.allows(&acc(
            "create",
            "coordination.k8s.io",
            "leases",
            Some("sys"),
            None
        )));
        assert!(!g.allows(&acc(
            "create",
            "coordination.k8s.io",
            "leases",
            Some("apps"),
            None
        )));
        let other = Grants::for_service_account(&docs, "apps", "op").expect("grants");
        assert!(!other.allows(&acc("get", "wgnet.dev", "gateways", Some("a"), Some("x"))));
    }
}
