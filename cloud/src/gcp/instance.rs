//! The VM: created with its identity, metadata (the startup script and `wgnet-*`
//! attributes), tag and address; started when stopped; its metadata and labels put back
//! when they drift; its guest attributes read as the VM's own report. I/O.

use std::collections::BTreeMap;

use reqwest::Method;

use super::ops::{Mutation, OpState};
use super::wire::{
    AccessConfig, AttachedDisk, DiskParams, GuestAttributes, Instance, InstanceServiceAccount,
    Metadata, NetworkInterface, Scheduling, SetLabelsRequest, ShieldedInstanceConfig, Tags,
};
use super::{GcpCloud, Pass, Step, collision, labels_ours, network};
use crate::api::Service;
use crate::{PendingOp, ResourceKind, Target, vm};

/// A VM's metadata as the last read of its entries (a GET, or a list asking for them)
/// found it. Snapshots list instances without the entries; GCP changes the fingerprint
/// with every change of them, so a listed instance whose fingerprint is this one holds
/// these entries still.
#[derive(Debug)]
pub(super) struct MetadataSeen {
    /// The metadata's fingerprint then.
    fingerprint: Box<str>,
    /// [`metadata_digest`] of its entries then.
    entries: [u8; 32],
}

impl MetadataSeen {
    /// What `metadata` (with its entries) shows, when it has a fingerprint.
    pub(super) fn of(metadata: &Metadata) -> Option<Self> {
        Some(Self {
            fingerprint: metadata.fingerprint.as_deref()?.into(),
            entries: metadata_digest(&metadata.to_map()),
        })
    }
}

/// The key of an instance's [`MetadataSeen`].
pub(super) fn seen_key(project: &str, zone: &str, name: &str) -> String {
    format!("{project}/{zone}/{name}")
}

/// SHA-256 over metadata entries in key order, each key and value length-prefixed so no
/// two different maps share an encoding.
fn metadata_digest(m: &std::collections::BTreeMap<String, String>) -> [u8; 32] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for (k, v) in m {
        for part in [k, v] {
            ctx.update(&(part.len() as u64).to_le_bytes());
            ctx.update(part.as_bytes());
        }
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// The instance's path.
pub(super) fn path(project: &str, zone: &str, name: &str) -> String {
    format!("projects/{project}/zones/{zone}/instances/{name}")
}

impl GcpCloud {
    /// The metadata the VM gets: the gateway's, the key's exact secret version (one that
    /// exists: this runs only once the secret step is ready), and GCP's own switches.
    fn desired_metadata(p: &Pass<'_>, key_version: &str) -> BTreeMap<String, String> {
        let mut m = p.d.metadata.clone();
        m.insert(vm::KEY_VERSION_ATTRIBUTE.into(), key_version.into());
        m.insert("enable-guest-attributes".into(), "TRUE".into());
        m.insert("block-project-ssh-keys".into(), "TRUE".into());
        m
    }

    fn instance_body(
        &self,
        p: &Pass<'_>,
        email: &str,
        ip: Option<&str>,
        key_version: &str,
    ) -> Instance {
        let t = &p.d.target;
        let scheduling = if p.d.spot {
            Scheduling {
                provisioning_model: "SPOT".into(),
                instance_termination_action: Some("STOP".into()),
                automatic_restart: false,
                on_host_maintenance: "TERMINATE".into(),
            }
        } else {
            Scheduling {
                provisioning_model: "STANDARD".into(),
                instance_termination_action: None,
                automatic_restart: true,
                on_host_maintenance: "MIGRATE".into(),
            }
        };
        Instance {
            name: p.name.clone(),
            description: p.marker(&self.install),
            machine_type: format!("zones/{}/machineTypes/{}", t.zone, p.d.machine_type),
            labels: p.labels(&self.install),
            label_fingerprint: None,
            tags: Some(Tags {
                items: vec![p.name.clone()],
            }),
            disks: vec![AttachedDisk {
                boot: true,
                auto_delete: true,
                initialize_params: Some(DiskParams {
                    source_image: p.d.image.clone(),
                    disk_size_gb: p.d.disk_size_gb.to_string(),
                    disk_type: format!("zones/{}/diskTypes/pd-balanced", t.zone),
                }),
            }],
            network_interfaces: vec![NetworkInterface {
                network: network::path(p.project(), &self.network),
                access_configs: vec![AccessConfig {
                    name: "External NAT".into(),
                    type_: "ONE_TO_ONE_NAT".into(),
                    network_tier: "PREMIUM".into(),
                    nat_ip: ip.map(str::to_owned),
                }],
            }],
            service_accounts: vec![InstanceServiceAccount {
                email: email.to_owned(),
                scopes: vec!["https://www.googleapis.com/auth/cloud-platform".into()],
            }],
            metadata: Some(Metadata::from_map(
                None,
                &Self::desired_metadata(p, key_version),
            )),
            shielded_instance_config: Some(ShieldedInstanceConfig {
                enable_secure_boot: true,
                enable_vtpm: true,
                enable_integrity_monitoring: true,
            }),
            scheduling: Some(scheduling),
            can_ip_forward: false,
            deletion_protection: false,
            status: None,
        }
    }

    /// Ready with the VM's status and public IP. `key_version` is the secret version this
    /// pass confirmed exists.
    pub(super) async fn ensure_instance(
        &self,
        p: &Pass<'_>,
        email: &str,
        ip: Option<&str>,
        key_version: &str,
    ) -> (Step<(String, Option<String>)>, Vec<PendingOp>) {
        let mut ops = Vec::new();
        if let Some(s) = self
            .check_pending(p, ResourceKind::Instance, &mut ops)
            .await
        {
            return (s, ops);
        }
        // Between verifications of the same desired state, the VM a pass found RUNNING
        // and as wanted stands for a while (see `RUNNING_TRUSTED`).
        if p.rec.instance.as_deref() == Some(p.name.as_str())
            && let Some(nat) = self.running_as_last_read(p)
        {
            p.vm_as_last_read
                .store(true, std::sync::atomic::Ordering::Relaxed);
            return (Step::Ready(("RUNNING".to_owned(), nat)), ops);
        }
        let t = &p.d.target;
        let path = path(p.project(), &t.zone, &p.name);
        let mutation = |method, path, op| Mutation::<'_, Instance> {
            method,
            path,
            body: None,
            op,
            kind: ResourceKind::Instance,
            what: &p.name,
            scope: ResourceKind::Instance.scope(t),
        };
        let want = Self::desired_metadata(p, key_version);
        let key = seen_key(p.project(), &t.zone, &p.name);
        // From a snapshot: the instance without its metadata's entries. It stands for a
        // read when the last read of the entries was under the same fingerprint (whether
        // they are the wanted ones is then known); otherwise the instance is read.
        let seen = p.snap.as_ref().and_then(|s| s.instance(&t.zone, &p.name));
        let holds_wanted = seen
            .as_ref()
            .and_then(|s| self.metadata_holds(&key, s.metadata.as_ref(), &metadata_digest(&want)));
        let found = match (seen, holds_wanted) {
            (Some(s), Some(_)) => Ok(Some(s)),
            _ => {
                self.get_opt::<Instance>(Service::Compute, &path, "get instance", &p.name)
                    .await
            }
        };
        let v = match found {
            Err(e) => return (Step::Failed(e), ops),
            Ok(Some(v)) => v,
            Ok(None) => {
                let rid = p.request_id("instance");
                let body = self.instance_body(p, email, ip, key_version);
                let insert = Mutation {
                    body: Some(&body),
                    ..mutation(
                        Method::POST,
                        format!("projects/{}/zones/{}/instances", p.project(), t.zone),
                        "insert instance",
                    )
                };
                let r = self.mutate(Some(p), insert, &rid).await;
                return match r {
                    // Instances come up RUNNING when the insert is DONE; read the IP next pass.
                    Ok(OpState::Done) => {
                        (Step::Waiting(format!("instance {} created", p.name)), ops)
                    }
                    other => (Self::finish_op(other, (String::new(), None), &mut ops), ops),
                };
            }
        };
        if !labels_ours(&v.labels, &self.install, p.id()) {
            return (
                Step::Failed(collision("instance", &p.name, &v.description)),
                ops,
            );
        }
        let status = v.status.clone().unwrap_or_default();
        let nat = v.nat_ip().map(str::to_owned);
        match status.as_str() {
            "RUNNING" => {}
            "TERMINATED" | "STOPPED" => {
                let rid = p.request_id("instance-start");
                let r = self
                    .mutate(
                        Some(p),
                        mutation(Method::POST, format!("{path}/start"), "start instance"),
                        &rid,
                    )
                    .await;
                return match r {
                    Ok(OpState::Done) => {
                        (Step::Waiting(format!("instance {} started", p.name)), ops)
                    }
                    other => (Self::finish_op(other, (status, nat), &mut ops), ops),
                };
            }
            s => return (Step::Waiting(format!("instance {} is {s}", p.name)), ops),
        }
        let current = v.metadata.clone().unwrap_or_default();
        let same = match holds_wanted {
            Some(known) => known,
            None => {
                self.note_metadata(key, &current);
                current.to_map() == want
            }
        };
        if !same {
            let body = Metadata::from_map(current.fingerprint, &want);
            let rid = p.request_id("instance-metadata");
            let m = Mutation {
                method: Method::POST,
                path: format!("{path}/setMetadata"),
                body: Some(&body),
                op: "set instance metadata",
                kind: ResourceKind::Instance,
                what: &p.name,
                scope: ResourceKind::Instance.scope(t),
            };
            let r = self.mutate(Some(p), m, &rid).await;
            return (Self::finish_op(r, (status, nat), &mut ops), ops);
        }
        let want_labels = p.labels(&self.install);
        if v.labels != want_labels {
            // The uid changed (adopted) or someone edited labels.
            let body = SetLabelsRequest {
                label_fingerprint: v.label_fingerprint.clone(),
                labels: want_labels,
            };
            let rid = p.request_id("instance-labels");
            let m = Mutation {
                method: Method::POST,
                path: format!("{path}/setLabels"),
                body: Some(&body),
                op: "set instance labels",
                kind: ResourceKind::Instance,
                what: &p.name,
                scope: ResourceKind::Instance.scope(t),
            };
            let r = self.mutate(Some(p), m, &rid).await;
            return (Self::finish_op(r, (status, nat), &mut ops), ops);
        }
        (Step::Ready((status, nat)), ops)
    }

    /// Whether the instance `key` (listed with `metadata`, without its entries) holds the
    /// entries whose digest is `wanted`; `None` when unknown (no read of its entries was
    /// under this fingerprint).
    fn metadata_holds(
        &self,
        key: &str,
        metadata: Option<&Metadata>,
        wanted: &[u8; 32],
    ) -> Option<bool> {
        let fingerprint = metadata?.fingerprint.as_deref()?;
        let seen = self
            .metadata_seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let last = seen.get(key).filter(|s| &*s.fingerprint == fingerprint)?;
        Some(&last.entries == wanted)
    }

    /// Records what a read of instance `key` with its metadata's entries found.
    pub(super) fn note_metadata(&self, key: String, metadata: &Metadata) {
        let mut seen = self
            .metadata_seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match MetadataSeen::of(metadata) {
            Some(m) => seen.insert(key, m),
            None => seen.remove(&key),
        };
    }

    /// Forgets instance `key` (deleted).
    pub(super) fn forget_metadata(&self, key: &str) {
        self.metadata_seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(key);
    }

    /// The VM's own report: its guest attributes under `wgnet/` (empty before it writes).
    pub(super) async fn guest_report(
        &self,
        target: &Target,
    ) -> Result<BTreeMap<String, String>, crate::CloudError> {
        let name = target.id.resource_name();
        let path = format!(
            "{}/getGuestAttributes?queryPath=wgnet%2F",
            path(&target.project, &target.zone, &name)
        );
        let found = self
            .get_opt::<GuestAttributes>(Service::Compute, &path, "get guest attributes", &name)
            .await?;
        Ok(found
            .map(|g| {
                g.query_value
                    .items
                    .into_iter()
                    .map(|i| (i.key, i.value))
                    .collect()
            })
            .unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::metadata_digest;

    #[test]
    fn metadata_digests_tell_maps_apart() {
        let m = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        let a = m(&[("a", "bc"), ("d", "")]);
        assert_eq!(metadata_digest(&a), metadata_digest(&a.clone()));
        // Moving bytes between a key and a value, or between entries, changes it.
        assert_ne!(
            metadata_digest(&a),
            metadata_digest(&m(&[("ab", "c"), ("d", "")]))
        );
        assert_ne!(metadata_digest(&a), metadata_digest(&m(&[("a", "bcd")])));
        assert_ne!(metadata_digest(&a), metadata_digest(&m(&[])));
    }
}
