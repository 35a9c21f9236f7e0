//! The request and response bodies this crate exchanges with Compute v1, IAM v1 and Secret
//! Manager v1, as typed structs named after their discovery schemas. Only the fields the
//! crate writes or reads are declared; unknown fields in answers are ignored. A test in
//! `cloud/tests/wire.rs` checks every body against Google's discovery documents in
//! `testdata/gcp-discovery/`. Pure.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Compute `Operation`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Operation {
    /// Its name, for `get` and `wait`.
    pub name: String,
    /// `PENDING`, `RUNNING` or `DONE`.
    pub status: String,
    /// URL of the zone of a zonal operation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// URL of the region of a regional operation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Set when the operation failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<OperationError>,
}

/// Compute `Operation.error`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct OperationError {
    /// The errors, most relevant first.
    pub errors: Vec<OperationErrorItem>,
}

/// One error of a failed operation.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct OperationErrorItem {
    /// Such as `ZONE_RESOURCE_POOL_EXHAUSTED` or `QUOTA_EXCEEDED`.
    pub code: String,
    /// Google's message.
    pub message: String,
}

impl Operation {
    /// `DONE`.
    pub fn is_done(&self) -> bool {
        self.status == "DONE"
    }

    /// The first error of a failed operation.
    pub fn first_error(&self) -> Option<&OperationErrorItem> {
        self.error.as_ref()?.errors.first()
    }

    /// `zones/<z>` or `regions/<r>` from the operation's own URLs, else `fallback`.
    pub fn scope(&self, fallback: &str) -> String {
        let last = |u: &Option<String>| {
            u.as_deref()
                .and_then(|u| u.rsplit('/').next())
                .map(str::to_owned)
        };
        last(&self.zone)
            .map(|z| format!("zones/{z}"))
            .or_else(|| last(&self.region).map(|r| format!("regions/{r}")))
            .unwrap_or_else(|| fallback.to_owned())
    }
}

/// Compute `NetworkRoutingConfig`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct RoutingConfig {
    /// `REGIONAL` or `GLOBAL`.
    pub routing_mode: String,
}

/// Compute `Network`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Network {
    /// Name.
    pub name: String,
    /// The install marker.
    pub description: String,
    /// One subnet per region, created by GCP.
    pub auto_create_subnetworks: bool,
    /// Routing mode.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub routing_config: Option<RoutingConfig>,
}

/// Compute `Firewall.allowed[]`.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(default)]
pub struct Allowed {
    /// `tcp` or `udp`.
    #[serde(rename = "IPProtocol")]
    pub ip_protocol: String,
    /// Port numbers as strings.
    pub ports: Vec<String>,
}

/// Compute `Firewall`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Firewall {
    /// Name.
    pub name: String,
    /// The gateway marker.
    pub description: String,
    /// The network's URL or path.
    pub network: String,
    /// `INGRESS`.
    pub direction: String,
    /// Priority.
    pub priority: i32,
    /// Disabled rules match nothing.
    pub disabled: bool,
    /// Protocols and ports.
    pub allowed: Vec<Allowed>,
    /// Client ranges.
    pub source_ranges: Vec<String>,
    /// Instances it applies to.
    pub target_tags: Vec<String>,
    /// When GCP created it, RFC 3339 (answers only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub creation_timestamp: Option<String>,
}

/// Compute `Address`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Address {
    /// Name.
    pub name: String,
    /// The gateway marker.
    pub description: String,
    /// `EXTERNAL`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub address_type: String,
    /// `PREMIUM`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub network_tier: String,
    /// Ownership labels.
    pub labels: BTreeMap<String, String>,
    /// `RESERVING`, `RESERVED` or `IN_USE` (answers only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// The IP (answers only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
}

/// Compute `Metadata`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Metadata {
    /// Required by `setMetadata`, from the last read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    /// The entries.
    pub items: Vec<MetadataItem>,
}

impl Metadata {
    /// The entries as a map.
    pub fn to_map(&self) -> BTreeMap<String, String> {
        self.items
            .iter()
            .map(|i| (i.key.clone(), i.value.clone()))
            .collect()
    }

    /// Entries from a map.
    pub fn from_map(fingerprint: Option<String>, m: &BTreeMap<String, String>) -> Self {
        Self {
            fingerprint,
            items: m
                .iter()
                .map(|(key, value)| MetadataItem {
                    key: key.clone(),
                    value: value.clone(),
                })
                .collect(),
        }
    }
}

/// One metadata entry.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct MetadataItem {
    /// Key.
    pub key: String,
    /// Value.
    pub value: String,
}

/// Compute `Tags`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Tags {
    /// Network tags.
    pub items: Vec<String>,
}

/// Compute `AttachedDiskInitializeParams`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct DiskParams {
    /// Image URL or family.
    pub source_image: String,
    /// Size in GB (an int64, which JSON carries as a string).
    pub disk_size_gb: String,
    /// Disk type path.
    pub disk_type: String,
}

/// Compute `AttachedDisk`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct AttachedDisk {
    /// The boot disk.
    pub boot: bool,
    /// Deleted with the instance.
    pub auto_delete: bool,
    /// How to create it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub initialize_params: Option<DiskParams>,
}

/// Compute `AccessConfig`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct AccessConfig {
    /// Name.
    pub name: String,
    /// `ONE_TO_ONE_NAT`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `PREMIUM`.
    pub network_tier: String,
    /// The public IP; GCP picks one when absent.
    #[serde(rename = "natIP", skip_serializing_if = "Option::is_none")]
    pub nat_ip: Option<String>,
}

/// Compute `NetworkInterface`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct NetworkInterface {
    /// The network's path.
    pub network: String,
    /// The external address.
    pub access_configs: Vec<AccessConfig>,
}

/// Compute `ServiceAccount` (an instance's identity).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct InstanceServiceAccount {
    /// Email.
    pub email: String,
    /// OAuth scopes.
    pub scopes: Vec<String>,
}

/// Compute `ShieldedInstanceConfig`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ShieldedInstanceConfig {
    /// Secure boot.
    pub enable_secure_boot: bool,
    /// vTPM.
    pub enable_vtpm: bool,
    /// Integrity monitoring.
    pub enable_integrity_monitoring: bool,
}

/// Compute `Scheduling`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Scheduling {
    /// `SPOT` or `STANDARD`.
    pub provisioning_model: String,
    /// What a Spot VM does when reclaimed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance_termination_action: Option<String>,
    /// Restart after a crash or maintenance.
    pub automatic_restart: bool,
    /// `MIGRATE` or `TERMINATE`.
    pub on_host_maintenance: String,
}

/// Compute `Instance`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Instance {
    /// Name.
    pub name: String,
    /// The gateway marker.
    pub description: String,
    /// Machine type path.
    pub machine_type: String,
    /// Ownership labels.
    pub labels: BTreeMap<String, String>,
    /// Required by `setLabels`, from the last read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label_fingerprint: Option<String>,
    /// Network tags (the firewall's target).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tags: Option<Tags>,
    /// Disks.
    pub disks: Vec<AttachedDisk>,
    /// NICs.
    pub network_interfaces: Vec<NetworkInterface>,
    /// The VM's identity.
    pub service_accounts: Vec<InstanceServiceAccount>,
    /// Metadata.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Metadata>,
    /// Shielded VM.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shielded_instance_config: Option<ShieldedInstanceConfig>,
    /// Scheduling.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scheduling: Option<Scheduling>,
    /// Off: the VM routes only its own tunnel.
    pub can_ip_forward: bool,
    /// Off: the operator deletes it.
    pub deletion_protection: bool,
    /// `PROVISIONING`, `RUNNING`, `TERMINATED`, ... (answers only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
}

impl Instance {
    /// The first NIC's public IP.
    pub fn nat_ip(&self) -> Option<&str> {
        self.network_interfaces
            .first()?
            .access_configs
            .first()?
            .nat_ip
            .as_deref()
    }
}

/// Compute `InstancesSetLabelsRequest`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SetLabelsRequest {
    /// From the last read.
    pub label_fingerprint: Option<String>,
    /// The labels.
    pub labels: BTreeMap<String, String>,
}

/// Compute `FirewallList`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct FirewallList {
    /// The firewalls.
    pub items: Vec<Firewall>,
    /// Set when more pages follow.
    pub next_page_token: Option<String>,
}

/// Compute `GuestAttributes` (the answer to `getGuestAttributes`).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct GuestAttributes {
    /// The values under the queried path.
    pub query_value: GuestAttributesValue,
}

/// Compute `GuestAttributesValue`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct GuestAttributesValue {
    /// The entries.
    pub items: Vec<GuestAttributesEntry>,
}

/// Compute `GuestAttributesEntry`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct GuestAttributesEntry {
    /// Key within the namespace.
    pub key: String,
    /// Value.
    pub value: String,
}

/// IAM `ServiceAccount`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ServiceAccount {
    /// Email (answers only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// Shown in the console.
    pub display_name: String,
    /// The gateway marker.
    pub description: String,
}

/// IAM `CreateServiceAccountRequest`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateServiceAccountRequest {
    /// The part before `@`.
    pub account_id: String,
    /// The account.
    pub service_account: ServiceAccount,
}

/// IAM `ListServiceAccountsResponse`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ServiceAccountList {
    /// The accounts.
    pub accounts: Vec<ServiceAccount>,
    /// Set when more pages follow.
    pub next_page_token: Option<String>,
}

/// Secret Manager `Replication`: automatic.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Replication {
    /// Google chooses the locations.
    pub automatic: serde_json::Map<String, serde_json::Value>,
}

/// Secret Manager `Secret`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Secret {
    /// `projects/<number>/secrets/<id>` (answers only).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// Ownership labels.
    pub labels: BTreeMap<String, String>,
    /// Where it is stored.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replication: Option<Replication>,
    /// When it was created, RFC 3339 (answers only).
    #[serde(rename = "createTime", skip_serializing_if = "Option::is_none")]
    pub create_time: Option<String>,
}

/// Secret Manager `ListSecretsResponse`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct SecretList {
    /// The secrets.
    pub secrets: Vec<Secret>,
    /// Set when more pages follow.
    pub next_page_token: Option<String>,
}

/// Compute `InstanceAggregatedList`: every zone's instances, keyed `zones/<zone>`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct InstanceAggregatedList {
    /// The instances of each scope (a scope without any carries only a warning).
    pub items: BTreeMap<String, InstancesScopedList>,
    /// Set when more pages follow.
    pub next_page_token: Option<String>,
}

/// Compute `AddressAggregatedList`: every region's addresses, keyed `regions/<region>`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct AddressAggregatedList {
    /// The addresses of each scope.
    pub items: BTreeMap<String, AddressesScopedList>,
    /// Set when more pages follow.
    pub next_page_token: Option<String>,
}

/// One scope of an [`AddressAggregatedList`].
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct AddressesScopedList {
    /// The scope's addresses.
    pub addresses: Vec<Address>,
}

impl Page for AddressAggregatedList {
    /// (region, address).
    type Item = (String, Address);
    fn into_parts(self) -> (Vec<(String, Address)>, Option<String>) {
        let items = self
            .items
            .into_iter()
            .filter_map(|(scope, list)| {
                let region = scope.strip_prefix("regions/")?.to_owned();
                Some(list.addresses.into_iter().map(move |a| (region.clone(), a)))
            })
            .flatten()
            .collect();
        (items, self.next_page_token)
    }
}

/// One scope of an [`InstanceAggregatedList`].
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct InstancesScopedList {
    /// The scope's instances.
    pub instances: Vec<Instance>,
}

/// A list answer: one page of items and the token of the next.
pub trait Page: serde::de::DeserializeOwned {
    /// What the list holds.
    type Item;
    /// The page's items and the next page's token (none or empty: the last page).
    fn into_parts(self) -> (Vec<Self::Item>, Option<String>);
}

impl Page for InstanceAggregatedList {
    /// (zone, instance).
    type Item = (String, Instance);
    fn into_parts(self) -> (Vec<(String, Instance)>, Option<String>) {
        let items = self
            .items
            .into_iter()
            .filter_map(|(scope, list)| {
                let zone = scope.strip_prefix("zones/")?.to_owned();
                Some(list.instances.into_iter().map(move |i| (zone.clone(), i)))
            })
            .flatten()
            .collect();
        (items, self.next_page_token)
    }
}

impl Page for FirewallList {
    type Item = Firewall;
    fn into_parts(self) -> (Vec<Firewall>, Option<String>) {
        (self.items, self.next_page_token)
    }
}

impl Page for ServiceAccountList {
    type Item = ServiceAccount;
    fn into_parts(self) -> (Vec<ServiceAccount>, Option<String>) {
        (self.accounts, self.next_page_token)
    }
}

impl Page for SecretList {
    type Item = Secret;
    fn into_parts(self) -> (Vec<Secret>, Option<String>) {
        (self.secrets, self.next_page_token)
    }
}

/// Secret Manager `SecretPayload`; its Debug never shows the data.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SecretPayload {
    /// Base64 of the secret bytes.
    pub data: String,
}

impl std::fmt::Debug for SecretPayload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretPayload(<redacted>)")
    }
}

/// Secret Manager `AddSecretVersionRequest`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct AddSecretVersionRequest {
    /// The key.
    pub payload: SecretPayload,
}

/// Secret Manager `SecretVersion` and `AccessSecretVersionResponse` (the fields read).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct SecretVersion {
    /// `projects/<n>/secrets/<id>/versions/<v>`.
    pub name: String,
    /// The data (access answers only).
    pub payload: Option<SecretPayload>,
}

/// IAM `Binding`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Binding {
    /// The role.
    pub role: String,
    /// Who has it.
    pub members: Vec<String>,
}

/// IAM `Policy`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Policy {
    /// Role bindings.
    pub bindings: Vec<Binding>,
    /// For read-modify-write.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
}

/// IAM `SetIamPolicyRequest`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SetIamPolicyRequest {
    /// The whole policy.
    pub policy: Policy,
}
