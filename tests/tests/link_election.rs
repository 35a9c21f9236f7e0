//! Leader election between two `wgnet-link` replicas against a real kube-apiserver: one holder with wg0 and the table, an idle ready standby, failover when the
//! holder is killed, a graceful hand-over on SIGTERM, and never two wg0 carrying the key
//! at once. Each replica has its own namespace and backend; a wireguard-go peer stands in
//! for the VM. Needs root.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use wgnet_tests::controlplane::{self, ControlPlane};
use wgnet_tests::fixtures::TempDir;
use wgnet_tests::gateway::echo_py;
use wgnet_tests::link::Link;
use wgnet_tests::netns::{self, Netns, RootLink, wait_for};

struct Replica {
    ns: Netns,
    _backend: Netns,
    _api: RootLink,
    kubeconfig: std::path::PathBuf,
}

struct Pair {
    reps: Vec<Replica>,
    vm: Netns,
    vm_if: String,
    dir: TempDir,
    _server: ControlPlane,
    /// Last: the addresses are free for others only once the root links are gone.
    _subnet: netns::Subnet,
}

impl Drop for Pair {
    fn drop(&mut self) {
        self.vm.kill_all();
        let _ = std::fs::remove_file(format!("/run/wireguard/{}.sock", self.vm_if));
    }
}

impl Pair {
    fn start(&self, i: usize) -> Link {
        let r = &self.reps[i];
        let id = format!("rep{i}");
        Link::start_with_env(
            &r.ns,
            &self.dir.0.join("link"),
            &[
                "--lease",
                "wgnet-link-test",
                "--identity",
                &id,
                "--lease-duration",
                "3",
                "--renew-deadline",
                "2",
                "--retry-period",
                "1",
            ],
            &[
                ("KUBECONFIG", r.kubeconfig.display().to_string()),
                ("POD_NAMESPACE", "default".into()),
            ],
        )
    }

    fn has_wg(&self, i: usize) -> bool {
        self.reps[i].ns.try_sh("ip link show wg0").0
    }

    /// Which replica answers through the tunnel.
    fn answer(&self) -> Option<String> {
        let (ok, out, _) = self
            .vm
            .try_sh(&format!("python3 '{}' tcp 10.99.0.2 8080", echo_py()));
        ok.then(|| out.trim().to_owned())
    }
}

async fn pair() -> Pair {
    netns::require_root();
    let tag = netns::unique_tag();
    let subnet = netns::Subnet::claim();
    let server_ip = subnet.host(1).to_string();
    let dir = TempDir::new();

    // The VM stand-in: a bridge on the "internet" and a wireguard-go peer.
    let vm = Netns::new("evm", &tag);
    vm.sh(
        "ip link add br0 type bridge && ip addr add 203.0.113.1/24 dev br0 && ip link set br0 up",
    );
    let (vm_priv, vm_pub) = netns::wg_keypair();
    let (link_priv, link_pub) = netns::wg_keypair();
    let vm_if = format!("wge{tag}");
    std::fs::write(dir.0.join("vm.key"), &vm_priv).expect("vm key");
    vm.sh(&format!(
        "wireguard-go {vm_if} 2>/dev/null && ip addr add 10.99.0.1/29 dev {vm_if} && wg set {vm_if} private-key '{}' listen-port 51820 peer {link_pub} allowed-ips 10.99.0.2/32 && ip link set {vm_if} mtu 1380 up",
        dir.0.join("vm.key").display()
    ));

    let mut reps = Vec::new();
    for i in 0..2u8 {
        let ns = Netns::new(&format!("rp{i}"), &tag);
        let port_name = format!("p{i}");
        let tmp = format!("vr{}", netns::unique_tag());
        netns::ip(&[
            "link",
            "add",
            &tmp,
            "type",
            "veth",
            "peer",
            "name",
            &format!("{port_name}{tag}"),
        ]);
        netns::ip(&["link", "set", &tmp, "netns", &ns.name, "name", "eth0"]);
        netns::ip(&[
            "link",
            "set",
            &format!("{port_name}{tag}"),
            "netns",
            &vm.name,
            "name",
            &port_name,
        ]);
        vm.sh(&format!(
            "ip link set {port_name} master br0 && ip link set {port_name} up"
        ));
        ns.sh(&format!(
            "ip addr add 203.0.113.{}/24 dev eth0 && ip link set eth0 up",
            11 + i
        ));
        // The API server: the first replica's root link carries its address; the second
        // reaches it through its own root link (the root namespace owns the address).
        let root_side = subnet.host(1 + 4 * i);
        let ns_side = subnet.host(2 + 4 * i);
        let api = RootLink::new(
            &format!("wgl{i}{tag}"),
            &format!("{root_side}/30"),
            &ns,
            "api0",
            &format!("{ns_side}/30"),
        );
        if i == 1 {
            ns.sh(&format!("ip route add {server_ip}/32 via {root_side}"));
        }
        let backend = Netns::new(&format!("rb{i}"), &tag);
        netns::veth(
            &ns,
            "svc0",
            "10.96.0.1/24",
            &backend,
            "eth0",
            "10.96.0.10/24",
        );
        backend.sh("ip route add default via 10.96.0.1");
        drop(backend.spawn(
            &format!("python3 '{}' serve 10.96.0.10 80 '' rep{i}", echo_py()),
            &[],
        ));
        let kubeconfig = dir.0.join(format!("kubeconfig{i}"));
        reps.push(Replica {
            ns,
            _backend: backend,
            _api: api,
            kubeconfig,
        });
    }

    // The Lease is all the links use: the API server alone, no controllers.
    let server = ControlPlane::start(controlplane::Options {
        bind: server_ip.parse().expect("ip"),
        controllers: false,
    })
    .await
    .unwrap_or_else(|e| panic!("control plane: {e}"));
    for r in &reps {
        std::fs::write(
            &r.kubeconfig,
            server.kubeconfig_for_token(server.url(), server.token("wgnet-admin")),
        )
        .expect("kubeconfig");
    }
    let cfg = dir.0.join("link");
    std::fs::create_dir_all(&cfg).expect("cfg");
    std::fs::write(cfg.join("private-key"), &link_priv).expect("key");
    std::fs::write(
        cfg.join("config.json"),
        wgnet_tests::link::ingress_config(
            "10.99.0.2/29",
            1380,
            "203.0.113.1:51820",
            &vm_pub,
            1,
            &[(8080, "TCP", "10.96.0.10", 80)],
        ),
    )
    .expect("config");
    Pair {
        reps,
        vm,
        vm_if,
        dir,
        _server: server,
        _subnet: subnet,
    }
}

/// Samples both namespaces until `stop`; returns true if wg0 ever existed in both.
fn watch_overlap(p: &Pair, stop: &AtomicBool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
        if p.has_wg(0) && p.has_wg(1) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_holder_failover_on_crash_and_handover_on_sigterm() {
    let p = pair().await;
    let mut a = p.start(0);
    a.wait_ready(Duration::from_secs(20));
    assert_eq!(a.metric("wgnet_link_leader"), Some(1.0), "{}", a.logs());
    let mut b = p.start(1);
    b.wait_ready(Duration::from_secs(20));
    assert_eq!(
        b.get("/readyz").1.trim(),
        "standby: another replica holds the lease"
    );
    assert_eq!(b.metric("wgnet_link_leader"), Some(0.0));
    assert!(!p.has_wg(1), "the standby created wg0");
    assert_eq!(
        wait_for(Duration::from_secs(10), || p.answer()).as_deref(),
        Some("rep0 tcp 80 from 10.96.0.1")
    );

    // Crash the holder: its wg0 dies with it; the standby takes over after the lease.
    let stop = AtomicBool::new(false);
    let overlap = std::thread::scope(|s| {
        let watcher = s.spawn(|| watch_overlap(&p, &stop));
        let killed = Instant::now();
        a.kill();
        let took = wait_for(Duration::from_secs(20), || {
            (b.metric("wgnet_link_leader") == Some(1.0)).then(|| killed.elapsed())
        });
        assert!(took.is_some(), "the standby never took over:\n{}", b.logs());
        let served = wait_for(Duration::from_secs(15), || {
            (p.answer().as_deref() == Some("rep1 tcp 80 from 10.96.0.1")).then_some(())
        });
        assert!(
            served.is_some(),
            "traffic never reached the new holder:\n{}",
            b.logs()
        );
        eprintln!(
            "failover after a crash: leader in {:?}, serving in {:?}",
            took,
            killed.elapsed()
        );
        stop.store(true, Ordering::SeqCst);
        watcher.join().expect("watcher")
    });
    assert!(!overlap, "two replicas had wg0 at once");

    // Graceful: the old replica returns as standby; SIGTERM on the holder fences, then
    // releases the lease, so the standby takes over without waiting for expiry.
    let a = p.start(0);
    a.wait_ready(Duration::from_secs(20));
    assert_eq!(a.metric("wgnet_link_leader"), Some(0.0));
    let stop = Arc::new(AtomicBool::new(false));
    let overlap = std::thread::scope(|s| {
        let watcher = s.spawn(|| watch_overlap(&p, &stop));
        assert!(
            b.stop(),
            "the holder did not exit on SIGTERM:\n{}",
            b.logs()
        );
        let took = wait_for(Duration::from_secs(20), || {
            (a.metric("wgnet_link_leader") == Some(1.0)).then_some(())
        });
        assert!(took.is_some(), "no hand-over:\n{}", a.logs());
        let served = wait_for(Duration::from_secs(15), || {
            (p.answer().as_deref() == Some("rep0 tcp 80 from 10.96.0.1")).then_some(())
        });
        assert!(
            served.is_some(),
            "traffic never returned to rep0:\n{}",
            a.logs()
        );
        stop.store(true, Ordering::SeqCst);
        watcher.join().expect("watcher")
    });
    assert!(
        !overlap,
        "two replicas had wg0 at once during the hand-over"
    );
    assert!(
        b.logs().contains("fencing before releasing the lease"),
        "{}",
        b.logs()
    );
}
