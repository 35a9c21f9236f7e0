//! The gateway's two firewall rules, both aimed at the VM's tag: the forwards' ports from
//! `sourceRanges`, and the WireGuard port from anywhere (its own rule, so restricting
//! clients to an office range never cuts the link's tunnel; WireGuard answers nothing to
//! a sender without the key). Drift (an edited rule) is patched back. I/O.

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

/// The name of the tunnel rule of gateway resource `name`.
pub(super) fn tunnel_name(name: &str) -> String {
    format!("{name}-wg")
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
    /// The forwards' rule: their ports (and the WireGuard port, which keeps the list
    /// non-empty when no forward is active) from `sourceRanges`.
    fn forwards_rule(&self, p: &Pass<'_>) -> Firewall {
        let mut ranges = p.d.source_ranges.clone();
        ranges.sort();
        ranges.dedup();
        self.rule(
            p,
            p.name.clone(),
            allowed(p.d.listen_port, &p.d.ports),
            ranges,
        )
    }

    /// The tunnel's rule: the WireGuard port from anywhere.
    fn tunnel_rule(&self, p: &Pass<'_>) -> Firewall {
        let udp = vec![Allowed {
            ip_protocol: "udp".into(),
            ports: vec![p.d.listen_port.to_string()],
        }];
        self.rule(p, tunnel_name(&p.name), udp, vec!["0.0.0.0/0".into()])
    }

    fn rule(
        &self,
        p: &Pass<'_>,
        name: String,
        allowed: Vec<Allowed>,
        source_ranges: Vec<String>,
    ) -> Firewall {
        Firewall {
            name,
            description: p.marker(&self.install),
            network: network::path(p.project(), &self.network),
            direction: "INGRESS".into(),
            priority: 1000,
            disabled: false,
            allowed,
            source_ranges,
            target_tags: vec![p.name.clone()],
            creation_timestamp: None,
        }
    }

    /// Both rules; ready when both are as wanted.
    pub(super) async fn ensure_firewall(&self, p: &Pass<'_>) -> (Step<()>, Vec<PendingOp>) {
        // Between verifications of the same desired state, rules a pass found as wanted
        // stand (another desired state, a spec edit, verifies at once).
        if !p.verify
            && p.rec.firewall.as_deref() == Some(p.name.as_str())
            && p.pending(ResourceKind::Firewall).is_none()
            && p.pending(ResourceKind::TunnelFirewall).is_none()
        {
            return (Step::Ready(()), Vec::new());
        }
        let ((fwd, mut ops), (tun, tun_ops)) = futures_util::future::join(
            self.ensure_rule(p, ResourceKind::Firewall, self.forwards_rule(p)),
            self.ensure_rule(p, ResourceKind::TunnelFirewall, self.tunnel_rule(p)),
        )
        .await;
        ops.extend(tun_ops);
        let step = match (fwd, tun) {
            (Step::Failed(e), _) | (_, Step::Failed(e)) => Step::Failed(e),
            (Step::Waiting(w), _) | (_, Step::Waiting(w)) => Step::Waiting(w),
            (Step::Ready(()), Step::Ready(())) => Step::Ready(()),
        };
        (step, ops)
    }

    /// One rule: created when missing, patched back when its shape drifted.
    async fn ensure_rule(
        &self,
        p: &Pass<'_>,
        kind: ResourceKind,
        want: Firewall,
    ) -> (Step<()>, Vec<PendingOp>) {
        let mut ops = Vec::new();
        // An insert (or patch) whose operation was in flight: the rule exists, read it.
        let written = p.pending(kind).is_some();
        if let Some(s) = self.check_pending(p, kind, &mut ops).await {
            return (s, ops);
        }
        let name = want.name.clone();
        let path = path(p.project(), &name);
        let insert = || Mutation {
            method: Method::POST,
            path: format!("projects/{}/global/firewalls", p.project()),
            body: Some(&want),
            op: "insert firewall",
            kind,
            what: &name,
            scope: "global".into(),
        };
        let found = match p.snap.as_ref().and_then(|s| s.firewall(&name)) {
            Some(v) => Ok(Some(v)),
            // Never recorded: inserted at once rather than first read and found missing
            // (at thousands of new Gateways those reads were a tenth of all GCP calls). A
            // rule that exists anyway (an answer lost, a name adopted) is refused as
            // alreadyExists and then read like any other.
            None if p.rec.firewall.is_none() && !written => {
                match self
                    .mutate(Some(p), insert(), &p.request_id(kind.as_str()))
                    .await
                {
                    Err(e) if e.is_already_exists() => {
                        self.get_opt::<Firewall>(Service::Compute, &path, "get firewall", &name)
                            .await
                    }
                    other => return (Self::finish_op(other, (), &mut ops), ops),
                }
            }
            None => {
                self.get_opt::<Firewall>(Service::Compute, &path, "get firewall", &name)
                    .await
            }
        };
        let (method, path, op, rid) = match found {
            Err(e) => return (Step::Failed(e), ops),
            Ok(Some(v)) if !marker_ours(&v.description, &self.install, p.id()) => {
                return (
                    Step::Failed(collision("firewall", &name, &v.description)),
                    ops,
                );
            }
            Ok(Some(v)) if shape(&v) == shape(&want) => return (Step::Ready(()), ops),
            Ok(Some(_)) => (
                Method::PATCH,
                path,
                "patch firewall",
                p.request_id(&format!("{kind}-patch")),
            ),
            Ok(None) => (
                Method::POST,
                format!("projects/{}/global/firewalls", p.project()),
                "insert firewall",
                p.request_id(kind.as_str()),
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
                    kind,
                    what: &name,
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
