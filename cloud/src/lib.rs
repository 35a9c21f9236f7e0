//! GCP provisioning for wireguard-gateway-operator, with no Kubernetes dependency.
//!
//! The reconciler calls the [`Cloud`] trait; [`gcp::GcpCloud`] implements it over the Compute,
//! IAM and Secret Manager REST APIs. Every call is non-blocking and idempotent: it advances
//! as far as it can, records names and pending operations in [`Recorded`] (which the operator
//! keeps in `status.gcp`), and is safe to repeat after any failure.
//!
//! I/O boundary: HTTP to GCP through [`api::Api`]; nothing else.

pub mod api;
pub mod budget;
pub mod error;
pub mod gcp;
pub mod names;
pub mod vm;

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use error::CloudError;
pub use names::GatewayId;

/// Where a gateway's resources live.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// Gateway identity.
    pub id: GatewayId,
    /// Project id.
    pub project: String,
    /// Region of the address.
    pub region: String,
    /// Zone of the VM.
    pub zone: String,
}

/// Transport protocol of an opened port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

/// Bytes that must never be printed (the VM's WireGuard private key); wiped when dropped.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretBytes(Vec<u8>);

impl SecretBytes {
    /// Wraps `bytes`.
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(bytes)
    }

    /// The bytes, for the one place that uploads them.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for SecretBytes {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

impl std::fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretBytes(<redacted>)")
    }
}

/// The gateway as the cloud should look.
#[derive(Clone, Debug, PartialEq)]
pub struct Desired {
    /// Identity and placement.
    pub target: Target,
    /// Machine type, such as `e2-small`.
    pub machine_type: String,
    /// Boot image or family path.
    pub image: String,
    /// Boot disk size in GB.
    pub disk_size_gb: i32,
    /// Reserve a static address.
    pub reserved_ip: bool,
    /// Spot provisioning.
    pub spot: bool,
    /// WireGuard UDP port on the VM.
    pub listen_port: u16,
    /// Forwarded ports to open, besides `listen_port`.
    pub ports: Vec<(u16, Protocol)>,
    /// Source CIDRs allowed in.
    pub source_ranges: Vec<String>,
    /// Instance metadata (startup script and `wgnet-*` attributes); the cloud layer adds
    /// `enable-guest-attributes` and `block-project-ssh-keys`.
    pub metadata: BTreeMap<String, String>,
    /// The VM's WireGuard private key, stored in Secret Manager.
    pub vm_key: SecretBytes,
    /// Version of the key set; a new value uploads `vm_key` as a new secret version.
    pub key_version: i64,
}

/// A Compute resource kind of a gateway: the ones with long-running operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ResourceKind {
    /// The shared VPC network (global).
    Network,
    /// The gateway's firewall rule for its forwards, from `sourceRanges` (global).
    Firewall,
    /// The gateway's firewall rule for the WireGuard port, from anywhere: the link dials
    /// from wherever the cluster's egress is, so `sourceRanges` must not cut it (global).
    TunnelFirewall,
    /// The static address (regional).
    Address,
    /// The VM (zonal).
    Instance,
}

impl ResourceKind {
    /// Every kind.
    pub const ALL: [Self; 5] = [
        Self::Network,
        Self::Firewall,
        Self::TunnelFirewall,
        Self::Address,
        Self::Instance,
    ];

    /// The lowercase name, as in `status.gcp.pendingOperations[].resource`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Network => "network",
            Self::Firewall => "firewall",
            Self::TunnelFirewall => "tunnel-firewall",
            Self::Address => "address",
            Self::Instance => "instance",
        }
    }

    /// The kind named `s`, if it is one.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// The scope this kind lives in for `target`: `global`, `regions/<r>` or `zones/<z>`.
    pub fn scope(self, target: &Target) -> String {
        match self {
            Self::Network | Self::Firewall | Self::TunnelFirewall => "global".to_owned(),
            Self::Address => format!("regions/{}", target.region),
            Self::Instance => format!("zones/{}", target.zone),
        }
    }

    /// The operation names used in errors and metrics: (get, delete).
    pub fn get_and_delete(self) -> (&'static str, &'static str) {
        match self {
            Self::Network => ("get network", "delete network"),
            Self::Firewall | Self::TunnelFirewall => ("get firewall", "delete firewall"),
            Self::Address => ("get address", "delete address"),
            Self::Instance => ("get instance", "delete instance"),
        }
    }
}

impl std::fmt::Display for ResourceKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A long-running Compute operation being waited on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PendingOp {
    /// The resource it acts on.
    pub resource: ResourceKind,
    /// Operation name.
    pub name: String,
    /// `global`, `regions/<r>` or `zones/<z>`.
    pub scope: String,
    /// What it does, such as `insert instance wg-...`.
    pub description: String,
}

impl PendingOp {
    /// Whether the scope and name have GCP's shape: `global`, `regions/<r>` or
    /// `zones/<z>`, and an operation name of lowercase letters, digits and hyphens. They
    /// come back from `status.gcp`, which a status writer can change, and become URL path
    /// segments: nothing else may pass.
    pub fn is_well_formed(&self) -> bool {
        let word = |s: &str, max: usize| {
            !s.is_empty()
                && s.len() <= max
                && s.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !s.starts_with('-')
        };
        let scope_ok = self.scope == "global"
            || ["regions/", "zones/"].iter().any(|prefix| {
                self.scope
                    .strip_prefix(prefix)
                    .is_some_and(|rest| word(rest, 63))
            });
        scope_ok && word(&self.name, 128)
    }

    /// Whether this can be one of `target`'s own operations: well formed, a resource kind
    /// the gateway has, in the scope that kind lives in for this target.
    pub fn belongs_to(&self, target: &Target) -> bool {
        self.is_well_formed() && self.scope == self.resource.scope(target)
    }
}

/// What earlier calls established; the operator keeps it in `status.gcp` and hands it back.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Recorded {
    /// Shared VPC network name, once it exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// Firewall name, once it exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firewall: Option<String>,
    /// Static address name, once reserved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address_name: Option<String>,
    /// The public IP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// Instance name, once it exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// Service account email, once it exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_email: Option<String>,
    /// Secret id, once it exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// Secret version holding the current key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_version: Option<String>,
    /// The key version stored in `secret_version`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_version: Option<i64>,
    /// The service account can read the secret.
    #[serde(default)]
    pub iam_bound: bool,
    /// Operations in flight.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pending: Vec<PendingOp>,
}

impl Recorded {
    /// Names of the resources recorded as created (kind and name), for messages that say
    /// what is left in GCP.
    pub fn created(&self) -> Vec<String> {
        [
            ("firewall", &self.firewall),
            ("address", &self.address_name),
            ("instance", &self.instance),
            ("service account", &self.service_account_email),
            ("secret", &self.secret),
        ]
        .into_iter()
        .filter_map(|(kind, name)| name.as_ref().map(|n| format!("{kind} {n}")))
        .collect()
    }

    /// Whether nothing of the gateway's own was ever recorded as created or in flight (the
    /// shared network is not the gateway's).
    pub fn is_empty(&self) -> bool {
        self.created().is_empty() && self.pending.is_empty() && !self.iam_bound
    }
}

/// Result of [`Cloud::ensure`].
#[derive(Debug, Default, PartialEq)]
pub struct Progress {
    /// What to record for the next call.
    pub recorded: Recorded,
    /// Every resource exists as desired and the VM is RUNNING.
    pub ready: bool,
    /// The public IP, once known.
    pub address: Option<String>,
    /// The VM's Compute status (PROVISIONING, RUNNING, TERMINATED, ...).
    pub vm_status: Option<String>,
    /// What is still in progress, in words.
    pub waiting: Vec<String>,
    /// Failures of this pass (other resources still advanced).
    pub errors: Vec<CloudError>,
    /// Writes this pass issued (0 on an unchanged resync).
    pub writes: usize,
}

impl Progress {
    /// When to call again: soon while operations run, per the first error's policy on
    /// failure, and `None` when everything is ready.
    pub fn requeue_after(&self) -> Option<Duration> {
        if let Some(e) = self.errors.first() {
            return Some(e.retry_after());
        }
        (!self.ready).then_some(Duration::from_secs(2))
    }
}

/// Result of [`Cloud::delete`].
#[derive(Debug, Default, PartialEq)]
pub struct DeleteProgress {
    /// What to record for the next call.
    pub recorded: Recorded,
    /// Nothing of the gateway is left.
    pub done: bool,
    /// What is still being deleted.
    pub waiting: Vec<String>,
    /// Failures of this pass.
    pub errors: Vec<CloudError>,
}

/// A gateway found in GCP by its labels or markers.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Owned {
    /// Where it lives.
    pub target: TargetKey,
    /// Resource kinds found for it.
    pub kinds: Vec<&'static str>,
    /// When the newest of them was created (RFC 3339), where GCP says: the sweep leaves
    /// young resources alone, since their Gateway may be being created right now.
    pub newest: Option<String>,
}

/// A [`Target`] usable as a map key.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TargetKey {
    /// Gateway namespace.
    pub namespace: String,
    /// Gateway name.
    pub name: String,
    /// Gateway uid.
    pub uid: String,
    /// Project.
    pub project: String,
    /// Region.
    pub region: String,
    /// Zone.
    pub zone: String,
}

/// What the reconciler needs from a cloud.
pub trait Cloud: Send + Sync {
    /// Advances the gateway's resources towards `desired` without waiting on long operations.
    fn ensure(
        &self,
        desired: &Desired,
        recorded: &Recorded,
    ) -> impl Future<Output = Progress> + Send;

    /// Advances deletion of every resource of `target`; `done` once none is left.
    fn delete(
        &self,
        target: &Target,
        recorded: &Recorded,
    ) -> impl Future<Output = DeleteProgress> + Send;

    /// Gateways of this install and cluster found in `project`, for orphan sweeps.
    fn list_owned(
        &self,
        project: &str,
    ) -> impl Future<Output = Result<Vec<Owned>, CloudError>> + Send;

    /// Guest attributes the VM reported under `wgnet/` (state, error, public key).
    fn vm_report(
        &self,
        target: &Target,
    ) -> impl Future<Output = Result<BTreeMap<String, String>, CloudError>> + Send;

    /// [`Cloud::vm_report`], read only when the project's request budget has room to spare;
    /// `None` (nothing sent) otherwise. For polls that another pass can repeat: they must
    /// not slow the Gateways being created or repaired in the same project.
    fn vm_report_if_spare(
        &self,
        target: &Target,
    ) -> impl Future<Output = Result<Option<BTreeMap<String, String>>, CloudError>> + Send;

    /// Waits (bounded, server side) until one of `recorded.pending` that can be
    /// `target`'s own finishes (see [`PendingOp::belongs_to`]).
    fn wait_any(&self, target: &Target, recorded: &Recorded) -> impl Future<Output = ()> + Send;
}
