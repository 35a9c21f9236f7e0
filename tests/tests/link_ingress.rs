//! The ingress data path end to end, for real: a client on the "internet" → the gateway
//! VM booted from its own startup script (GCP emulator metadata, wireguard-go, nftables)
//! → WireGuard → `wgnet-link` in the cluster namespace (boringtun, nftnl, rtnetlink) →
//! backend namespaces standing in for ClusterIPs. Needs root (`make test` runs as root).

use std::path::PathBuf;
use std::time::Duration;

use wgnet_tests::gateway::{Gw, echo_py, gateway};
use wgnet_tests::link::Link;
use wgnet_tests::netns::{Netns, wait_for};

struct Ingress {
    link: Link,
    dir: PathBuf,
    _backend: Netns,
    gw: Gw,
}

impl Ingress {
    fn set_forwards(&self, forwards: &[(u16, &str, &str, u16)]) {
        let text = self.gw.link_config(forwards);
        // Write then rename, as a ConfigMap volume update would.
        let tmp = self.dir.join(".config.json.tmp");
        std::fs::write(&tmp, text).expect("config");
        std::fs::rename(&tmp, self.dir.join("config.json")).expect("config");
    }

    fn request(&self, proto: &str, port: u16) -> Option<String> {
        self.gw.request(proto, port)
    }

    /// A single attempt, for asserting that something does not answer.
    fn request_once(&self, proto: &str, port: u16) -> Option<String> {
        let (ok, out, _) = self.gw.client.try_sh(&format!(
            "python3 '{}' {proto} {} {port}",
            echo_py(),
            self.gw.ip
        ));
        ok.then(|| out.trim().to_owned())
    }
}

/// A booted VM, two backends (10.96.0.10 answering on 80 and 53, 10.96.0.11 on 81 and
/// 54) and a link forwarding `forwards`.
async fn ingress(forwards: &[(u16, &str, &str, u16)]) -> Ingress {
    let gw = gateway().await;
    gw.boot();
    gw.wait_state("ready", Duration::from_secs(30));
    let backend = gw.backend();
    backend.sh("ip addr add 10.96.0.11/24 dev eth0");
    for (ip, tcp, udp) in [("10.96.0.10", "80", "53"), ("10.96.0.11", "81", "54")] {
        drop(backend.spawn(
            &format!("python3 '{}' serve {ip} {tcp} {udp}", echo_py()),
            &[],
        ));
    }
    let (link, dir) = gw.start_link(forwards);
    Ingress {
        link,
        dir,
        _backend: backend,
        gw,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_and_udp_reach_services_and_forwards_change_live() {
    let t = ingress(&[
        (8080, "TCP", "10.96.0.10", 80),
        (5353, "UDP", "10.96.0.10", 53),
    ])
    .await;
    // The backend sees the link's address (masquerade), never the VM's tunnel address.
    assert_eq!(
        t.request("tcp", 8080).as_deref(),
        Some("tcp 80 from 10.96.0.1"),
        "{}",
        t.link.logs()
    );
    assert_eq!(
        t.request("udp", 5353).as_deref(),
        Some("udp 53 from 10.96.0.1")
    );
    // A port with no forward goes nowhere.
    assert_eq!(t.request_once("tcp", 9999), None);

    // An established flow on 8080 must survive every change below.
    let open = t.dir.join("slow.open");
    let slow = t.gw.client.spawn(
        &format!(
            "python3 '{}' slow {} 8080 4 '{}' > '{}' 2>&1",
            echo_py(),
            t.gw.ip,
            open.display(),
            t.dir.join("slow.out").display()
        ),
        &[],
    );
    assert!(
        wait_for(Duration::from_secs(10), || open.exists().then_some(())).is_some(),
        "the long flow never opened"
    );

    // Added live: reachable without restarting anything.
    let pid = t.link.pid();
    t.set_forwards(&[
        (8080, "TCP", "10.96.0.10", 80),
        (5353, "UDP", "10.96.0.10", 53),
        (9090, "TCP", "10.96.0.11", 81),
    ]);
    assert_eq!(
        t.request("tcp", 9090).as_deref(),
        Some("tcp 81 from 10.96.0.1")
    );
    // Retargeted live: new flows reach the other backend.
    t.set_forwards(&[
        (8080, "TCP", "10.96.0.11", 81),
        (5353, "UDP", "10.96.0.10", 53),
        (9090, "TCP", "10.96.0.11", 81),
    ]);
    let moved = wait_for(Duration::from_secs(10), || {
        (t.request_once("tcp", 8080).as_deref() == Some("tcp 81 from 10.96.0.1")).then_some(())
    });
    assert!(moved.is_some(), "8080 never moved to the new backend");
    // Removed live: only that port closes.
    t.set_forwards(&[
        (8080, "TCP", "10.96.0.11", 81),
        (9090, "TCP", "10.96.0.11", 81),
    ]);
    let closed = wait_for(Duration::from_secs(10), || {
        t.request_once("udp", 5353).is_none().then_some(())
    });
    assert!(
        closed.is_some(),
        "5353 still answers after its forward was removed"
    );
    assert_eq!(
        t.request("tcp", 9090).as_deref(),
        Some("tcp 81 from 10.96.0.1")
    );
    assert_eq!(t.link.pid(), pid, "no restart");

    // The slow flow started before the retarget finished on its original backend.
    let mut slow = slow;
    let done = wait_for(Duration::from_secs(15), || slow.try_wait().ok().flatten());
    assert!(done.is_some(), "the established flow hung");
    let out = std::fs::read_to_string(t.dir.join("slow.out")).unwrap_or_default();
    assert_eq!(out.trim(), "got 40", "established flow was cut: {out}");

    assert_eq!(t.link.metric("wgnet_link_forwards"), Some(2.0));
    assert!(
        t.link
            .metric("wgnet_link_rx_bytes_total")
            .is_some_and(|b| b > 0.0)
    );
    assert!(
        t.link
            .metric("wgnet_link_handshake_age_seconds")
            .is_some_and(|a| a < 60.0)
    );
    assert_eq!(t.link.metric("wgnet_link_config_errors_total"), Some(0.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_reconnects_large_transfers_complete_and_sigterm_fences() {
    let mut t = ingress(&[(8080, "TCP", "10.96.0.10", 80)]).await;
    let mtu = t.gw.cluster.sh("cat /sys/class/net/wg0/mtu");
    assert_eq!(mtu.trim(), "1380");
    // 100 MB through the tunnel at MTU 1380 (MSS clamped on both hops), arriving intact
    // (the server compares a digest). The service veth computes checksums in software, as
    // a path through a NIC without offloads would: a coalesced packet whose partial
    // checksum is wrong reaches the backend with a bad checksum and is dropped there.
    t.gw.cluster.sh("ethtool -K svc0 tx off >/dev/null");
    let (ok, out, err) = t.gw.client.try_sh(&format!(
        "python3 '{}' bulk {} 8080 100000000",
        echo_py(),
        t.gw.ip
    ));
    assert!(
        ok && out.trim() == "got 100000000",
        "bulk transfer: {out} {err}\n{}",
        t.link.logs()
    );
    // The transfer went to the backend as coalesced super-packets, not only one by one.
    assert!(
        t.link
            .metric("wgnet_link_rx_super_packets_total")
            .is_some_and(|n| n > 0.0),
        "no decrypted segments were coalesced"
    );

    // A crash (no fencing) and a restart: the VM accepts the new session at once.
    t.link.kill();
    t.link = Link::start(&t.gw.cluster, &t.dir, &[]);
    t.link.wait_ready(Duration::from_secs(20));
    assert_eq!(
        t.request("tcp", 8080).as_deref(),
        Some("tcp 80 from 10.96.0.1")
    );

    // SIGTERM: the link removes wg0 and its table before exiting.
    assert!(
        t.link.stop(),
        "the link did not exit on SIGTERM:\n{}",
        t.link.logs()
    );
    let (has_wg, _, _) = t.gw.cluster.try_sh("ip link show wg0");
    let (has_table, _, _) = t.gw.cluster.try_sh("nft list table ip wgnet_link");
    assert!(
        !has_wg && !has_table,
        "fencing left wg0={has_wg} table={has_table}"
    );
    assert!(t.link.logs().contains("fencing"), "{}", t.link.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_config_is_refused_and_the_last_good_one_keeps_serving_and_ready() {
    let t = ingress(&[(8080, "TCP", "10.96.0.10", 80)]).await;
    std::fs::write(t.dir.join("config.json"), r#"{"mode":"ingress","address":"10.99.0.2/29","peer":{},"forwards":[{"port":0,"protocol":"TCP","clusterIP":"10.96.0.10","targetPort":80}]}"#).expect("config");
    let refused = wait_for(Duration::from_secs(10), || {
        let (code, body) = t.link.get("/readyz");
        (code == 200
            && body.contains("the newest was refused")
            && body.contains("ports must be 1-65535"))
        .then_some(())
    });
    assert!(refused.is_some(), "readyz: {:?}", t.link.get("/readyz"));
    assert_eq!(
        t.request("tcp", 8080).as_deref(),
        Some("tcp 80 from 10.96.0.1")
    );
    let key = std::fs::read_to_string(t.dir.join("private-key")).expect("key");
    assert!(
        !t.link.logs().contains(key.trim()),
        "the private key reached the log"
    );
}

/// Issue 20, part 2: clients keep their own addresses through the VM (it no longer
/// masquerades into the tunnel) and the link routes the replies back into wg0; forwards
/// with the PROXY protocol are relayed by the link behind a v2 header, so HAProxy
/// (`accept-proxy`) and nginx (`listen ... proxy_protocol`), both from Debian's packages,
/// answer and log the test client's own address. A plain forward next to them keeps
/// working as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_protocol_forwards_hand_haproxy_and_nginx_the_clients_address() {
    use wgnet_link::config::ProxyProtocol;
    use wgnet_tests::proxied;
    let gw = gateway().await;
    gw.boot();
    gw.wait_state("ready", Duration::from_secs(30));
    let backend = gw.backend();
    drop(backend.spawn(
        &format!("python3 '{}' serve 10.96.0.10 80 53", echo_py()),
        &[],
    ));
    let dir = gw.dir.0.join("proxied");
    std::fs::create_dir_all(&dir).expect("backend dir");
    std::fs::write(
        dir.join("haproxy.cfg"),
        proxied::haproxy_config("10.96.0.10:8081"),
    )
    .expect("haproxy config");
    std::fs::write(
        dir.join("nginx.conf"),
        proxied::nginx_config("10.96.0.10:8082", &dir),
    )
    .expect("nginx config");
    let (haproxy_log, nginx_log) = (dir.join("haproxy.log"), dir.join("nginx.log"));
    drop(backend.spawn(
        &proxied::haproxy_command(&dir.join("haproxy.cfg"), &haproxy_log),
        &[],
    ));
    drop(backend.spawn(
        &proxied::nginx_command(&dir.join("nginx.conf"), &nginx_log),
        &[],
    ));
    let proxied = |port, target| {
        let mut f = wgnet_tests::link::ingress_forward((port, "TCP", "10.96.0.10", target));
        f.proxy_protocol = Some(ProxyProtocol::V2);
        f
    };
    let (link, _dir) = gw.start_link_with(vec![
        wgnet_tests::link::ingress_forward((8080, "TCP", "10.96.0.10", 80)),
        proxied(8443, 8081),
        proxied(9443, 8082),
    ]);

    let get = |port: u16| {
        wait_for(Duration::from_secs(15), || {
            let (ok, out, _) = gw
                .client
                .try_sh(&format!("curl -s --max-time 3 http://{}:{port}/", gw.ip));
            (ok && !out.is_empty()).then(|| out.trim().to_owned())
        })
    };
    for (port, server, log) in [(8443, "haproxy", &haproxy_log), (9443, "nginx", &nginx_log)] {
        let answer = get(port).unwrap_or_else(|| {
            panic!(
                "{server} through {port} unanswered\n{}\n{}",
                std::fs::read_to_string(log).unwrap_or_default(),
                link.logs()
            )
        });
        assert!(
            answer.starts_with(&format!("{server} saw 203.0.113.20:")),
            "{server} must see the client's own address: {answer}"
        );
        let logged = wait_for(Duration::from_secs(5), || {
            std::fs::read_to_string(log)
                .ok()
                .filter(|l| l.contains(&format!("{server} logged 203.0.113.20:")))
        });
        assert!(
            logged.is_some(),
            "{server} logs the client's address: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
    }
    // The plain forward: kernel DNAT, the backend sees the link (masquerade) as before.
    assert_eq!(
        gw.request("tcp", 8080).as_deref(),
        Some("tcp 80 from 10.96.0.1"),
        "{}",
        link.logs()
    );
}

/// A VM 600 ms away (a relay holding each datagram 300 ms each way) still gets a tunnel.
/// Until the first session the link repeats its initiation every 200 ms; the repeats reach
/// the VM after the original and are dropped there as replays, so the answer to the
/// original still matches. Were each repeat a fresh initiation, it would replace the
/// handshake the answer belongs to, and no answer slower than 200 ms would ever match.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vm_far_away_gets_a_tunnel_while_the_first_knocks_repeat() {
    let gw = gateway().await;
    gw.boot();
    gw.wait_state("ready", Duration::from_secs(30));
    let backend = gw.backend();
    drop(backend.spawn(
        &format!("python3 '{}' serve 10.96.0.10 80 53", echo_py()),
        &[],
    ));
    let relay = wgnet_tests::repo_root().join("tests/netns/udp_delay.py");
    drop(gw.cluster.spawn(
        &format!(
            "python3 '{}' 127.0.0.1 41820 {} {} 300",
            relay.display(),
            gw.ip,
            gw.cfg.listen_port
        ),
        &[],
    ));
    let config = gw.link_config_via(
        "127.0.0.1:41820",
        vec![wgnet_tests::link::ingress_forward((
            8080,
            "tcp",
            "10.96.0.10",
            80,
        ))],
    );
    let (link, _dir) = gw.start_link_config(&config);
    let answer = gw.request("tcp", 8080);
    assert!(
        answer.as_deref().is_some_and(|a| a.starts_with("tcp 80")),
        "no answer through the far-away tunnel: {answer:?}\n{}",
        link.logs()
    );
}
