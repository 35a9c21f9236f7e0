//! What the data plane should be, as plain data: [`data_plan`] turns a [`LinkConfig`] and
//! the names it resolved into the device's key and peer, wg0's address, MTU and routes, and
//! the nftables table (built whole, rendered in nft(8) syntax for logs and
//! `wgnet-link plan`). The one plan serves both `Engine::apply` and `wgnet-link plan`. The
//! netlink encoding lives in `nft`; this module has no I/O so every decision is
//! unit-tested.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};

use crate::config::{IngressForward, LinkConfig, PeerConfig};
use crate::keys::{PublicKey, SecretKey};
use crate::net::{Ipv4Net, Protocol};

/// The answers of name resolution, by host name: an address or why there is none. Only
/// names need an entry; IPv4 literals are read directly.
pub type Resolved = BTreeMap<String, Result<Ipv4Addr, ResolveError>>;

/// Why a host name has no address to plan with.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    /// The resolver failed.
    #[error("{host} does not resolve: {reason}")]
    Lookup {
        /// The name.
        host: String,
        /// The resolver's answer.
        reason: String,
    },
    /// Only IPv6 answers; the tunnel is IPv4.
    #[error("{host} has no IPv4 address")]
    NoIpv4 {
        /// The name.
        host: String,
    },
    /// Not looked up (for example `wgnet-link plan`, which resolves nothing).
    #[error("{host} was not resolved")]
    NotResolved {
        /// The name.
        host: String,
    },
}

/// The host names a config needs resolved before it can be planned (the peer's endpoint,
/// egress targets), IPv4 literals excluded.
pub fn names_to_resolve(cfg: &LinkConfig) -> BTreeSet<String> {
    let peer_host = match cfg {
        LinkConfig::Ingress(i) => i.peer.as_ref().and_then(|p| p.endpoint.as_ref()),
        LinkConfig::Egress(e) => e.wg.peer.endpoint.as_ref(),
    }
    .map(|(h, _)| h.clone());
    let targets = match cfg {
        LinkConfig::Ingress(_) => Vec::new(),
        LinkConfig::Egress(e) => e.forwards.iter().map(|f| f.target_host.clone()).collect(),
    };
    peer_host
        .into_iter()
        .chain(targets)
        .filter(|h| h.parse::<Ipv4Addr>().is_err())
        .collect()
}

fn lookup(host: &str, resolved: &Resolved) -> Result<Ipv4Addr, ResolveError> {
    if let Ok(ip) = host.parse::<Ipv4Addr>() {
        return Ok(ip);
    }
    resolved.get(host).cloned().unwrap_or_else(|| {
        Err(ResolveError::NotResolved {
            host: host.to_owned(),
        })
    })
}

/// The peer as the device needs it (endpoint already resolved).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    /// The peer's public key.
    pub public_key: PublicKey,
    /// Optional preshared key.
    pub preshared_key: Option<SecretKey>,
    /// Where to send; `None` until known.
    pub endpoint: Option<SocketAddr>,
    /// Persistent keepalive in seconds.
    pub keepalive: Option<u16>,
    /// Inner source prefixes accepted from the peer (cryptokey routing).
    pub allowed_ips: Vec<Ipv4Net>,
}

/// The whole data plane one config asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataPlan {
    /// The device's private key.
    pub private_key: SecretKey,
    /// The one peer, its endpoint resolved (or `None` until it resolves).
    pub peer: Option<Peer>,
    /// wg0's address.
    pub address: Ipv4Net,
    /// wg0's MTU.
    pub mtu: u16,
    /// The device's UDP port (0: any).
    pub listen_port: u16,
    /// Routes into wg0.
    pub routes: BTreeSet<Ipv4Net>,
    /// The nftables table.
    pub table: Plan,
    /// Forwards left out, each with why.
    pub unresolved: Vec<String>,
    /// Why the peer's endpoint is unknown, when it is.
    pub endpoint_unresolved: Option<String>,
    /// Forwards served.
    pub forwards: usize,
    /// The peer's keepalive.
    pub keepalive: Option<u16>,
    /// Route packets marked [`REPLY_MARK`] back into wg0 (ingress: clients keep their
    /// addresses through the VM).
    pub reply_routes: bool,
}

fn peer_of(p: &PeerConfig, resolved: &Resolved, why: &mut Option<String>) -> Peer {
    let endpoint = p.endpoint.as_ref().and_then(|(host, port)| {
        lookup(host, resolved)
            .map_err(|e| *why = Some(e.to_string()))
            .ok()
            .map(|ip| SocketAddr::from((ip, *port)))
    });
    Peer {
        public_key: p.public_key,
        preshared_key: p.preshared_key.clone(),
        endpoint,
        keepalive: p.keepalive,
        allowed_ips: p.allowed_ips.clone(),
    }
}

/// Plans the data plane of `cfg` on interface `wg` with the names in `resolved`.
///
/// Egress forwards whose target does not resolve, or resolves outside the peer's
/// AllowedIPs (the tunnel would drop it), are left out with a reason. Only host routes go
/// into wg0: one per forward target and one per VPN DNS server inside AllowedIPs. The
/// AllowedIPs prefixes themselves are never routed: a VPN announcing `10.0.0.0/8` would
/// otherwise capture the cluster's Service and pod ranges (the API server, DNS, the
/// clients' replies), and the link only ever sends to its targets.
pub fn data_plan(cfg: &LinkConfig, wg: &str, resolved: &Resolved) -> DataPlan {
    let mut endpoint_unresolved = None;
    match cfg {
        LinkConfig::Ingress(i) => DataPlan {
            private_key: i.private_key.clone(),
            peer: i
                .peer
                .as_ref()
                .map(|p| peer_of(p, resolved, &mut endpoint_unresolved)),
            address: i.address,
            mtu: i.mtu,
            listen_port: 0,
            routes: BTreeSet::new(),
            table: ingress(wg, i.mtu, &i.forwards),
            unresolved: Vec::new(),
            endpoint_unresolved,
            forwards: i.forwards.len(),
            keepalive: cfg.keepalive(),
            reply_routes: true,
        },
        LinkConfig::Egress(e) => {
            let allowed = &e.wg.peer.allowed_ips;
            let pc = PeerConfig {
                public_key: e.wg.peer.public_key,
                preshared_key: e.wg.peer.preshared_key.clone(),
                endpoint: e.wg.peer.endpoint.clone(),
                keepalive: e.wg.peer.keepalive,
                allowed_ips: allowed.clone(),
            };
            let peer = peer_of(&pc, resolved, &mut endpoint_unresolved);
            let mut unresolved = Vec::new();
            let mut rules = Vec::new();
            for f in &e.forwards {
                let target = match lookup(&f.target_host, resolved) {
                    Ok(ip) => ip,
                    Err(why) => {
                        unresolved.push(format!("{}: {why}", f.name));
                        continue;
                    }
                };
                if !allowed.iter().any(|n| n.contains(target)) {
                    unresolved.push(format!(
                        "{}: {} ({target}) is outside the peer's AllowedIPs",
                        f.name, f.target_host
                    ));
                    continue;
                }
                rules.push(EgressRule {
                    port: f.port,
                    protocol: f.protocol,
                    target,
                    target_port: f.target_port,
                });
            }
            let routes: BTreeSet<Ipv4Net> = rules
                .iter()
                .map(|r| r.target)
                .chain(e.wg.dns.iter().copied())
                .filter(|ip| allowed.iter().any(|n| n.contains(*ip)))
                .map(|ip| Ipv4Net {
                    addr: ip,
                    prefix: 32,
                })
                .collect();
            DataPlan {
                private_key: e.wg.private_key.clone(),
                peer: Some(peer),
                address: *e
                    .wg
                    .addresses
                    .first()
                    .expect("the wg-quick parser refuses a file without an Address"),
                mtu: cfg.mtu(),
                listen_port: e.wg.listen_port.unwrap_or(0),
                routes,
                table: egress(wg, cfg.mtu(), &rules),
                forwards: rules.len(),
                unresolved,
                endpoint_unresolved,
                keepalive: cfg.keepalive(),
                reply_routes: false,
            }
        }
    }
}

/// The link's table (family `ip`).
pub const TABLE: &str = "wgnet_link";

/// What a chain hooks into.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    /// NAT before routing.
    Prerouting,
    /// NAT after routing.
    Postrouting,
    /// Filter of forwarded packets.
    Forward,
    /// Filter of packets for the pod itself.
    Input,
    /// Marks before routing (prerouting, filter type, mangle priority).
    Mangle,
    /// Marks of the pod's own packets, rerouted when they change (output, route type).
    Reroute,
}

/// The connection and packet mark of flows that came in through the tunnel: their replies
/// are routed back into wg0 by it, since the client's address is not the tunnel's.
pub const REPLY_MARK: u32 = 0x0057_4700;
/// The routing table those replies use: one default route into wg0.
pub const REPLY_TABLE: u32 = 51820;
/// The priority of the rule sending marked packets to [`REPLY_TABLE`] (before `main`).
pub const REPLY_RULE_PRIORITY: u32 = 1000;

/// One match or statement of a rule, in evaluation order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stmt {
    /// `iifname "X"`.
    Iif(String),
    /// `iifname != "X"`.
    IifNot(String),
    /// `oifname "X"`.
    Oif(String),
    /// `oifname != "X"`.
    OifNot(String),
    /// `meta l4proto P`.
    L4(Protocol),
    /// `th dport N` (requires a preceding `L4`).
    Dport(u16),
    /// `ip daddr A`.
    Daddr(Ipv4Addr),
    /// `ct state established,related`.
    Established,
    /// `ct state new`.
    New,
    /// `ct status dnat`.
    Dnatted,
    /// `tcp flags syn` (SYN set, RST clear), requires a preceding `L4(Tcp)`.
    Syn,
    /// `tcp option maxseg size > N tcp option maxseg size set N`.
    ClampMss(u16),
    /// `dnat to A:P`.
    Dnat(Ipv4Addr, u16),
    /// `masquerade`.
    Masquerade,
    /// `ct mark set M`.
    CtMarkSet(u32),
    /// `ct mark M`.
    CtMark(u32),
    /// `meta mark set M`.
    MarkSet(u32),
    /// `accept`.
    Accept,
    /// `drop`.
    Drop,
}

/// A base chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chain {
    /// Chain name.
    pub name: &'static str,
    /// Hook.
    pub hook: Hook,
    /// Default verdict: `true` accepts.
    pub accept_by_default: bool,
    /// Rules in order.
    pub rules: Vec<Vec<Stmt>>,
}

/// The whole table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// Chains in creation order.
    pub chains: Vec<Chain>,
}

/// A resolved egress forward.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct EgressRule {
    /// Port on the link.
    pub port: u16,
    /// TCP or UDP.
    pub protocol: Protocol,
    /// Resolved target address.
    pub target: Ipv4Addr,
    /// Target port.
    pub target_port: u16,
}

fn mss(mtu: u16) -> u16 {
    // IPv4 (20) + TCP (20) headers.
    mtu.saturating_sub(40)
}

/// Clamp rules for SYNs crossing wg0 in either direction. They sit in the forward chain
/// because every tunnelled flow through the link is forwarded, never locally delivered.
fn clamp(wg: &str, mtu: u16) -> Vec<Vec<Stmt>> {
    vec![
        vec![
            Stmt::Iif(wg.into()),
            Stmt::L4(Protocol::Tcp),
            Stmt::Syn,
            Stmt::ClampMss(mss(mtu)),
        ],
        vec![
            Stmt::Oif(wg.into()),
            Stmt::L4(Protocol::Tcp),
            Stmt::Syn,
            Stmt::ClampMss(mss(mtu)),
        ],
    ]
}

/// What may reach the pod itself from the tunnel: replies, and the ports the PROXY
/// protocol relay listens on.
fn input(wg: &str, relayed: &[u16]) -> Chain {
    let mut rules = vec![vec![Stmt::Iif(wg.into()), Stmt::Established, Stmt::Accept]];
    for port in relayed {
        rules.push(vec![
            Stmt::Iif(wg.into()),
            Stmt::L4(Protocol::Tcp),
            Stmt::Dport(*port),
            Stmt::Accept,
        ]);
    }
    rules.push(vec![Stmt::Iif(wg.into()), Stmt::Drop]);
    Chain {
        name: "input",
        hook: Hook::Input,
        accept_by_default: true,
        rules,
    }
}

/// The four chains both modes share; only the DNAT rules, the masquerade match and the
/// admitted destinations differ.
fn assemble(
    wg: &str,
    mtu: u16,
    pre: Vec<Vec<Stmt>>,
    masquerade: Vec<Stmt>,
    admit: Vec<Vec<Stmt>>,
    relayed: &[u16],
) -> Plan {
    let mut fwd = clamp(wg, mtu);
    fwd.push(vec![Stmt::Established, Stmt::Accept]);
    fwd.extend(admit);
    Plan {
        chains: vec![
            Chain {
                name: "prerouting",
                hook: Hook::Prerouting,
                accept_by_default: true,
                rules: pre,
            },
            Chain {
                name: "postrouting",
                hook: Hook::Postrouting,
                accept_by_default: true,
                rules: vec![masquerade],
            },
            Chain {
                name: "forward",
                hook: Hook::Forward,
                accept_by_default: false,
                rules: fwd,
            },
            input(wg, relayed),
        ],
    }
}

/// Ingress: the tunnel's ports are DNATed to the Services (those with the PROXY protocol
/// are accepted by the link's relay instead); only those flows may cross. Clients keep
/// their own addresses through the VM, so every connection from the tunnel is marked and
/// its replies, forwarded or the relay's own, are routed back into wg0 by the mark.
pub fn ingress(wg: &str, mtu: u16, forwards: &[IngressForward]) -> Plan {
    let (relayed, forwards): (Vec<&IngressForward>, Vec<&IngressForward>) =
        forwards.iter().partition(|f| f.proxy_protocol.is_some());
    let relayed: Vec<u16> = relayed.iter().map(|f| f.port).collect();
    let pre = forwards
        .iter()
        .map(|f| {
            vec![
                Stmt::Iif(wg.into()),
                Stmt::L4(f.protocol),
                Stmt::Dport(f.port),
                Stmt::Dnat(f.cluster_ip, f.target_port),
            ]
        })
        .collect();
    let admit = forwards
        .iter()
        .map(|f| {
            vec![
                Stmt::Iif(wg.into()),
                Stmt::Dnatted,
                Stmt::Daddr(f.cluster_ip),
                Stmt::L4(f.protocol),
                Stmt::Dport(f.target_port),
                Stmt::Accept,
            ]
        })
        .collect();
    // Clients' addresses are not routable in the cluster: replies must come back to the
    // link, so DNATed flows leave with the pod's address.
    let masquerade = vec![Stmt::OifNot(wg.into()), Stmt::Dnatted, Stmt::Masquerade];
    let mut plan = assemble(wg, mtu, pre, masquerade, admit, &relayed);
    plan.chains.push(Chain {
        name: "mark",
        hook: Hook::Mangle,
        accept_by_default: true,
        rules: vec![
            // Once per connection: conntrack keeps the mark.
            vec![Stmt::Iif(wg.into()), Stmt::New, Stmt::CtMarkSet(REPLY_MARK)],
            vec![
                Stmt::IifNot(wg.into()),
                Stmt::CtMark(REPLY_MARK),
                Stmt::MarkSet(REPLY_MARK),
            ],
        ],
    });
    plan.chains.push(Chain {
        name: "reply",
        hook: Hook::Reroute,
        accept_by_default: true,
        rules: vec![vec![Stmt::CtMark(REPLY_MARK), Stmt::MarkSet(REPLY_MARK)]],
    });
    plan
}

/// Egress: the pod's forward ports are DNATed to the targets behind the VPN and leave
/// through wg0 with the VPN address; nothing from the tunnel may enter the cluster.
pub fn egress(wg: &str, mtu: u16, rules: &[EgressRule]) -> Plan {
    let pre = rules
        .iter()
        .map(|r| {
            vec![
                Stmt::IifNot(wg.into()),
                Stmt::IifNot("lo".into()),
                Stmt::L4(r.protocol),
                Stmt::Dport(r.port),
                Stmt::Dnat(r.target, r.target_port),
            ]
        })
        .collect();
    let admit = rules
        .iter()
        .map(|r| {
            vec![
                Stmt::Oif(wg.into()),
                Stmt::Dnatted,
                Stmt::Daddr(r.target),
                Stmt::L4(r.protocol),
                Stmt::Dport(r.target_port),
                Stmt::Accept,
            ]
        })
        .collect();
    let masquerade = vec![Stmt::Oif(wg.into()), Stmt::Dnatted, Stmt::Masquerade];
    assemble(wg, mtu, pre, masquerade, admit, &[])
}

impl fmt::Display for Stmt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Iif(i) => write!(f, "iifname \"{i}\""),
            Self::IifNot(i) => write!(f, "iifname != \"{i}\""),
            Self::Oif(i) => write!(f, "oifname \"{i}\""),
            Self::OifNot(i) => write!(f, "oifname != \"{i}\""),
            Self::L4(p) => write!(f, "meta l4proto {}", p.name()),
            Self::Dport(p) => write!(f, "th dport {p}"),
            Self::Daddr(a) => write!(f, "ip daddr {a}"),
            Self::Established => f.write_str("ct state established,related"),
            Self::New => f.write_str("ct state new"),
            Self::Dnatted => f.write_str("ct status dnat"),
            Self::Syn => f.write_str("tcp flags & (syn|rst) == syn"),
            Self::ClampMss(m) => write!(
                f,
                "tcp option maxseg size > {m} tcp option maxseg size set {m}"
            ),
            Self::Dnat(a, p) => write!(f, "dnat to {a}:{p}"),
            Self::Masquerade => f.write_str("masquerade"),
            Self::CtMarkSet(m) => write!(f, "ct mark set {m:#x}"),
            Self::CtMark(m) => write!(f, "ct mark {m:#x}"),
            Self::MarkSet(m) => write!(f, "meta mark set {m:#x}"),
            Self::Accept => f.write_str("accept"),
            Self::Drop => f.write_str("drop"),
        }
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "table ip {TABLE} {{")?;
        for c in &self.chains {
            let (kind, hook, prio) = match c.hook {
                Hook::Prerouting => ("nat", "prerouting", "dstnat"),
                Hook::Postrouting => ("nat", "postrouting", "srcnat"),
                Hook::Forward => ("filter", "forward", "filter"),
                Hook::Input => ("filter", "input", "filter"),
                Hook::Mangle => ("filter", "prerouting", "mangle"),
                Hook::Reroute => ("route", "output", "mangle"),
            };
            let policy = if c.accept_by_default {
                "accept"
            } else {
                "drop"
            };
            writeln!(f, "    chain {} {{", c.name)?;
            writeln!(
                f,
                "        type {kind} hook {hook} priority {prio}; policy {policy};"
            )?;
            for r in &c.rules {
                let parts: Vec<String> = r.iter().map(ToString::to_string).collect();
                writeln!(f, "        {}", parts.join(" "))?;
            }
            writeln!(f, "    }}")?;
        }
        writeln!(f, "}}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fwd(port: u16, protocol: Protocol, ip: [u8; 4], target_port: u16) -> IngressForward {
        IngressForward {
            port,
            protocol,
            cluster_ip: ip.into(),
            target_port,
            proxy_protocol: None,
        }
    }

    #[test]
    fn ingress_ruleset() {
        let p = ingress(
            "wg0",
            1380,
            &[
                fwd(8080, Protocol::Tcp, [10, 96, 0, 10], 80),
                fwd(53, Protocol::Udp, [10, 96, 0, 11], 5353),
            ],
        );
        let text = p.to_string();
        let want = r#"table ip wgnet_link {
    chain prerouting {
        type nat hook prerouting priority dstnat; policy accept;
        iifname "wg0" meta l4proto tcp th dport 8080 dnat to 10.96.0.10:80
        iifname "wg0" meta l4proto udp th dport 53 dnat to 10.96.0.11:5353
    }
    chain postrouting {
        type nat hook postrouting priority srcnat; policy accept;
        oifname != "wg0" ct status dnat masquerade
    }
    chain forward {
        type filter hook forward priority filter; policy drop;
        iifname "wg0" meta l4proto tcp tcp flags & (syn|rst) == syn tcp option maxseg size > 1340 tcp option maxseg size set 1340
        oifname "wg0" meta l4proto tcp tcp flags & (syn|rst) == syn tcp option maxseg size > 1340 tcp option maxseg size set 1340
        ct state established,related accept
        iifname "wg0" ct status dnat ip daddr 10.96.0.10 meta l4proto tcp th dport 80 accept
        iifname "wg0" ct status dnat ip daddr 10.96.0.11 meta l4proto udp th dport 5353 accept
    }
    chain input {
        type filter hook input priority filter; policy accept;
        iifname "wg0" ct state established,related accept
        iifname "wg0" drop
    }
    chain mark {
        type filter hook prerouting priority mangle; policy accept;
        iifname "wg0" ct state new ct mark set 0x574700
        iifname != "wg0" ct mark 0x574700 meta mark set 0x574700
    }
    chain reply {
        type route hook output priority mangle; policy accept;
        ct mark 0x574700 meta mark set 0x574700
    }
}
"#;
        assert_eq!(text, want);
    }

    #[test]
    fn a_proxy_protocol_forward_goes_to_the_relay_not_to_dnat() {
        let mut relayed = fwd(443, Protocol::Tcp, [10, 96, 0, 12], 8443);
        relayed.proxy_protocol = Some(crate::config::ProxyProtocol::V2);
        let p = ingress(
            "wg0",
            1380,
            &[fwd(8080, Protocol::Tcp, [10, 96, 0, 10], 80), relayed],
        );
        let text = p.to_string();
        assert!(
            text.contains("th dport 8080 dnat to 10.96.0.10:80"),
            "{text}"
        );
        assert!(
            !text.contains("10.96.0.12"),
            "no DNAT or admit for it: {text}"
        );
        let input = &p.chains[3];
        assert_eq!(
            input.rules[1],
            vec![
                Stmt::Iif("wg0".into()),
                Stmt::L4(Protocol::Tcp),
                Stmt::Dport(443),
                Stmt::Accept
            ],
            "the relay's port is open from the tunnel, before the drop"
        );
        assert_eq!(
            input.rules.last(),
            Some(&vec![Stmt::Iif("wg0".into()), Stmt::Drop])
        );
    }

    #[test]
    fn same_input_same_plan_and_a_change_changes_only_its_rules() {
        let a = ingress("wg0", 1380, &[fwd(80, Protocol::Tcp, [10, 0, 0, 1], 80)]);
        let b = ingress("wg0", 1380, &[fwd(80, Protocol::Tcp, [10, 0, 0, 1], 80)]);
        assert_eq!(a, b, "equal plans let the engine skip a re-apply");
        let c = ingress("wg0", 1380, &[fwd(80, Protocol::Tcp, [10, 0, 0, 2], 80)]);
        assert_ne!(a, c);
        assert_eq!(
            a.chains[1], c.chains[1],
            "postrouting does not depend on forwards"
        );
    }

    #[test]
    fn egress_ruleset_never_admits_the_tunnel_into_the_cluster() {
        let p = egress(
            "wg0",
            1420,
            &[EgressRule {
                port: 1433,
                protocol: Protocol::Tcp,
                target: [10, 0, 0, 5].into(),
                target_port: 1433,
            }],
        );
        let text = p.to_string();
        assert!(text.contains(r#"iifname != "wg0" iifname != "lo" meta l4proto tcp th dport 1433 dnat to 10.0.0.5:1433"#), "{text}");
        assert!(text.contains(r#"oifname "wg0" ct status dnat masquerade"#));
        assert!(text.contains("maxseg size set 1380"));
        let forward = &p.chains[2];
        assert!(!forward.accept_by_default);
        assert!(forward.rules.iter().all(|r| !r.contains(&Stmt::Iif("wg0".into())) || r.contains(&Stmt::ClampMss(1380))),
            "no accept rule for new flows from wg0");
    }
}
