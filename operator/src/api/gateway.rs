//! The `Gateway` kind: public TCP/UDP ports on a cloud VM, tunnelled into in-cluster Services.
//!
//! Pure data: the types, their defaults and the validation rules embedded in the CRD. The
//! field names, defaults, short name and printer columns keep the Go operator's contract; the
//! rules it lacked (address-in-subnet, bounds, immutability, name formats) are added here.

use std::collections::BTreeMap;

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{Protocol, patterns};
use crate::k8s::{Affinity, Condition, LocalObjectReference, ResourceRequirements, Toleration};

/// Longest Gateway name: `<name>-link` must still be a DNS label (63) for the link's
/// Deployment, Service account and labels.
pub const MAX_NAME_LENGTH: usize = 52;
/// Most forwards one Gateway may list (the GCP firewall and the nftables plans stay small).
pub const MAX_FORWARDS: usize = 64;
/// Most hostnames one Gateway may publish.
pub const MAX_DNS_HOSTNAMES: usize = 16;

/// Desired state of a Gateway: where its VM runs, how the tunnel is set up, and which public
/// ports reach which Services.
#[derive(CustomResource, KubeSchema, Clone, Debug, Deserialize, Serialize, PartialEq)]
#[kube(
    group = "wgnet.dev",
    version = "v1alpha1",
    kind = "Gateway",
    namespaced,
    status = "GatewayStatus",
    shortname = "gw",
    category = "wgnet",
    doc = "A public endpoint on a cloud VM whose ports are tunnelled over WireGuard into \
           in-cluster Services.",
    printcolumn(name = "Address", type_ = "string", json_path = ".status.address",
                description = "Public IPv4 address of the gateway VM"),
    printcolumn(name = "Ready", type_ = "string",
                json_path = ".status.conditions[?(@.type==\"Ready\")].status",
                description = "Whether every forward is reachable"),
    printcolumn(name = "Forwards", type_ = "string", json_path = ".status.forwardsReady",
                description = "Active forwards out of those listed"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new("size(self.metadata.name) <= 52")
        .message("Gateway names are limited to 52 characters so that the names derived from them fit Kubernetes limits"),
)]
#[x_kube(
    validation = Rule::new(
        "!has(self.forwards) || self.forwards.all(f1, self.forwards.exists_one(f2, f2.port == f1.port && f2.protocol == f1.protocol))"
    ).message("each forward must use a unique port and protocol combination"),
    validation = Rule::new(
        "!has(self.forwards) || self.forwards.all(f, !(f.protocol == 'UDP' && f.port == self.wireguard.listenPort))"
    ).message("a UDP forward must not use the WireGuard listen port (spec.wireguard.listenPort)"),
    validation = Rule::new(
        "!has(self.forwards) || self.forwards.all(f, !has(f.proxyProtocol) || f.protocol == 'TCP')"
    ).message("proxyProtocol is relayed for TCP forwards only"),
)]
#[serde(rename_all = "camelCase")]
pub struct GatewaySpec {
    /// Cloud provider that hosts the gateway VM. Only `gcp` is implemented. Immutable.
    #[serde(default)]
    #[x_kube(validation = Rule::new("self == oldSelf").message("provider is immutable"))]
    pub provider: Provider,

    /// Where and how the gateway VM runs on Google Cloud.
    pub gcp: GcpSpec,

    /// WireGuard tunnel between the VM and the in-cluster link. Every field has a default.
    #[serde(default)]
    pub wireguard: WireguardSpec,

    /// The in-cluster link Deployment that dials the VM.
    #[serde(default)]
    pub link: LinkSpec,

    /// Public ports and the in-cluster Services they reach. A Gateway with no forwards still
    /// holds its VM and address.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub forwards: Vec<Forward>,

    /// Client IPv4 ranges allowed through the cloud firewall to the forwarded ports.
    /// Defaults to everyone (`0.0.0.0/0`). The WireGuard port has a rule of its own, open to
    /// every source, so these ranges never cut the link's tunnel.
    #[serde(default = "default_source_ranges")]
    #[schemars(length(min = 1, max = 256), inner(regex(pattern = patterns::IPV4_CIDR)))]
    pub source_ranges: Vec<String>,

    /// Host names to publish for the gateway address through an external-dns `DNSEndpoint`.
    /// Clearing the list removes the record.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 16),
        inner(length(max = 253), regex(pattern = patterns::FQDN)),
        extend("x-kubernetes-list-type" = "set")
    )]
    pub dns_hostnames: Vec<String>,
}

fn default_source_ranges() -> Vec<String> {
    vec!["0.0.0.0/0".to_owned()]
}

/// Cloud provider of the gateway VM.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    /// Google Cloud (Compute Engine).
    #[default]
    Gcp,
}

/// Google Cloud placement and shape of the gateway VM.
#[derive(KubeSchema, Clone, Debug, Deserialize, Serialize, PartialEq)]
#[x_kube(validation = Rule::new("self.zone.startsWith(self.region + '-')")
    .message("zone must be in region (for example zone us-central1-a is in region us-central1)"))]
#[serde(rename_all = "camelCase")]
pub struct GcpSpec {
    /// GCP project that holds the VM and every other cloud resource of this Gateway. Immutable.
    /// Domain-scoped project ids (`example.com:project`) are not supported.
    #[serde(rename = "projectID")]
    #[schemars(length(min = 6, max = 30), regex(pattern = patterns::GCP_PROJECT))]
    #[x_kube(validation = Rule::new("self == oldSelf")
        .message("projectID is immutable: create a new Gateway to move it to another project"))]
    pub project_id: String,

    /// Region of the static address, such as `us-central1`. Immutable.
    #[schemars(length(min = 1, max = 63), regex(pattern = patterns::GCP_REGION))]
    #[x_kube(validation = Rule::new("self == oldSelf")
        .message("region is immutable: create a new Gateway to move it to another region"))]
    pub region: String,

    /// Zone of the VM, inside `region`, such as `us-central1-a`. Immutable.
    #[schemars(length(min = 1, max = 63), regex(pattern = patterns::GCP_ZONE))]
    #[x_kube(validation = Rule::new("self == oldSelf")
        .message("zone is immutable: create a new Gateway to move it to another zone"))]
    pub zone: String,

    /// Compute Engine machine type of the VM.
    #[serde(default = "default_machine_type")]
    #[schemars(length(min = 1, max = 63), regex(pattern = patterns::GCP_MACHINE_TYPE))]
    pub machine_type: String,

    /// Boot image or image family. It must be Debian 12 compatible: the VM's startup script
    /// installs WireGuard and nftables with apt when they are missing.
    #[serde(default = "default_image")]
    #[schemars(length(min = 1, max = 256), regex(pattern = patterns::GCP_IMAGE))]
    pub image: String,

    /// Boot disk size in GB.
    #[serde(rename = "diskSizeGB", default = "default_disk_size")]
    #[schemars(range(min = 10, max = 65536))]
    pub disk_size_gb: i32,

    /// Reserve a static regional address, so the public IP survives VM replacement and
    /// stop/start. With `false` the VM gets an ephemeral address that may change.
    #[serde(rename = "reservedIP", default = "default_true")]
    pub reserved_ip: bool,

    /// Run the VM as a Spot VM: cheaper, but Google may stop it at any time; the operator
    /// starts it again.
    #[serde(default)]
    pub spot: bool,
}

impl GcpSpec {
    /// A VM in `project`, `region` and `zone` with every other field at its default.
    pub fn new(project_id: String, region: String, zone: String) -> Self {
        Self {
            project_id,
            region,
            zone,
            machine_type: default_machine_type(),
            image: default_image(),
            disk_size_gb: default_disk_size(),
            reserved_ip: true,
            spot: false,
        }
    }
}

fn default_machine_type() -> String {
    "e2-small".to_owned()
}

fn default_image() -> String {
    "projects/debian-cloud/global/images/family/debian-12".to_owned()
}

fn default_disk_size() -> i32 {
    10
}

fn default_true() -> bool {
    true
}

/// WireGuard tunnel settings shared by the VM and the link.
#[derive(KubeSchema, Clone, Debug, Deserialize, Serialize, PartialEq)]
#[x_kube(
    validation = Rule::new("self.gatewayAddress != self.linkAddress")
        .message("gatewayAddress and linkAddress must be different addresses"),
    validation = Rule::new("cidr(self.subnet).ip() == cidr(self.subnet).masked().ip()")
        .message("subnet must be a network address with the host bits zero (for example 10.99.0.0/29)"),
    validation = Rule::new("cidr(self.subnet).prefixLength() <= 30")
        .message("subnet must be /30 or larger to hold both tunnel addresses"),
    validation = Rule::new("cidr(self.subnet).containsIP(self.gatewayAddress)")
        .message("gatewayAddress must lie inside subnet"),
    validation = Rule::new("cidr(self.subnet).containsIP(self.linkAddress)")
        .message("linkAddress must lie inside subnet"),
)]
#[serde(rename_all = "camelCase")]
pub struct WireguardSpec {
    /// UDP port WireGuard listens on at the VM. UDP forwards may not use it; a TCP forward on
    /// the same number works.
    #[schemars(range(min = 1, max = 65535))]
    #[serde(default = "default_listen_port")]
    pub listen_port: i32,

    /// Tunnel subnet (IPv4 CIDR) holding both tunnel addresses.
    #[schemars(length(max = 18), regex(pattern = patterns::IPV4_CIDR))]
    #[serde(default = "default_subnet")]
    pub subnet: String,

    /// Tunnel address of the VM (IPv4, inside `subnet`).
    #[schemars(length(max = 15), regex(pattern = patterns::IPV4))]
    #[serde(default = "default_gateway_address")]
    pub gateway_address: String,

    /// Tunnel address of the in-cluster link (IPv4, inside `subnet`).
    #[schemars(length(max = 15), regex(pattern = patterns::IPV4))]
    #[serde(default = "default_link_address")]
    pub link_address: String,

    /// Persistent keepalive in seconds sent by the link, which keeps NAT mappings on the
    /// cluster's side open.
    #[schemars(range(min = 1, max = 3600))]
    #[serde(default = "default_keepalive")]
    pub keepalive: i32,

    /// MTU of the tunnel interfaces on both ends. TCP MSS is clamped to match.
    #[schemars(range(min = 1280, max = 1500))]
    #[serde(default = "default_mtu")]
    pub mtu: i32,

    /// How often the link re-resolves and re-applies its configuration even without a
    /// change notification, as a duration between 1s and 1h such as `10s` or `1m`.
    #[schemars(length(max = 32), regex(pattern = patterns::DURATION))]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1s') && duration(self) <= duration('1h')")
        .message("reconcileInterval must be between 1s and 1h"))]
    #[serde(default = "default_reconcile_interval")]
    pub reconcile_interval: String,
}

impl WireguardSpec {
    /// `reconcileInterval` in whole seconds (rounded up, at least 1, at most 3600): the
    /// link's resync period. The CRD admits only Go-style durations from 1s to 1h; anything
    /// else (an object admitted under an older CRD) falls back to the default 10 s.
    pub fn reconcile_interval_seconds(&self) -> u64 {
        duration_millis(&self.reconcile_interval)
            .map_or(10, |ms| ms.div_ceil(1000))
            .clamp(1, 3600)
    }
}

/// Milliseconds of a Go duration such as `10s`, `1m30s`, `1.5h` or `500ms` (the units
/// `h`, `m`, `s`, `ms`, `us`/`µs`, `ns`); `None` when it is not one.
fn duration_millis(s: &str) -> Option<u64> {
    let mut rest = s.trim();
    if rest.is_empty() {
        return None;
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let value: f64 = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let factor = match &rest[..unit_len] {
            "h" => 3_600_000.0,
            "m" => 60_000.0,
            "s" => 1000.0,
            "ms" => 1.0,
            "us" | "µs" => 0.001,
            "ns" => 0.000_001,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += value * factor;
    }
    // Bounded by the CRD to an hour; the cast cannot truncate anything meaningful.
    Some(total.ceil() as u64)
}

impl Default for WireguardSpec {
    fn default() -> Self {
        Self {
            listen_port: default_listen_port(),
            subnet: default_subnet(),
            gateway_address: default_gateway_address(),
            link_address: default_link_address(),
            keepalive: default_keepalive(),
            mtu: default_mtu(),
            reconcile_interval: default_reconcile_interval(),
        }
    }
}

fn default_listen_port() -> i32 {
    51820
}

fn default_subnet() -> String {
    "10.99.0.0/29".to_owned()
}

fn default_gateway_address() -> String {
    "10.99.0.1".to_owned()
}

fn default_link_address() -> String {
    "10.99.0.2".to_owned()
}

fn default_keepalive() -> i32 {
    25
}

fn default_mtu() -> i32 {
    1380
}

fn default_reconcile_interval() -> String {
    "10s".to_owned()
}

/// The in-cluster link Deployment.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct LinkSpec {
    /// Link pods. One holds the tunnel; more are hot standbys that take over through leader
    /// election, protected by a PodDisruptionBudget.
    #[schemars(range(min = 1, max = 5))]
    pub replicas: i32,

    /// Compute resources of the link container.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// Node labels the link pods must match.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,

    /// Tolerations of the link pods.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,

    /// Affinity of the link pods. With several replicas, the operator adds a preferred
    /// anti-affinity spreading them over nodes unless this sets one of its own.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,

    /// Secrets in this namespace for pulling the link image from a private registry.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub image_pull_secrets: Vec<LocalObjectReference>,
}

impl Default for LinkSpec {
    fn default() -> Self {
        Self {
            replicas: 1,
            resources: None,
            node_selector: BTreeMap::new(),
            tolerations: Vec::new(),
            affinity: None,
            image_pull_secrets: Vec::new(),
        }
    }
}

/// One public port and the Service it reaches.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Forward {
    /// Public port on the gateway address.
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,

    /// Transport protocol, `TCP` (default) or `UDP`.
    #[serde(default)]
    pub protocol: Protocol,

    /// Name of the target Service (not a DNS name).
    #[schemars(length(min = 1, max = 63), regex(pattern = patterns::DNS1035_LABEL))]
    pub service: String,

    /// Namespace of the target Service; defaults to the Gateway's. Another namespace must
    /// carry the label `wgnet.dev/allow-gateway-ingress=true`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63), regex(pattern = patterns::DNS1123_LABEL))]
    pub namespace: Option<String>,

    /// Service port (`spec.ports[].port`, not the pod's container port) to send traffic to;
    /// defaults to `port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub target_port: Option<i32>,

    /// `v2`: the link accepts this port's TCP connections itself and opens each to the
    /// Service behind a PROXY protocol v2 header carrying the client's address and port, so
    /// a PROXY-aware backend (HAProxy `accept-proxy`, nginx `proxy_protocol`) sees the real
    /// client. TCP only. The backend must expect the header: anything else reads it as
    /// garbage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_protocol: Option<super::ProxyProtocol>,
}

impl Forward {
    /// The Service port traffic goes to (`targetPort`, else `port`).
    pub fn effective_target_port(&self) -> i32 {
        self.target_port.unwrap_or(self.port)
    }
}

/// Observed state of a Gateway.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GatewayStatus {
    /// Public IPv4 address of the gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,

    /// The `metadata.generation` this status was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// `Ready` plus `CloudReady`, `TunnelReady` and `DNSReady`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,

    /// Per-forward state, in spec order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub forwards: Vec<ForwardStatus>,

    /// Active forwards out of those listed, such as `2/3`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forwards_ready: Option<String>,

    /// Cloud resources this Gateway owns and the operation in flight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gcp: Option<GcpStatus>,
}

/// Observed state of one forward.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ForwardStatus {
    /// Public port.
    pub port: i32,
    /// Transport protocol.
    pub protocol: Protocol,
    /// Whether traffic to this port reaches the Service.
    pub active: bool,
    /// Why the forward is inactive (a condition reason such as `ServiceNotFound`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Human-readable explanation of `reason`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// ClusterIP the link sends this port to.
    #[serde(default, rename = "clusterIP", skip_serializing_if = "Option::is_none")]
    pub cluster_ip: Option<String>,
}

/// Names of the GCP resources a Gateway owns, and the operation being waited on.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct GcpStatus {
    /// Shared VPC network name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// Firewall rule name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firewall: Option<String>,
    /// Static address name (when `reservedIP`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address_name: Option<String>,
    /// Compute instance name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// Email of the VM's service account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_email: Option<String>,
    /// Secret Manager secret holding the VM's WireGuard private key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// Version of the key pair set the VM and link use; bumped when keys are replaced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_version: Option<i64>,
    /// State the VM reports about itself (booting, installing, fetching-key, ready, error).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm_state: Option<String>,
    /// Secret Manager version holding the current VM key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_version: Option<String>,
    /// Whether the VM's service account has been granted access to its secret.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub iam_bound: bool,
    /// Long-running GCP operations the next reconcile checks.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pending_operations: Vec<PendingOperation>,
}

/// A long-running Compute Engine operation.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PendingOperation {
    /// The resource it acts on: `network`, `firewall`, `tunnel-firewall`, `address` or
    /// `instance`.
    #[serde(default)]
    pub resource: String,
    /// Operation name.
    #[schemars(length(max = 128), regex(pattern = patterns::GCP_OPERATION_NAME))]
    pub name: String,
    /// Where the operation lives: `global`, `regions/<region>` or `zones/<zone>`.
    #[schemars(length(max = 80), regex(pattern = patterns::GCP_OPERATION_SCOPE))]
    pub scope: String,
    /// What the operation does, such as `insert instance`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

impl GatewaySpec {
    /// Namespace a forward targets, given the Gateway's own namespace.
    pub fn forward_namespace<'a>(forward: &'a Forward, gateway_namespace: &'a str) -> &'a str {
        forward.namespace.as_deref().unwrap_or(gateway_namespace)
    }
}

#[cfg(test)]
mod tests {
    /// reconcileInterval strings become the link's resync period in whole seconds.
    #[test]
    fn reconcile_interval_in_seconds() {
        let secs = |v: &str| {
            super::WireguardSpec {
                reconcile_interval: v.into(),
                ..super::WireguardSpec::default()
            }
            .reconcile_interval_seconds()
        };
        assert_eq!(secs("10s"), 10);
        assert_eq!(secs("1m30s"), 90);
        assert_eq!(secs("1.5m"), 90);
        assert_eq!(secs("1h"), 3600);
        assert_eq!(secs("1500ms"), 2, "rounded up");
        assert_eq!(secs("100ms"), 1, "at least a second");
        assert_eq!(secs("2h"), 3600, "at most an hour");
        assert_eq!(
            secs("ten seconds"),
            10,
            "the default for what is not a duration"
        );
        assert_eq!(secs(""), 10);
    }

    use super::*;

    /// Omitting `wireguard` and `link` must give every default, as the Go operator's `default: {}` did.
    #[test]
    fn omitted_sections_deserialize_to_defaults() {
        let spec: GatewaySpec = serde_json::from_value(serde_json::json!({
            "gcp": {"projectID": "my-project", "region": "us-central1", "zone": "us-central1-a"},
            "forwards": [{"port": 443, "service": "my-app"}]
        }))
        .expect("minimal spec parses");
        assert_eq!(spec.wireguard, WireguardSpec::default());
        assert_eq!(spec.wireguard.listen_port, 51820);
        assert_eq!(spec.link.replicas, 1);
        assert_eq!(spec.gcp.machine_type, "e2-small");
        assert_eq!(spec.gcp.disk_size_gb, 10);
        assert!(spec.gcp.reserved_ip);
        assert!(!spec.gcp.spot);
        assert_eq!(spec.source_ranges, vec!["0.0.0.0/0"]);
        assert_eq!(spec.forwards[0].protocol, Protocol::Tcp);
        assert_eq!(spec.forwards[0].effective_target_port(), 443);
    }

    /// A forward without a namespace targets the Gateway's own namespace.
    #[test]
    fn forward_namespace_defaults_to_gateway_namespace() {
        let mut f = Forward {
            port: 80,
            protocol: Protocol::Tcp,
            service: "web".into(),
            namespace: None,
            target_port: Some(8080),
            proxy_protocol: None,
        };
        assert_eq!(GatewaySpec::forward_namespace(&f, "apps"), "apps");
        f.namespace = Some("other".into());
        assert_eq!(GatewaySpec::forward_namespace(&f, "apps"), "other");
        assert_eq!(f.effective_target_port(), 8080);
    }
}
