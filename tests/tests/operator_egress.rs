//! The EgressGateway end to end: the operator validates the user's wg-quick Secret, runs one
//! egress link pod (a real link process, configured through the API) and a
//! ClusterIP Service; the pod reaches a host behind a wireguard-go VPN server. Needs root.

use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Namespace, Secret, Service};
use kube::api::{Api, PostParams};
use serde_json::json;
use wgnet_operator::api::{EgressGateway, conditions};
use wgnet_tests::cluster::Cluster;

use wgnet_tests::gateway::echo_py;
use wgnet_tests::gcp::LatencyProfile;

mod common;
use common::operator_with;
use wgnet_tests::netns::{self, wait_for};

fn ready(e: &EgressGateway) -> Option<(String, String, String)> {
    e.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == conditions::READY)
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

async fn wait_egw(c: &Cluster, what: &str, f: impl Fn(&EgressGateway) -> bool) -> EgressGateway {
    let api: Api<EgressGateway> = Api::namespaced(c.client.clone(), "apps");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let e = api.get("corp").await.expect("get");
        if f(&e) {
            return e;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not reached; status {:?}\n{}",
            e.status,
            c.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn put_secret(c: &Cluster, conf: &str) {
    let api: Api<Secret> = Api::namespaced(c.client.clone(), "apps");
    let mut s = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some("vpn".into()),
            ..Default::default()
        },
        data: Some([("wg0.conf".to_owned(), ByteString(conf.as_bytes().to_vec()))].into()),
        ..Secret::default()
    };
    match api.get_opt("vpn").await.expect("get") {
        Some(old) => {
            s.metadata.resource_version = old.metadata.resource_version;
            api.replace("vpn", &PostParams::default(), &s)
                .await
                .expect("replace");
        }
        None => {
            api.create(&PostParams::default(), &s)
                .await
                .expect("create");
        }
    }
}

/// A wireguard-go VPN server on the "internet" (203.0.113.40:51820, tunnel 10.8.0.1) that
/// accepts the link as 10.8.0.2, with a database behind it at 10.0.0.5 (TCP 1433, UDP
/// 5000, answering "db"). Removed on drop.
struct Vpn {
    link_priv: String,
    vpn_pub: String,
    iface: String,
    _server: netns::Netns,
    _remote: netns::Netns,
}

impl Drop for Vpn {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(format!("/run/wireguard/{}.sock", self.iface));
    }
}

/// Asks the echo service behind the VPN through the link pod at `pod_ip` (from the node,
/// as a pod would), retrying for a bounded time; the answer.
fn ask_link(c: &Cluster, pod_ip: &str, proto: &str, port: u16) -> Option<String> {
    wait_for(Duration::from_secs(20), || {
        let (ok, out, _) = c.node.try_sh(&format!(
            "timeout 3 python3 '{}' {proto} {pod_ip} {port}",
            echo_py()
        ));
        ok.then(|| out.trim().to_owned())
    })
}

fn vpn_server(c: &Cluster) -> Vpn {
    let server = c.internet_host("vpn", "203.0.113.40/24");
    let remote = netns::Netns::new("rem", &netns::unique_tag());
    netns::veth(
        &server,
        "eth1",
        "10.0.0.1/24",
        &remote,
        "eth0",
        "10.0.0.5/24",
    );
    remote.sh("ip route add default via 10.0.0.1");
    drop(remote.spawn(
        &format!("python3 '{}' serve 10.0.0.5 1433 5000 db", echo_py()),
        &[],
    ));
    let (vpn_priv, vpn_pub) = netns::wg_keypair();
    let (link_priv, link_pub) = netns::wg_keypair();
    let iface = format!("wgs{}", netns::unique_tag());
    let conf = c.dir().join(format!("{iface}.conf"));
    std::fs::write(
        &conf,
        format!("[Interface]\nPrivateKey = {vpn_priv}\nAddress = 10.8.0.1/24\nListenPort = 51820\n\n[Peer]\nPublicKey = {link_pub}\nAllowedIPs = 10.8.0.2/32\n"),
    )
    .expect("server conf");
    server.sh(&format!(
        "sysctl -qw net.ipv4.ip_forward=1 && WG_QUICK_USERSPACE_IMPLEMENTATION=wireguard-go wg-quick up '{}' 2>&1",
        conf.display()
    ));
    Vpn {
        link_priv,
        vpn_pub,
        iface,
        _server: server,
        _remote: remote,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn egress_gateway_validates_its_secret_and_reaches_hosts_behind_the_vpn() {
    let c = Cluster::start(LatencyProfile::instant()).await;
    let op = operator_with(&c, Duration::from_secs(20)).await;

    let vpn = vpn_server(&c);
    let (link_priv, vpn_pub) = (vpn.link_priv.clone(), vpn.vpn_pub.clone());

    Api::<Namespace>::all(c.client.clone())
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "apps"}})).expect("ns"),
        )
        .await
        .expect("namespace");
    let egw: EgressGateway = serde_json::from_value(json!({
        "apiVersion": "wgnet.dev/v1alpha1", "kind": "EgressGateway",
        "metadata": {"name": "corp"},
        "spec": {
            "configSecretRef": {"name": "vpn"},
            "forwards": [
                {"name": "db", "port": 1433, "targetHost": "10.0.0.5", "targetPort": 1433},
                {"name": "echo", "port": 5000, "protocol": "UDP", "targetHost": "10.0.0.5", "targetPort": 5000}
            ]
        }
    }))
    .expect("egw");
    Api::<EgressGateway>::namespaced(c.client.clone(), "apps")
        .create(&PostParams::default(), &egw)
        .await
        .expect("create");

    // No Secret yet: a condition says which.
    let e = wait_egw(&c, "ConfigSecretNotFound", |e| {
        ready(e).is_some_and(|(_, r, _)| r == "ConfigSecretNotFound")
    })
    .await;
    assert!(ready(&e).is_some_and(|(_, _, m)| m.contains("\"vpn\"")));

    // A config with a bad key: the line is named, the value never shown.
    let bad = format!(
        "[Interface]\nPrivateKey = {link_priv}\nAddress = 10.8.0.2/32\n\n[Peer]\nPublicKey = not-a-key-{link_priv}\nEndpoint = 203.0.113.40:51820\nAllowedIPs = 10.0.0.0/24\n"
    );
    put_secret(&c, &bad).await;
    let e = wait_egw(&c, "InvalidConfig", |e| {
        ready(e).is_some_and(|(_, r, _)| r == "InvalidConfig")
    })
    .await;
    let (_, _, msg) = ready(&e).expect("ready");
    assert!(msg.contains("line 6"), "{msg}");
    assert!(
        !msg.contains(&link_priv) && !msg.contains("not-a-key"),
        "{msg}"
    );

    let good = format!(
        "[Interface]\nPrivateKey = {link_priv}\nAddress = 10.8.0.2/32\nMTU = 1380\n\n[Peer]\nPublicKey = {vpn_pub}\nEndpoint = 203.0.113.40:51820\nAllowedIPs = 10.0.0.0/24, 10.8.0.0/24\nPersistentKeepalive = 5\n"
    );
    put_secret(&c, &good).await;
    let e = wait_egw(&c, "Ready", |e| {
        ready(e).is_some_and(|(s, _, _)| s == "True")
    })
    .await;
    assert_eq!(
        e.status.as_ref().and_then(|s| s.service_name.as_deref()),
        Some("corp")
    );
    // Issue 20: the link publishes its last handshake on its Lease, and the status shows
    // it (the Handshake column).
    let e = wait_egw(&c, "lastHandshakeTime", |e| {
        e.status
            .as_ref()
            .and_then(|s| s.last_handshake_time.as_ref())
            .is_some_and(|t| {
                let age = k8s_openapi::jiff::Timestamp::now().duration_since(t.0);
                age.as_secs() >= -5 && age.as_secs() < 300
            })
    })
    .await;
    assert!(
        e.status
            .as_ref()
            .is_some_and(|s| s.last_handshake_time.is_some())
    );
    let svc = Api::<Service>::namespaced(c.client.clone(), "apps")
        .get("corp")
        .await
        .expect("service");
    let spec = svc.spec.expect("spec");
    let ports: Vec<(String, i32, String)> = spec
        .ports
        .unwrap_or_default()
        .into_iter()
        .map(|p| {
            (
                p.name.unwrap_or_default(),
                p.port,
                p.protocol.unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        ports,
        vec![
            ("db".into(), 1433, "TCP".into()),
            ("echo".into(), 5000, "UDP".into())
        ]
    );
    assert_eq!(spec.type_.as_deref(), Some("ClusterIP"));

    // Pods reach the database through the link pod (what the Service's endpoints are).
    let pods = c.pods();
    assert_eq!(pods.len(), 1, "{pods:?}");
    let pod_ip = c.pod_ip(&pods[0].1).expect("pod ip");
    let ask = |proto: &str, port: u16| ask_link(&c, &pod_ip, proto, port);
    let tcp = ask("tcp", 1433).unwrap_or_else(|| panic!("1433 unanswered\n{}", c.logs()));
    assert_eq!(tcp, "db tcp 1433 from 10.8.0.2");
    assert_eq!(
        ask("udp", 5000).as_deref(),
        Some("db udp 5000 from 10.8.0.2")
    );

    // A broken edit is reported and refused by the running link, which keeps serving.
    let refusals = || c.kubelet.logs().matches("configuration refused").count();
    let before = refusals();
    put_secret(&c, &bad).await;
    wait_egw(&c, "InvalidConfig after an edit", |e| {
        ready(e).is_some_and(|(_, r, _)| r == "InvalidConfig")
    })
    .await;
    let refused = wait_for(Duration::from_secs(15), || {
        (refusals() > before).then_some(())
    });
    assert!(
        refused.is_some(),
        "the link never saw the edit\n{}",
        c.logs()
    );
    assert_eq!(
        ask("tcp", 1433).as_deref(),
        Some("db tcp 1433 from 10.8.0.2")
    );
    put_secret(&c, &good).await;
    wait_egw(&c, "Ready again", |e| {
        ready(e).is_some_and(|(s, _, _)| s == "True")
    })
    .await;
    assert_eq!(
        c.pods(),
        pods,
        "edits reload in place: same pod, same process"
    );
    drop(op);
    drop(vpn);
}

/// Objects the API server accepts but the operator cannot parse (here: the CRDs replaced by
/// schema-less ones, as an older or hand-edited CRD would allow) get `Ready=False/InvalidSpec`
/// with the parse error, for both kinds, instead of a silent skip or a failing loop.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn objects_the_operator_cannot_read_are_reported_as_invalid_spec() {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use kube::api::{ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
    let c = Cluster::start(LatencyProfile::instant()).await;
    let crds: Api<CustomResourceDefinition> = Api::all(c.client.clone());
    for name in ["gateways.wgnet.dev", "egressgateways.wgnet.dev"] {
        let mut crd = crds.get(name).await.expect("crd");
        for v in &mut crd.spec.versions {
            v.schema = Some(
                serde_json::from_value(json!({"openAPIV3Schema": {
                    "type": "object",
                    "x-kubernetes-preserve-unknown-fields": true
                }}))
                .expect("schema"),
            );
            v.additional_printer_columns = None;
        }
        crd.metadata.managed_fields = None;
        crds.replace(name, &PostParams::default(), &crd)
            .await
            .expect("loosen CRD");
    }
    let op = operator_with(&c, Duration::from_secs(20)).await;
    Api::<Namespace>::all(c.client.clone())
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "apps"}})).expect("ns"),
        )
        .await
        .expect("namespace");
    for (kind, plural) in [("Gateway", "gateways"), ("EgressGateway", "egressgateways")] {
        let ar = ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("wgnet.dev", "v1alpha1", kind),
            plural,
        );
        let api: Api<DynamicObject> = Api::namespaced_with(c.client.clone(), "apps", &ar);
        let obj: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "wgnet.dev/v1alpha1", "kind": kind,
            "metadata": {"name": "broken"},
            "spec": {"forwards": "not a list"}
        }))
        .expect("object");
        api.patch("broken", &PatchParams::apply("test"), &Patch::Apply(&obj))
            .await
            .expect("create malformed object");
        let reported = wait_for(Duration::from_secs(30), || {
            let api = api.clone();
            let got = tokio::task::block_in_place(|| {
                tokio::runtime::Handle::current().block_on(api.get("broken"))
            })
            .ok()?;
            let conds = got.data["status"]["conditions"].as_array()?.clone();
            conds
                .into_iter()
                .find(|c| c["type"] == "Ready" && c["reason"] == "InvalidSpec")
        });
        let cond = reported.unwrap_or_else(|| panic!("{kind}: no InvalidSpec condition"));
        assert_eq!(cond["status"], "False");
        let msg = cond["message"].as_str().unwrap_or_default();
        assert!(
            msg.starts_with(&format!("the {kind} cannot be read: ")),
            "{kind}: {msg}"
        );
    }
    drop(op);
}

/// An EgressGateway named like a Service the namespace already has never takes it over: it
/// reports `Ready=False/NameCollision`, the Service keeps its spec and has no owner added,
/// and deleting the EgressGateway leaves it (before, a forced apply adopted the Service and
/// the garbage collector deleted it with the EgressGateway).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_name_taken_by_a_foreign_service_is_reported_and_left_alone() {
    let c = Cluster::start(LatencyProfile::instant()).await;
    let op = operator_with(&c, Duration::from_secs(20)).await;
    c.namespace("apps", &[]).await;
    let services: Api<Service> = Api::namespaced(c.client.clone(), "apps");
    let theirs: Service = serde_json::from_value(json!({
        "metadata": {"name": "corp"},
        "spec": {"selector": {"app": "payroll"}, "ports": [{"port": 8443}]}
    }))
    .expect("service");
    services
        .create(&PostParams::default(), &theirs)
        .await
        .expect("their service");
    let (link_priv, _) = netns::wg_keypair();
    let (_, vpn_pub) = netns::wg_keypair();
    put_secret(
        &c,
        &format!("[Interface]\nPrivateKey = {link_priv}\nAddress = 10.8.0.2/32\n\n[Peer]\nPublicKey = {vpn_pub}\nEndpoint = 203.0.113.40:51820\nAllowedIPs = 10.0.0.0/24\n"),
    )
    .await;
    let egw: EgressGateway = serde_json::from_value(json!({
        "apiVersion": "wgnet.dev/v1alpha1", "kind": "EgressGateway",
        "metadata": {"name": "corp"},
        "spec": {
            "configSecretRef": {"name": "vpn"},
            "forwards": [{"name": "db", "port": 1433, "targetHost": "10.0.0.5", "targetPort": 1433}]
        }
    }))
    .expect("egw");
    let egws: Api<EgressGateway> = Api::namespaced(c.client.clone(), "apps");
    egws.create(&PostParams::default(), &egw)
        .await
        .expect("create");
    let e = wait_egw(&c, "NameCollision", |e| {
        ready(e).is_some_and(|(_, r, _)| r == "NameCollision")
    })
    .await;
    let (status, _, message) = ready(&e).expect("ready");
    assert_eq!(status, "False");
    assert!(
        message.contains("Service") && message.contains("\"corp\""),
        "{message}"
    );
    let svc = services.get("corp").await.expect("their service stays");
    assert!(svc.metadata.owner_references.is_none(), "{svc:?}");
    let spec = svc.spec.expect("spec");
    assert_eq!(
        spec.selector,
        Some([("app".to_owned(), "payroll".to_owned())].into())
    );
    assert_eq!(spec.ports.expect("ports")[0].port, 8443);

    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> =
        Api::namespaced(c.client.clone(), "apps");
    assert!(
        deployments
            .get_opt("corp-egress")
            .await
            .expect("get")
            .is_some(),
        "the EgressGateway's own objects were applied before its Service: {message}\n{}",
        c.cp.describe()
    );
    common::delete_and_wait(&c, &egws, "corp", Duration::from_secs(30)).await;
    // The garbage collector has had its chance: the EgressGateway's own objects go, the
    // foreign Service stays.
    wgnet_tests::until(Duration::from_secs(30), || async {
        deployments
            .get_opt("corp-egress")
            .await
            .ok()
            .and_then(|d| d.is_none().then_some(()))
    })
    .await
    .expect("the link Deployment went with its EgressGateway");
    assert!(
        services.get_opt("corp").await.expect("get").is_some(),
        "the foreign Service was deleted with the EgressGateway"
    );
    drop(op);
}

/// A VPN whose AllowedIPs cover the cluster's own ranges (`10.0.0.0/8, 172.16.0.0/12`,
/// which hold this cluster's 10.96.0.0/12 Services and 10.244.0.0/16 pods): the link still
/// reaches the API server through the `kubernetes` Service (10.96.0.1), so a forward added
/// later is applied and served, and only the target is routed into the tunnel. Before, every
/// AllowedIPs prefix went into the pod's routes and captured the API server's traffic.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn allowed_ips_covering_the_cluster_capture_none_of_its_traffic() {
    let c = Cluster::start(LatencyProfile::instant()).await;
    let _op = operator_with(&c, Duration::from_secs(20)).await;
    let vpn = vpn_server(&c);
    c.namespace("apps", &[]).await;
    put_secret(
        &c,
        &format!(
            "[Interface]\nPrivateKey = {}\nAddress = 10.8.0.2/32\n\n[Peer]\nPublicKey = {}\nEndpoint = 203.0.113.40:51820\nAllowedIPs = 10.0.0.0/8, 172.16.0.0/12\nPersistentKeepalive = 5\n",
            vpn.link_priv, vpn.vpn_pub
        ),
    )
    .await;
    let egws: Api<EgressGateway> = Api::namespaced(c.client.clone(), "apps");
    let egw: EgressGateway = serde_json::from_value(json!({
        "apiVersion": "wgnet.dev/v1alpha1", "kind": "EgressGateway",
        "metadata": {"name": "corp"},
        "spec": {
            "configSecretRef": {"name": "vpn"},
            "forwards": [{"name": "db", "port": 1433, "targetHost": "10.0.0.5", "targetPort": 1433}]
        }
    }))
    .expect("egw");
    egws.create(&PostParams::default(), &egw)
        .await
        .expect("create");
    wait_egw(&c, "Ready", |e| {
        ready(e).is_some_and(|(s, _, _)| s == "True")
    })
    .await;
    let pods = c.pods();
    assert_eq!(pods.len(), 1, "{pods:?}");
    let pod_ip = c.pod_ip(&pods[0].1).expect("pod ip");
    let ask = |proto: &str, port: u16| ask_link(&c, &pod_ip, proto, port);
    assert_eq!(
        ask("tcp", 1433).as_deref(),
        Some("db tcp 1433 from 10.8.0.2"),
        "{}",
        c.logs()
    );

    // A forward added now reaches the link only through the API server.
    egws.patch(
        "corp",
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(json!({"spec": {"forwards": [
            {"name": "db", "port": 1433, "targetHost": "10.0.0.5", "targetPort": 1433},
            {"name": "echo", "port": 5000, "protocol": "UDP", "targetHost": "10.0.0.5", "targetPort": 5000}
        ]}})),
    )
    .await
    .expect("add a forward");
    assert_eq!(
        ask("udp", 5000).as_deref(),
        Some("db udp 5000 from 10.8.0.2"),
        "the added forward never arrived\n{}",
        c.logs()
    );
    let routes = c
        .kubelet
        .exec(&pods[0].1, "ip -4 route show dev wg0")
        .map(|(_, out, _)| out)
        .unwrap_or_default();
    let lines: Vec<&str> = routes.lines().collect();
    assert!(
        lines.len() == 1 && lines[0].starts_with("10.0.0.5 "),
        "only the target is routed into the tunnel: {routes}"
    );
    drop(vpn);
}

/// EgressGateway `apps/corp` with `forwards`, its wg-quick Secret `conf`, Ready: the link
/// pod's IP.
async fn ready_egress(c: &Cluster, forwards: serde_json::Value, conf: &str) -> String {
    Api::<Namespace>::all(c.client.clone())
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "apps"}})).expect("ns"),
        )
        .await
        .expect("namespace");
    let egw: EgressGateway = serde_json::from_value(json!({
        "apiVersion": "wgnet.dev/v1alpha1", "kind": "EgressGateway",
        "metadata": {"name": "corp"},
        "spec": {"configSecretRef": {"name": "vpn"}, "forwards": forwards}
    }))
    .expect("egw");
    Api::<EgressGateway>::namespaced(c.client.clone(), "apps")
        .create(&PostParams::default(), &egw)
        .await
        .expect("create");
    put_secret(c, conf).await;
    wait_egw(c, "Ready", |e| {
        ready(e).is_some_and(|(s, _, _)| s == "True")
    })
    .await;
    let pods = c.pods();
    c.pod_ip(&pods[0].1).expect("pod ip")
}

/// A DNS server for the VPN's side: `db.corp.test` is 10.0.0.5, every other name does not
/// exist. Bounded: it answers at most 1,000 queries and gives up after 5 idle minutes.
const VPN_DNS_PY: &str = r#"
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("10.0.0.5", 53))
s.settimeout(300)
for _ in range(1000):
    q, peer = s.recvfrom(512)
    i, labels = 12, []
    while q[i]:
        labels.append(q[i + 1:i + 1 + q[i]].decode().lower())
        i += 1 + q[i]
    question = q[12:i + 5]
    if ".".join(labels) == "db.corp.test":
        answer = b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04" + bytes([10, 0, 0, 5])
        r = q[:2] + b"\x81\x80" + b"\x00\x01\x00\x01\x00\x00\x00\x00" + question + answer
    else:
        r = q[:2] + b"\x81\x83" + b"\x00\x01\x00\x00\x00\x00\x00\x00" + question
    s.sendto(r, peer)
"#;

/// Issue 20, part 3: with `DNS =` in the wg-quick file, target names are resolved by the
/// VPN's DNS server through the tunnel. `db.corp.test` exists only there (the pod's own
/// resolver has never heard of it); the forward to it works.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn targets_resolve_through_the_vpns_dns() {
    let c = Cluster::start(LatencyProfile::instant()).await;
    let op = operator_with(&c, Duration::from_secs(20)).await;
    let vpn = vpn_server(&c);
    let script = c.dir().join("vpn-dns.py");
    std::fs::write(&script, VPN_DNS_PY).expect("dns script");
    drop(
        vpn._remote
            .spawn(&format!("python3 '{}'", script.display()), &[]),
    );
    let pod_ip = ready_egress(
        &c,
        json!([{"name": "db", "port": 1433, "targetHost": "db.corp.test", "targetPort": 1433}]),
        &format!(
            "[Interface]\nPrivateKey = {}\nAddress = 10.8.0.2/32\nDNS = 10.0.0.5, corp.test\n\n[Peer]\nPublicKey = {}\nEndpoint = 203.0.113.40:51820\nAllowedIPs = 10.0.0.0/24, 10.8.0.0/24\nPersistentKeepalive = 5\n",
            vpn.link_priv, vpn.vpn_pub
        ),
    )
    .await;
    let answer = ask_link(&c, &pod_ip, "tcp", 1433);
    assert_eq!(
        answer.as_deref(),
        Some("db tcp 1433 from 10.8.0.2"),
        "{}",
        c.logs()
    );
    drop(op);
    drop(vpn);
}

/// Issue 20, part 3: flowgen's own example (seed 004) as written, two forwards (the second
/// on Service port 1434 to another server's 1433), `MTU = 1420`,
/// `PersistentKeepalive = 25`, `AllowedIPs = 10.0.0.0/8, 172.16.0.0/12`, `DNS = 1.1.1.1`
/// (outside AllowedIPs, so never used through the tunnel; the targets are addresses).
/// Only the tunnel address differs: the test's VPN server admits its peer as 10.8.0.2.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_flowgen_example_works_as_written() {
    let c = Cluster::start(LatencyProfile::instant()).await;
    let op = operator_with(&c, Duration::from_secs(20)).await;
    let vpn = vpn_server(&c);
    vpn._remote.sh("ip addr add 10.0.0.6/24 dev eth0");
    drop(vpn._remote.spawn(
        &format!("python3 '{}' serve 10.0.0.6 1433 1433 db2", echo_py()),
        &[],
    ));
    let pod_ip = ready_egress(
        &c,
        json!([
            {"name": "mssql-a", "port": 1433, "targetHost": "10.0.0.5", "targetPort": 1433},
            {"name": "mssql-b", "port": 1434, "servicePort": 1434, "targetHost": "10.0.0.6", "targetPort": 1433}
        ]),
        &format!(
            "[Interface]\nPrivateKey = {}\nAddress = 10.8.0.2/24\nDNS = 1.1.1.1\nMTU = 1420\n\n[Peer]\nPublicKey = {}\nEndpoint = 203.0.113.40:51820\nAllowedIPs = 10.0.0.0/8, 172.16.0.0/12\nPersistentKeepalive = 25\n",
            vpn.link_priv, vpn.vpn_pub
        ),
    )
    .await;
    assert_eq!(
        ask_link(&c, &pod_ip, "tcp", 1433).as_deref(),
        Some("db tcp 1433 from 10.8.0.2"),
        "{}",
        c.logs()
    );
    assert_eq!(
        ask_link(&c, &pod_ip, "tcp", 1434).as_deref(),
        Some("db2 tcp 1433 from 10.8.0.2"),
        "{}",
        c.logs()
    );
    drop(op);
    drop(vpn);
}
