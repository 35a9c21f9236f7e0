//! The `wgnet-operator` binary itself, twice, with `--leader-elect`: only the Lease holder
//! reconciles, the standby takes over when the holder crashes, and SIGTERM releases the
//! Lease and exits cleanly. Every API request the two processes made is then checked
//! against the RBAC the Helm chart renders, so the chart grants what the operator really
//! does. Runs against the same cluster-and-cloud harness as the in-process tests
//! (real control plane with the chart installed, GCP emulator, kubelet stand-in); the
//! processes authenticate as the chart's ServiceAccount, and the API server's audit log
//! shows what they asked and whether RBAC allowed it. Needs root and `helm`.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Secret, Service};
use kube::Client;
use kube::api::{Api, PostParams};
use serde_json::json;
use wgnet_operator::api::{EgressGateway, Gateway, conditions};
use wgnet_tests::cluster::Cluster;
use wgnet_tests::controlplane::ControlPlane;
use wgnet_tests::fixtures::{CLUSTER, INSTALL, PROJECT};
use wgnet_tests::gcp::LatencyProfile;
use wgnet_tests::link::workspace_binary;
use wgnet_tests::until;

/// The user the operator processes authenticate as (the chart's ServiceAccount).
const OPERATOR_USER: &str = "system:serviceaccount:wgnet-system:wgnet-wireguard-gateway-operator";

/// One operator process; killed on drop so a failing test leaves none behind.
struct Operator {
    name: &'static str,
    child: Child,
    metrics: u16,
    log: std::path::PathBuf,
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Operator {
    fn start(c: &Cluster, kubeconfig_text: &str, name: &'static str) -> Self {
        // A free port for /metrics and /healthz (the same listener serves both).
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let addr = format!("127.0.0.1:{port}");
        let log = c.dir().join(format!("{name}.log"));
        let kubeconfig = c.dir().join("operator-kubeconfig");
        std::fs::write(&kubeconfig, kubeconfig_text).expect("kubeconfig");
        let out = std::fs::File::create(&log).expect("log file");
        let child = Command::new(workspace_binary("wgnet-operator"))
            .args([
                "--leader-elect",
                "--link-image",
                "ghcr.io/wgnet-dev/wgnet-link:test",
                "--allowed-projects",
                PROJECT,
                "--cluster-id",
                CLUSTER,
                "--install",
                INSTALL,
                "--resync",
                "20",
                "--metrics-addr",
                &addr,
                "--health-addr",
                &addr,
                "--compute-endpoint",
                &c.emu.compute_url(),
                "--iam-endpoint",
                &c.emu.iam_url(),
                "--secrets-endpoint",
                &c.emu.secrets_url(),
            ])
            .arg("--gcp-credentials")
            .arg(&c.key)
            .env("KUBECONFIG", &kubeconfig)
            .env("POD_NAMESPACE", "wgnet-system")
            .env("POD_NAME", name)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(out)
            .spawn()
            .expect("start wgnet-operator");
        Operator {
            name,
            child,
            metrics: port,
            log,
        }
    }

    /// `wgnet_reconciles_total` summed over its labels, from the process's /metrics.
    async fn reconciles(&self) -> Option<f64> {
        let body = reqwest::get(format!("http://127.0.0.1:{}/metrics", self.metrics))
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        Some(
            body.lines()
                .filter(|l| l.starts_with("wgnet_reconciles_total"))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum(),
        )
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

async fn holder(client: &Client) -> Option<String> {
    Api::<Lease>::namespaced(client.clone(), "wgnet-system")
        .get_opt("wgnet-operator")
        .await
        .ok()
        .flatten()
        .and_then(|l| l.spec)
        .and_then(|s| s.holder_identity)
        .filter(|h| !h.is_empty())
}

async fn ready_address(client: &Client, name: &str) -> Option<String> {
    let gw = Api::<Gateway>::namespaced(client.clone(), "apps")
        .get(name)
        .await
        .ok()?;
    let status = gw.status?;
    status
        .conditions
        .iter()
        .any(|c| c.type_ == conditions::READY && c.status == "True")
        .then_some(status.address)?
}

async fn create_gateway(client: &Client, name: &str, dns: &[&str]) {
    let gw: Gateway = serde_json::from_value(json!({
        "apiVersion": "wgnet.dev/v1alpha1",
        "kind": "Gateway",
        "metadata": {"name": name},
        "spec": {
            "gcp": {"projectID": PROJECT, "region": "us-central1", "zone": "us-central1-a"},
            "wireguard": {"keepalive": 5},
            "forwards": [{"port": 8080, "service": "web", "targetPort": 80}],
            "dnsHostnames": dns
        }
    }))
    .expect("gateway");
    Api::<Gateway>::namespaced(client.clone(), "apps")
        .create(&PostParams::default(), &gw)
        .await
        .expect("create gateway");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_operator_replicas_one_leader_failover_and_clean_sigterm() {
    let c = Cluster::start(LatencyProfile::instant()).await;
    // wgnet-system is the chart's namespace, created by `helm install`.
    for ns in ["apps"] {
        Api::<Namespace>::all(c.client.clone())
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({"metadata": {"name": ns}})).expect("namespace"),
            )
            .await
            .expect("create namespace");
    }
    let svc: Service = serde_json::from_value(json!({
        "metadata": {"name": "web", "namespace": "apps"},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]}
    }))
    .expect("service");
    Api::<Service>::namespaced(c.client.clone(), "apps")
        .create(&PostParams::default(), &svc)
        .await
        .expect("create service");
    c.backend("apps", "web", "80", ",", "web").await;
    // "second" publishes a hostname through external-dns's CRD.
    c.cp.install_crd(
        &wgnet_tests::repo_root().join("testdata/crds/dnsendpoints.externaldns.k8s.io.yaml"),
    )
    .await
    .expect("DNSEndpoint CRD");

    let sa = OPERATOR_USER.rsplit(':').next().expect("name");
    let token = ControlPlane::service_account_token(&c.client, "wgnet-system", sa, None)
        .await
        .expect("operator token");
    let kubeconfig = c.cp.kubeconfig_for_token(c.cp.url(), &token);
    let mut ops = vec![
        Operator::start(&c, &kubeconfig, "op-a"),
        Operator::start(&c, &kubeconfig, "op-b"),
    ];
    let report = |ops: &[Operator]| {
        ops.iter()
            .map(|o| format!("--- {} ---\n{}", o.name, o.logs()))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let first = until(Duration::from_secs(60), || holder(&c.client))
        .await
        .unwrap_or_else(|| panic!("no operator took the lease\n{}", report(&ops)));

    // The holder's Gateway goes all the way to Ready through the real binary.
    create_gateway(&c.client, "first", &[]).await;
    let addr = until(Duration::from_secs(120), || {
        ready_address(&c.client, "first")
    })
    .await
    .unwrap_or_else(|| panic!("first never Ready\n{}\n{}", report(&ops), c.logs()));
    assert!(
        c.request("tcp", &addr, 8080, Duration::from_secs(20))
            .is_some(),
        "{}",
        c.logs()
    );
    let (leader, standby): (Vec<&Operator>, Vec<&Operator>) =
        ops.iter().partition(|o| o.name == first);
    let (leader, standby) = (leader[0], standby[0]);
    assert!(
        leader.reconciles().await.is_some_and(|n| n > 0.0),
        "the leader reconciled"
    );
    assert_eq!(
        standby.reconciles().await,
        Some(0.0),
        "the standby serves /metrics but never reconciles"
    );

    // The leader crashes (SIGKILL: no release). The standby takes over once the lease
    // expires and provisions a new Gateway.
    let idx = ops.iter().position(|o| o.name == first).expect("leader");
    let mut dead = ops.remove(idx);
    dead.child.kill().expect("kill leader");
    let _ = dead.child.wait();
    let second = until(Duration::from_secs(60), || async {
        holder(&c.client).await.filter(|h| *h != first)
    })
    .await
    .unwrap_or_else(|| panic!("the standby never took over\n{}", report(&ops)));
    assert_eq!(second, ops[0].name);
    create_gateway(&c.client, "second", &["second.example.com"]).await;
    until(Duration::from_secs(120), || {
        ready_address(&c.client, "second")
    })
    .await
    .unwrap_or_else(|| panic!("second never Ready\n{}\n{}", report(&ops), c.logs()));
    assert!(ops[0].reconciles().await.is_some_and(|n| n > 0.0));

    // An EgressGateway with a valid config, so its link Deployment and Service are applied
    // (the VPN peer does not exist; only the API objects matter here).
    let (link_priv, _) = wgnet_tests::netns::wg_keypair();
    let (_, peer_pub) = wgnet_tests::netns::wg_keypair();
    let conf = format!(
        "[Interface]\nPrivateKey = {link_priv}\nAddress = 10.8.0.2/32\n\n[Peer]\nPublicKey = {peer_pub}\nEndpoint = 192.0.2.1:51820\nAllowedIPs = 10.0.0.0/24\n"
    );
    Api::<Secret>::namespaced(c.client.clone(), "apps")
        .create(
            &PostParams::default(),
            &Secret {
                metadata: kube::api::ObjectMeta {
                    name: Some("vpn".into()),
                    ..Default::default()
                },
                data: Some([("wg0.conf".to_owned(), ByteString(conf.into_bytes()))].into()),
                ..Secret::default()
            },
        )
        .await
        .expect("config secret");
    let egw: EgressGateway = serde_json::from_value(json!({
        "apiVersion": "wgnet.dev/v1alpha1", "kind": "EgressGateway",
        "metadata": {"name": "corp"},
        "spec": {
            "configSecretRef": {"name": "vpn"},
            "forwards": [{"name": "db", "port": 1433, "targetHost": "10.0.0.5", "targetPort": 1433}]
        }
    }))
    .expect("egress gateway");
    Api::<EgressGateway>::namespaced(c.client.clone(), "apps")
        .create(&PostParams::default(), &egw)
        .await
        .expect("create egress gateway");
    until(Duration::from_secs(60), || async {
        Api::<Service>::namespaced(c.client.clone(), "apps")
            .get_opt("corp")
            .await
            .ok()
            .flatten()
    })
    .await
    .unwrap_or_else(|| panic!("the egress Service never appeared\n{}", report(&ops)));
    // A deleted Gateway exercises the teardown path too.
    Api::<Gateway>::namespaced(c.client.clone(), "apps")
        .delete("first", &Default::default())
        .await
        .expect("delete first");
    until(Duration::from_secs(90), || async {
        Api::<Gateway>::namespaced(c.client.clone(), "apps")
            .get_opt("first")
            .await
            .ok()
            .and_then(|g| g.is_none().then_some(()))
    })
    .await
    .unwrap_or_else(|| panic!("first never released\n{}", report(&ops)));

    // SIGTERM: the new leader stops its controllers, releases the lease and exits 0.
    let pid = ops[0].child.id().to_string();
    let killed = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .is_ok_and(|s| s.success());
    assert!(killed);
    let exited = until(Duration::from_secs(30), || {
        let status = ops[0].child.try_wait().ok().flatten();
        async move { status }
    })
    .await
    .unwrap_or_else(|| panic!("no exit within 30 s after SIGTERM\n{}", report(&ops)));
    assert!(exited.success(), "exit status {exited}\n{}", report(&ops));
    assert_eq!(
        holder(&c.client).await,
        None,
        "the lease is released on a clean stop"
    );

    // Everything both processes asked of the API server was allowed by the chart's RBAC
    // (DNS enabled, since "second" publishes a hostname): the real authorizer answered
    // every request, and the audit log holds each answer.
    let mut used = std::collections::BTreeSet::new();
    let mut denied = std::collections::BTreeSet::new();
    for r in c.cp.audit().iter().filter(|r| r.user == OPERATOR_USER) {
        used.insert(format!("{} {}", r.verb, r.resource));
        if r.code == 403 {
            denied.insert(format!("{} {} in {:?}", r.verb, r.resource, r.namespace));
        }
    }
    assert!(denied.is_empty(), "the chart's RBAC denies: {denied:#?}");
    for needed in [
        "watch wgnet.dev/gateways",
        "update wgnet.dev/gateways/status",
        "patch apps/deployments",
        "create /secrets",
        "patch rbac.authorization.k8s.io/roles",
        "create events.k8s.io/events",
        "patch externaldns.k8s.io/dnsendpoints",
        "patch /services",
        "update coordination.k8s.io/leases",
    ] {
        assert!(
            used.contains(needed),
            "the run never did {needed:?}: {used:#?}"
        );
    }
}

/// Started against a cluster without the CRDs, the binary exits non-zero at once with a
/// sentence naming the missing CRD and the command that installs it, instead of running
/// with watches that can never start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_crds_the_binary_exits_with_an_install_hint() {
    let cp = ControlPlane::start(wgnet_tests::controlplane::Options {
        controllers: false,
        ..wgnet_tests::controlplane::Options::default()
    })
    .await
    .unwrap_or_else(|e| panic!("control plane: {e}"));
    let log = tempfile_path("no-crds.log");
    let mut child = Command::new(workspace_binary("wgnet-operator"))
        .args([
            "--link-image",
            "ghcr.io/wgnet-dev/wgnet-link:test",
            "--allowed-projects",
            PROJECT,
            "--cluster-id",
            CLUSTER,
            "--metrics-addr",
            "127.0.0.1:0",
            "--health-addr",
            "127.0.0.1:0",
        ])
        .env("KUBECONFIG", cp.admin_kubeconfig())
        .env("POD_NAMESPACE", "default")
        .env("RUST_LOG", "off")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("run wgnet-operator");
    // Bounded: before the check, the binary ran on forever with failing watches.
    let status =
        wgnet_tests::netns::wait_for(Duration::from_secs(60), || child.try_wait().ok().flatten());
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let stderr = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_file(&log);
    let status = status.unwrap_or_else(|| panic!("still running after 60 s: {stderr}"));
    assert!(!status.success(), "exited {status}: {stderr}");
    assert!(
        stderr.contains("CRD gateways.wgnet.dev is not installed")
            && stderr
                .contains("kubectl apply --server-side -f charts/wireguard-gateway-operator/crds/"),
        "{stderr}"
    );
}

/// A path for a file of this test process in the temporary directory.
fn tempfile_path(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("wgnet-{}-{name}", std::process::id()))
}
