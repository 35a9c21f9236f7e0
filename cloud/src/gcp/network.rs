//! The shared VPC network: one per install and project, marked by its description, created
//! once and deleted by the last gateway out (GCP refuses while another uses it). I/O.

use reqwest::Method;

use super::ops::Mutation;
use super::wire::{Network, RoutingConfig};
use super::{GcpCloud, Pass, Step, collision};
use crate::api::Service;
use crate::{PendingOp, ResourceKind, names};

/// The network's path.
pub(super) fn path(project: &str, network: &str) -> String {
    format!("projects/{project}/global/networks/{network}")
}

impl GcpCloud {
    pub(super) async fn ensure_network(&self, p: &Pass<'_>) -> (Step<()>, Vec<PendingOp>) {
        let mut ops = Vec::new();
        if let Some(s) = self.check_pending(p, ResourceKind::Network, &mut ops).await {
            return (s, ops);
        }
        let steady = !p.verify
            && p.rec.network.as_deref() == Some(self.network.as_str())
            && p.rec.firewall.is_some()
            && p.rec.instance.is_some();
        if steady || self.network_seen(p.project()) {
            return (Step::Ready(()), ops);
        }
        let lock = self.network_read_lock(p.project());
        let _one_at_a_time = lock.lock().await;
        if self.network_seen(p.project()) {
            return (Step::Ready(()), ops);
        }
        let marker = names::network_marker(&self.install);
        let step = match self
            .get_opt::<Network>(
                Service::Compute,
                &path(p.project(), &self.network),
                "get network",
                &self.network,
            )
            .await
        {
            Err(e) => Step::Failed(e),
            Ok(Some(v)) if v.description == marker => {
                self.note_network(p.project(), true);
                Step::Ready(())
            }
            Ok(Some(v)) => Step::Failed(collision("network", &self.network, &v.description)),
            Ok(None) => {
                let body = Network {
                    name: self.network.clone(),
                    description: marker,
                    auto_create_subnetworks: true,
                    routing_config: Some(RoutingConfig {
                        routing_mode: "REGIONAL".into(),
                    }),
                };
                let rid = p.request_id("network");
                let r = self
                    .mutate(
                        Some(p),
                        Mutation {
                            method: Method::POST,
                            path: format!("projects/{}/global/networks", p.project()),
                            body: Some(&body),
                            op: "insert network",
                            kind: ResourceKind::Network,
                            what: &self.network,
                            scope: "global".into(),
                        },
                        &rid,
                    )
                    .await;
                let step = Self::finish_op(r, (), &mut ops);
                if matches!(step, Step::Ready(())) {
                    self.note_network(p.project(), true);
                }
                step
            }
        };
        (step, ops)
    }
}
