//! `make bench` (operator at scale): the `wgnet-operator` binary (release build), as the
//! chart's ServiceAccount, against a real control plane (chart installed with helm) and the
//! GCP emulator (`gcp-typical` x0.05) with N Gateways (first
//! argument, default 500): time until every Gateway's cloud resources exist, the process's
//! peak and final RSS, and GCP calls per Gateway while they are un-Ready and polled at the
//! operator's growing patience. Then every Gateway is made Ready the way a booted VM and a
//! handshaking link make it (no VM boots and no link runs here: the VM's guest attribute
//! is written in the emulator, each link pod is marked Ready and given the Lease), and the
//! GCP calls of one resync period of that steady state are counted, in total.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use kube::ResourceExt as _;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use wgnet_cloud::GatewayId;
use wgnet_operator::api::Gateway;
use wgnet_operator::children;
use wgnet_operator::controller::gateway::link_name;
use wgnet_tests::cluster::{OPERATOR_NAMESPACE, OPERATOR_SA, helm_install};
use wgnet_tests::controlplane::{self, ControlPlane};
use wgnet_tests::fixtures::{PROJECT, TempDir};
use wgnet_tests::gcp::{self, GcpEmulator, LatencyProfile};

/// The operator's resync period here: short enough to measure one in the bench.
const RESYNC: Duration = Duration::from_secs(120);

/// `api.list(params)`, tried again on an error (a 5,000-Gateway run once ended on a
/// connection the API server closed under a pooled request), at most five times.
async fn list_again<K>(api: &Api<K>, params: &ListParams) -> kube::api::ObjectList<K>
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let mut last = None;
    for attempt in 1..=5u64 {
        match api.list(params).await {
            Ok(l) => return l,
            Err(e) => {
                #[allow(clippy::print_stderr)]
                {
                    eprintln!("  list failed ({e}); trying again");
                }
                last = Some(e);
                // A pause before the next try: the API server is loaded, not gone.
                tokio::time::sleep(Duration::from_secs(attempt)).await;
            }
        }
    }
    panic!("list failed five times: {last:?}");
}

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
    // Arguments: Gateways (default 500), projects they are spread over (default 1), and
    // the percentage of them whose VM never reports ready (default 0).
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let n = args.first().copied().unwrap_or(500);
    let project_count = args.get(1).copied().unwrap_or(1).max(1);
    let stuck_percent = args.get(2).copied().unwrap_or(0).min(100);
    let projects: Vec<String> = (0..project_count)
        .map(|i| {
            if i == 0 {
                PROJECT.to_owned()
            } else {
                format!("wgnet-bench-{i}")
            }
        })
        .collect();
    // Gateway i lives in project i % P; every `1 / stuck` of them never gets a VM report.
    let stuck = |i: usize| stuck_percent > 0 && i % 100 < stuck_percent;
    // WGNET_OPERATOR_BIN runs another build (an earlier commit's) under the same bench.
    let bin = std::env::var_os("WGNET_OPERATOR_BIN")
        .map(std::path::PathBuf::from)
        .or_else(|| {
            std::env::current_exe()
                .ok()
                .and_then(|p| Some(p.parent()?.parent()?.join("wgnet-operator")))
        })
        .filter(|p| p.exists())
        .expect("target/<profile>/wgnet-operator: run `cargo build --release -p wgnet-operator` first (make bench does), or set WGNET_OPERATOR_BIN");
    let emu = GcpEmulator::start(gcp::Config {
        profile: LatencyProfile::gcp_typical().scaled_by(0.05),
        projects: projects.clone(),
        ..gcp::Config::default()
    })
    .await
    .expect("emulator");
    // GCP's own per-project rate quotas: a refused call here would be one there.
    emu.set_gcp_default_quotas();
    if n > 400 {
        emu.use_benchmark_addresses();
    }
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
    // The Service every Gateway forwards to (no pod backs it; a forward needs only its
    // ClusterIP).
    let web: Service = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"ports": [{"port": 443}]}
    }))
    .expect("service");
    Api::<Service>::namespaced(client.clone(), "apps")
        .create(&PostParams::default(), &web)
        .await
        .expect("service");
    let dir = TempDir::new();
    let key = dir.0.join("key.json");
    emu.write_key_file("op@wgnet-test.iam.gserviceaccount.com", &key)
        .expect("key");
    let kubeconfig = dir.0.join("kubeconfig");
    let token = ControlPlane::service_account_token(&client, OPERATOR_NAMESPACE, OPERATOR_SA, None)
        .await
        .expect("operator token");
    std::fs::write(&kubeconfig, cp.kubeconfig_for_token(cp.url(), &token)).expect("kubeconfig");
    // A port the operator's health endpoint can take: the idle RSS is read once it is ready.
    let health = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port");
    let mut child = Command::new(&bin)
        .args([
            "--link-image",
            "wgnet-link:bench",
            "--allowed-projects",
            &projects.join(","),
            // Every Gateway of the bench is in one namespace: no per-namespace cap.
            "--max-gateways-per-namespace",
            "0",
            "--cluster-id",
            "bench",
            "--resync",
            &RESYNC.as_secs().to_string(),
        ])
        .args([
            "--metrics-addr",
            "127.0.0.1:0",
            "--health-addr",
            &health.to_string(),
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
    let http = reqwest::Client::new();
    let ready_by = Instant::now() + Duration::from_secs(60);
    loop {
        let ready = http
            .get(format!("http://{health}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if ready {
            break;
        }
        assert!(Instant::now() < ready_by, "the operator never became ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let idle = rss_kib(pid, "VmRSS:");

    let gws: Api<Gateway> = Api::namespaced(client.clone(), "apps");
    let t0 = Instant::now();
    for i in 0..n {
        let gw: Gateway = serde_json::from_value(json!({
            "apiVersion": "wgnet.dev/v1alpha1", "kind": "Gateway",
            "metadata": {"name": format!("gw-{i}")},
            "spec": {
                "gcp": {"projectID": projects[i % project_count], "region": "us-central1", "zone": "us-central1-a"},
                "forwards": [{"port": 443, "service": "web"}]
            }
        }))
        .expect("gateway");
        gws.create(&PostParams::default(), &gw)
            .await
            .expect("create");
    }
    let deadline = Instant::now() + Duration::from_secs(3600);
    let mut done = 0;
    // Listing every Gateway with its status costs the API server (this machine's two
    // cores serve it, the operator and the emulator): a second a thousand Gateways between
    // lists, so the bench does not slow what it measures.
    let poll = Duration::from_secs((n as u64).div_ceil(1000).max(1));
    // Progress on stderr once a minute: at thousands of Gateways this phase runs for tens of
    // minutes, and a run cut short should still say how far it got.
    let mut next_progress = Instant::now() + Duration::from_secs(60);
    let mut logged = 0;
    while Instant::now() < deadline {
        let list = list_again(&gws, &ListParams::default()).await;
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
        if Instant::now() >= next_progress {
            next_progress += Duration::from_secs(60);
            #[allow(clippy::print_stderr)]
            {
                eprintln!(
                    "  {:>5.0} s: cloud resources of {done}/{n} Gateways; {} GCP calls; RSS {:.1} MiB",
                    t0.elapsed().as_secs_f64(),
                    emu.request_log()
                        .iter()
                        .filter(|c| c.api != "oauth" && c.api != "metadata")
                        .count(),
                    rss_kib(pid, "VmRSS:") as f64 / 1024.0
                );
                // What the last minute's calls were, for a run cut short.
                let log = emu.request_log();
                let minute: Vec<_> = log.into_iter().skip(logged).collect();
                logged += minute.len();
                eprint!("{}", top_lines(&minute, 8));
            }
        }
        tokio::time::sleep(poll).await;
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
        "# operator at scale: {n} Gateways over {project_count} project(s), {stuck_percent}% never Ready, emulator gcp-typical x0.05 with GCP's default rate quotas, operator binary {}",
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
    print_top(&emu.request_log(), 10);

    // Every Gateway Ready, as a booted VM and a handshaking link make it: the VM reports
    // ready in its guest attributes, and each Gateway's own link pod (made by the
    // Deployment the operator created; no kubelet runs here) is marked Ready and holds the
    // link's Lease. Then one resync period of steady state.
    for i in (0..n).filter(|i| !stuck(*i)) {
        let id = GatewayId {
            cluster: "bench".into(),
            namespace: "apps".into(),
            name: format!("gw-{i}"),
            uid: String::new(),
        };
        emu.put_guest_attribute_for_test(
            &projects[i % project_count],
            "us-central1-a",
            &id.resource_name(),
            "wgnet/state",
            "ready",
        );
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), "apps");
    let leases: Api<Lease> = Api::namespaced(client.clone(), "apps");
    let mut held = std::collections::BTreeSet::new();
    let t1 = Instant::now();
    let deadline = t1 + Duration::from_secs(900);
    let mut ready = 0;
    let want_ready = (0..n).filter(|i| !stuck(*i)).count();
    while Instant::now() < deadline {
        let list = list_again(
            &pods,
            &ListParams::default().labels(&format!("{}=link", children::COMPONENT_LABEL)),
        )
        .await;
        for pod in list.items {
            let Some(gw) = pod.labels().get(children::INSTANCE_LABEL).cloned() else {
                continue;
            };
            if held.contains(&gw) {
                continue;
            }
            // As a link does: it takes the Lease, then handshakes, and only then does
            // its readiness probe pass (the pod's change is what the operator watches).
            let name = pod.name_any();
            let lease: Lease = serde_json::from_value(json!({
                "metadata": {"name": link_name(&gw)},
                "spec": {"holderIdentity": name, "leaseDurationSeconds": 3600}
            }))
            .expect("lease");
            match leases.create(&PostParams::default(), &lease).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 409 => {}
                Err(e) => panic!("lease: {e}"),
            }
            let status = json!({"status": {"phase": "Running", "conditions": [
                {"type": "Ready", "status": "True"}, {"type": "ContainersReady", "status": "True"}
            ]}});
            pods.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
                .await
                .expect("pod status");
            held.insert(gw);
        }
        ready = list_again(&gws, &ListParams::default())
            .await
            .items
            .iter()
            .filter(|g| {
                g.status.as_ref().is_some_and(|s| {
                    s.conditions
                        .iter()
                        .any(|c| c.type_ == "Ready" && c.status == "True")
                })
            })
            .count();
        if ready == want_ready {
            break;
        }
        tokio::time::sleep(poll).await;
    }
    println!(
        "{ready}/{want_ready} Gateways Ready {:?} after the VMs and links were ({} stuck un-Ready)",
        t1.elapsed(),
        n - want_ready
    );
    let before = emu.request_log().len();
    tokio::time::sleep(RESYNC).await;
    let window: Vec<_> = emu.request_log().into_iter().skip(before).collect();
    let gcp: Vec<_> = window
        .iter()
        .filter(|c| c.api != "oauth" && c.api != "metadata")
        .cloned()
        .collect();
    println!(
        "GCP calls in one resync period ({}s) with every Gateway Ready: {} in total ({:.2} per Gateway)",
        RESYNC.as_secs(),
        gcp.len(),
        gcp.len() as f64 / n as f64
    );
    print_top(&gcp, 10);

    // Reconcile latency: 50 spec changes, one every 200 ms, each timed until the status
    // says that generation was reconciled.
    let mut latencies = Vec::new();
    let mut changed = Vec::new();
    for k in 0..50usize {
        let i = (k * 7919) % n;
        let name = format!("gw-{i}");
        let g = gws
            .patch(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"sourceRanges": [format!("198.51.100.{k}/32")]}})),
            )
            .await
            .expect("patch");
        changed.push((
            name,
            g.metadata.generation.unwrap_or_default(),
            Instant::now(),
        ));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(600);
    while !changed.is_empty() && Instant::now() < deadline {
        let mut left = Vec::new();
        for (name, generation, at) in changed {
            let seen = gws
                .get(&name)
                .await
                .ok()
                .and_then(|g| g.status?.observed_generation)
                .unwrap_or_default();
            if seen >= generation {
                latencies.push(at.elapsed());
            } else {
                left.push((name, generation, at));
            }
        }
        changed = left;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    latencies.sort();
    let pct = |q: f64| {
        latencies
            .get(((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    println!(
        "spec change -> reconciled (status.observedGeneration), {} changes: p50 {:?}, p99 {:?}{}",
        latencies.len(),
        pct(0.5),
        pct(0.99),
        if changed.is_empty() {
            ""
        } else {
            " (some never)"
        }
    );
    println!(
        "rate-limit refusals by the emulator's GCP default quotas over the whole run: {}",
        emu.quota_refusals()
    );
    println!(
        "operator RSS at the end: {:.1} MiB, peak {:.1} MiB",
        rss_kib(pid, "VmRSS:") as f64 / 1024.0,
        rss_kib(pid, "VmHWM:") as f64 / 1024.0
    );
    let _ = child.kill();
    let _ = child.wait();
}

/// What a call's path names: `list K` for a GET of a collection (one page of a list), `K`
/// for one resource of kind K or a POST to its collection, `K verb` for a custom method or an operation's wait.
fn call_kind(method: &str, path: &str) -> String {
    const KINDS: [&str; 9] = [
        "instances",
        "firewalls",
        "addresses",
        "networks",
        "serviceAccounts",
        "secrets",
        "versions",
        "operations",
        "guestAttributes",
    ];
    let path = path.split('?').next().unwrap_or(path);
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let Some(i) = segs.iter().rposition(|s| {
        let base = s.split(':').next().unwrap_or(s);
        KINDS.contains(&base)
    }) else {
        return "?".into();
    };
    let kind = segs[i].split(':').next().unwrap_or(segs[i]);
    let verb = segs
        .last()
        .and_then(|l| l.split_once(':').map(|(_, v)| v.to_owned()))
        .or_else(|| (segs.len() > i + 2).then(|| segs[segs.len() - 1].to_owned()));
    match (i + 1 == segs.len(), verb) {
        (true, _) if !segs[i].contains(':') && method == "GET" => format!("list {kind}"),
        (_, Some(v)) => format!("{kind} {v}"),
        _ => kind.to_owned(),
    }
}

/// The `top` largest groups of `calls` by API, method, resource kind and status.
#[allow(clippy::print_stdout)]
fn print_top(calls: &[wgnet_tests::gcp::LoggedCall], top: usize) {
    print!("{}", top_lines(calls, top));
}

/// [`print_top`]'s lines.
fn top_lines(calls: &[wgnet_tests::gcp::LoggedCall], top: usize) -> String {
    let mut groups: std::collections::BTreeMap<String, usize> = std::collections::BTreeMap::new();
    for c in calls {
        let kind = call_kind(&c.method, &c.path);
        *groups
            .entry(format!("{} {} {kind} {}", c.api, c.method, c.status))
            .or_default() += 1;
    }
    let mut sorted: Vec<_> = groups.into_iter().collect();
    sorted.sort_by_key(|g| std::cmp::Reverse(g.1));
    sorted
        .into_iter()
        .take(top)
        .map(|(g, count)| format!("  {count:>8}  {g}\n"))
        .collect()
}
