//! The link's configuration: the JSON document the operator writes into the link
//! ConfigMap (`config.json`, typed as [`LinkDocument`]: the operator builds it, the link
//! parses it, nobody writes it by hand) plus the key material from the Secret, validated
//! into one [`LinkConfig`]. The same two files can sit in a directory for tests, the sandbox
//! and plain Linux hosts. No I/O here; the sources live in `source`.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::keys::{PublicKey, SecretKey};
use crate::net::{Ipv4Net, Protocol};
use crate::wgquick::{self, WgQuick};

/// ConfigMap key of the JSON document.
pub const CONFIG_KEY: &str = "config.json";
/// Default Secret key of the ingress private key.
pub const PRIVATE_KEY_KEY: &str = "private-key";
/// Default Secret key of the egress wg-quick file.
pub const WG_QUICK_KEY: &str = "wg0.conf";

/// Why a configuration was refused; the message names the field and never a key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// The raw inputs as the sources deliver them. The key material is wiped when dropped and
/// never shown by `Debug`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Raw {
    /// `config.json`, if present.
    pub config: Option<Vec<u8>>,
    /// The key material (`private-key` or `wg0.conf`), if present.
    pub secret: Option<Vec<u8>>,
}

impl std::fmt::Debug for Raw {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Raw")
            .field("config", &self.config.as_ref().map(Vec::len))
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl Drop for Raw {
    fn drop(&mut self) {
        use zeroize::Zeroize as _;
        if let Some(s) = &mut self.secret {
            s.zeroize();
        }
    }
}

/// `config.json`: what the link does, without key material (that comes from the
/// Secret). Unknown fields are refused, so an operator and a link of different versions
/// disagree loudly instead of silently dropping a setting.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "lowercase", deny_unknown_fields)]
pub enum LinkDocument {
    /// A Gateway's link: the VM is the one peer.
    Ingress(IngressDocument),
    /// An EgressGateway's link: the peer comes from the wg-quick file in the Secret.
    Egress(EgressDocument),
}

impl LinkDocument {
    /// The document as the ConfigMap holds it (pretty JSON, stable field order).
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self)
            .expect("a document of strings, numbers and lists always serialises")
    }
}

/// The ingress document.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IngressDocument {
    /// wg0's address with the tunnel's prefix length (`10.99.0.2/29`).
    pub address: String,
    /// wg0 MTU.
    #[serde(default = "default_mtu")]
    pub mtu: u16,
    /// The VM.
    pub peer: PeerDocument,
    /// Forwards from the tunnel to Services.
    #[serde(default)]
    pub forwards: Vec<IngressForward>,
    /// How often the link re-applies its whole configuration, repairing anything changed
    /// behind its back (the Gateway's `spec.wireguard.reconcileInterval`).
    #[serde(default = "default_resync")]
    pub resync_seconds: u64,
}

/// The VM as the ingress document names it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PeerDocument {
    /// `host:port`; empty until the VM's address is known (the link then waits).
    #[serde(default)]
    pub endpoint: String,
    /// The VM's public key (base64); empty until known.
    #[serde(default)]
    pub public_key: String,
    /// Keepalive in seconds (0 = off).
    #[serde(default = "default_keepalive")]
    pub persistent_keepalive: u16,
    /// Source prefixes accepted from the tunnel; empty = any: the VM forwards clients'
    /// packets with their own addresses.
    #[serde(default, rename = "allowedIPs")]
    pub allowed_ips: Vec<String>,
}

/// The egress document.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EgressDocument {
    /// Forwards from the link's ports to hosts behind the VPN.
    #[serde(default)]
    pub forwards: Vec<EgressForward>,
    /// How often target names and the endpoint are re-resolved.
    #[serde(default = "default_resolve")]
    pub resolve_interval_seconds: u64,
}

fn default_mtu() -> u16 {
    1380
}
fn default_keepalive() -> u16 {
    25
}
fn default_resolve() -> u64 {
    30
}
fn default_resync() -> u64 {
    30
}

/// One ingress forward: traffic from the tunnel on `port` goes to `clusterIP:targetPort`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IngressForward {
    /// Public port (as it arrives through the tunnel).
    pub port: u16,
    /// TCP or UDP.
    pub protocol: Protocol,
    /// The Service's ClusterIP (or any reachable address), resolved by the operator.
    #[serde(rename = "clusterIP")]
    pub cluster_ip: Ipv4Addr,
    /// The Service port.
    pub target_port: u16,
    /// `v2`: the link accepts the connections itself and sends each to the Service behind
    /// a PROXY protocol v2 header naming the client (TCP only). Absent: kernel DNAT.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_protocol: Option<ProxyProtocol>,
}

/// A PROXY protocol version a forward may ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ProxyProtocol {
    /// Version 2, the binary header (HAProxy's `accept-proxy`, nginx's `proxy_protocol`).
    #[serde(rename = "v2")]
    V2,
}

/// One egress forward: traffic to the link on `port` goes to `targetHost:targetPort`
/// through the tunnel.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EgressForward {
    /// Name (the Service port name).
    pub name: String,
    /// Port the link listens on.
    pub port: u16,
    /// TCP or UDP.
    pub protocol: Protocol,
    /// Address or DNS name behind the VPN.
    pub target_host: String,
    /// Port on the target.
    pub target_port: u16,
}

/// The WireGuard peer as the data plane needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerConfig {
    /// The peer's public key.
    pub public_key: PublicKey,
    /// Optional preshared key.
    pub preshared_key: Option<SecretKey>,
    /// Host (name or address) and port; `None` means "wait".
    pub endpoint: Option<(String, u16)>,
    /// Persistent keepalive in seconds.
    pub keepalive: Option<u16>,
    /// Source prefixes accepted from the tunnel.
    pub allowed_ips: Vec<Ipv4Net>,
}

/// Ingress mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ingress {
    /// The link's private key.
    pub private_key: SecretKey,
    /// wg0 address and tunnel prefix.
    pub address: Ipv4Net,
    /// wg0 MTU.
    pub mtu: u16,
    /// The VM, once its public key is known.
    pub peer: Option<PeerConfig>,
    /// Forwards, sorted and unique by (port, protocol).
    pub forwards: Vec<IngressForward>,
    /// How often the whole configuration is re-applied.
    pub resync: Duration,
}

/// Egress mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Egress {
    /// The user's VPN identity.
    pub wg: WgQuick,
    /// Forwards, sorted and unique by (port, protocol).
    pub forwards: Vec<EgressForward>,
    /// How often target names and the endpoint are re-resolved.
    pub resolve_interval: Duration,
}

/// A validated configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkConfig {
    /// Ingress mode.
    Ingress(Ingress),
    /// Egress mode.
    Egress(Egress),
}

impl LinkConfig {
    /// wg0 MTU.
    pub fn mtu(&self) -> u16 {
        match self {
            Self::Ingress(i) => i.mtu,
            Self::Egress(e) => e.wg.mtu.unwrap_or(1420),
        }
    }

    /// Persistent keepalive of the peer, if any.
    pub fn keepalive(&self) -> Option<u16> {
        match self {
            Self::Ingress(i) => i.peer.as_ref().and_then(|p| p.keepalive),
            Self::Egress(e) => e.wg.peer.keepalive,
        }
    }

    /// Number of configured forwards.
    pub fn forward_count(&self) -> usize {
        match self {
            Self::Ingress(i) => i.forwards.len(),
            Self::Egress(e) => e.forwards.len(),
        }
    }
}

fn check_ports<'a>(
    items: impl Iterator<Item = (u16, Protocol, u16)> + 'a,
) -> Result<(), ConfigError> {
    let mut seen = BTreeSet::new();
    for (port, proto, target) in items {
        if port == 0 || target == 0 {
            return Err(ConfigError(format!(
                "forward {port}/{}: ports must be 1-65535",
                proto.name()
            )));
        }
        if !seen.insert((port, proto)) {
            return Err(ConfigError(format!(
                "forward {port}/{} is listed twice",
                proto.name()
            )));
        }
    }
    Ok(())
}

/// Validates the raw inputs.
pub fn parse(raw: &Raw) -> Result<LinkConfig, ConfigError> {
    let doc = raw
        .config
        .as_deref()
        .ok_or_else(|| ConfigError(format!("{CONFIG_KEY} is missing")))?;
    let doc: LinkDocument =
        serde_json::from_slice(doc).map_err(|e| ConfigError(format!("{CONFIG_KEY}: {e}")))?;
    let secret = raw
        .secret
        .as_deref()
        .ok_or_else(|| ConfigError("the key Secret is missing or has no key material".into()))?;
    match doc {
        LinkDocument::Ingress(d) => {
            let text = std::str::from_utf8(secret)
                .map_err(|_| ConfigError("the private key is not base64 text".into()))?;
            let private_key =
                SecretKey::parse(text).map_err(|e| ConfigError(format!("the private key {e}")))?;
            let address: Ipv4Net = d
                .address
                .parse()
                .map_err(|e| ConfigError(format!("address: {e}")))?;
            if !(576..=9000).contains(&d.mtu) {
                return Err(ConfigError(format!(
                    "mtu {} is not from 576 to 9000",
                    d.mtu
                )));
            }
            let peer = if d.peer.public_key.is_empty() {
                None
            } else {
                let public_key = PublicKey::parse(&d.peer.public_key)
                    .map_err(|e| ConfigError(format!("peer.publicKey {e}")))?;
                let endpoint = if d.peer.endpoint.is_empty() {
                    None
                } else {
                    Some(
                        wgquick::parse_endpoint(&d.peer.endpoint)
                            .map_err(|e| ConfigError(format!("peer.endpoint: {e}")))?,
                    )
                };
                let allowed_ips = if d.peer.allowed_ips.is_empty() {
                    vec![Ipv4Net {
                        addr: std::net::Ipv4Addr::UNSPECIFIED,
                        prefix: 0,
                    }]
                } else {
                    d.peer
                        .allowed_ips
                        .iter()
                        .map(|s| s.parse())
                        .collect::<Result<_, _>>()
                        .map_err(|e| ConfigError(format!("peer.allowedIPs: {e}")))?
                };
                Some(PeerConfig {
                    public_key,
                    preshared_key: None,
                    endpoint,
                    keepalive: Some(d.peer.persistent_keepalive).filter(|k| *k > 0),
                    allowed_ips,
                })
            };
            let mut forwards = d.forwards;
            forwards.sort();
            check_ports(forwards.iter().map(|f| (f.port, f.protocol, f.target_port)))?;
            if let Some(f) = forwards
                .iter()
                .find(|f| f.proxy_protocol.is_some() && f.protocol != Protocol::Tcp)
            {
                return Err(ConfigError(format!(
                    "forward {}/{}: the PROXY protocol is relayed for TCP only",
                    f.port,
                    f.protocol.name()
                )));
            }
            Ok(LinkConfig::Ingress(Ingress {
                private_key,
                address,
                mtu: d.mtu,
                peer,
                forwards,
                resync: Duration::from_secs(d.resync_seconds.clamp(1, 3600)),
            }))
        }
        LinkDocument::Egress(d) => {
            let wg =
                wgquick::parse(secret).map_err(|e| ConfigError(format!("{WG_QUICK_KEY}: {e}")))?;
            let mut forwards = d.forwards;
            forwards.sort();
            check_ports(forwards.iter().map(|f| (f.port, f.protocol, f.target_port)))?;
            for f in &forwards {
                if wgquick::parse_endpoint(&format!("{}:1", f.target_host)).is_err() {
                    return Err(ConfigError(format!(
                        "forward {}: targetHost {:?} is not a host name or address",
                        f.name, f.target_host
                    )));
                }
            }
            Ok(LinkConfig::Egress(Egress {
                wg,
                forwards,
                resolve_interval: Duration::from_secs(d.resolve_interval_seconds.clamp(1, 3600)),
            }))
        }
    }
}

#[cfg(test)]
mod tests {
    /// The raw inputs hold the private key: printing them never shows it.
    #[test]
    fn raw_inputs_never_print_the_key() {
        let key = b"PrivateKey = yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=".to_vec();
        let raw = super::Raw {
            config: Some(b"{}".to_vec()),
            secret: Some(key.clone()),
        };
        let shown = format!("{raw:?}");
        assert!(!shown.contains(&format!("{key:?}")), "{shown}");
        assert!(!shown.contains("yAnz5TF"), "{shown}");
        assert!(shown.contains("redacted"), "{shown}");
    }

    use super::*;

    const PRIV: &str = "dwdtCnMYpX08FsFyUbJmRd9ML4frwJkqsXf7pR25LCo=";
    const PUB: &str = "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo=";

    fn raw(doc: serde_json::Value, secret: &str) -> Raw {
        Raw {
            config: Some(doc.to_string().into_bytes()),
            secret: Some(secret.as_bytes().to_vec()),
        }
    }

    fn json_has_no_proxy_field_for_plain_forwards(f: &IngressForward) -> bool {
        !serde_json::to_string(f)
            .expect("serializes")
            .contains("proxyProtocol")
    }

    #[test]
    fn the_proxy_protocol_is_refused_on_udp() {
        let e = parse(&raw(
            serde_json::json!({"mode": "ingress", "address": "10.99.0.2/29", "peer": {},
                "forwards": [{"port": 53, "protocol": "UDP", "clusterIP": "10.96.0.11",
                              "targetPort": 53, "proxyProtocol": "v2"}]}),
            PRIV,
        ))
        .expect_err("UDP");
        assert!(e.to_string().contains("forward 53/udp"), "{e}");
    }

    /// The document the operator builds is exactly what the link reads back: every field
    /// survives JSON, and the validated config carries the values (the resync period
    /// included, which is how a Gateway's reconcileInterval reaches the link).
    #[test]
    fn documents_round_trip_through_json() {
        let ingress = LinkDocument::Ingress(IngressDocument {
            address: "10.99.0.2/29".into(),
            mtu: 1400,
            peer: PeerDocument {
                endpoint: "203.0.113.7:51820".into(),
                public_key: PUB.into(),
                persistent_keepalive: 5,
                allowed_ips: vec!["10.99.0.0/29".into()],
            },
            forwards: vec![
                IngressForward {
                    port: 8080,
                    protocol: Protocol::Tcp,
                    cluster_ip: Ipv4Addr::new(10, 96, 0, 10),
                    target_port: 80,
                    proxy_protocol: None,
                },
                IngressForward {
                    port: 443,
                    protocol: Protocol::Tcp,
                    cluster_ip: Ipv4Addr::new(10, 96, 0, 11),
                    target_port: 8443,
                    proxy_protocol: Some(ProxyProtocol::V2),
                },
            ],
            resync_seconds: 10,
        });
        let json = ingress.to_json();
        assert_eq!(
            serde_json::from_str::<LinkDocument>(&json).expect("parses"),
            ingress
        );
        let raw = Raw {
            config: Some(json.into_bytes()),
            secret: Some(PRIV.as_bytes().to_vec()),
        };
        let LinkConfig::Ingress(i) = parse(&raw).expect("valid") else {
            panic!("ingress expected")
        };
        assert_eq!(i.resync, Duration::from_secs(10));
        assert_eq!(i.mtu, 1400);
        assert_eq!(i.forwards.len(), 2);
        assert_eq!(i.forwards[0].proxy_protocol, Some(ProxyProtocol::V2));
        assert!(
            json_has_no_proxy_field_for_plain_forwards(&i.forwards[1]),
            "a plain forward's document is what older links read"
        );
        let peer = i.peer.expect("peer");
        assert_eq!(peer.endpoint, Some(("203.0.113.7".into(), 51820)));
        assert_eq!(peer.keepalive, Some(5));

        let egress = LinkDocument::Egress(EgressDocument {
            forwards: vec![EgressForward {
                name: "db".into(),
                port: 1433,
                protocol: Protocol::Udp,
                target_host: "db.corp".into(),
                target_port: 1434,
            }],
            resolve_interval_seconds: 7,
        });
        let json = egress.to_json();
        assert_eq!(
            serde_json::from_str::<LinkDocument>(&json).expect("parses"),
            egress
        );
        let wg = format!(
            "[Interface]\nPrivateKey = {PRIV}\nAddress = 10.8.0.2/32\n[Peer]\nPublicKey = {PUB}\nEndpoint = 192.0.2.1:51820\nAllowedIPs = 10.0.0.0/8\n"
        );
        let raw = Raw {
            config: Some(json.into_bytes()),
            secret: Some(wg.into_bytes()),
        };
        let LinkConfig::Egress(e) = parse(&raw).expect("valid") else {
            panic!("egress expected")
        };
        assert_eq!(e.resolve_interval, Duration::from_secs(7));
        assert_eq!(e.forwards[0].target_port, 1434);
    }

    #[test]
    fn ingress_with_defaults() {
        let c = parse(&raw(
            serde_json::json!({"mode": "ingress", "address": "10.99.0.2/29",
                "peer": {"endpoint": "203.0.113.7:51820", "publicKey": PUB},
                "forwards": [{"port": 8080, "protocol": "TCP", "clusterIP": "10.96.0.10", "targetPort": 80},
                             {"port": 53, "protocol": "UDP", "clusterIP": "10.96.0.11", "targetPort": 5353}]}),
            PRIV,
        ))
        .expect("valid");
        let LinkConfig::Ingress(i) = c else {
            panic!("ingress")
        };
        assert_eq!(i.mtu, 1380);
        let peer = i.peer.expect("peer");
        assert_eq!(peer.keepalive, Some(25));
        assert_eq!(
            peer.allowed_ips,
            vec!["0.0.0.0/0".parse().expect("net")],
            "clients' own addresses come through the tunnel"
        );
        assert_eq!(i.forwards[0].port, 53, "sorted");
    }

    #[test]
    fn ingress_waits_without_a_peer() {
        let c = parse(&raw(
            serde_json::json!({"mode": "ingress", "address": "10.99.0.2/29", "peer": {}}),
            PRIV,
        ))
        .expect("valid");
        assert!(matches!(c, LinkConfig::Ingress(Ingress { peer: None, .. })));
    }

    #[test]
    fn refusals_are_clear_and_keyless() {
        let cases = [
            (
                serde_json::json!({"mode": "ingress", "address": "10.99.0.2/29", "peer": {},
                "forwards": [{"port": 80, "protocol": "TCP", "clusterIP": "10.0.0.1", "targetPort": 80},
                             {"port": 80, "protocol": "TCP", "clusterIP": "10.0.0.2", "targetPort": 81}]}),
                PRIV,
                "forward 80/tcp is listed twice",
            ),
            (
                serde_json::json!({"mode": "ingress", "address": "nope", "peer": {}}),
                PRIV,
                "address",
            ),
            (
                serde_json::json!({"mode": "ingress", "address": "10.99.0.2/29", "peer": {}, "extra": 1}),
                PRIV,
                "unknown field",
            ),
            (
                serde_json::json!({"mode": "sideways"}),
                PRIV,
                "unknown variant",
            ),
            (
                serde_json::json!({"mode": "ingress", "address": "10.99.0.2/29", "peer": {"publicKey": "abc"}}),
                PRIV,
                "peer.publicKey",
            ),
            (
                serde_json::json!({"mode": "ingress", "address": "10.99.0.2/29", "peer": {}}),
                "AAAA",
                "the private key decodes to 3 bytes",
            ),
            (
                serde_json::json!({"mode": "egress", "forwards": []}),
                "[Interface]\nPrivateKey = AAAA\n",
                "wg0.conf: line 2",
            ),
        ];
        for (doc, secret, want) in cases {
            let e = parse(&raw(doc, secret)).expect_err(want);
            assert!(e.0.contains(want), "{e} should contain {want}");
            assert!(!e.0.contains(PRIV));
        }
        assert!(
            parse(&Raw::default())
                .expect_err("empty")
                .0
                .contains("config.json is missing")
        );
    }

    #[test]
    fn egress() {
        let conf = format!(
            "[Interface]\nPrivateKey = {PRIV}\nAddress = 10.8.0.2/32\n[Peer]\nPublicKey = {PUB}\nEndpoint = 198.51.100.4:51820\nAllowedIPs = 10.0.0.0/24\n"
        );
        let c = parse(&raw(
            serde_json::json!({"mode": "egress", "forwards": [
                {"name": "db", "port": 1433, "protocol": "TCP", "targetHost": "db.corp.internal", "targetPort": 1433}]}),
            &conf,
        ))
        .expect("valid");
        assert_eq!(c.forward_count(), 1);
        let e = parse(&raw(
            serde_json::json!({"mode": "egress", "forwards": [
                {"name": "db", "port": 1433, "protocol": "TCP", "targetHost": "db;rm -rf", "targetPort": 1433}]}),
            &conf,
        ))
        .expect_err("bad host");
        assert!(e.0.contains("targetHost"), "{e}");
    }
}
