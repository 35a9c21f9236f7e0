//! `make bench`: data-plane throughput and latency, side by side in one run, in network
//! namespaces on this machine:
//!
//! - bare veth (the ceiling),
//! - boringtun-cli ↔ boringtun-cli (default threads, and WG_THREADS=1),
//! - GotaTun ↔ GotaTun (Mullvad's boringtun fork, `gotatun-cli`),
//! - wireguard-go ↔ wireguard-go: Debian 12's (2022, no offloads) and the current one built
//!   from the Go module proxy (TUN offloads, UDP GSO/GRO; scripts/wireguard-go.sh), which
//!   also stands in for the VM's kernel WireGuard in the ingress rows,
//! - wgnet-link ↔ wgnet-link (egress link → ingress link, so the path also crosses two
//!   DNAT/forward hops the others do not),
//! - the whole ingress path: client → gateway VM (real startup script, wireguard-go) →
//!   wgnet-link → backend,
//! - that path into HAProxy (TCP mode, in front of iperf3 and the echo server) through the
//!   link's kernel DNAT and through its PROXY protocol v2 relay, and their ratio.
//!
//! TCP with iperf3 (5 s, one stream and four), UDP at the sender's maximum rate (received
//! rate and loss), UDP from a sender using UDP_SEGMENT (as QUIC stacks send; iperf3 does
//! not) and 1-byte TCP request/response round trips;
//! the link's ratio against the best anchor. For
//! the links also peak RSS (VmHWM) and CPU seconds per Gbit. Also the crypto limit: what
//! one core encrypts and decrypts through boringtun alone, 1380-byte packets, no I/O, and
//! the same through GotaTun's noise core (the candidate replacement for boringtun's).
//! Needs root, iperf3 and boringtun-cli (the Makefile installs them). Prints a Markdown
//! table. `WGNET_BENCH_PERF=DIR` also records `perf` profiles of the two links during the
//! transfer into DIR and prints where their time goes.

// A benchmark's output is its report.
#![allow(clippy::print_stdout)]

use std::process::Command;
use std::time::Duration;

use wgnet_tests::fixtures::TempDir;
use wgnet_tests::gateway::{echo_py, gateway};
use wgnet_tests::link::Link;
use wgnet_tests::netns::{self, Netns, wait_for};

const SECONDS: u32 = 5;
const ROUND_TRIPS: u32 = 2000;

struct Row {
    path: String,
    gbps: f64,
    /// Four parallel TCP streams (NaN where not measured).
    gbps4: f64,
    /// UDP at the sender's maximum rate: Gbit/s received and % lost (NaN: not measured).
    udp: (f64, f64),
    /// UDP from a sender using UDP_SEGMENT, as QUIC stacks send: Gbit/s received.
    udp_gso: f64,
    p50_us: f64,
    p99_us: f64,
    note: String,
}

/// Starts a one-shot iperf3 server on `server_ip:5201` and waits (bounded) until it listens.
fn iperf_server(server: &Netns, server_ip: &str) {
    drop(server.spawn(&format!("iperf3 -s -1 -B {server_ip} >/dev/null 2>&1"), &[]));
    let ok = wait_for(Duration::from_secs(5), || {
        server.try_sh("ss -ltn | grep -q ':5201 '").0.then_some(())
    });
    assert!(ok.is_some(), "iperf3 server did not start");
}

/// Whether `r` is one of the other implementations the link is compared with.
fn is_anchor(r: &Row) -> bool {
    ["boringtun", "gotatun", "wireguard-go"]
        .iter()
        .any(|a| r.path.starts_with(a))
}

fn iperf(client: &Netns, server: &Netns, server_ip: &str, connect_ip: &str) -> f64 {
    iperf_via(client, server, server_ip, connect_ip, 5201)
}

/// One stream, then four, against a fresh server each time: (Gbit/s, Gbit/s).
fn iperf_1_and_4(client: &Netns, server: &Netns, server_ip: &str, connect_ip: &str) -> (f64, f64) {
    let one = iperf(client, server, server_ip, connect_ip);
    (one, iperf4(client, server, server_ip, connect_ip))
}

/// UDP at the sender's maximum rate (1300-byte datagrams, one stream, 5 s) against a fresh
/// server: (Gbit/s received, % of datagrams lost).
fn iperf_udp(client: &Netns, server: &Netns, server_ip: &str, connect_ip: &str) -> (f64, f64) {
    iperf_server(server, server_ip);
    let out = client.sh(&format!(
        "iperf3 -c {connect_ip} -u -b 0 -l 1300 -t {SECONDS} -J"
    ));
    let v: serde_json::Value = serde_json::from_str(&out).expect("iperf3 JSON");
    (
        v["end"]["sum_received"]["bits_per_second"]
            .as_f64()
            .unwrap_or(f64::NAN)
            / 1e9,
        v["end"]["sum"]["lost_percent"].as_f64().unwrap_or(f64::NAN),
    )
}

/// UDP from a sender that hands the kernel 48 datagrams of 1300 bytes per send
/// (UDP_SEGMENT) for [`SECONDS`], into a receiver with UDP_GRO on `server_ip:5201`: Gbit/s
/// of payload received. iperf3 (Debian's 3.12) sends one datagram per call, so this is
/// the row where UDP segmentation offload on a TUN can show.
fn udp_gso(client: &Netns, server: &Netns, server_ip: &str, connect_ip: &str) -> f64 {
    let dir = TempDir::new();
    let out = dir.0.join("sink.out");
    let mut sink = server.spawn(
        &format!(
            "python3 '{}' udpsink {server_ip} 5201 {SECONDS} > '{}'",
            echo_py(),
            out.display()
        ),
        &[],
    );
    let bound = wait_for(Duration::from_secs(5), || {
        server.try_sh("ss -lun | grep -q ':5201 '").0.then_some(())
    });
    assert!(bound.is_some(), "UDP sink did not start");
    client.sh(&format!(
        "python3 '{}' udpflood {connect_ip} 5201 {SECONDS} 1300 >/dev/null",
        echo_py()
    ));
    let done = wait_for(Duration::from_secs(40), || sink.try_wait().ok().flatten());
    if done.is_none() {
        let _ = sink.kill();
    }
    std::fs::read_to_string(&out)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(f64::NAN)
}

/// Four parallel streams against a fresh server: Gbit/s.
fn iperf4(client: &Netns, server: &Netns, server_ip: &str, connect_ip: &str) -> f64 {
    iperf_server(server, server_ip);
    iperf_run(client, connect_ip, 5201, 4)
}

/// As [`iperf`], the client dialling `connect_port` (a forward or proxy in front of the
/// server's 5201).
fn iperf_via(
    client: &Netns,
    server: &Netns,
    server_ip: &str,
    connect_ip: &str,
    connect_port: u16,
) -> f64 {
    iperf_server(server, server_ip);
    iperf_run(client, connect_ip, connect_port, 1)
}

/// Gbit/s received in one iperf3 run of `streams` parallel TCP streams against a server
/// already listening.
fn iperf_run(client: &Netns, connect_ip: &str, connect_port: u16, streams: u32) -> f64 {
    let out = client.sh(&format!(
        "iperf3 -c {connect_ip} -p {connect_port} -t {SECONDS} -P {streams} -J"
    ));
    let v: serde_json::Value = serde_json::from_str(&out).expect("iperf3 JSON");
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .expect("iperf3 result")
        / 1e9
}

fn rr(client: &Netns, server: &Netns, server_ip: &str, connect_ip: &str, port: u16) -> (f64, f64) {
    drop(server.spawn(
        &format!("python3 '{}' serve {server_ip} {port} ''", echo_py()),
        &[],
    ));
    std::thread::sleep(Duration::from_millis(300));
    rr_via(client, connect_ip, port)
}

/// The round-trip percentiles (p50, p99 µs) of the echo server behind `connect_ip:port`.
fn rr_via(client: &Netns, connect_ip: &str, port: u16) -> (f64, f64) {
    let out = wait_for(Duration::from_secs(10), || {
        let (ok, out, _) = client.try_sh(&format!(
            "python3 '{}' rr {connect_ip} {port} {ROUND_TRIPS}",
            echo_py()
        ));
        ok.then_some(out)
    })
    .expect("round trips");
    let mut it = out.split_whitespace().filter_map(|v| v.parse::<f64>().ok());
    (it.next().unwrap_or(f64::NAN), it.next().unwrap_or(f64::NAN))
}

/// Idle and total jiffies of the whole machine, from the first line of /proc/stat.
fn machine_jiffies() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let v: Vec<f64> = stat
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // idle + iowait
    let idle = v.get(3).copied().unwrap_or(0.0) + v.get(4).copied().unwrap_or(0.0);
    (idle, v.iter().sum())
}

/// (utime + stime) in seconds and VmHWM in MiB of a process.
fn cpu_and_rss(pid: u32) -> (f64, f64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = f.get(11).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    let hz = Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .trim()
                .parse::<f64>()
                .ok()
        })
        .unwrap_or(100.0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let hwm_kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0);
    (ticks / hz, hwm_kb / 1024.0)
}

fn two(tag: &str) -> (Netns, Netns) {
    let a = Netns::new("ba", tag);
    let b = Netns::new("bb", tag);
    netns::veth(&a, "eth0", "203.0.113.1/24", &b, "eth0", "203.0.113.2/24");
    (a, b)
}

fn bare() -> Row {
    let (a, b) = two(&netns::unique_tag());
    let gbps = iperf(&a, &b, "203.0.113.2", "203.0.113.2");
    let (p50, p99) = rr(&a, &b, "203.0.113.2", "203.0.113.2", 7000);
    Row {
        path: "bare veth".into(),
        gbps,
        gbps4: f64::NAN,
        udp: (f64::NAN, f64::NAN),
        udp_gso: f64::NAN,
        p50_us: p50,
        p99_us: p99,
        note: "the ceiling".into(),
    }
}

/// A pair of userspace WireGuard implementations configured with wg(8) over UAPI.
fn userspace_pair(label: &str, start: &str, env: &str) -> Row {
    let tag = netns::unique_tag();
    let (a, b) = two(&tag);
    let dir = TempDir::new();
    let ka = netns::wg_keypair();
    let kb = netns::wg_keypair();
    // Distinct names: the UAPI sockets share /run/wireguard across namespaces.
    let names = [format!("wga{tag}"), format!("wgb{tag}")];
    for (ns, me, peer, addr, peer_ip, ifname) in [
        (&a, &ka, &kb, "10.99.0.1", "203.0.113.2", &names[0]),
        (&b, &kb, &ka, "10.99.0.2", "203.0.113.1", &names[1]),
    ] {
        let key = dir.0.join(format!("{addr}.key"));
        std::fs::write(&key, &me.0).expect("key");
        ns.sh(&format!("{env} {start} {ifname} >/dev/null 2>&1"));
        let up = wait_for(Duration::from_secs(10), || {
            ns.try_sh(&format!("wg show {ifname}")).0.then_some(())
        });
        assert!(up.is_some(), "{label} did not create {ifname}");
        ns.sh(&format!(
            "wg set {ifname} private-key '{}' listen-port 51820 peer {} endpoint {peer_ip}:51820 allowed-ips 10.99.0.0/24 && ip addr add {addr}/24 dev {ifname} && ip link set {ifname} mtu 1420 up",
            key.display(),
            peer.1
        ));
    }
    let (gbps, gbps4) = iperf_1_and_4(&a, &b, "10.99.0.2", "10.99.0.2");
    let udp = iperf_udp(&a, &b, "10.99.0.2", "10.99.0.2");
    let udp_gso = udp_gso(&a, &b, "10.99.0.2", "10.99.0.2");
    let (p50, p99) = rr(&a, &b, "10.99.0.2", "10.99.0.2", 7000);
    for ns in [&a, &b] {
        ns.kill_all();
    }
    for n in &names {
        let _ = std::fs::remove_file(format!("/run/wireguard/{n}.sock"));
    }
    Row {
        path: label.into(),
        gbps,
        gbps4,
        udp,
        udp_gso,
        p50_us: p50,
        p99_us: p99,
        note: String::new(),
    }
}

/// client → link A (egress: 5201/7000 DNAT to B's tunnel address) → WireGuard → link B
/// (ingress: DNAT to the server) → server.
fn link_pair() -> Row {
    let tag = netns::unique_tag();
    let (a, b) = two(&tag);
    let client = Netns::new("bc", &tag);
    let server = Netns::new("bs", &tag);
    netns::veth(
        &client,
        "eth0",
        "10.244.1.2/24",
        &a,
        "eth1",
        "10.244.1.1/24",
    );
    netns::veth(&b, "svc0", "10.96.0.1/24", &server, "eth0", "10.96.0.10/24");
    server.sh("ip route add default via 10.96.0.1");
    let dir = TempDir::new();
    let ka = netns::wg_keypair();
    let kb = netns::wg_keypair();
    let da = dir.0.join("a");
    let db = dir.0.join("b");
    std::fs::create_dir_all(&da).expect("dir");
    std::fs::create_dir_all(&db).expect("dir");
    std::fs::write(
        da.join("wg0.conf"),
        format!("[Interface]\nPrivateKey = {}\nAddress = 10.99.0.1/24\nMTU = 1420\nListenPort = 51820\n[Peer]\nPublicKey = {}\nEndpoint = 203.0.113.2:51820\nAllowedIPs = 10.99.0.0/24\nPersistentKeepalive = 25\n", ka.0, kb.1),
    )
    .expect("conf");
    std::fs::write(
        da.join("config.json"),
        wgnet_tests::link::egress_config(
            30,
            &[
                ("iperf", 5201, "TCP", "10.99.0.2", 5201),
                ("iperf-udp", 5201, "UDP", "10.99.0.2", 5201),
                ("rr", 7000, "TCP", "10.99.0.2", 7000),
            ],
        ),
    )
    .expect("config");
    std::fs::write(db.join("private-key"), &kb.0).expect("key");
    std::fs::write(
        db.join("config.json"),
        // The peer's AllowedIPs default to any source (clients keep their addresses).
        wgnet_tests::link::ingress_config(
            "10.99.0.2/24",
            1420,
            "203.0.113.1:51820",
            &ka.1,
            25,
            &[
                (5201, "TCP", "10.96.0.10", 5201),
                (5201, "UDP", "10.96.0.10", 5201),
                (7000, "TCP", "10.96.0.10", 7000),
            ],
        ),
    )
    .expect("config");
    let la = Link::start(&a, &da, &["--secret-key", "wg0.conf"]);
    let lb = Link::start(&b, &db, &[]);
    la.wait_ready(Duration::from_secs(20));
    lb.wait_ready(Duration::from_secs(20));
    let (pa, pb) = (la.pid().expect("pid"), lb.pid().expect("pid"));
    let (ca0, _) = cpu_and_rss(pa);
    let (cb0, _) = cpu_and_rss(pb);
    let profile = std::env::var("WGNET_BENCH_PERF").ok().map(|dir| {
        let data = format!("{dir}/link-pair.perf.data");
        let child = Command::new("perf")
            .args(["record", "-q", "-F", "999", "-g", "-o", &data])
            .args([
                "-p",
                &format!("{pa},{pb}"),
                "--",
                "sleep",
                &SECONDS.to_string(),
            ])
            .spawn()
            .expect("perf record");
        (child, data)
    });
    let (idle0, total0) = machine_jiffies();
    let gbps = iperf(&client, &server, "10.96.0.10", "10.244.1.1");
    let (idle1, total1) = machine_jiffies();
    let busy = 1.0 - (idle1 - idle0) / (total1 - total0).max(1.0);
    if let Some((mut child, data)) = profile {
        let _ = child.wait();
        let report = Command::new("sh")
            .args(["-c", &format!("perf report -i '{data}' --stdio --no-children --sort comm,dso,sym --percent-limit 1.5 2>/dev/null | grep -E '^ +[0-9]'")])
            .output()
            .expect("perf report");
        println!(
            "\nwhere the links' time goes (perf, self time, entries over 1.5%):\n{}",
            String::from_utf8_lossy(&report.stdout)
        );
    }
    let (ca1, ra) = cpu_and_rss(pa);
    let (cb1, rb) = cpu_and_rss(pb);
    let gbit = gbps * f64::from(SECONDS);
    let gbps4 = iperf4(&client, &server, "10.96.0.10", "10.244.1.1");
    let udp = iperf_udp(&client, &server, "10.96.0.10", "10.244.1.1");
    let udp_gso = udp_gso(&client, &server, "10.96.0.10", "10.244.1.1");
    let (p50, p99) = rr(&client, &server, "10.96.0.10", "10.244.1.1", 7000);
    Row {
        path: "wgnet-link ↔ wgnet-link".into(),
        gbps,
        gbps4,
        udp,
        udp_gso,
        p50_us: p50,
        p99_us: p99,
        note: format!(
            "+2 NAT hops; CPU s/Gbit: sender {:.2}, receiver {:.2}; peak RSS {:.1} / {:.1} MiB; machine {:.0}% busy",
            (ca1 - ca0) / gbit,
            (cb1 - cb0) / gbit,
            ra,
            rb,
            busy * 100.0
        ),
    }
}

/// The current wireguard-go, built from the Go module proxy into the cache
/// (scripts/wireguard-go.sh): its path.
fn modern_wireguard_go() -> String {
    let out = Command::new("sh")
        .arg(wgnet_tests::repo_root().join("scripts/wireguard-go.sh"))
        .stderr(std::process::Stdio::inherit())
        .output()
        .expect("scripts/wireguard-go.sh runs");
    assert!(
        out.status.success(),
        "scripts/wireguard-go.sh failed (it needs Go and the Go module proxy)"
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .map(str::to_owned)
        .expect("scripts/wireguard-go.sh prints the binary's path")
}

/// client → VM (startup script, the current wireguard-go standing in for GCP's kernel
/// WireGuard, nftables) → link → backend.
async fn ingress_path(vm_wireguard: &str) -> Row {
    let gw = gateway().await;
    gw.boot_userspace(vm_wireguard, &[]);
    gw.wait_state("ready", Duration::from_secs(30));
    let backend = gw.backend();
    let (_link, _) = gw.start_link(&[
        (5201, "TCP", "10.96.0.10", 5201),
        (7000, "TCP", "10.96.0.10", 7000),
    ]);
    let gbps = iperf(&gw.client, &backend, "10.96.0.10", &gw.ip);
    let (p50, p99) = rr(&gw.client, &backend, "10.96.0.10", &gw.ip, 7000);
    Row {
        path: "ingress path (VM: current wireguard-go → link)".into(),
        gbps,
        gbps4: f64::NAN,
        udp: (f64::NAN, f64::NAN),
        udp_gso: f64::NAN,
        p50_us: p50,
        p99_us: p99,
        note: "the VM uses kernel WireGuard on GCP".into(),
    }
}

/// The ingress path into a PROXY-aware backend, HAProxy in TCP mode in front of iperf3 and
/// the echo server, once through the link's kernel DNAT and once through its PROXY v2
/// relay (issue 20): the relay's cost against the plain path, everything else equal.
async fn ingress_relay_rows(vm_wireguard: &str) -> Vec<Row> {
    let gw = gateway().await;
    gw.boot_userspace(vm_wireguard, &[]);
    gw.wait_state("ready", Duration::from_secs(30));
    let backend = gw.backend();
    let dir = gw.dir.0.join("haproxy");
    std::fs::create_dir_all(&dir).expect("dir");
    let cfg = dir.join("haproxy.cfg");
    std::fs::write(
        &cfg,
        "defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend plain_bulk
    bind 10.96.0.10:6201
    default_backend bulk
frontend proxied_bulk
    bind 10.96.0.10:6202 accept-proxy
    default_backend bulk
frontend plain_rr
    bind 10.96.0.10:7101
    default_backend echo
frontend proxied_rr
    bind 10.96.0.10:7102 accept-proxy
    default_backend echo
backend bulk
    server iperf 10.96.0.10:5201
backend echo
    server echo 10.96.0.10:7000
",
    )
    .expect("haproxy config");
    drop(backend.spawn(
        &wgnet_tests::proxied::haproxy_command(&cfg, &dir.join("haproxy.log")),
        &[],
    ));
    drop(backend.spawn(
        &format!("python3 '{}' serve 10.96.0.10 7000 ''", echo_py()),
        &[],
    ));
    let relayed = |port| {
        let mut f = wgnet_tests::link::ingress_forward((port, "TCP", "10.96.0.10", port));
        f.proxy_protocol = Some(wgnet_link::config::ProxyProtocol::V2);
        f
    };
    let (_link, _) = gw.start_link_with(vec![
        wgnet_tests::link::ingress_forward((6201, "TCP", "10.96.0.10", 6201)),
        relayed(6202),
        wgnet_tests::link::ingress_forward((7101, "TCP", "10.96.0.10", 7101)),
        relayed(7102),
    ]);
    let mut rows = Vec::new();
    for (label, bulk, echo) in [
        ("ingress path → HAProxy, plain DNAT", 6201, 7101),
        ("ingress path → HAProxy, PROXY v2 relay", 6202, 7102),
    ] {
        let gbps = iperf_via(&gw.client, &backend, "10.96.0.10", &gw.ip, bulk);
        let (p50, p99) = rr_via(&gw.client, &gw.ip, echo);
        rows.push(Row {
            path: label.into(),
            gbps,
            gbps4: f64::NAN,
            udp: (f64::NAN, f64::NAN),
            udp_gso: f64::NAN,
            p50_us: p50,
            p99_us: p99,
            note: "HAProxy (tcp mode) in front of iperf3 and the echo server in both".into(),
        });
    }
    rows
}

/// The same through GotaTun's noise state machine (its own packet buffers: one allocation
/// per encrypted packet, decryption in place), with the inputs made outside the timing as
/// a device would have read them.
fn crypto_limit_gotatun() -> (f64, f64) {
    use gotatun::noise::index_table::IndexTable;
    use gotatun::noise::rate_limiter::RateLimiter;
    use gotatun::noise::{Tunn, TunnResult};
    use gotatun::packet::{Packet, WgKind};
    use gotatun::x25519::{PublicKey, StaticSecret};
    use std::sync::Arc;
    const PACKET: usize = 1380;
    const BATCH: usize = 2000;
    let (ka, kb) = (StaticSecret::from([7u8; 32]), StaticSecret::from([9u8; 32]));
    let (pa, pb) = (PublicKey::from(&ka), PublicKey::from(&kb));
    let indices = IndexTable::from_os_rng();
    let limiter = |k: &PublicKey| Arc::new(RateLimiter::new(k, 100));
    let mut a = Tunn::new(ka, pb, None, None, indices.clone(), limiter(&pa));
    let mut b = Tunn::new(kb, pa, None, None, indices, limiter(&pb));
    let init = a
        .format_handshake_initiation(false)
        .expect("a handshake initiation");
    let TunnResult::WriteToNetwork(response) =
        b.handle_incoming_packet(WgKind::HandshakeInit(init))
    else {
        panic!("no handshake response")
    };
    if let TunnResult::WriteToNetwork(keepalive) = a.handle_incoming_packet(response) {
        let _ = b.handle_incoming_packet(keepalive);
    }
    let plain = sample_packet(PACKET);
    let (mut enc, mut dec, mut bytes) = (Duration::ZERO, Duration::ZERO, 0u64);
    while enc + dec < Duration::from_secs(2) {
        let inputs: Vec<Packet> = (0..BATCH).map(|_| Packet::copy_from(&plain[..])).collect();
        let t = std::time::Instant::now();
        let sealed: Vec<_> = inputs
            .into_iter()
            .map(|p| {
                a.encapsulate_with_session(p)
                    .unwrap_or_else(|_| panic!("no session to encrypt with"))
            })
            .collect();
        enc += t.elapsed();
        let t = std::time::Instant::now();
        for s in sealed {
            match b.decapsulate_with_session(s) {
                Ok(p) => assert_eq!(p.len(), PACKET),
                Err(e) => panic!("decryption failed: {e:?}"),
            }
        }
        dec += t.elapsed();
        bytes += (PACKET * BATCH) as u64;
    }
    let gbit = bytes as f64 * 8.0 / 1e9;
    (gbit / enc.as_secs_f64(), gbit / dec.as_secs_f64())
}

/// A plaintext packet of `len` bytes behind an IPv4 header both noise cores accept.
fn sample_packet(len: usize) -> Vec<u8> {
    let mut plain = vec![0x5au8; len];
    plain[..20].copy_from_slice(&[
        0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0, 10, 99, 0, 1, 10, 99, 0, 2,
    ]);
    plain[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    plain
}

/// Gbit/s of plaintext one core encrypts, and decrypts, through boringtun's noise state
/// machine alone (ring's ChaCha20-Poly1305 plus boringtun's framing), 1380-byte packets.
fn crypto_limit() -> (f64, f64) {
    use boringtun::noise::{Tunn, TunnResult};
    use boringtun::x25519::{PublicKey, StaticSecret};
    const PACKET: usize = 1380;
    const BATCH: usize = 2000;
    let (ka, kb) = (StaticSecret::from([7u8; 32]), StaticSecret::from([9u8; 32]));
    let (pa, pb) = (PublicKey::from(&ka), PublicKey::from(&kb));
    let mut a = Tunn::new(ka, pb, None, None, 1, None);
    let mut b = Tunn::new(kb, pa, None, None, 2, None);
    let mut buf = vec![0u8; 2048];
    let mut out = vec![0u8; 2048];
    // The handshake, then a keepalive that confirms the responder's session.
    let init = match a.format_handshake_initiation(&mut buf, false) {
        TunnResult::WriteToNetwork(p) => p.to_vec(),
        _ => panic!("no handshake initiation"),
    };
    let response = match b.decapsulate(None, &init, &mut out) {
        TunnResult::WriteToNetwork(p) => p.to_vec(),
        _ => panic!("no handshake response"),
    };
    if let TunnResult::WriteToNetwork(p) = a.decapsulate(None, &response, &mut buf) {
        let keepalive = p.to_vec();
        let _ = b.decapsulate(None, &keepalive, &mut out);
    }
    let plain = sample_packet(PACKET);
    let mut sealed = vec![vec![0u8; PACKET + 32]; BATCH];
    let (mut enc, mut dec, mut bytes) = (Duration::ZERO, Duration::ZERO, 0u64);
    while enc + dec < Duration::from_secs(2) {
        let t = std::time::Instant::now();
        for s in &mut sealed {
            match a.encapsulate(&plain, s) {
                TunnResult::WriteToNetwork(p) => assert_eq!(p.len(), PACKET + 32),
                _ => panic!("no session to encrypt with"),
            }
        }
        enc += t.elapsed();
        let t = std::time::Instant::now();
        for s in &sealed {
            match b.decapsulate(None, s, &mut out) {
                TunnResult::WriteToTunnelV4(p, _) => assert_eq!(p.len(), PACKET),
                _ => panic!("decryption failed"),
            }
        }
        dec += t.elapsed();
        bytes += (PACKET * BATCH) as u64;
    }
    let gbit = bytes as f64 * 8.0 / 1e9;
    (gbit / enc.as_secs_f64(), gbit / dec.as_secs_f64())
}

fn main() {
    netns::require_root();
    for bin in ["iperf3", "boringtun-cli", "gotatun", "wireguard-go"] {
        let ok = Command::new("sh")
            .args(["-c", &format!("command -v {bin}")])
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(ok, "{bin} is missing: run `make bench` (it installs it)");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    // `cargo bench --bench dataplane -- link ingress` runs only the rows whose path
    // contains one of the words; the ratios need the boringtun and wireguard-go rows.
    let only: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let want = |path: &str| only.is_empty() || only.iter().any(|w| path.contains(w.as_str()));
    let mut rows = Vec::new();
    if want("bare veth") {
        rows.push(bare());
    }
    for (label, env) in [
        ("boringtun-cli ↔ boringtun-cli (default threads)", ""),
        (
            "boringtun-cli ↔ boringtun-cli (WG_THREADS=1)",
            "WG_THREADS=1",
        ),
    ] {
        if want(label) {
            rows.push(userspace_pair(
                label,
                "boringtun-cli --disable-drop-privileges",
                env,
            ));
        }
    }
    if want("gotatun") {
        rows.push(userspace_pair(
            "gotatun ↔ gotatun (GotaTun 0.10.2)",
            "gotatun --disable-drop-privileges",
            "",
        ));
    }
    if want("wireguard-go ↔ wireguard-go (Debian") {
        rows.push(userspace_pair(
            "wireguard-go ↔ wireguard-go (Debian 12, no offloads)",
            "wireguard-go",
            "",
        ));
    }
    // The current wireguard-go (TUN offloads, UDP GSO/GRO): the strongest userspace
    // anchor, and the VM stand-in of the ingress path (GCP runs kernel WireGuard).
    let modern = modern_wireguard_go();
    if want("wireguard-go ↔ wireguard-go (current") {
        rows.push(userspace_pair(
            "wireguard-go ↔ wireguard-go (current, offloads)",
            &modern,
            "",
        ));
    }
    if want("wgnet-link ↔ wgnet-link") {
        rows.push(link_pair());
    }
    if want("ingress path") {
        rows.push(rt.block_on(ingress_path(&modern)));
    }
    if want("HAProxy") {
        rows.extend(rt.block_on(ingress_relay_rows(&modern)));
    }
    // The best anchor: the fastest other implementation, by single-stream throughput.
    let best = rows
        .iter()
        .filter(|r| is_anchor(r))
        .max_by(|a, b| a.gbps.total_cmp(&b.gbps));
    let (enc, dec) = crypto_limit();
    let (genc, gdec) = crypto_limit_gotatun();
    println!(
        "\n| path | TCP Gbit/s, 1 stream | 4 streams | UDP Gbit/s (lost) | UDP, GSO sender | RR p50 µs | RR p99 µs | notes |\n|---|---|---|---|---|---|---|---|"
    );
    for r in &rows {
        println!(
            "| {} | {:.2} | {:.2} | {:.2} ({:.0}%) | {:.2} | {:.0} | {:.0} | {} |",
            r.path, r.gbps, r.gbps4, r.udp.0, r.udp.1, r.udp_gso, r.p50_us, r.p99_us, r.note
        );
    }
    let relay = |suffix: &str| {
        rows.iter()
            .find(|r| r.path.ends_with(suffix))
            .map(|r| (r.gbps, r.p50_us))
    };
    if let (Some(plain), Some(relayed)) = (relay("plain DNAT"), relay("PROXY v2 relay")) {
        println!(
            "\nPROXY v2 relay / plain DNAT into the same HAProxy: throughput {:.2}x, RR p50 {:.2}x",
            relayed.0 / plain.0,
            relayed.1 / plain.1
        );
    }
    if let Some(l) = rows.iter().find(|r| r.path.starts_with("wgnet-link")) {
        if let Some(b) = best {
            println!(
                "\nlink / best anchor ({}): {:.2}x single stream, {:.2}x four streams",
                b.path,
                l.gbps / b.gbps,
                l.gbps4 / b.gbps4
            );
            let best_udp = rows
                .iter()
                .filter(|r| is_anchor(r))
                .max_by(|a, b| a.udp.0.total_cmp(&b.udp.0));
            if let Some(u) = best_udp {
                println!(
                    "link / best anchor for UDP ({}): {:.2}x received",
                    u.path,
                    l.udp.0 / u.udp.0
                );
            }
            let best_gso = rows
                .iter()
                .filter(|r| is_anchor(r))
                .max_by(|a, b| a.udp_gso.total_cmp(&b.udp_gso));
            if let Some(u) = best_gso {
                println!(
                    "link / best anchor for UDP from a GSO sender ({}): {:.2}x received",
                    u.path,
                    l.udp_gso / u.udp_gso
                );
            }
        }
        println!(
            "crypto limit of one core (boringtun, 1380-byte packets, no I/O): encrypt {enc:.2} Gbit/s, decrypt {dec:.2} Gbit/s; link / slower of the two: {:.2}x",
            l.gbps / enc.min(dec)
        );
    } else {
        println!("\ncrypto limit of one core: encrypt {enc:.2} Gbit/s, decrypt {dec:.2} Gbit/s");
    }
    println!(
        "crypto limit of one core through GotaTun 0.10.2's core (ring): encrypt {genc:.2} Gbit/s, decrypt {gdec:.2} Gbit/s; GotaTun / boringtun: encrypt {:.2}x, decrypt {:.2}x",
        genc / enc,
        gdec / dec
    );
}
