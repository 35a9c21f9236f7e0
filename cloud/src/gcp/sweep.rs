//! What an install owns in a project, for the orphan sweep: secrets by label, firewalls and
//! service accounts by description marker, grouped by the gateway they name, with the
//! creation time of the newest. Nothing without this install's and cluster's marks is
//! listed. I/O (reads only): a fresh snapshot of the project, which the steady gateways'
//! passes of the same resync then read too, so a resync lists each kind once; with
//! snapshots off, one list per kind of its own.

use std::collections::{BTreeMap, BTreeSet};

use super::snapshot::Snapshot;
use super::wire::{Firewall, FirewallList, Secret, SecretList, ServiceAccount, ServiceAccountList};
use super::{GcpCloud, encode};
use crate::api::Service;
use crate::error::CloudError;
use crate::{Owned, TargetKey, names};

/// Kinds found per gateway, and the newest creation time among them.
#[derive(Default)]
struct Found(BTreeMap<TargetKey, (BTreeSet<&'static str>, Option<String>)>);

impl Found {
    fn add(&mut self, key: TargetKey, kind: &'static str, created: Option<&String>) {
        let (kinds, newest) = self.0.entry(key).or_default();
        kinds.insert(kind);
        // RFC 3339 timestamps in UTC compare as strings.
        if let Some(c) = created
            && newest.as_ref().is_none_or(|n| n < c)
        {
            *newest = Some(c.clone());
        }
    }
}

impl GcpCloud {
    pub(super) async fn owned(&self, project: &str) -> Result<Vec<Owned>, CloudError> {
        let mut found = Found::default();
        let install = names::label_value(&self.install);
        let cluster = names::label_value(&self.cluster);
        let filter = format!(
            "labels.{}={install} AND labels.{}={cluster}",
            names::LABEL_INSTALL,
            names::LABEL_CLUSTER
        );
        let snap = self.fresh_snapshot(project).await;
        let snap = snap.as_deref();
        // Each resource is decoded from the snapshot, read and dropped in turn: decoded all
        // at once, a project's secrets, rules and accounts were megabytes at hundreds of
        // gateways.
        let mut add_secret = |s: Secret| {
            let get = |k: &str| s.labels.get(k).cloned().unwrap_or_default();
            let key = TargetKey {
                namespace: get(names::LABEL_NAMESPACE),
                name: get(names::LABEL_NAME),
                uid: get(names::LABEL_UID),
                project: project.to_owned(),
                region: get(names::LABEL_REGION),
                zone: get(names::LABEL_ZONE),
            };
            found.add(key, "secret", s.create_time.as_ref());
        };
        match snap.and_then(Snapshot::all_secrets) {
            Some(all) => all.for_each(&mut add_secret),
            None => self
                .list_all::<SecretList>(
                    Service::Secrets,
                    &format!("projects/{project}/secrets?filter={}", encode(&filter)),
                    "list secrets",
                    project,
                )
                .await?
                .into_iter()
                .for_each(&mut add_secret),
        }
        let mut add_marker = |desc: &str, kind: &'static str, created: Option<&String>| {
            if let Some(m) = names::parse_marker(desc)
                && m.install == self.install
                && m.cluster == self.cluster
            {
                let key = TargetKey {
                    namespace: m.namespace,
                    name: m.name,
                    uid: m.uid,
                    project: project.to_owned(),
                    region: m.region,
                    zone: m.zone,
                };
                found.add(key, kind, created);
            }
        };
        let mut add_firewall =
            |f: Firewall| add_marker(&f.description, "firewall", f.creation_timestamp.as_ref());
        match snap.and_then(Snapshot::all_firewalls) {
            Some(all) => all.for_each(&mut add_firewall),
            None => self
                .list_all::<FirewallList>(
                    Service::Compute,
                    &format!("projects/{project}/global/firewalls"),
                    "list firewalls",
                    project,
                )
                .await?
                .into_iter()
                .for_each(&mut add_firewall),
        }
        let mut add_account =
            |a: ServiceAccount| add_marker(&a.description, "serviceAccount", None);
        match snap.and_then(Snapshot::all_accounts) {
            Some(all) => all.for_each(&mut add_account),
            None => self
                .list_all::<ServiceAccountList>(
                    Service::Iam,
                    &format!("projects/{project}/serviceAccounts?pageSize=100"),
                    "list service accounts",
                    project,
                )
                .await?
                .into_iter()
                .for_each(&mut add_account),
        }
        Ok(found
            .0
            .into_iter()
            .map(|(target, (kinds, newest))| Owned {
                target,
                kinds: kinds.into_iter().collect(),
                newest,
            })
            .collect())
    }
}
