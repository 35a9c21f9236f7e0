//! `make bench` (operator at scale): the `wgnet-operator` binary (release build), as the
//! chart's ServiceAccount, against a real control plane (chart installed with helm) and the
//! GCP emulator (`gcp-typical` x0.05) with N Gateways (first
//! argument, default 500): time until every Gateway's cloud resources exist, the process's
//! peak and final RSS, and GCP calls per Gateway. No VM boots and no link runs here, so the
//! Gateways stay un-Ready and keep being polled at the operator's growing patience.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, ListParams, PostParams};
use serde_json::json;
use wgnet_operator::api::Gateway;
use wgnet_tests::cluster::{OPERATOR_NAMESPACE, OPERATOR_SA, helm_install};
use wgnet_tests::controlplane::{self, ControlPlane};
use wgnet_tests::fixtures::{PROJECT, TempDir};
use wgnet_tests::gcp::{self, GcpEmulator, LatencyProfile};

fn rss_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

#[allow(clippy::print_stdout)]
#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(500);
    let bin = std::env::current_exe()
        .ok()
        .and_then(|p| Some(p.parent()?.parent()?.join("wgnet-operator")))
        .filter(|p| p.exists())
        .expect("target/<profile>/wgnet-operator: run `cargo build --release -p wgnet-operator` first (make bench does)");
    let emu = GcpEmulator::start(gcp::Config {
        profile: LatencyProfile::gcp_typical().scaled_by(0.05),
        ..gcp::Config::default()
    })
    .await
    .expect("emulator");
    let mut cp = ControlPlane::start(controlplane::Options {
        controllers: false,
        ..controlplane::Options::default()
    })
    .await
    .unwrap_or_else(|e| panic!("control plane: {e}"));
    let client = cp.admin_client().await.expect("client");
    // No node runs the chart's operator pod: this process is the operator.
    helm_install(&cp, &["nodeSelector.wgnet\\.dev/no-such-node=none"])
        .unwrap_or_else(|e| panic!("helm install: {e}"));
    // After the CRDs, so the garbage collector watches Gateways from the start.
    cp.start_controllers()
        .await
        .unwrap_or_else(|e| panic!("control plane: {e}"));
    Api::<Namespace>::all(client.clone())
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "apps"}})).expect("ns"),
        )
        .await
        .expect("namespace");
    let dir = TempDir::new();
    let key = dir.0.join("key.json");
    emu.write_key_file("op@wgnet-test.iam.gserviceaccount.com", &key)
        .expect("key");
    let kubeconfig = dir.0.join("kubeconfig");
    let token = ControlPlane::service_account_token(&client, OPERATOR_NAMESPACE, OPERATOR_SA, None)
        .await
        .expect("operator token");
    std::fs::write(&kubeconfig, cp.kubeconfig_for_token(cp.url(), &token)).expect("kubeconfig");
    let mut child = Command::new(&bin)
        .args([
            "--link-image",
            "wgnet-link:bench",
            "--allowed-projects",
            PROJECT,
            // Every Gateway of the bench is in one namespace: no per-namespace cap.
            "--max-gateways-per-namespace",
            "0",
            "--cluster-id",
            "bench",
            "--resync",
            "300",
        ])
        .args([
            "--metrics-addr",
            "127.0.0.1:0",
            "--health-addr",
            "127.0.0.1:0",
        ])
        .arg("--gcp-credentials")
        .arg(&key)
        .args([
            "--compute-endpoint",
            &emu.compute_url(),
            "--iam-endpoint",
            &emu.iam_url(),
            "--secrets-endpoint",
            &emu.secrets_url(),
        ])
        .env("KUBECONFIG", &kubeconfig)
        .env("POD_NAMESPACE", OPERATOR_NAMESPACE)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("operator");
    let pid = child.id();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle = rss_kib(pid, "VmRSS:");

    let gws: Api<Gateway> = Api::namespaced(client.clone(), "apps");
    let t0 = Instant::now();
    for i in 0..n {
        let gw: Gateway = serde_json::from_value(json!({
            "apiVersion": "wgnet.dev/v1alpha1", "kind": "Gateway",
            "metadata": {"name": format!("gw-{i}")},
            "spec": {
                "gcp": {"projectID": "wgnet-test", "region": "us-central1", "zone": "us-central1-a"},
                "forwards": [{"port": 443, "service": "web"}]
            }
        }))
        .expect("gateway");
        gws.create(&PostParams::default(), &gw)
            .await
            .expect("create");
    }
    let deadline = Instant::now() + Duration::from_secs(900);
    let mut done = 0;
    while Instant::now() < deadline {
        let list = gws.list(&ListParams::default()).await.expect("list");
        done = list
            .items
            .iter()
            .filter(|g| {
                g.status
                    .as_ref()
                    .and_then(|s| s.gcp.as_ref())
                    .is_some_and(|g| g.instance.is_some() && g.pending_operations.is_empty())
            })
            .count();
        if done == n {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let all = t0.elapsed();
    let calls = emu
        .request_log()
        .iter()
        .filter(|c| c.api != "oauth" && c.api != "metadata")
        .count();
    tokio::time::sleep(Duration::from_secs(30)).await;
    let calls_later = emu
        .request_log()
        .iter()
        .filter(|c| c.api != "oauth" && c.api != "metadata")
        .count();
    println!(
        "# operator at scale: {n} Gateways, emulator gcp-typical x0.05, operator binary {}",
        bin.display()
    );
    println!(
        "cloud resources of {done}/{n} Gateways created in {all:?}; {:.1} GCP calls per Gateway",
        calls as f64 / n as f64
    );
    println!(
        "GCP calls in the next 30 s (un-Ready Gateways polled with growing patience): {:.2} per Gateway",
        (calls_later - calls) as f64 / n as f64
    );
    println!(
        "operator RSS: idle {:.1} MiB, now {:.1} MiB, peak {:.1} MiB",
        idle as f64 / 1024.0,
        rss_kib(pid, "VmRSS:") as f64 / 1024.0,
        rss_kib(pid, "VmHWM:") as f64 / 1024.0
    );
    // Where the calls went: the ten largest groups by API, method, resource kind and status.
    let mut groups: std::collections::BTreeMap<String, usize> = std::collections::BTreeMap::new();
    for c in emu.request_log() {
        let kind = c
            .path
            .split('/')
            .filter(|s| !s.is_empty())
            .rev()
            .find(|s| s.chars().all(|ch| ch.is_ascii_lowercase()) && s.len() > 3)
            .unwrap_or("?")
            .to_owned();
        *groups
            .entry(format!("{} {} {kind} {}", c.api, c.method, c.status))
            .or_default() += 1;
    }
    let mut top: Vec<_> = groups.into_iter().collect();
    top.sort_by_key(|g| std::cmp::Reverse(g.1));
    for (g, count) in top.into_iter().take(10) {
        println!("  {count:>8}  {g}");
    }
    let _ = child.kill();
    let _ = child.wait();
}
