//! The admin policy: what a Gateway may ask this operator to spend and claim (GCP projects,
//! machine types, images, disk size, Gateways per namespace, DNS names per namespace).
//! Set by the operator's flags (the chart's `policy` values); checked by the validate step
//! before anything is created. Pure: no I/O.

use std::collections::BTreeMap;

use crate::api::Gateway;

/// The machine types allowed when the admin names none: the small shared-core e2 types,
/// plenty for a WireGuard relay (see the README's sizing notes).
pub const DEFAULT_MACHINE_TYPES: &[&str] = &["e2-micro", "e2-small", "e2-medium"];
/// The images allowed when the admin names none: the image family the startup script is
/// written and tested for.
pub const DEFAULT_IMAGES: &[&str] = &["projects/debian-cloud/global/images/family/debian-12"];
/// The boot disk cap when the admin sets none, in GB (the VM needs 10).
pub const DEFAULT_MAX_DISK_SIZE_GB: u32 = 20;
/// Gateways per namespace when the admin sets no limit of their own.
pub const DEFAULT_MAX_GATEWAYS_PER_NAMESPACE: u32 = 5;

/// Which GCP projects Gateways may use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Projects {
    /// Any project the operator's credentials reach (`--allowed-projects '*'`).
    Any,
    /// Only these.
    Only(Vec<String>),
}

impl Projects {
    /// Whether `project` may be used.
    pub fn allows(&self, project: &str) -> bool {
        match self {
            Self::Any => true,
            Self::Only(list) => list.iter().any(|p| p == project),
        }
    }

    /// The named projects (none for `Any`): the orphan sweep looks in them.
    pub fn named(&self) -> &[String] {
        match self {
            Self::Any => &[],
            Self::Only(list) => list,
        }
    }
}

/// The policy. `Policy::new(projects)` gives the defaults for everything but the projects,
/// which have no safe default.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// `--allowed-projects`.
    pub projects: Projects,
    /// `--allowed-machine-types`: names, or prefixes ending in `*`.
    pub machine_types: Vec<String>,
    /// `--allowed-images`: image or family paths, or prefixes ending in `*`.
    pub images: Vec<String>,
    /// `--max-disk-size-gb`.
    pub max_disk_size_gb: u32,
    /// `--max-gateways-per-namespace`; 0 for no limit.
    pub max_gateways_per_namespace: u32,
    /// `--allowed-dns-suffixes`, by namespace (`*`: every namespace). Empty: no check, as
    /// when external-dns itself is scoped by the admin.
    pub dns_suffixes: BTreeMap<String, Vec<String>>,
}

impl Policy {
    /// The defaults, with `projects`.
    pub fn new(projects: Projects) -> Self {
        Self {
            projects,
            machine_types: DEFAULT_MACHINE_TYPES
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
            images: DEFAULT_IMAGES.iter().map(|s| (*s).to_owned()).collect(),
            max_disk_size_gb: DEFAULT_MAX_DISK_SIZE_GB,
            max_gateways_per_namespace: DEFAULT_MAX_GATEWAYS_PER_NAMESPACE,
            dns_suffixes: BTreeMap::new(),
        }
    }

    /// Checks `gw`'s own fields; `rank` is its place among the namespace's live Gateways
    /// (0 for the oldest), so the limit refuses the newest and never an older, serving one.
    pub fn check(&self, gw: &Gateway, rank: usize) -> Result<(), Refusal> {
        let gcp = &gw.spec.gcp;
        if !self.projects.allows(&gcp.project_id) {
            return Err(Refusal::Project {
                project: gcp.project_id.clone(),
                allowed: self.projects.named().join(", "),
            });
        }
        if !self
            .machine_types
            .iter()
            .any(|p| matches(p, &gcp.machine_type))
        {
            return Err(Refusal::Field {
                field: "spec.gcp.machineType",
                value: gcp.machine_type.clone(),
                flag: "--allowed-machine-types",
                allowed: self.machine_types.join(", "),
            });
        }
        if !self.images.iter().any(|p| matches(p, &gcp.image)) {
            return Err(Refusal::Field {
                field: "spec.gcp.image",
                value: gcp.image.clone(),
                flag: "--allowed-images",
                allowed: self.images.join(", "),
            });
        }
        if u32::try_from(gcp.disk_size_gb).map_or(true, |d| d > self.max_disk_size_gb) {
            return Err(Refusal::Field {
                field: "spec.gcp.diskSizeGB",
                value: gcp.disk_size_gb.to_string(),
                flag: "--max-disk-size-gb",
                allowed: format!("at most {}", self.max_disk_size_gb),
            });
        }
        let ns = gw.metadata.namespace.as_deref().unwrap_or_default();
        if let Some(name) = gw
            .spec
            .dns_hostnames
            .iter()
            .find(|h| !self.dns_allowed(ns, h))
        {
            return Err(Refusal::Field {
                field: "spec.dnsHostnames",
                value: name.clone(),
                flag: "--allowed-dns-suffixes",
                allowed: self.dns_suffixes_of(ns).join(", "),
            });
        }
        let max = self.max_gateways_per_namespace;
        if max > 0 && rank >= max as usize {
            return Err(Refusal::Count { max });
        }
        Ok(())
    }

    /// The suffixes namespace `ns` may publish under (its own and those for every
    /// namespace).
    fn dns_suffixes_of(&self, ns: &str) -> Vec<String> {
        [ns, "*"]
            .iter()
            .filter_map(|k| self.dns_suffixes.get(*k))
            .flatten()
            .cloned()
            .collect()
    }

    /// Whether `ns` may publish `name`: no allowlist, or `name` is one of its suffixes or
    /// lies under one at a label boundary (`evilexample.com` is not under `example.com`).
    pub fn dns_allowed(&self, ns: &str, name: &str) -> bool {
        if self.dns_suffixes.is_empty() {
            return true;
        }
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        self.dns_suffixes_of(ns).iter().any(|s| {
            let s = s
                .trim_start_matches('.')
                .trim_end_matches('.')
                .to_ascii_lowercase();
            name == s || name.strip_suffix(&s).is_some_and(|r| r.ends_with('.'))
        })
    }
}

/// `pattern` is a value, or a prefix ending in `*`.
fn matches(pattern: &str, value: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => value.starts_with(prefix),
        None => pattern == value,
    }
}

/// The rule that refused a Gateway. Messages name the field, its value (spec fields, never
/// secret) and the flag an admin would change.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The project is not allowed.
    #[error(
        "project {project:?} is not in this operator's allowed projects ({allowed}); nothing was created"
    )]
    Project {
        /// The project asked for.
        project: String,
        /// The allowed projects, comma separated.
        allowed: String,
    },
    /// A field outside the policy.
    #[error(
        "{field} {value:?} is refused by the operator's policy ({flag}: {allowed}); nothing was created"
    )]
    Field {
        /// The field.
        field: &'static str,
        /// Its value.
        value: String,
        /// The operator flag that sets the rule.
        flag: &'static str,
        /// What the rule allows.
        allowed: String,
    },
    /// The namespace already has as many Gateways as allowed.
    #[error(
        "the namespace already has {max} older Gateways, as many as the operator's policy allows (--max-gateways-per-namespace); nothing was created"
    )]
    Count {
        /// The limit.
        max: u32,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::testing::gateway_with;

    fn gw(gcp: serde_json::Value, dns: &[&str]) -> Gateway {
        let mut g = gateway_with(serde_json::json!({}));
        if let serde_json::Value::Object(m) = gcp {
            let mut v = serde_json::to_value(&g.spec.gcp).expect("gcp");
            for (k, x) in m {
                v[k] = x;
            }
            g.spec.gcp = serde_json::from_value(v).expect("gcp back");
        }
        g.spec.dns_hostnames = dns.iter().map(|s| (*s).to_owned()).collect();
        g
    }

    fn only(p: &[&str]) -> Policy {
        Policy::new(Projects::Only(p.iter().map(|s| (*s).to_owned()).collect()))
    }

    #[test]
    fn the_defaults_admit_the_default_gateway_and_refuse_spending() {
        let p = only(&["p"]);
        assert_eq!(p.check(&gw(serde_json::json!({}), &[]), 0), Ok(()));
        for (spec, field) in [
            (
                serde_json::json!({"machineType": "n2-standard-64"}),
                "spec.gcp.machineType",
            ),
            (
                serde_json::json!({"image": "projects/attacker/global/images/miner"}),
                "spec.gcp.image",
            ),
            (
                serde_json::json!({"diskSizeGB": 65536}),
                "spec.gcp.diskSizeGB",
            ),
        ] {
            let e = p.check(&gw(spec.clone(), &[]), 0).expect_err("refused");
            assert!(
                matches!(&e, Refusal::Field { field: f, .. } if *f == field),
                "{spec}: {e}"
            );
            assert!(e.to_string().contains("nothing was created"), "{e}");
        }
        let e = p
            .check(
                &gw(serde_json::json!({"projectID": "someone-else"}), &[]),
                0,
            )
            .expect_err("project");
        assert!(matches!(e, Refusal::Project { .. }), "{e}");
        assert_eq!(
            Policy::new(Projects::Any)
                .check(&gw(serde_json::json!({"projectID": "any-1"}), &[]), 0),
            Ok(())
        );
    }

    #[test]
    fn wildcards_widen_and_the_count_refuses_only_the_newest() {
        let mut p = only(&["p"]);
        p.machine_types = vec!["e2-*".into()];
        p.images = vec!["projects/debian-cloud/global/images/*".into()];
        let g = gw(
            serde_json::json!({"machineType": "e2-standard-2", "image": "projects/debian-cloud/global/images/debian-12-bookworm-v20250101"}),
            &[],
        );
        assert_eq!(p.check(&g, 4), Ok(()));
        assert_eq!(p.check(&g, 5), Err(Refusal::Count { max: 5 }));
        p.max_gateways_per_namespace = 0;
        assert_eq!(p.check(&g, 500), Ok(()), "0 means no limit");
    }

    #[test]
    fn dns_names_stay_under_the_namespace_suffixes_at_a_label_boundary() {
        let mut p = only(&["p"]);
        assert!(p.dns_allowed("apps", "anything.example"), "no allowlist");
        p.dns_suffixes
            .insert("apps".into(), vec!["apps.example.com".into()]);
        p.dns_suffixes
            .insert("*".into(), vec![".shared.example.org.".into()]);
        assert!(p.dns_allowed("apps", "apps.example.com"));
        assert!(p.dns_allowed("apps", "Edge.Apps.Example.com."));
        assert!(p.dns_allowed("apps", "x.shared.example.org"));
        assert!(p.dns_allowed("other", "x.shared.example.org"));
        assert!(!p.dns_allowed("other", "edge.apps.example.com"));
        assert!(!p.dns_allowed("apps", "evilapps.example.com"));
        assert!(!p.dns_allowed("apps", "www.bank.example"));
        let e = p
            .check(&gw(serde_json::json!({}), &["www.bank.example"]), 0)
            .expect_err("refused");
        assert!(
            e.to_string().contains("spec.dnsHostnames")
                && e.to_string().contains("--allowed-dns-suffixes"),
            "{e}"
        );
    }
}
