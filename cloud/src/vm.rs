//! The gateway VM's instance metadata: the startup script (one file, identical for every
//! gateway) and the per-gateway `wgnet-*` attributes it reads. Pure.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

/// The POSIX-sh startup script every gateway VM runs at boot (see `startup.sh`).
pub const STARTUP_SCRIPT: &str = include_str!("startup.sh");

/// Per-gateway values the VM needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmConfig {
    /// WireGuard UDP port.
    pub listen_port: u16,
    /// Tunnel MTU.
    pub mtu: u16,
    /// The VM's tunnel address.
    pub gateway_address: Ipv4Addr,
    /// The link's tunnel address (the DNAT target).
    pub link_address: Ipv4Addr,
    /// Tunnel subnet in CIDR form.
    pub subnet: String,
    /// The link's WireGuard public key (base64).
    pub link_public_key: String,
    /// The VM's own WireGuard public key (base64): the VM checks the private key it
    /// fetched against it before using it.
    pub vm_public_key: String,
}

/// The attribute naming the exact Secret Manager version that holds the VM's key
/// (`projects/P/secrets/S/versions/N`). The cloud layer sets it, and only to a version
/// that exists, so the VM never reads a key that is not there yet; a change makes the VM
/// fetch that version.
pub const KEY_VERSION_ATTRIBUTE: &str = "wgnet-key-secret-version";

/// Instance metadata for [`crate::Desired::metadata`].
pub fn metadata(c: &VmConfig) -> BTreeMap<String, String> {
    [
        ("startup-script", STARTUP_SCRIPT.to_owned()),
        ("wgnet-listen-port", c.listen_port.to_string()),
        ("wgnet-mtu", c.mtu.to_string()),
        ("wgnet-gateway-address", c.gateway_address.to_string()),
        ("wgnet-link-address", c.link_address.to_string()),
        ("wgnet-subnet", c.subnet.clone()),
        ("wgnet-peer-public-key", c.link_public_key.clone()),
        ("wgnet-public-key", c.vm_public_key.clone()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}
