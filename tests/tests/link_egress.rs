//! The egress data path end to end: a pod namespace → `wgnet-link` in egress mode (the
//! user's wg-quick config) → WireGuard → a VPN-server namespace (wg-quick with
//! wireguard-go) → remote hosts behind it. Target names resolve through the link
//! namespace's own /etc/hosts (`ip netns exec` mounts /etc/netns/NAME/hosts), which the
//! test rewrites to move a name. Needs root.

use std::path::PathBuf;
use std::time::Duration;

use wgnet_tests::fixtures::TempDir;
use wgnet_tests::gateway::echo_py;
use wgnet_tests::link::Link;
use wgnet_tests::netns::{self, Netns, wait_for};

/// `/etc/netns/<ns>`, removed on drop.
struct EtcNetns(PathBuf);

impl Drop for EtcNetns {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Egress {
    link: Link,
    hosts: PathBuf,
    vpn_if: String,
    dir: TempDir,
    pod: Netns,
    _remote: Netns,
    vpn: Netns,
    _link_ns: Netns,
    _etc: EtcNetns,
}

impl Drop for Egress {
    fn drop(&mut self) {
        self.link.kill();
        self.vpn.kill_all();
        let _ = std::fs::remove_file(format!("/run/wireguard/{}.sock", self.vpn_if));
    }
}

impl Egress {
    fn request(&self, proto: &str, port: u16) -> Option<String> {
        wait_for(Duration::from_secs(10), || self.request_once(proto, port))
    }

    fn request_once(&self, proto: &str, port: u16) -> Option<String> {
        let (ok, out, _) = self.pod.try_sh(&format!(
            "python3 '{}' {proto} 10.244.1.1 {port}",
            echo_py()
        ));
        ok.then(|| out.trim().to_owned())
    }
}

async fn egress() -> Egress {
    netns::require_root();
    let tag = netns::unique_tag();
    let pod = Netns::new("pod", &tag);
    let link_ns = Netns::new("egl", &tag);
    let vpn = Netns::new("vpn", &tag);
    let remote = Netns::new("rem", &tag);
    // The pod reaches the link directly (a ClusterIP Service would DNAT to this address).
    netns::veth(
        &pod,
        "eth0",
        "10.244.1.2/24",
        &link_ns,
        "eth1",
        "10.244.1.1/24",
    );
    // The "internet" between the link and the VPN server.
    netns::veth(
        &link_ns,
        "eth0",
        "198.51.100.2/24",
        &vpn,
        "eth0",
        "198.51.100.1/24",
    );
    // The private network behind the VPN server.
    netns::veth(&vpn, "eth1", "10.0.0.1/24", &remote, "eth0", "10.0.0.5/24");
    remote.sh("ip addr add 10.0.0.6/24 dev eth0 && ip route add default via 10.0.0.1");
    drop(remote.spawn(
        &format!("python3 '{}' serve 10.0.0.5 1433 5000 db-a", echo_py()),
        &[],
    ));
    drop(remote.spawn(
        &format!("python3 '{}' serve 10.0.0.6 1433 '' db-b", echo_py()),
        &[],
    ));

    let dir = TempDir::new();
    let (vpn_priv, vpn_pub) = netns::wg_keypair();
    let (link_priv, link_pub) = netns::wg_keypair();
    let vpn_if = format!("wgs{tag}");
    let server = dir.0.join(format!("{vpn_if}.conf"));
    std::fs::write(
        &server,
        format!("[Interface]\nPrivateKey = {vpn_priv}\nAddress = 10.8.0.1/24\nListenPort = 51820\n\n[Peer]\nPublicKey = {link_pub}\nAllowedIPs = 10.8.0.2/32\n"),
    )
    .expect("server conf");
    vpn.sh(&format!(
        "sysctl -qw net.ipv4.ip_forward=1 && WG_QUICK_USERSPACE_IMPLEMENTATION=wireguard-go wg-quick up '{}' 2>&1",
        server.display()
    ));

    let etc = EtcNetns(PathBuf::from(format!("/etc/netns/{}", link_ns.name)));
    std::fs::create_dir_all(&etc.0).expect("/etc/netns dir");
    let hosts = etc.0.join("hosts");
    std::fs::write(&hosts, "127.0.0.1 localhost\n10.0.0.5 db.corp.test\n").expect("hosts");

    let cfg = dir.0.join("link");
    std::fs::create_dir_all(&cfg).expect("cfg dir");
    std::fs::write(
        cfg.join("wg0.conf"),
        format!("# the user's VPN identity\n[Interface]\nPrivateKey = {link_priv}\nAddress = 10.8.0.2/32\nDNS = 10.8.0.1\nMTU = 1380\nPostUp = echo never run\n\n[Peer]\nPublicKey = {vpn_pub}\nEndpoint = 198.51.100.1:51820\nAllowedIPs = 10.0.0.0/24, 10.8.0.0/24\nPersistentKeepalive = 5\n"),
    )
    .expect("wg0.conf");
    std::fs::write(
        cfg.join("config.json"),
        wgnet_tests::link::egress_config(
            1,
            &[
                ("db", 1433, "TCP", "db.corp.test", 1433),
                ("echo", 5000, "UDP", "10.0.0.5", 5000),
                ("outside", 6000, "TCP", "192.0.2.9", 6000),
            ],
        ),
    )
    .expect("config");
    let link = Link::start(&link_ns, &cfg, &["--secret-key", "wg0.conf"]);
    link.wait_ready(Duration::from_secs(20));
    Egress {
        link,
        hosts,
        vpn_if,
        dir,
        pod,
        _remote: remote,
        vpn,
        _link_ns: link_ns,
        _etc: etc,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_reach_hosts_behind_the_vpn_and_names_are_followed() {
    let t = egress().await;
    // The remote side sees the VPN address the user's config gives the link.
    assert_eq!(
        t.request("tcp", 1433).as_deref(),
        Some("db-a tcp 1433 from 10.8.0.2"),
        "{}",
        t.link.logs()
    );
    assert_eq!(
        t.request("udp", 5000).as_deref(),
        Some("db-a udp 5000 from 10.8.0.2")
    );
    // UDP segmentation offload (Linux 6.2+): a burst the pod sends as one UDP super-packet
    // (UDP_SEGMENT, as QUIC stacks send) reaches the link whole and is split into
    // datagrams with fresh checksums; the remote's equal-sized answers are merged again
    // when several arrive together and written to the pod as one. Every datagram and
    // every answer arrives intact (the remote answers each with its digest). Answers
    // arrive together only as the VPN's WireGuard sends them, so bursts repeat (bounded)
    // until one merge is seen.
    let super_packets = |name: &str| t.link.metric(name).unwrap_or(0.0);
    let (tx0, rx0) = (
        super_packets("wgnet_link_tx_super_packets_total"),
        super_packets("wgnet_link_rx_super_packets_total"),
    );
    let merged = wait_for(Duration::from_secs(30), || {
        let (ok, out, err) = t.pod.try_sh(&format!(
            "python3 '{}' udpburst 10.244.1.1 5000 40 1200",
            echo_py()
        ));
        assert!(
            ok && out.trim() == "got 40 of 40 intact",
            "UDP burst: {out} {err}\n{}",
            t.link.logs()
        );
        (super_packets("wgnet_link_rx_super_packets_total") > rx0).then_some(())
    });
    assert!(
        super_packets("wgnet_link_tx_super_packets_total") > tx0,
        "the burst never reached the link as a UDP super-packet"
    );
    assert!(
        merged.is_some(),
        "no answers were merged into a UDP super-packet"
    );
    // A bulk upload arrives intact: the link splits the pod's TCP super-packets into
    // MTU-sized segments with fresh checksums (the server compares a digest).
    let (ok, out, err) = t.pod.try_sh(&format!(
        "python3 '{}' bulk 10.244.1.1 1433 30000000",
        echo_py()
    ));
    assert!(
        ok && out.trim() == "got 30000000",
        "bulk upload: {out} {err}\n{}",
        t.link.logs()
    );
    assert!(
        t.link
            .metric("wgnet_link_tx_super_packets_total")
            .is_some_and(|n| n > 0.0),
        "the upload never reached the link as TCP super-packets"
    );
    // A target outside AllowedIPs is skipped with a reason, never routed into the tunnel.
    assert_eq!(t.request_once("tcp", 6000), None);
    assert!(
        t.link.logs().contains("outside the peer's AllowedIPs"),
        "{}",
        t.link.logs()
    );
    // The VPN server accepts nothing the link did not DNAT: the tunnel cannot reach the pod.
    let (ok, _, _) = t
        .vpn
        .try_sh(&format!("python3 '{}' tcp 10.8.0.2 1433", echo_py()));
    assert!(!ok, "the VPN side opened a connection through the link");

    // The name moves: new flows follow within the resolve interval.
    std::fs::write(&t.hosts, "127.0.0.1 localhost\n10.0.0.6 db.corp.test\n").expect("hosts");
    let moved = wait_for(Duration::from_secs(10), || {
        (t.request_once("tcp", 1433).as_deref() == Some("db-b tcp 1433 from 10.8.0.2"))
            .then_some(())
    });
    assert!(
        moved.is_some(),
        "db.corp.test never moved to 10.0.0.6:\n{}",
        t.link.logs()
    );

    // The config's commands are never run, and its key never reaches the log.
    let conf = std::fs::read_to_string(t.dir.0.join("link/wg0.conf")).expect("conf");
    let key = conf
        .lines()
        .find_map(|l| l.strip_prefix("PrivateKey = "))
        .expect("key line");
    assert!(!t.link.logs().contains(key));
    assert_eq!(t.link.metric("wgnet_link_forwards"), Some(2.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_secret_reloads_in_place() {
    let t = egress().await;
    assert_eq!(
        t.request("tcp", 1433).as_deref(),
        Some("db-a tcp 1433 from 10.8.0.2")
    );
    // A hostile edit is refused with the line named and the old tunnel kept.
    let path = t.dir.0.join("link/wg0.conf");
    let good = std::fs::read_to_string(&path).expect("conf");
    std::fs::write(
        &path,
        good.replace("PersistentKeepalive = 5", "PersistentKeepalive = $(reboot)"),
    )
    .expect("conf");
    let refused = wait_for(Duration::from_secs(10), || {
        t.link
            .get("/readyz")
            .1
            .contains("line 13: PersistentKeepalive")
            .then_some(())
    });
    assert!(refused.is_some(), "{:?}", t.link.get("/readyz"));
    assert_eq!(
        t.request("tcp", 1433).as_deref(),
        Some("db-a tcp 1433 from 10.8.0.2")
    );
    // Fixing it (with a new keepalive) applies in place.
    std::fs::write(
        &path,
        good.replace("PersistentKeepalive = 5", "PersistentKeepalive = 3"),
    )
    .expect("conf");
    let fixed = wait_for(Duration::from_secs(10), || {
        (!t.link.get("/readyz").1.contains("refused")).then_some(())
    });
    assert!(fixed.is_some(), "{:?}", t.link.get("/readyz"));
    assert_eq!(
        t.request("tcp", 1433).as_deref(),
        Some("db-a tcp 1433 from 10.8.0.2")
    );
}
