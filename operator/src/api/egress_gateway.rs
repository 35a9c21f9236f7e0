//! The `EgressGateway` kind: one link pod that holds a single third-party VPN identity and
//! forwards listed Service ports to hosts behind that VPN.
//!
//! Pure data and schema rules. The wg-quick configuration itself lives in a Secret the user
//! owns; it is parsed by the controller, never copied into this resource.

use std::collections::BTreeMap;

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{Protocol, patterns};
use crate::k8s::{
    Affinity, Condition, LocalObjectReference, ResourceRequirements, Time, Toleration,
};

/// Desired state of an EgressGateway: the VPN configuration to use and the ports to forward.
#[derive(CustomResource, KubeSchema, Clone, Debug, Deserialize, Serialize, PartialEq)]
#[kube(
    group = "wgnet.dev",
    version = "v1alpha1",
    kind = "EgressGateway",
    namespaced,
    status = "EgressGatewayStatus",
    shortname = "egw",
    category = "wgnet",
    doc = "A WireGuard VPN client pod that forwards ClusterIP Service ports to hosts behind the VPN.",
    printcolumn(name = "Service", type_ = "string", json_path = ".status.serviceName",
                description = "ClusterIP Service pods connect to"),
    printcolumn(name = "Ready", type_ = "string",
                json_path = ".status.conditions[?(@.type==\"Ready\")].status",
                description = "Whether the tunnel has a recent handshake"),
    printcolumn(name = "Handshake", type_ = "date", json_path = ".status.lastHandshakeTime",
                description = "Time of the last WireGuard handshake"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new("size(self.metadata.name) <= 52")
        .message("EgressGateway names are limited to 52 characters so that the names derived from them fit Kubernetes limits"),
)]
#[x_kube(
    validation = Rule::new(
        "self.forwards.all(f1, self.forwards.exists_one(f2, f2.port == f1.port && f2.protocol == f1.protocol))"
    ).message("each forward must use a unique port and protocol combination"),
    validation = Rule::new("self.forwards.all(f1, self.forwards.exists_one(f2, f2.name == f1.name))")
        .message("each forward must have a unique name"),
    validation = Rule::new(
        "self.forwards.all(f1, self.forwards.exists_one(f2, (has(f2.servicePort) ? f2.servicePort : f2.port) == (has(f1.servicePort) ? f1.servicePort : f1.port) && f2.protocol == f1.protocol))"
    ).message("each forward must use a unique Service port and protocol combination"),
)]
#[serde(rename_all = "camelCase")]
pub struct EgressGatewaySpec {
    /// Secret in this namespace holding a wg-quick configuration (`[Interface]` with
    /// PrivateKey and Address, one `[Peer]` with PublicKey, Endpoint and AllowedIPs).
    pub config_secret_ref: ConfigSecretRef,

    /// Ports of the ClusterIP Service and the remote host:port each one reaches through
    /// the tunnel.
    #[schemars(length(min = 1, max = 64))]
    pub forwards: Vec<EgressForward>,

    /// Compute resources of the link container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// Node labels the link pod must match.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,

    /// Tolerations of the link pod.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,

    /// Affinity of the link pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,

    /// Secrets in this namespace for pulling the link image from a private registry.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub image_pull_secrets: Vec<LocalObjectReference>,

    /// Further namespaces whose pods may use the tunnel (the link pod's ingress
    /// NetworkPolicy); `*` allows every namespace. The EgressGateway's own namespace is
    /// always allowed, and by default it is the only one: a VPN identity is its owner's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(regex(pattern = patterns::NAMESPACE_OR_ALL)))]
    pub client_namespaces: Vec<String>,
}

/// Reference to the key of a Secret holding a wg-quick configuration.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ConfigSecretRef {
    /// Secret name, in the EgressGateway's namespace.
    #[schemars(length(min = 1, max = 253), regex(pattern = patterns::DNS1123_SUBDOMAIN))]
    pub name: String,

    /// Key of the Secret's data that holds the configuration.
    #[serde(default = "default_config_key")]
    #[schemars(length(min = 1, max = 253), regex(pattern = patterns::SECRET_KEY))]
    pub key: String,
}

fn default_config_key() -> String {
    "wg0.conf".to_owned()
}

/// One Service port forwarded to a remote host through the tunnel.
#[derive(KubeSchema, Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct EgressForward {
    /// Name of the Service port (an IANA service name: lower case, at most 15 characters).
    #[schemars(length(min = 1, max = 15), regex(pattern = patterns::PORT_NAME))]
    #[x_kube(
        validation = Rule::new("self.matches('[a-z]')").message("forward name must contain at least one letter"),
        validation = Rule::new("!self.contains('--')").message("forward name must not contain '--'"),
    )]
    pub name: String,

    /// Port the link pod listens on, and the Service's port unless `servicePort` is set.
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,

    /// Port of the ClusterIP Service, when clients should use another port than the link
    /// listens on: a well-known port kept for clients (`servicePort: 1433`) while the link
    /// listens elsewhere (`port: 1434`). Defaults to `port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub service_port: Option<i32>,

    /// Transport protocol, `TCP` (default) or `UDP`.
    #[serde(default)]
    pub protocol: Protocol,

    /// Remote host behind the VPN: an IPv4 address or a DNS name, re-resolved periodically.
    #[schemars(length(min = 1, max = 253), regex(pattern = patterns::DNS1123_SUBDOMAIN))]
    #[x_kube(validation = Rule::new("!self.matches('^[0-9.]+$') || isIP(self)")
        .message("targetHost looks like an IPv4 address but is not a valid one"))]
    pub target_host: String,

    /// Port on the remote host.
    #[schemars(range(min = 1, max = 65535))]
    pub target_port: i32,
}

/// Observed state of an EgressGateway.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EgressGatewayStatus {
    /// The `metadata.generation` this status was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// `Ready` (a recent WireGuard handshake) and the reason when not.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,

    /// Name of the ClusterIP Service pods connect to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_name: Option<String>,

    /// Time of the last WireGuard handshake with the VPN server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_handshake_time: Option<Time>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The config key and forward protocol default as documented.
    #[test]
    fn omitted_fields_take_defaults() {
        let spec: EgressGatewaySpec = serde_json::from_value(serde_json::json!({
            "configSecretRef": {"name": "vpn"},
            "forwards": [{"name": "mssql", "port": 1433, "targetHost": "10.0.0.5", "targetPort": 1433}]
        }))
        .expect("minimal spec parses");
        assert_eq!(spec.config_secret_ref.key, "wg0.conf");
        assert_eq!(spec.forwards[0].protocol, Protocol::Tcp);
    }
}
