//! The kinds the stand-in API server serves: the built-in ones the project uses, plus those of
//! every established CustomResourceDefinition, and the discovery documents that describe them.
//!
//! Pure data; the store consults it on every request.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{Value, json};

use crate::crd_schema::SchemaValidator;

/// One served resource type (a group/version/plural).
#[derive(Clone)]
pub struct ResourceType {
    /// API group, empty for the core group.
    pub group: String,
    /// Version, such as `v1`.
    pub version: String,
    /// Kind, such as `Deployment`.
    pub kind: String,
    /// Lower-case plural used in URLs.
    pub plural: String,
    /// Lower-case singular.
    pub singular: String,
    /// Whether objects live in namespaces.
    pub namespaced: bool,
    /// Whether `/status` is a separate subresource (then main-resource writes keep status).
    pub status_subresource: bool,
    /// Short names offered to kubectl.
    pub short_names: Vec<String>,
    /// Schema checks for custom resources (built-in kinds are not schema-checked).
    pub schema: Option<Arc<SchemaValidator>>,
    /// Name of the CRD that serves this type; `None` for built-in kinds.
    pub crd: Option<String>,
}

impl std::fmt::Debug for ResourceType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.key())
    }
}

impl ResourceType {
    fn builtin(
        group: &str,
        version: &str,
        kind: &str,
        plural: &str,
        namespaced: bool,
        status: bool,
        short: &[&str],
    ) -> Self {
        Self {
            group: group.to_owned(),
            version: version.to_owned(),
            kind: kind.to_owned(),
            plural: plural.to_owned(),
            singular: kind.to_lowercase(),
            namespaced,
            status_subresource: status,
            short_names: short.iter().map(|s| (*s).to_owned()).collect(),
            schema: None,
            crd: None,
        }
    }

    /// `group/version` or `version` for the core group, as in `apiVersion`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `plural.group` (or `plural` for the core group): the name used in messages.
    pub fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.clone()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    /// Whether this is `CustomResourceDefinition` itself, whose writes change what is served.
    pub fn is_crd_kind(&self) -> bool {
        self.group == "apiextensions.k8s.io" && self.kind == "CustomResourceDefinition"
    }

    /// Unique key of this type in the registry.
    pub fn key(&self) -> String {
        format!("{}/{}/{}", self.group, self.version, self.plural)
    }

    /// The entry of this type in an `APIResourceList`.
    fn api_resource(&self) -> Vec<Value> {
        let mut verbs = vec![
            "create",
            "delete",
            "deletecollection",
            "get",
            "list",
            "patch",
            "update",
            "watch",
        ];
        verbs.sort_unstable();
        let mut out = vec![json!({
            "name": self.plural,
            "singularName": self.singular,
            "namespaced": self.namespaced,
            "kind": self.kind,
            "verbs": verbs,
            "shortNames": self.short_names,
        })];
        if self.status_subresource {
            out.push(json!({
                "name": format!("{}/status", self.plural),
                "singularName": "",
                "namespaced": self.namespaced,
                "kind": self.kind,
                "verbs": ["get", "patch", "update"],
            }));
        }
        out
    }
}

/// Every served type, keyed by [`ResourceType::key`].
#[derive(Debug, Clone)]
pub struct Registry {
    types: BTreeMap<String, Arc<ResourceType>>,
}

impl Default for Registry {
    fn default() -> Self {
        let builtins = [
            ResourceType::builtin("", "v1", "Namespace", "namespaces", false, true, &["ns"]),
            ResourceType::builtin("", "v1", "Service", "services", true, true, &["svc"]),
            ResourceType::builtin("", "v1", "ConfigMap", "configmaps", true, false, &["cm"]),
            ResourceType::builtin("", "v1", "Secret", "secrets", true, false, &[]),
            ResourceType::builtin(
                "",
                "v1",
                "ServiceAccount",
                "serviceaccounts",
                true,
                false,
                &["sa"],
            ),
            ResourceType::builtin("", "v1", "Pod", "pods", true, true, &["po"]),
            ResourceType::builtin("", "v1", "Event", "events", true, false, &["ev"]),
            ResourceType::builtin(
                "events.k8s.io",
                "v1",
                "Event",
                "events",
                true,
                false,
                &["ev"],
            ),
            ResourceType::builtin(
                "apps",
                "v1",
                "Deployment",
                "deployments",
                true,
                true,
                &["deploy"],
            ),
            ResourceType::builtin(
                "rbac.authorization.k8s.io",
                "v1",
                "Role",
                "roles",
                true,
                false,
                &[],
            ),
            ResourceType::builtin(
                "rbac.authorization.k8s.io",
                "v1",
                "RoleBinding",
                "rolebindings",
                true,
                false,
                &[],
            ),
            ResourceType::builtin(
                "rbac.authorization.k8s.io",
                "v1",
                "ClusterRole",
                "clusterroles",
                false,
                false,
                &[],
            ),
            ResourceType::builtin(
                "rbac.authorization.k8s.io",
                "v1",
                "ClusterRoleBinding",
                "clusterrolebindings",
                false,
                false,
                &[],
            ),
            ResourceType::builtin(
                "networking.k8s.io",
                "v1",
                "NetworkPolicy",
                "networkpolicies",
                true,
                false,
                &["netpol"],
            ),
            ResourceType::builtin(
                "policy",
                "v1",
                "PodDisruptionBudget",
                "poddisruptionbudgets",
                true,
                true,
                &["pdb"],
            ),
            ResourceType::builtin(
                "coordination.k8s.io",
                "v1",
                "Lease",
                "leases",
                true,
                false,
                &[],
            ),
            ResourceType::builtin(
                "apiextensions.k8s.io",
                "v1",
                "CustomResourceDefinition",
                "customresourcedefinitions",
                false,
                true,
                &["crd", "crds"],
            ),
        ];
        Self {
            types: builtins
                .into_iter()
                .map(|t| (t.key(), Arc::new(t)))
                .collect(),
        }
    }
}

impl Registry {
    /// Looks a type up by the URL parts `group`, `version` and `plural`.
    pub fn get(&self, group: &str, version: &str, plural: &str) -> Option<Arc<ResourceType>> {
        self.types
            .get(&format!("{group}/{version}/{plural}"))
            .cloned()
    }

    /// The served types of a CRD object, with their schema validators. Fails with a message
    /// when the CRD is not acceptable (bad version list, rules that do not compile).
    pub fn types_of_crd(crd: &Value) -> Result<Vec<ResourceType>, String> {
        let spec = &crd["spec"];
        let group = spec["group"].as_str().ok_or("spec.group: Required value")?;
        let names = &spec["names"];
        let plural = names["plural"]
            .as_str()
            .ok_or("spec.names.plural: Required value")?;
        let kind = names["kind"]
            .as_str()
            .ok_or("spec.names.kind: Required value")?;
        let expected = format!("{plural}.{group}");
        if crd["metadata"]["name"].as_str() != Some(expected.as_str()) {
            return Err(format!(
                "metadata.name: Invalid value: must be spec.names.plural+\".\"+spec.group ({expected})"
            ));
        }
        let namespaced =
            match spec["scope"].as_str() {
                Some("Namespaced") => true,
                Some("Cluster") => false,
                _ => return Err(
                    "spec.scope: Unsupported value: supported values: \"Cluster\", \"Namespaced\""
                        .to_owned(),
                ),
            };
        let versions = spec["versions"]
            .as_array()
            .filter(|v| !v.is_empty())
            .ok_or("spec.versions: Required value")?;
        let mut out = Vec::new();
        for v in versions {
            if v["served"] != Value::Bool(true) {
                continue;
            }
            let name = v["name"]
                .as_str()
                .ok_or("spec.versions[].name: Required value")?;
            let schema = match v["schema"]["openAPIV3Schema"].clone() {
                Value::Null => None,
                s => Some(Arc::new(SchemaValidator::new(s).map_err(|e| {
                    format!("spec.versions[{name}].schema.openAPIV3Schema: Invalid value: {e}")
                })?)),
            };
            out.push(ResourceType {
                group: group.to_owned(),
                version: name.to_owned(),
                kind: kind.to_owned(),
                plural: plural.to_owned(),
                singular: names["singular"]
                    .as_str()
                    .map_or_else(|| kind.to_lowercase(), str::to_owned),
                namespaced,
                status_subresource: v["subresources"]["status"].is_object(),
                short_names: names["shortNames"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(Value::as_str)
                            .map(str::to_owned)
                            .collect()
                    })
                    .unwrap_or_default(),
                schema,
                crd: Some(expected.clone()),
            });
        }
        Ok(out)
    }

    /// Serves the types of a CRD (replacing earlier versions of the same CRD).
    pub fn install(&mut self, crd_name: &str, types: Vec<ResourceType>) {
        self.uninstall(crd_name);
        for t in types {
            self.types.insert(t.key(), Arc::new(t));
        }
    }

    /// Stops serving the types of a CRD.
    pub fn uninstall(&mut self, crd_name: &str) {
        self.types.retain(|_, t| t.crd.as_deref() != Some(crd_name));
    }

    /// `GET /api`.
    pub fn core_versions(&self) -> Value {
        json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": ""}]})
    }

    /// `GET /apis`: every named group with its versions.
    pub fn group_list(&self) -> Value {
        let mut groups: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for t in self.types.values().filter(|t| !t.group.is_empty()) {
            let versions = groups.entry(&t.group).or_default();
            if !versions.contains(&t.version.as_str()) {
                versions.push(&t.version);
            }
        }
        let groups: Vec<Value> = groups
            .into_iter()
            .map(|(g, vs)| {
                let versions: Vec<Value> = vs
                    .iter()
                    .map(|v| json!({"groupVersion": format!("{g}/{v}"), "version": v}))
                    .collect();
                json!({"name": g, "versions": versions, "preferredVersion": versions[0]})
            })
            .collect();
        json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
    }

    /// `GET /apis/<group>` for one group.
    pub fn group(&self, group: &str) -> Option<Value> {
        let list = self.group_list();
        list["groups"]
            .as_array()?
            .iter()
            .find(|g| g["name"] == group)
            .map(|g| {
                let mut g = g.clone();
                g["kind"] = json!("APIGroup");
                g["apiVersion"] = json!("v1");
                g
            })
    }

    /// `GET /api/v1` or `GET /apis/<group>/<version>`, or `None` when nothing is served there.
    pub fn resource_list(&self, group: &str, version: &str) -> Option<Value> {
        let resources: Vec<Value> = self
            .types
            .values()
            .filter(|t| t.group == group && t.version == version)
            .flat_map(|t| t.api_resource())
            .collect();
        if resources.is_empty() {
            return None;
        }
        let gv = if group.is_empty() {
            version.to_owned()
        } else {
            format!("{group}/{version}")
        };
        Some(
            json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}),
        )
    }

    /// `GET /openapi/v3`: the index of per-group-version documents.
    pub fn openapi_index(&self) -> Value {
        let mut paths = serde_json::Map::new();
        for t in self.types.values() {
            let gv = if t.group.is_empty() {
                format!("api/{}", t.version)
            } else {
                format!("apis/{}/{}", t.group, t.version)
            };
            paths.insert(
                gv.clone(),
                json!({"serverRelativeURL": format!("/openapi/v3/{gv}")}),
            );
        }
        json!({"paths": paths})
    }

    /// `GET /openapi/v3/api/v1` or `/openapi/v3/apis/<group>/<version>`: a minimal document
    /// that declares, for each kind, the PATCH operation and the query parameters the server
    /// honours (`fieldValidation`, `fieldManager`, `force`), which is how kubectl decides to
    /// use server-side field validation. No schemas: kubectl explain is not supported.
    pub fn openapi_group_version(&self, group: &str, version: &str) -> Option<Value> {
        let mut paths = serde_json::Map::new();
        for t in self
            .types
            .values()
            .filter(|t| t.group == group && t.version == version)
        {
            let prefix = if group.is_empty() {
                format!("/api/{version}")
            } else {
                format!("/apis/{group}/{version}")
            };
            let item = if t.namespaced {
                format!("{prefix}/namespaces/{{namespace}}/{}/{{name}}", t.plural)
            } else {
                format!("{prefix}/{}/{{name}}", t.plural)
            };
            let params: Vec<Value> = ["fieldValidation", "fieldManager", "force", "dryRun"]
                .iter()
                .map(|p| json!({"name": p, "in": "query", "schema": {"type": "string"}, "uniqueItems": true}))
                .collect();
            let gvk = json!({"group": t.group, "version": t.version, "kind": t.kind});
            paths.insert(item, json!({
                "get": {"operationId": format!("read{}", t.kind), "x-kubernetes-group-version-kind": gvk},
                "patch": {"operationId": format!("patch{}", t.kind), "x-kubernetes-group-version-kind": gvk, "parameters": params},
            }));
        }
        if paths.is_empty() {
            return None;
        }
        Some(
            json!({"openapi": "3.0.0", "info": {"title": "wgnet stand-in API server", "version": "v1.33.0"}, "paths": paths, "components": {"schemas": {}}}),
        )
    }
}
