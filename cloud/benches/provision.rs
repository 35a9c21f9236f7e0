//! `make bench` (control plane): time to Ready against the dependency critical path, and API
//! calls per gateway for create, an unchanged resync and delete, for 1 and 100 gateways,
//! against the GCP emulator's `gcp-typical` latency profile (scaled down so a run takes
//! seconds; ratios are scale-free).
//!
//! Run: `cargo bench -p wgnet-cloud --bench provision [-- SCALE]`.

#![allow(clippy::print_stdout, clippy::unwrap_used)]

use std::time::{Duration, Instant};

use wgnet_cloud::api::{Credentials, Endpoints, RetryPolicy};
use wgnet_cloud::gcp::{GcpCloud, GcpConfig};
use wgnet_cloud::{Cloud, Desired, GatewayId, Protocol, Recorded, SecretBytes, Target};
use wgnet_tests::gcp::{Config, GcpEmulator, LatencyProfile, LoggedCall};

fn desired(i: usize) -> Desired {
    Desired {
        target: Target {
            id: GatewayId {
                cluster: "bench".into(),
                namespace: "default".into(),
                name: format!("gw{i}"),
                uid: format!("uid-{i}"),
            },
            project: "wgnet-test".into(),
            region: "us-central1".into(),
            zone: "us-central1-a".into(),
        },
        machine_type: "e2-small".into(),
        image: "projects/debian-cloud/global/images/family/debian-12".into(),
        disk_size_gb: 10,
        reserved_ip: true,
        spot: false,
        listen_port: 51820,
        ports: vec![(443, Protocol::Tcp), (80, Protocol::Tcp)],
        source_ranges: vec!["0.0.0.0/0".into()],
        metadata: Default::default(),
        vm_key: SecretBytes::new(vec![7; 44]),
        key_version: 1,
    }
}

async fn converge(cloud: &GcpCloud, d: &Desired) -> (Recorded, Duration) {
    let start = Instant::now();
    let mut rec = Recorded::default();
    for _ in 0..500 {
        let p = cloud.ensure(d, &rec).await;
        rec = p.recorded;
        if p.ready {
            return (rec, start.elapsed());
        }
        if rec.pending.is_empty() {
            // Waiting on IAM propagation or a VM state: the operator requeues shortly.
            tokio::time::sleep(Duration::from_millis(20)).await;
        } else {
            cloud.wait_any(&d.target, &rec).await;
        }
    }
    panic!("gateway did not converge");
}

async fn teardown(cloud: &GcpCloud, d: &Desired, mut rec: Recorded) {
    for _ in 0..500 {
        let p = cloud.delete(&d.target, &rec).await;
        rec = p.recorded;
        if p.done {
            return;
        }
        if rec.pending.is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        } else {
            cloud.wait_any(&d.target, &rec).await;
        }
    }
    panic!("gateway was not deleted");
}

fn count(log: &[LoggedCall]) -> (usize, usize, usize) {
    let api: Vec<_> = log.iter().filter(|c| c.api != "oauth").collect();
    let writes = api.iter().filter(|c| c.is_write()).count();
    let waits = api.iter().filter(|c| c.path.ends_with("/wait")).count();
    (api.len(), writes, waits)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let scale: f64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(0.05);
    let profile = LatencyProfile::gcp_typical().scaled_by(scale);
    let emu = GcpEmulator::start(Config {
        profile: profile.clone(),
        ..Config::default()
    })
    .await
    .unwrap();
    let dir = std::env::temp_dir().join(format!("wgnet-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let key = dir.join("key.json");
    emu.write_key_file("bench@wgnet-test.iam.gserviceaccount.com", &key)
        .unwrap();
    let cloud = GcpCloud::new(GcpConfig {
        credentials: Credentials::KeyFile(key),
        endpoints: Endpoints {
            compute: emu.compute_url(),
            iam: emu.iam_url(),
            secrets: emu.secrets_url(),
        },
        retry: RetryPolicy::default(),
        install: "bench".into(),
        cluster: "bench".into(),
        network: "wgnet".into(),
        observer: None,
        verify_every: wgnet_cloud::gcp::DEFAULT_VERIFY_EVERY,
        budget: wgnet_cloud::budget::Budget::DEFAULT,
    })
    .await
    .unwrap();
    let _ = std::fs::remove_dir_all(&dir);

    // Critical path: network insert, then instance insert (firewall, address, account and
    // IAM propagation all run beside it), plus one call latency per sequential request:
    // get network, insert network, get instance, insert instance, final get instance.
    let p = &profile;
    let critical = p.scaled(p.network_insert + p.instance_insert) + p.scaled(p.request) * 5;
    println!("# control plane, emulator profile gcp-typical x{scale}");
    println!(
        "critical path (network {:?} + instance {:?} + 5 calls): {critical:?}",
        p.scaled(p.network_insert),
        p.scaled(p.instance_insert)
    );

    let d = desired(0);
    emu.clear_request_log();
    let (rec, took) = converge(&cloud, &d).await;
    let (calls, writes, waits) = count(&emu.request_log());
    println!(
        "1 gateway: Ready in {took:?} = {:.3}x the critical path; create: {calls} calls ({writes} writes, {waits} operation waits)",
        took.as_secs_f64() / critical.as_secs_f64()
    );
    emu.clear_request_log();
    let p1 = cloud.ensure(&d, &rec).await;
    let (calls, writes, _) = count(&emu.request_log());
    println!(
        "1 gateway: unchanged resync: {calls} calls, {writes} writes (ready={})",
        p1.ready
    );
    emu.clear_request_log();
    teardown(&cloud, &d, rec).await;
    let (calls, writes, waits) = count(&emu.request_log());
    println!(
        "1 gateway: delete: {calls} calls ({writes} writes, {waits} waits); inventory left: {}",
        emu.inventory().len()
    );

    let n = 100;
    let ds: Vec<Desired> = (1..=n).map(desired).collect();
    emu.clear_request_log();
    let start = Instant::now();
    let recs: Vec<(Recorded, Duration)> =
        futures_util::future::join_all(ds.iter().map(|d| converge(&cloud, d))).await;
    let all = start.elapsed();
    let slowest = recs.iter().map(|r| r.1).max().unwrap();
    let (calls, writes, waits) = count(&emu.request_log());
    println!(
        "{n} gateways: all Ready in {all:?} ({:.3}x the critical path); create: {:.1} calls/gateway ({:.1} writes, {:.1} waits); slowest {slowest:?}",
        all.as_secs_f64() / critical.as_secs_f64(),
        calls as f64 / n as f64,
        writes as f64 / n as f64,
        waits as f64 / n as f64
    );
    emu.clear_request_log();
    let resync =
        futures_util::future::join_all(ds.iter().zip(&recs).map(|(d, r)| cloud.ensure(d, &r.0)))
            .await;
    let (calls, writes, _) = count(&emu.request_log());
    println!(
        "{n} gateways: unchanged resync: {:.2} calls/gateway, {writes} writes, all ready: {}",
        calls as f64 / n as f64,
        resync.iter().all(|p| p.ready)
    );
    emu.clear_request_log();
    let start = Instant::now();
    futures_util::future::join_all(ds.iter().zip(recs).map(|(d, r)| teardown(&cloud, d, r.0)))
        .await;
    let (calls, writes, _) = count(&emu.request_log());
    println!(
        "{n} gateways: deleted in {:?}; {:.1} calls/gateway ({:.1} writes); inventory left: {}",
        start.elapsed(),
        calls as f64 / n as f64,
        writes as f64 / n as f64,
        emu.inventory().len()
    );
}
