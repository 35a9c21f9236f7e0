//! Condition types and reasons written to `status.conditions`.
//!
//! `Ready` summarises the others. Its reasons keep the Go operator's vocabulary so that
//! existing alerts and `kubectl wait` scripts keep working; the per-area conditions
//! (`CloudReady`, `TunnelReady`, `DNSReady`) say which part is not there yet.

/// The summary condition: the public endpoint works for every listed forward.
pub const READY: &str = "Ready";
/// Every GCP resource of the Gateway exists and the VM reports itself ready.
pub const CLOUD_READY: &str = "CloudReady";
/// The Lease holder's link pod has a recent WireGuard handshake with the VM.
pub const TUNNEL_READY: &str = "TunnelReady";
/// The external-dns `DNSEndpoint` for `spec.dnsHostnames` is published (informational:
/// it never holds `Ready` back).
pub const DNS_READY: &str = "DNSReady";

/// Reasons shared with the Go operator.
pub mod reasons {
    /// Address provisioned and the tunnel is up.
    pub const READY: &str = "Ready";
    /// Waiting for cloud resources or the tunnel.
    pub const PROVISIONING: &str = "Provisioning";
    /// A reconcile step failed; the message names the step and the error.
    pub const RECONCILE_FAILED: &str = "ReconcileFailed";
    /// The Gateway is being deleted and its cloud resources are draining.
    pub const TERMINATING: &str = "Terminating";
    /// A forward targets a namespace that does not exist.
    pub const TARGET_NAMESPACE_NOT_FOUND: &str = "TargetNamespaceNotFound";
    /// A forward targets another namespace that has not consented with the label
    /// `wgnet.dev/allow-gateway-ingress=true`.
    pub const CROSS_NAMESPACE_FORWARD_DENIED: &str = "CrossNamespaceForwardDenied";
    /// A forward's Service does not exist (yet).
    pub const SERVICE_NOT_FOUND: &str = "ServiceNotFound";
    /// A forward's Service has no ClusterIP to DNAT to (ExternalName or headless).
    pub const UNSUPPORTED_SERVICE_TYPE: &str = "UnsupportedServiceType";
    /// A forward's Service does not publish the target port for the protocol.
    pub const TARGET_PORT_NOT_LISTENING: &str = "TargetPortNotListening";
    /// The cluster refuses to create the link's pods (for example the namespace's
    /// PodSecurity level forbids NET_ADMIN); the message quotes the refusal.
    pub const LINK_PODS_REJECTED: &str = "LinkPodsRejected";
    /// An object the operator would create (ServiceAccount, ConfigMap, Service, ...) has a
    /// name already taken by one that is not this Gateway's or EgressGateway's; it is left
    /// untouched.
    pub const NAME_COLLISION: &str = "NameCollision";
    /// `spec.gcp.projectID` is outside the operator's allowed projects; nothing was
    /// created.
    pub const PROJECT_NOT_ALLOWED: &str = "ProjectNotAllowed";
    /// A field the schema bounds holds a value the operator cannot use (an object
    /// admitted under an older CRD, or one it cannot read at all).
    pub const INVALID_SPEC: &str = "InvalidSpec";
    /// The operator's admin policy refuses a field of the spec (machine type, image, disk
    /// size, a DNS name) or the namespace's Gateway count; the message names the rule.
    /// Nothing is created.
    pub const POLICY_REFUSED: &str = "PolicyRefused";
    /// An EgressGateway's `configSecretRef` names a Secret that does not exist.
    pub const CONFIG_SECRET_NOT_FOUND: &str = "ConfigSecretNotFound";
    /// An EgressGateway's tunnel had handshakes but its last one is too old: the VPN server
    /// is unreachable or no longer accepts the key. The link pod is unready meanwhile.
    pub const HANDSHAKE_STALE: &str = "HandshakeStale";
    /// An EgressGateway's Secret lacks the key `configSecretRef.key` names.
    pub const CONFIG_KEY_NOT_FOUND: &str = "ConfigKeyNotFound";
    /// An EgressGateway's wg-quick file is not one the link can use; the message names
    /// the line and why, never its content.
    pub const INVALID_CONFIG: &str = "InvalidConfig";

    /// A LoadBalancer Service names no GCP project or region, neither by annotation nor
    /// by the operator's defaults; no Gateway is created for it.
    pub const PLACEMENT_MISSING: &str = "PlacementMissing";
    /// A LoadBalancer Service has a port a Gateway cannot forward (SCTP, or more than 64
    /// ports); no Gateway is created, and an existing one keeps its last ports.
    pub const UNSUPPORTED_SERVICE_PORT: &str = "UnsupportedServicePort";

    /// Every reason above, for exhaustive checks in tests and docs.
    pub const ALL: &[&str] = &[
        READY,
        PROVISIONING,
        RECONCILE_FAILED,
        TERMINATING,
        TARGET_NAMESPACE_NOT_FOUND,
        CROSS_NAMESPACE_FORWARD_DENIED,
        SERVICE_NOT_FOUND,
        UNSUPPORTED_SERVICE_TYPE,
        TARGET_PORT_NOT_LISTENING,
        LINK_PODS_REJECTED,
        NAME_COLLISION,
        PROJECT_NOT_ALLOWED,
        POLICY_REFUSED,
        INVALID_SPEC,
        CONFIG_SECRET_NOT_FOUND,
        HANDSHAKE_STALE,
        CONFIG_KEY_NOT_FOUND,
        INVALID_CONFIG,
        PLACEMENT_MISSING,
        UNSUPPORTED_SERVICE_PORT,
    ];
}

/// Messages of the `Ready` condition shared with the Go operator.
pub mod messages {
    /// `Ready=True`.
    pub const READY: &str = "gateway address provisioned and active link tunnel up";
    /// `Ready=False` while provisioning.
    pub const PROVISIONING: &str = "waiting for gateway address and active link tunnel";
}

#[cfg(test)]
mod tests {
    /// Every reason the operator writes is one a user can look up in the README.
    #[test]
    fn every_reason_is_documented() {
        let readme = include_str!("../../../README.md");
        for r in super::reasons::ALL {
            assert!(readme.contains(&format!("`{r}`")), "README lacks `{r}`");
        }
    }
}
