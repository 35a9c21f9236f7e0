//! What an install owns in a project, for the orphan sweep: secrets by label, firewalls and
//! service accounts by description marker, grouped by the gateway they name. Nothing
//! without this install's and cluster's marks is listed. I/O (reads only).

use std::collections::{BTreeMap, BTreeSet};

use super::wire::{FirewallList, SecretList, ServiceAccountList};
use super::{GcpCloud, encode};
use crate::api::Service;
use crate::error::CloudError;
use crate::{Owned, TargetKey, names};

impl GcpCloud {
    pub(super) async fn owned(&self, project: &str) -> Result<Vec<Owned>, CloudError> {
        let mut found: BTreeMap<TargetKey, BTreeSet<&'static str>> = BTreeMap::new();
        let install = names::label_value(&self.install);
        let cluster = names::label_value(&self.cluster);
        let filter = format!(
            "labels.{}={install} AND labels.{}={cluster}",
            names::LABEL_INSTALL,
            names::LABEL_CLUSTER
        );
        let secrets: SecretList = self
            .get(
                Service::Secrets,
                &format!("projects/{project}/secrets?filter={}", encode(&filter)),
                "list secrets",
                project,
            )
            .await?;
        for s in secrets.secrets {
            let get = |k: &str| s.labels.get(k).cloned().unwrap_or_default();
            found
                .entry(TargetKey {
                    namespace: get(names::LABEL_NAMESPACE),
                    name: get(names::LABEL_NAME),
                    uid: get(names::LABEL_UID),
                    project: project.to_owned(),
                    region: get(names::LABEL_REGION),
                    zone: get(names::LABEL_ZONE),
                })
                .or_default()
                .insert("secret");
        }
        let mut add_marker = |desc: &str, kind: &'static str| {
            if let Some(m) = names::parse_marker(desc)
                && m.install == self.install
                && m.cluster == self.cluster
            {
                found
                    .entry(TargetKey {
                        namespace: m.namespace,
                        name: m.name,
                        uid: m.uid,
                        project: project.to_owned(),
                        region: m.region,
                        zone: m.zone,
                    })
                    .or_default()
                    .insert(kind);
            }
        };
        let fws: FirewallList = self
            .get(
                Service::Compute,
                &format!("projects/{project}/global/firewalls"),
                "list firewalls",
                project,
            )
            .await?;
        for f in &fws.items {
            add_marker(&f.description, "firewall");
        }
        let sas: ServiceAccountList = self
            .get(
                Service::Iam,
                &format!("projects/{project}/serviceAccounts"),
                "list service accounts",
                project,
            )
            .await?;
        for a in &sas.accounts {
            add_marker(&a.description, "serviceAccount");
        }
        Ok(found
            .into_iter()
            .map(|(target, kinds)| Owned {
                target,
                kinds: kinds.into_iter().collect(),
            })
            .collect())
    }
}
