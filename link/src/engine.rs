//! Makes the data plane match a [`LinkConfig`]: resolves the names the config needs,
//! plans the whole data plane ([`plan::data_plan`], pure), then brings the WireGuard
//! device, wg0's address, MTU and routes, and the nftables table to the plan, each touched
//! only when its part changed. Also fencing (removing wg0 and the table).
//!
//! The kernel is reached through three backend traits, [`Tunnel`], [`Interfaces`] and
//! [`Firewall`], whose real implementations ([`BoringTun`], [`Netlink`], [`Nftables`]) are
//! the I/O boundary; with recording fakes, planning and most of apply are unit-tested
//! without root. Name resolution is the one other I/O, in [`Engine::apply`].

use std::collections::BTreeSet;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use crate::config::LinkConfig;
use crate::keys::SecretKey;
use crate::net::Ipv4Net;
use crate::netlink::{Netlink, NetlinkError};
use crate::nft::{self, NftError};
use crate::plan::{self, DataPlan, Plan, ResolveError, Resolved};
use crate::status::Status;
use crate::wg::{Device, Peer};

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
    Netlink(#[from] NetlinkError),
    /// nftables refused.
    #[error(transparent)]
    Nft(#[from] NftError),
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

/// The WireGuard device.
pub trait Tunnel {
    /// (Re)creates the device `name` listening on `listen` (0: any port).
    fn start(&mut self, name: &str, listen: u16) -> std::io::Result<()>;
    /// Removes the device.
    fn stop(&mut self);
    /// Sets the device's key and its one peer (none: no peer).
    fn set_peer(&mut self, private_key: &SecretKey, peer: Option<&Peer>);
}

/// wg0's address, MTU and routes, and the forwarding switch.
pub trait Interfaces {
    /// Turns IPv4 forwarding on, or proves it is on.
    fn ensure_forwarding(&self) -> Result<(), ApplyError>;
    /// Gives `name` exactly `addr` and `mtu`, and brings it up.
    fn configure(
        &self,
        name: &str,
        addr: Ipv4Net,
        mtu: u16,
    ) -> impl Future<Output = Result<(), NetlinkError>> + Send;
    /// Routes `net` into `name`.
    fn add_route(
        &self,
        name: &str,
        net: Ipv4Net,
    ) -> impl Future<Output = Result<(), NetlinkError>> + Send;
    /// Removes that route.
    fn del_route(
        &self,
        name: &str,
        net: Ipv4Net,
    ) -> impl Future<Output = Result<(), NetlinkError>> + Send;
    /// Routes packets marked [`plan::REPLY_MARK`] into `name` (replies to clients whose
    /// own addresses came through the tunnel).
    fn route_replies(&self, name: &str) -> impl Future<Output = Result<(), NetlinkError>> + Send;
}

/// The nftables table.
pub trait Firewall {
    /// Replaces the table with `plan`, atomically.
    fn apply(&mut self, plan: &Plan) -> Result<(), NftError>;
    /// Removes the table.
    fn remove(&mut self) -> Result<(), NftError>;
}

/// boringtun on a TUN device; publishes the device to the status endpoint.
pub struct BoringTun {
    device: Option<Arc<Device>>,
    status: Arc<Status>,
}

impl BoringTun {
    /// No device yet.
    pub fn new(status: Arc<Status>) -> Self {
        Self {
            device: None,
            status,
        }
    }
}

impl Tunnel for BoringTun {
    fn start(&mut self, name: &str, listen: u16) -> std::io::Result<()> {
        self.stop();
        let dev = Arc::new(Device::start(name, listen)?);
        self.status.set_device(Some(Arc::downgrade(&dev)));
        self.device = Some(dev);
        Ok(())
    }

    fn stop(&mut self) {
        self.status.set_device(None);
        // Dropping the last reference stops the threads and closes the TUN.
        self.device = None;
    }

    fn set_peer(&mut self, private_key: &SecretKey, peer: Option<&Peer>) {
        if let Some(d) = &self.device {
            d.set_peer(private_key, peer);
        }
    }
}

/// Enables IPv4 forwarding in this network namespace, or proves it is already on (also
/// the `enable-forwarding` init container's whole job).
pub fn ensure_forwarding() -> Result<(), ApplyError> {
    const PATH: &str = "/proc/sys/net/ipv4/ip_forward";
    if std::fs::read_to_string(PATH).is_ok_and(|v| v.trim() == "1") {
        return Ok(());
    }
    std::fs::write(PATH, "1\n").map_err(|e| ApplyError::Forwarding(e.to_string()))
}

impl Interfaces for Netlink {
    fn ensure_forwarding(&self) -> Result<(), ApplyError> {
        ensure_forwarding()
    }

    fn configure(
        &self,
        name: &str,
        addr: Ipv4Net,
        mtu: u16,
    ) -> impl Future<Output = Result<(), NetlinkError>> + Send {
        Netlink::configure(self, name, addr, mtu)
    }

    fn add_route(
        &self,
        name: &str,
        net: Ipv4Net,
    ) -> impl Future<Output = Result<(), NetlinkError>> + Send {
        Netlink::add_route(self, name, net)
    }

    fn del_route(
        &self,
        name: &str,
        net: Ipv4Net,
    ) -> impl Future<Output = Result<(), NetlinkError>> + Send {
        Netlink::del_route(self, name, net)
    }

    fn route_replies(&self, name: &str) -> impl Future<Output = Result<(), NetlinkError>> + Send {
        Netlink::route_marked(
            self,
            name,
            plan::REPLY_MARK,
            plan::REPLY_TABLE,
            plan::REPLY_RULE_PRIORITY,
        )
    }
}

/// The `ip wgnet_link` table through libnftnl.
pub struct Nftables;

impl Firewall for Nftables {
    fn apply(&mut self, plan: &Plan) -> Result<(), NftError> {
        nft::apply(plan)
    }

    fn remove(&mut self) -> Result<(), NftError> {
        nft::remove()
    }
}

/// Resolves `host` to an IPv4 address (I/O: the pod's resolver).
async fn resolve(host: &str) -> Result<Ipv4Addr, ResolveError> {
    let addrs = tokio::net::lookup_host((host, 0))
        .await
        .map_err(|e| ResolveError::Lookup {
            host: host.to_owned(),
            reason: e.to_string(),
        })?;
    addrs
        .into_iter()
        .find_map(|a| match a {
            SocketAddr::V4(a) => Some(*a.ip()),
            SocketAddr::V6(_) => None,
        })
        .ok_or_else(|| ResolveError::NoIpv4 {
            host: host.to_owned(),
        })
}

/// Resolves every name `cfg` needs. An egress tunnel whose wg-quick file names DNS
/// servers resolves its targets with them first, through the tunnel (names only the VPN's
/// DNS knows), then with the pod's resolver; the peer's endpoint, outside the tunnel,
/// always goes to the pod's resolver.
pub async fn resolve_names(cfg: &LinkConfig) -> Resolved {
    let (endpoint, vpn_dns) = match cfg {
        LinkConfig::Egress(e) => (
            e.wg.peer.endpoint.as_ref().map(|(h, _)| h.clone()),
            e.wg.dns.clone(),
        ),
        LinkConfig::Ingress(i) => (
            i.peer
                .as_ref()
                .and_then(|p| p.endpoint.as_ref())
                .map(|(h, _)| h.clone()),
            Vec::new(),
        ),
    };
    let mut out = Resolved::new();
    for host in plan::names_to_resolve(cfg) {
        let r = if vpn_dns.is_empty() || endpoint.as_ref() == Some(&host) {
            resolve(&host).await
        } else {
            // The VPN's servers first; a name they do not answer for (or while they are
            // unreachable) falls back to the pod's resolver, so names outside the VPN's
            // zones still resolve. A failure reports the VPN's answer.
            match crate::dns::lookup(&vpn_dns, &host, std::time::Duration::from_secs(2)).await {
                Ok(ip) => Ok(ip),
                Err(vpn) => resolve(&host).await.map_err(|_| vpn),
            }
        };
        out.insert(host, r);
    }
    out
}

/// What the engine last applied, to touch only what changed.
#[derive(Debug, Default)]
struct Applied {
    listen: Option<u16>,
    link: Option<(Ipv4Net, u16)>,
    routes: BTreeSet<Ipv4Net>,
    table: Option<Plan>,
}

/// The data plane of one link process.
pub struct Engine<T, I, F> {
    wg_name: String,
    tunnel: T,
    interfaces: I,
    firewall: F,
    applied: Applied,
    status: Arc<Status>,
}

/// The engine on the kernel.
pub type KernelEngine = Engine<BoringTun, Netlink, Nftables>;

impl KernelEngine {
    /// A stopped engine that will create `wg_name` in this network namespace.
    pub fn kernel(wg_name: &str, nl: Netlink, status: Arc<Status>) -> Self {
        Engine::new(
            wg_name,
            BoringTun::new(status.clone()),
            nl,
            Nftables,
            status,
        )
    }
}

impl<T: Tunnel, I: Interfaces, F: Firewall> Engine<T, I, F> {
    /// A stopped engine over the given backends.
    pub fn new(wg_name: &str, tunnel: T, interfaces: I, firewall: F, status: Arc<Status>) -> Self {
        Self {
            wg_name: wg_name.to_owned(),
            tunnel,
            interfaces,
            firewall,
            applied: Applied::default(),
            status,
        }
    }

    /// Whether wg0 and the table exist (this process holds the data plane).
    pub fn active(&self) -> bool {
        self.applied.listen.is_some()
    }

    /// Resolves the names `cfg` needs, plans, and applies the plan.
    pub async fn apply(&mut self, cfg: &LinkConfig) -> Result<Outcome, ApplyError> {
        let resolved = resolve_names(cfg).await;
        let plan = plan::data_plan(cfg, &self.wg_name, &resolved);
        self.apply_plan(plan).await
    }

    /// Brings the data plane to `p`. Unchanged parts are left alone, so re-applying the
    /// same plan touches nothing.
    pub async fn apply_plan(&mut self, p: DataPlan) -> Result<Outcome, ApplyError> {
        self.interfaces.ensure_forwarding()?;
        let wg = self.wg_name.clone();
        if self.applied.listen != Some(p.listen_port) {
            // A new device starts with no address, routes or table of its own.
            self.tunnel.stop();
            self.applied = Applied::default();
            self.tunnel
                .start(&wg, p.listen_port)
                .map_err(|source| ApplyError::Device {
                    name: wg.clone(),
                    source,
                })?;
            self.applied.listen = Some(p.listen_port);
        }
        self.tunnel.set_peer(&p.private_key, p.peer.as_ref());

        let want_link = (p.address, p.mtu);
        if self.applied.link != Some(want_link) {
            self.interfaces.configure(&wg, p.address, p.mtu).await?;
            if p.reply_routes {
                self.interfaces.route_replies(&wg).await?;
            }
            self.applied.link = Some(want_link);
        }
        let stale: Vec<_> = self.applied.routes.difference(&p.routes).copied().collect();
        for net in stale {
            self.interfaces.del_route(&wg, net).await?;
            self.applied.routes.remove(&net);
        }
        let new: Vec<_> = p.routes.difference(&self.applied.routes).copied().collect();
        for net in new {
            self.interfaces.add_route(&wg, net).await?;
            self.applied.routes.insert(net);
        }
        let mut out = Outcome {
            table_changed: false,
            unresolved: p.unresolved,
            endpoint_unresolved: p.endpoint_unresolved,
        };
        if self.applied.table.as_ref() != Some(&p.table) {
            self.firewall.apply(&p.table)?;
            self.applied.table = Some(p.table);
            out.table_changed = true;
        }
        self.status.set_forwards(p.forwards, p.keepalive);
        Ok(out)
    }

    /// Removes the table and wg0 so no other holder of the key can collide with us.
    pub fn fence(&mut self) -> Result<(), NftError> {
        let r = self.firewall.remove();
        self.tunnel.stop();
        self.applied = Applied::default();
        self.status.set_forwards(0, None);
        r
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::config::{self, Raw};

    /// Every backend call, in order.
    #[derive(Clone, Default)]
    struct Calls(Arc<Mutex<Vec<String>>>);

    impl Calls {
        fn push(&self, s: String) {
            self.0.lock().expect("calls").push(s);
        }
        fn take(&self) -> Vec<String> {
            std::mem::take(&mut *self.0.lock().expect("calls"))
        }
    }

    struct FakeTunnel(Calls);
    impl Tunnel for FakeTunnel {
        fn start(&mut self, name: &str, listen: u16) -> std::io::Result<()> {
            self.0.push(format!("start {name} {listen}"));
            Ok(())
        }
        fn stop(&mut self) {
            self.0.push("stop".into());
        }
        fn set_peer(&mut self, _: &SecretKey, peer: Option<&Peer>) {
            let endpoint = peer.and_then(|p| p.endpoint);
            self.0.push(format!("peer {endpoint:?}"));
        }
    }

    struct FakeInterfaces(Calls);
    impl Interfaces for FakeInterfaces {
        fn ensure_forwarding(&self) -> Result<(), ApplyError> {
            Ok(())
        }
        async fn configure(&self, name: &str, addr: Ipv4Net, mtu: u16) -> Result<(), NetlinkError> {
            self.0.push(format!("configure {name} {addr} {mtu}"));
            Ok(())
        }
        async fn add_route(&self, name: &str, net: Ipv4Net) -> Result<(), NetlinkError> {
            self.0.push(format!("route add {net} dev {name}"));
            Ok(())
        }
        async fn del_route(&self, name: &str, net: Ipv4Net) -> Result<(), NetlinkError> {
            self.0.push(format!("route del {net} dev {name}"));
            Ok(())
        }
        async fn route_replies(&self, name: &str) -> Result<(), NetlinkError> {
            self.0.push(format!("replies via {name}"));
            Ok(())
        }
    }

    struct FakeFirewall(Calls);
    impl Firewall for FakeFirewall {
        fn apply(&mut self, plan: &Plan) -> Result<(), NftError> {
            self.0.push(format!("table {} chains", plan.chains.len()));
            Ok(())
        }
        fn remove(&mut self) -> Result<(), NftError> {
            self.0.push("table removed".into());
            Ok(())
        }
    }

    fn engine() -> (Engine<FakeTunnel, FakeInterfaces, FakeFirewall>, Calls) {
        let calls = Calls::default();
        let e = Engine::new(
            "wg0",
            FakeTunnel(calls.clone()),
            FakeInterfaces(calls.clone()),
            FakeFirewall(calls.clone()),
            Arc::new(Status::default()),
        );
        (e, calls)
    }

    /// An egress config of `conf` (a wg-quick file) and (name, port, host, target port).
    fn egress(conf: &str, forwards: &[(&str, u16, &str, u16)]) -> LinkConfig {
        use config::{EgressDocument, EgressForward, LinkDocument};
        let doc = LinkDocument::Egress(EgressDocument {
            forwards: forwards
                .iter()
                .map(|(name, port, host, target_port)| EgressForward {
                    name: (*name).to_owned(),
                    port: *port,
                    protocol: crate::net::Protocol::Tcp,
                    target_host: (*host).to_owned(),
                    target_port: *target_port,
                })
                .collect(),
            resolve_interval_seconds: 30,
        });
        config::parse(&Raw {
            config: Some(doc.to_json().into_bytes()),
            secret: Some(conf.as_bytes().to_vec()),
        })
        .expect("config")
    }

    const KEY: &str = "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=";
    const PEER: &str = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=";

    fn wg_quick(allowed: &str) -> String {
        format!(
            "[Interface]\nPrivateKey = {KEY}\nAddress = 10.8.0.2/32\nDNS = 10.20.0.53\n\n[Peer]\nPublicKey = {PEER}\nEndpoint = vpn.example.test:51820\nAllowedIPs = {allowed}\n"
        )
    }

    #[tokio::test]
    async fn the_same_plan_twice_touches_nothing_and_a_change_touches_only_its_part() {
        let cfg = egress(
            &wg_quick("10.20.0.0/24"),
            &[("db", 5432, "10.20.0.5", 5432)],
        );
        let resolved: Resolved = [(
            "vpn.example.test".to_owned(),
            Ok(Ipv4Addr::new(203, 0, 113, 40)),
        )]
        .into();
        let (mut e, calls) = engine();
        let out = e
            .apply_plan(plan::data_plan(&cfg, "wg0", &resolved))
            .await
            .expect("apply");
        assert!(out.table_changed && out.unresolved.is_empty());
        assert_eq!(
            calls.take(),
            vec![
                "stop",
                "start wg0 0",
                "peer Some(203.0.113.40:51820)",
                "configure wg0 10.8.0.2/32 1420",
                "route add 10.20.0.5/32 dev wg0",
                "route add 10.20.0.53/32 dev wg0",
                "table 4 chains",
            ]
        );
        assert!(e.active());
        let out = e
            .apply_plan(plan::data_plan(&cfg, "wg0", &resolved))
            .await
            .expect("again");
        assert!(!out.table_changed);
        assert_eq!(calls.take(), vec!["peer Some(203.0.113.40:51820)"]);
        // The endpoint stops resolving: the device waits for it, nothing else moves.
        let out = e
            .apply_plan(plan::data_plan(&cfg, "wg0", &Resolved::new()))
            .await
            .expect("unresolved");
        assert!(out.endpoint_unresolved.is_some());
        assert_eq!(calls.take(), vec!["peer None"]);
        e.fence().expect("fence");
        assert_eq!(calls.take(), vec!["table removed", "stop"]);
        assert!(!e.active());
    }

    #[tokio::test]
    async fn a_full_tunnel_routes_only_the_targets_and_the_vpn_dns() {
        let cfg = egress(
            &wg_quick("0.0.0.0/0"),
            &[
                ("db", 5432, "10.20.0.5", 5432),
                ("wiki", 8080, "wiki.corp.test", 80),
            ],
        );
        let resolved: Resolved = [
            (
                "vpn.example.test".to_owned(),
                Ok(Ipv4Addr::new(203, 0, 113, 40)),
            ),
            (
                "wiki.corp.test".to_owned(),
                Err(ResolveError::NoIpv4 {
                    host: "wiki.corp.test".to_owned(),
                }),
            ),
        ]
        .into();
        let p = plan::data_plan(&cfg, "wg0", &resolved);
        let routes: Vec<String> = p.routes.iter().map(ToString::to_string).collect();
        assert_eq!(routes, vec!["10.20.0.5/32", "10.20.0.53/32"]);
        assert_eq!(p.forwards, 1);
        assert_eq!(
            p.unresolved,
            vec!["wiki: wiki.corp.test has no IPv4 address"]
        );
    }

    /// A VPN whose AllowedIPs cover the cluster's own ranges (the flowgen example's
    /// `10.0.0.0/8, 172.16.0.0/12` holds 10.96.0.0/12 and 10.244.0.0/16) must not capture
    /// the pod's traffic to the API server, DNS or other pods: only the forwards' targets
    /// and the VPN's DNS server are routed into the tunnel.
    #[tokio::test]
    async fn allowed_ips_that_cover_the_cluster_route_only_the_targets() {
        let cfg = egress(
            &wg_quick("10.0.0.0/8, 172.16.0.0/12"),
            &[("db", 5432, "10.20.0.5", 5432)],
        );
        let p = plan::data_plan(&cfg, "wg0", &Resolved::new());
        let routes: Vec<String> = p.routes.iter().map(ToString::to_string).collect();
        assert_eq!(routes, vec!["10.20.0.5/32", "10.20.0.53/32"]);
        for cluster in [Ipv4Addr::new(10, 96, 0, 1), Ipv4Addr::new(10, 244, 0, 7)] {
            assert!(
                !p.routes.iter().any(|r| r.contains(cluster)),
                "{cluster} captured"
            );
        }
    }

    #[tokio::test]
    async fn a_target_outside_the_allowed_ips_is_left_out_with_the_reason() {
        let cfg = egress(&wg_quick("10.20.0.0/24"), &[("other", 22, "192.0.2.9", 22)]);
        let p = plan::data_plan(&cfg, "wg0", &Resolved::new());
        assert_eq!(p.forwards, 0);
        assert_eq!(
            p.unresolved,
            vec!["other: 192.0.2.9 (192.0.2.9) is outside the peer's AllowedIPs"]
        );
        assert_eq!(
            plan::names_to_resolve(&cfg).into_iter().collect::<Vec<_>>(),
            vec!["vpn.example.test"]
        );
    }
}
