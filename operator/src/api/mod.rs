//! The `wgnet.dev/v1alpha1` API: one module per kind plus the condition vocabulary.
//!
//! Every `///` comment on a spec or status field becomes that field's description in the
//! generated CRD, which is what `kubectl explain` shows, so they are written for users.
//! Validation lives in the schema itself (OpenAPI constraints and CEL rules) so the API
//! server rejects bad input before the operator ever sees it.

pub mod conditions;
pub mod egress_gateway;
pub mod gateway;
mod patterns;

pub use egress_gateway::{
    ConfigSecretRef, EgressForward, EgressGateway, EgressGatewaySpec, EgressGatewayStatus,
};
pub use gateway::{
    Forward, ForwardStatus, Gateway, GatewaySpec, GatewayStatus, GcpSpec, GcpStatus, LinkSpec,
    PendingOperation, Provider, WireguardSpec,
};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// API group of every kind this operator serves.
pub const GROUP: &str = "wgnet.dev";
/// The only served and stored version.
pub const VERSION: &str = "v1alpha1";

/// Finalizer that holds a Gateway until its cloud resources are gone (the Go operator's name).
pub const FINALIZER: &str = "wgnet.dev/gateway-teardown";

/// Label a namespace must carry (value `true`) to accept forwards from Gateways in other
/// namespaces (the Go operator's consent label).
pub const ALLOW_INGRESS_LABEL: &str = "wgnet.dev/allow-gateway-ingress";

/// Transport protocol of a forwarded port.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq, Hash)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    /// TCP (the default).
    #[default]
    Tcp,
    /// UDP.
    Udp,
}

impl Protocol {
    /// The spelling used in the API (`TCP` / `UDP`).
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
        }
    }
}

/// A PROXY protocol version a forward may send its Service.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq, Hash)]
pub enum ProxyProtocol {
    /// Version 2, the binary header: HAProxy's `accept-proxy`, nginx's
    /// `listen ... proxy_protocol`, Traefik's and Envoy's PROXY listeners.
    #[serde(rename = "v2")]
    V2,
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
