//! Makes the data plane match a [`LinkConfig`]: the WireGuard device, wg0's address, MTU
//! and routes, and the nftables table, each touched only when its part of the config
//! changed. Also fencing (removing wg0 and the table). I/O boundary: the device, netlink,
//! nftables, `/proc/sys` and name resolution, all called from here.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use crate::config::{LinkConfig, PeerConfig};
use crate::net::Ipv4Net;
use crate::netlink::Netlink;
use crate::nft;
use crate::plan::{self, EgressRule, Plan};
use crate::status::Status;
use crate::wg::{Device, Peer};

/// Prefixes this broad would swallow the pod's own traffic (API server, DNS) if routed
/// into the tunnel; for them only the resolved targets get host routes.
const BROADEST_ROUTED_PREFIX: u8 = 8;

/// A failed apply: what the operator's condition and the log say.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// IPv4 forwarding is off and cannot be turned on.
    #[error(
        "IPv4 forwarding is off in the pod's network namespace and cannot be enabled ({0}); run the link with the privileged init container or allow the net.ipv4.ip_forward sysctl for it"
    )]
    Forwarding(String),
    /// The TUN device or UDP socket could not be created.
    #[error("creating {name}: {source}")]
    Device {
        /// Interface name.
        name: String,
        /// Cause.
        source: std::io::Error,
    },
    /// rtnetlink refused.
    #[error(transparent)]
    Netlink(#[from] crate::netlink::NetlinkError),
    /// nftables refused.
    #[error(transparent)]
    Nft(#[from] nft::NftError),
}

/// What an apply did, for logs and status.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The nftables table was rewritten.
    pub table_changed: bool,
    /// Forwards skipped because their target did not resolve, with the reason.
    pub unresolved: Vec<String>,
    /// The peer endpoint could not be resolved (the device waits).
    pub endpoint_unresolved: Option<String>,
}

/// The data plane of one link process.
pub struct Engine {
    wg_name: String,
    nl: Netlink,
    device: Option<(Arc<Device>, u16)>,
    link_state: Option<(Ipv4Net, u16)>,
    routes: BTreeSet<Ipv4Net>,
    plan: Option<Plan>,
    status: Arc<Status>,
}

async fn resolve(host: &str, port: u16) -> Result<SocketAddr, String> {
    if let Ok(ip) = host.parse::<Ipv4Addr>() {
        return Ok(SocketAddr::from((ip, port)));
    }
    let addrs = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| format!("{host} does not resolve: {e}"))?;
    addrs
        .into_iter()
        .find(SocketAddr::is_ipv4)
        .ok_or_else(|| format!("{host} has no IPv4 address"))
}

/// Enables IPv4 forwarding, or proves it is already on.
pub fn ensure_forwarding() -> Result<(), ApplyError> {
    const PATH: &str = "/proc/sys/net/ipv4/ip_forward";
    if std::fs::read_to_string(PATH).is_ok_and(|v| v.trim() == "1") {
        return Ok(());
    }
    std::fs::write(PATH, "1\n").map_err(|e| ApplyError::Forwarding(e.to_string()))
}

impl Engine {
    /// A stopped engine that will create `wg_name`.
    pub fn new(wg_name: &str, nl: Netlink, status: Arc<Status>) -> Self {
        Self {
            wg_name: wg_name.to_owned(),
            nl,
            device: None,
            link_state: None,
            routes: BTreeSet::new(),
            plan: None,
            status,
        }
    }

    /// Whether wg0 and the table exist (this process holds the data plane).
    pub fn active(&self) -> bool {
        self.device.is_some()
    }

    async fn peer(&self, p: &PeerConfig, out: &mut Outcome) -> Peer {
        let endpoint = match &p.endpoint {
            Some((host, port)) => match resolve(host, *port).await {
                Ok(a) => Some(a),
                Err(e) => {
                    out.endpoint_unresolved = Some(e);
                    None
                }
            },
            None => None,
        };
        Peer {
            public_key: p.public_key,
            preshared_key: p.preshared_key.clone(),
            endpoint,
            keepalive: p.keepalive,
            allowed_ips: p.allowed_ips.clone(),
        }
    }

    /// Brings the data plane to `cfg`. Unchanged parts are left alone, so re-applying
    /// the same config touches nothing.
    pub async fn apply(&mut self, cfg: &LinkConfig) -> Result<Outcome, ApplyError> {
        ensure_forwarding()?;
        let mut out = Outcome::default();
        let wg = self.wg_name.clone();
        let (private_key, peer, address, listen, routes, plan) = match cfg {
            LinkConfig::Ingress(i) => {
                let peer = match &i.peer {
                    Some(p) => Some(self.peer(p, &mut out).await),
                    None => None,
                };
                let plan = plan::ingress(&wg, i.mtu, &i.forwards);
                (
                    i.private_key.clone(),
                    peer,
                    i.address,
                    0,
                    BTreeSet::new(),
                    plan,
                )
            }
            LinkConfig::Egress(e) => {
                let pc = PeerConfig {
                    public_key: e.wg.peer.public_key,
                    preshared_key: e.wg.peer.preshared_key.clone(),
                    endpoint: e.wg.peer.endpoint.clone(),
                    keepalive: e.wg.peer.keepalive,
                    allowed_ips: e.wg.peer.allowed_ips.clone(),
                };
                let peer = self.peer(&pc, &mut out).await;
                let mut resolved = BTreeMap::new();
                let mut rules = Vec::new();
                for f in &e.forwards {
                    let target = match resolved.get(&f.target_host) {
                        Some(ip) => *ip,
                        None => match resolve(&f.target_host, f.target_port).await {
                            Ok(SocketAddr::V4(a)) => {
                                resolved.insert(f.target_host.clone(), *a.ip());
                                *a.ip()
                            }
                            Ok(SocketAddr::V6(_)) => continue,
                            Err(why) => {
                                out.unresolved.push(format!("{}: {why}", f.name));
                                continue;
                            }
                        },
                    };
                    if !e.wg.peer.allowed_ips.iter().any(|n| n.contains(target)) {
                        out.unresolved.push(format!(
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
                let mut routes = BTreeSet::new();
                for n in &e.wg.peer.allowed_ips {
                    if n.prefix >= BROADEST_ROUTED_PREFIX {
                        routes.insert(Ipv4Net {
                            addr: n.network(),
                            prefix: n.prefix,
                        });
                    }
                }
                let hosts = rules
                    .iter()
                    .map(|r| r.target)
                    .chain(e.wg.dns.iter().copied());
                for ip in hosts {
                    if !routes.iter().any(|n| n.contains(ip))
                        && e.wg.peer.allowed_ips.iter().any(|n| n.contains(ip))
                    {
                        routes.insert(Ipv4Net {
                            addr: ip,
                            prefix: 32,
                        });
                    }
                }
                let address = e.wg.addresses[0];
                let plan = plan::egress(&wg, cfg.mtu(), &rules);
                (
                    e.wg.private_key.clone(),
                    Some(peer),
                    address,
                    e.wg.listen_port.unwrap_or(0),
                    routes,
                    plan,
                )
            }
        };

        let recreate = match &self.device {
            Some((_, port)) => *port != listen,
            None => true,
        };
        if recreate {
            self.teardown_device();
            let dev = Device::start(&wg, listen).map_err(|source| ApplyError::Device {
                name: wg.clone(),
                source,
            })?;
            self.device = Some((Arc::new(dev), listen));
            self.link_state = None;
            self.routes.clear();
            self.plan = None;
        }
        let (dev, _) = self.device.as_ref().expect("the device was just ensured");
        dev.set_peer(&private_key, peer.as_ref());
        self.status.set_device(Some(Arc::downgrade(dev)));

        let want_link = (address, cfg.mtu());
        if self.link_state != Some(want_link) {
            self.nl.configure(&wg, address, cfg.mtu()).await?;
            self.link_state = Some(want_link);
        }
        for stale in self.routes.difference(&routes).copied().collect::<Vec<_>>() {
            self.nl.del_route(&wg, stale).await?;
            self.routes.remove(&stale);
        }
        for new in routes.difference(&self.routes).copied().collect::<Vec<_>>() {
            self.nl.add_route(&wg, new).await?;
            self.routes.insert(new);
        }
        if self.plan.as_ref() != Some(&plan) {
            nft::apply(&plan)?;
            self.plan = Some(plan);
            out.table_changed = true;
        }
        self.status.set_forwards(
            cfg.forward_count().saturating_sub(out.unresolved.len()),
            cfg.keepalive(),
        );
        Ok(out)
    }

    fn teardown_device(&mut self) {
        self.status.set_device(None);
        // Dropping the last reference stops the threads and closes the TUN.
        self.device = None;
    }

    /// Removes the table and wg0 so no other holder of the key can collide with us.
    pub fn fence(&mut self) -> Result<(), nft::NftError> {
        let r = nft::remove();
        self.teardown_device();
        self.link_state = None;
        self.routes.clear();
        self.plan = None;
        self.status.set_forwards(0, None);
        r
    }
}
