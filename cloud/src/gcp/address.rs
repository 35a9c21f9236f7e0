//! The static external address, when the Gateway asks for one: reserved before the VM so a
//! recreated VM keeps its IP. I/O.

use reqwest::Method;

use super::ops::{Mutation, OpState};
use super::wire::Address;
use super::{GcpCloud, Pass, Step, collision, labels_ours};
use crate::api::Service;
use crate::{PendingOp, ResourceKind};

/// The address's path.
pub(super) fn path(project: &str, region: &str, name: &str) -> String {
    format!("projects/{project}/regions/{region}/addresses/{name}")
}

impl GcpCloud {
    /// Ready with the IP once reserved (`None` when the Gateway wants an ephemeral one).
    pub(super) async fn ensure_address(
        &self,
        p: &Pass<'_>,
    ) -> (Step<Option<String>>, Vec<PendingOp>) {
        let mut ops = Vec::new();
        if !p.d.reserved_ip {
            return (Step::Ready(None), ops);
        }
        // An insert whose operation was in flight: the address exists, read it.
        let inserted = p.pending(ResourceKind::Address).is_some();
        if let Some(s) = self.check_pending(p, ResourceKind::Address, &mut ops).await {
            return (s, ops);
        }
        // Between verifications the record stands; a verifying pass reads it back (from
        // the project's snapshot when there is one).
        if !p.verify
            && p.rec.address_name.as_deref() == Some(p.name.as_str())
            && p.rec.instance.is_some()
            && let Some(ip) = &p.rec.address
        {
            return (Step::Ready(Some(ip.clone())), ops);
        }
        let t = &p.d.target;
        let path = path(p.project(), &t.region, &p.name);
        let observe = |v: &Address| {
            if !labels_ours(&v.labels, &self.install, p.id()) {
                return Step::Failed(collision("address", &p.name, &v.description));
            }
            match (v.status.as_deref(), v.address.as_deref()) {
                (Some("RESERVED" | "IN_USE"), Some(ip)) => Step::Ready(Some(ip.to_owned())),
                (s, _) => Step::Waiting(format!(
                    "address {} is {}",
                    p.name,
                    s.unwrap_or("being reserved")
                )),
            }
        };
        let body = Address {
            name: p.name.clone(),
            description: p.marker(&self.install),
            address_type: "EXTERNAL".into(),
            network_tier: "PREMIUM".into(),
            labels: p.labels(&self.install),
            status: None,
            address: None,
        };
        let insert = || Mutation {
            method: Method::POST,
            path: format!("projects/{}/regions/{}/addresses", p.project(), t.region),
            body: Some(&body),
            op: "insert address",
            kind: ResourceKind::Address,
            what: &p.name,
            scope: ResourceKind::Address.scope(t),
        };
        let rid = p.request_id("address");
        let found = match p.snap.as_ref().and_then(|s| s.address(&t.region, &p.name)) {
            Some(v) => Ok(Some(v)),
            // Never recorded: reserved at once rather than first read and found missing
            // (see `ensure_rule`); one that exists anyway is refused as alreadyExists and
            // then read like any other. Only in a project known to exist (its network was
            // read back lately): this step runs beside the network's, and nothing is sent
            // blind into a project that may not be there.
            None if p.rec.address_name.is_none() && !inserted && self.network_seen(p.project()) => {
                match self.mutate(Some(p), insert(), &rid).await {
                    Err(e) if e.is_already_exists() => {
                        self.get_opt::<Address>(Service::Compute, &path, "get address", &p.name)
                            .await
                    }
                    r => {
                        let step = self.reserved(r, &path, &p.name, &observe, &mut ops).await;
                        return (step, ops);
                    }
                }
            }
            None => {
                self.get_opt::<Address>(Service::Compute, &path, "get address", &p.name)
                    .await
            }
        };
        match found {
            Err(e) => (Step::Failed(e), ops),
            Ok(Some(v)) => (observe(&v), ops),
            Ok(None) => {
                let r = self.mutate(Some(p), insert(), &rid).await;
                let step = self.reserved(r, &path, &p.name, &observe, &mut ops).await;
                (step, ops)
            }
        }
    }

    /// After an insert: a done one is read for its IP (`observe`), a running one is
    /// waited for.
    async fn reserved(
        &self,
        r: Result<OpState, crate::CloudError>,
        path: &str,
        name: &str,
        observe: &impl Fn(&Address) -> Step<Option<String>>,
        ops: &mut Vec<PendingOp>,
    ) -> Step<Option<String>> {
        match r {
            Ok(OpState::Done) => match self
                .get::<Address>(Service::Compute, path, "get address", name)
                .await
            {
                Ok(v) => observe(&v),
                Err(e) => Step::Failed(e),
            },
            other => Self::finish_op(other, None, ops),
        }
    }
}
