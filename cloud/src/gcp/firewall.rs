//! The gateway's firewall rule: the WireGuard port and the forwards' ports from the
//! allowed source ranges to the VM's tag. Drift (an edited rule) is patched back. I/O.

use std::collections::BTreeSet;

use reqwest::Method;

use super::ops::Mutation;
use super::wire::{Allowed, Firewall};
use super::{GcpCloud, Pass, Step, collision, marker_ours, network};
use crate::api::Service;
use crate::{PendingOp, Protocol, ResourceKind};

/// The firewall's path.
pub(super) fn path(project: &str, name: &str) -> String {
    format!("projects/{project}/global/firewalls/{name}")
}

/// The firewall's `allowed` list in a canonical order: UDP (the listen port first among
/// equals), then TCP when any.
pub(super) fn allowed(listen_port: u16, ports: &[(u16, Protocol)]) -> Vec<Allowed> {
    let mut tcp = BTreeSet::new();
    let mut udp = BTreeSet::from([listen_port]);
    for (p, proto) in ports {
        match proto {
            Protocol::Tcp => tcp.insert(*p),
            Protocol::Udp => udp.insert(*p),
        };
    }
    let list = |s: &BTreeSet<u16>| s.iter().map(u16::to_string).collect();
    let mut out = vec![Allowed {
        ip_protocol: "udp".into(),
        ports: list(&udp),
    }];
    if !tcp.is_empty() {
        out.push(Allowed {
            ip_protocol: "tcp".into(),
            ports: list(&tcp),
        });
    }
    out
}

/// The fields of a firewall this crate owns, comparable: (protocol, port) pairs, source
/// ranges, target tags, network name, disabled, direction.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Shape {
    ports: BTreeSet<(String, String)>,
    source_ranges: BTreeSet<String>,
    target_tags: BTreeSet<String>,
    network: String,
    disabled: bool,
    direction: String,
}

/// The comparable summary of a firewall, ignoring order and the fields GCP fills in.
pub(super) fn shape(f: &Firewall) -> Shape {
    Shape {
        ports: f
            .allowed
            .iter()
            .flat_map(|a| a.ports.iter().map(|p| (a.ip_protocol.clone(), p.clone())))
            .collect(),
        source_ranges: f.source_ranges.iter().cloned().collect(),
        target_tags: f.target_tags.iter().cloned().collect(),
        network: f.network.rsplit('/').next().unwrap_or_default().to_owned(),
        disabled: f.disabled,
        direction: if f.direction.is_empty() {
            "INGRESS".to_owned()
        } else {
            f.direction.clone()
        },
    }
}

impl GcpCloud {
    fn firewall_body(&self, p: &Pass<'_>) -> Firewall {
        let mut ranges = p.d.source_ranges.clone();
        ranges.sort();
        ranges.dedup();
        Firewall {
            name: p.name.clone(),
            description: p.marker(&self.install),
            network: network::path(p.project(), &self.network),
            direction: "INGRESS".into(),
            priority: 1000,
            disabled: false,
            allowed: allowed(p.d.listen_port, &p.d.ports),
            source_ranges: ranges,
            target_tags: vec![p.name.clone()],
        }
    }

    pub(super) async fn ensure_firewall(&self, p: &Pass<'_>) -> (Step<()>, Vec<PendingOp>) {
        let mut ops = Vec::new();
        if let Some(s) = self
            .check_pending(p, ResourceKind::Firewall, &mut ops)
            .await
        {
            return (s, ops);
        }
        let path = path(p.project(), &p.name);
        let want = self.firewall_body(p);
        let found = self
            .get_opt::<Firewall>(Service::Compute, &path, "get firewall", &p.name)
            .await;
        let (method, path, op, rid) = match found {
            Err(e) => return (Step::Failed(e), ops),
            Ok(Some(v)) if !marker_ours(&v.description, &self.install, p.id()) => {
                return (
                    Step::Failed(collision("firewall", &p.name, &v.description)),
                    ops,
                );
            }
            Ok(Some(v)) if shape(&v) == shape(&want) => return (Step::Ready(()), ops),
            Ok(Some(_)) => (
                Method::PATCH,
                path,
                "patch firewall",
                p.request_id("firewall-patch"),
            ),
            Ok(None) => (
                Method::POST,
                format!("projects/{}/global/firewalls", p.project()),
                "insert firewall",
                p.request_id("firewall"),
            ),
        };
        let r = self
            .mutate(
                Some(p),
                Mutation {
                    method,
                    path,
                    body: Some(&want),
                    op,
                    kind: ResourceKind::Firewall,
                    what: &p.name,
                    scope: "global".into(),
                },
                &rid,
            )
            .await;
        (Self::finish_op(r, (), &mut ops), ops)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowed_is_canonical() {
        let a = allowed(
            51820,
            &[
                (443, Protocol::Tcp),
                (80, Protocol::Tcp),
                (53, Protocol::Udp),
            ],
        );
        assert_eq!(
            serde_json::to_value(&a).expect("json"),
            serde_json::json!([{"IPProtocol": "udp", "ports": ["53", "51820"]}, {"IPProtocol": "tcp", "ports": ["80", "443"]}])
        );
        let b = allowed(51820, &[]);
        assert_eq!(
            serde_json::to_value(&b).expect("json"),
            serde_json::json!([{"IPProtocol": "udp", "ports": ["51820"]}])
        );
    }

    #[test]
    fn shape_ignores_order_and_server_fields() {
        let read =
            |v: serde_json::Value| -> Firewall { serde_json::from_value(v).expect("firewall") };
        let ours = read(
            serde_json::json!({"allowed": [{"IPProtocol": "tcp", "ports": ["80", "443"]}], "sourceRanges": ["0.0.0.0/0"], "targetTags": ["t"], "network": "projects/p/global/networks/n"}),
        );
        let theirs = read(
            serde_json::json!({"allowed": [{"IPProtocol": "tcp", "ports": ["443", "80"]}], "sourceRanges": ["0.0.0.0/0"], "targetTags": ["t"], "network": "https://x/compute/v1/projects/p/global/networks/n", "id": "1", "priority": 1000, "direction": "INGRESS", "disabled": false}),
        );
        assert_eq!(shape(&ours), shape(&theirs));
        let edited = read(
            serde_json::json!({"allowed": [{"IPProtocol": "tcp", "ports": ["22"]}], "sourceRanges": ["0.0.0.0/0"], "targetTags": ["t"], "network": "n"}),
        );
        assert_ne!(shape(&ours), shape(&edited));
    }
}
