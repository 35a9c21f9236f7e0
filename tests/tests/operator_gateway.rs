//! The operator end to end: Gateways applied to the real control plane are provisioned in
//! the GCP emulator, their VMs boot from their own startup-script in network namespaces,
//! link pods run as real processes (the kubelet stand-in), and clients on the "internet"
//! reach in-cluster backends through the public IP. Needs root.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret, Service};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use wgnet_operator::api::{Gateway, conditions};
use wgnet_tests::cluster::Cluster;
use wgnet_tests::fixtures::{CLUSTER, PROJECT};
use wgnet_tests::gcp::LatencyProfile;

mod common;
use common::{
    Operator, assert_gcp_holds_nothing, assert_serves_web, delete_and_wait, gateway, operator_with,
    service,
};

async fn operator(c: &Cluster) -> Operator {
    operator_with(c, Duration::from_secs(20)).await
}

async fn namespace(client: &Client, name: &str, labels: &[(&str, &str)]) {
    let ns: Namespace = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>()}
    }))
    .expect("namespace");
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .expect("create namespace");
}

/// Creates `gw` in `apps`; the Gateways API of that namespace.
async fn create(c: &Cluster, gw: &Gateway) -> Api<Gateway> {
    let gws: Api<Gateway> = Api::namespaced(c.client.clone(), "apps");
    gws.create(&PostParams::default(), gw)
        .await
        .expect("create gateway");
    gws
}

/// Polls the operator's metrics until they contain `needle` (bounded); panics with the
/// last rendering otherwise.
async fn wait_metric(op: &Operator, needle: &str, timeout: Duration) {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let m = op.metrics.render();
        if m.contains(needle) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{needle} not in the metrics within {timeout:?}:\n{m}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls the Gateway until `f` holds (bounded); the last object.
async fn wait_gw(
    c: &Cluster,
    ns: &str,
    name: &str,
    timeout: Duration,
    what: &str,
    f: impl Fn(&Gateway) -> bool,
) -> Gateway {
    wait_obj(c, ns, name, timeout, what, f, |gw| &gw.status).await
}

/// Polls object `name` until `f` holds (bounded); the last object. A panic shows its
/// status (`status_of`) and the cluster's logs.
async fn wait_obj<K, S: serde::Serialize>(
    c: &Cluster,
    ns: &str,
    name: &str,
    timeout: Duration,
    what: &str,
    f: impl Fn(&K) -> bool,
    status_of: impl Fn(&K) -> &S,
) -> K
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(c.client.clone(), ns);
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let obj = api.get(name).await.expect("get");
        if f(&obj) {
            return obj;
        }
        if tokio::time::Instant::now() > deadline {
            panic!(
                "{what}: not reached within {timeout:?}; status: {}\n{}",
                serde_json::to_string_pretty(status_of(&obj)).unwrap_or_default(),
                c.logs()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn ready(gw: &Gateway) -> Option<(String, String, String)> {
    gw.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == conditions::READY)
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

fn is_ready(gw: &Gateway) -> bool {
    ready(gw).is_some_and(|(s, _, _)| s == "True")
}

fn firewall_ports(c: &Cluster, gw: &Gateway) -> Vec<String> {
    let name = gw
        .status
        .as_ref()
        .and_then(|s| s.gcp.as_ref())
        .and_then(|g| g.firewall.clone())
        .expect("firewall name");
    let fw = c
        .emu
        .get("firewall", PROJECT, "global", &name)
        .expect("firewall");
    let mut out = Vec::new();
    for a in fw["allowed"].as_array().into_iter().flatten() {
        for p in a["ports"].as_array().into_iter().flatten() {
            out.push(format!(
                "{}/{}",
                a["IPProtocol"].as_str().unwrap_or_default(),
                p.as_str().unwrap_or_default()
            ));
        }
    }
    out.sort();
    out
}

async fn managed_children(client: &Client, ns: &str) -> usize {
    let lp = ListParams::default().labels("app.kubernetes.io/managed-by=wgnet-operator");
    Api::<Deployment>::namespaced(client.clone(), ns)
        .list(&lp)
        .await
        .expect("deployments")
        .items
        .len()
        + Api::<ConfigMap>::namespaced(client.clone(), ns)
            .list(&lp)
            .await
            .expect("configmaps")
            .items
            .len()
        + Api::<Secret>::namespaced(client.clone(), ns)
            .list(&lp)
            .await
            .expect("secrets")
            .items
            .len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gateway_serves_tcp_and_udp_and_delete_leaves_nothing() {
    let c = Cluster::start(LatencyProfile::instant()).await;
    let op = operator(&c).await;
    namespace(&c.client, "apps", &[]).await;
    service(&c.client, "apps", "web", &[(80, "TCP"), (53, "UDP")]).await;
    c.backend("apps", "web", "80", "53", "web").await;

    let gws = create(
        &c,
        &gateway(
            "edge",
            json!([
                {"port": 8080, "service": "web", "targetPort": 80},
                {"port": 5353, "protocol": "UDP", "service": "web", "targetPort": 53}
            ]),
        ),
    )
    .await;
    let gw = wait_gw(
        &c,
        "apps",
        "edge",
        Duration::from_secs(120),
        "Ready",
        is_ready,
    )
    .await;
    let status = gw.status.clone().expect("status");
    let addr = status.address.clone().expect("address");
    assert!(addr.starts_with("203.0.113."), "{addr}");
    assert_eq!(status.forwards_ready.as_deref(), Some("2/2"));
    assert_eq!(status.observed_generation, gw.metadata.generation);
    for t in [conditions::CLOUD_READY, conditions::TUNNEL_READY] {
        assert!(
            status
                .conditions
                .iter()
                .any(|c| c.type_ == t && c.status == "True"),
            "{t}: {:?}",
            status.conditions
        );
    }
    assert!(
        gw.finalizers()
            .iter()
            .any(|f| f == "wgnet.dev/gateway-teardown")
    );

    assert_serves_web(&c, &addr, Duration::from_secs(20));
    assert_eq!(
        firewall_ports(&c, &gw),
        vec!["tcp/8080", "udp/51820", "udp/5353"]
    );

    // Keys: one Secret with both pairs; no private key anywhere in status or events.
    let secret = Api::<Secret>::namespaced(c.client.clone(), "apps")
        .get("edge-keys")
        .await
        .expect("key secret");
    let data = secret.data.expect("data");
    let vm_priv = String::from_utf8(data["vm-private-key"].0.clone()).expect("text");
    let link_priv = String::from_utf8(data["link-private-key"].0.clone()).expect("text");
    // The link reads a Secret holding only its own key; its Role names nothing else.
    let link_key = Api::<Secret>::namespaced(c.client.clone(), "apps")
        .get("edge-link-key")
        .await
        .expect("link key secret");
    let link_data = link_key.data.expect("data");
    assert_eq!(link_data.keys().collect::<Vec<_>>(), vec!["private-key"]);
    assert_eq!(link_data["private-key"].0, link_priv.as_bytes());
    let role = Api::<k8s_openapi::api::rbac::v1::Role>::namespaced(c.client.clone(), "apps")
        .get("edge-link")
        .await
        .expect("role");
    let secret_names: Vec<String> = role
        .rules
        .unwrap_or_default()
        .into_iter()
        .filter(|r| {
            r.resources
                .as_ref()
                .is_some_and(|rs| rs.iter().any(|x| x == "secrets"))
        })
        .flat_map(|r| r.resource_names.unwrap_or_default())
        .collect();
    assert_eq!(secret_names, vec!["edge-link-key"]);
    let status_text = serde_json::to_string(&gw.status).expect("json");
    assert!(!status_text.contains(&vm_priv) && !status_text.contains(&link_priv));
    let events = serde_json::to_string(
        &Api::<k8s_openapi::api::events::v1::Event>::namespaced(c.client.clone(), "apps")
            .list(&ListParams::default())
            .await
            .expect("events")
            .items,
    )
    .expect("events body");
    assert!(
        events.contains("\"reason\":\"Ready\""),
        "a Ready event: {events}"
    );
    assert!(!events.contains(&vm_priv) && !events.contains(&link_priv));
    let m = op.metrics.render();
    assert!(m.contains("wgnet_gateways{state=\"Ready\"} 1"), "{m}");

    // Delete: the finalizer holds the object until GCP is empty; children go by owner refs.
    delete_and_wait(&c, &gws, "edge", Duration::from_secs(90)).await;
    assert_gcp_holds_nothing(&c);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while managed_children(&c.client, "apps").await > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "child objects left behind"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        !c.answers("tcp", &addr, 8080),
        "the address stops answering"
    );
    drop(op);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forwards_follow_services_consent_and_edits_without_replacing_anything() {
    let c = Cluster::start(LatencyProfile::instant()).await;
    let _op = operator(&c).await;
    namespace(&c.client, "apps", &[]).await;
    namespace(&c.client, "other", &[]).await;
    let gws = create(
        &c,
        &gateway(
            "edge",
            json!([
                {"port": 8080, "service": "web", "targetPort": 80},
                {"port": 8443, "service": "shop", "namespace": "other", "targetPort": 80}
            ]),
        ),
    )
    .await;

    // The Service does not exist yet: the reason says so, and the VM is provisioned anyway.
    let gw = wait_gw(
        &c,
        "apps",
        "edge",
        Duration::from_secs(60),
        "ServiceNotFound",
        |g| {
            ready(g).is_some_and(|(_, r, _)| r == "ServiceNotFound")
                && g.status.as_ref().is_some_and(|s| s.address.is_some())
        },
    )
    .await;
    let (_, _, msg) = ready(&gw).expect("ready condition");
    assert!(msg.starts_with("2 forward(s) invalid: forward backend Service \"web\" in namespace \"apps\" not found yet"), "{msg}");
    let addr = gw
        .status
        .as_ref()
        .and_then(|s| s.address.clone())
        .expect("address");

    // The Service appears: traffic flows. The other namespace has not consented.
    let ip = service(&c.client, "apps", "web", &[(80, "TCP")]).await;
    c.backend("apps", "web", "80", ",", "web").await;
    let gw = wait_gw(
        &c,
        "apps",
        "edge",
        Duration::from_secs(60),
        "cross-namespace denied",
        |g| {
            ready(g).is_some_and(|(_, r, _)| r == "CrossNamespaceForwardDenied")
                && g.status
                    .as_ref()
                    .is_some_and(|s| s.forwards_ready.as_deref() == Some("1/2"))
        },
    )
    .await;
    let tcp = c
        .request("tcp", &addr, 8080, Duration::from_secs(30))
        .unwrap_or_else(|| panic!("8080 unanswered\n{}", c.logs()));
    assert!(tcp.starts_with("web tcp 80"), "{tcp}");
    assert_eq!(
        firewall_ports(&c, &gw),
        vec!["tcp/8080", "udp/51820"],
        "a denied forward stays closed"
    );
    service(&c.client, "other", "shop", &[(80, "TCP")]).await;
    c.backend("other", "shop", "80", ",", "shop").await;
    assert!(!c.answers("tcp", &addr, 8443));

    let instance_id = |c: &Cluster| {
        let inst = c
            .emu
            .inventory()
            .into_iter()
            .find(|i| i.kind == "instance")
            .expect("instance");
        c.emu
            .get("instance", PROJECT, &inst.scope, &inst.name)
            .expect("instance")["id"]
            .clone()
    };
    let vm_before = instance_id(&c);
    let pods_before = c.pods();
    assert_eq!(pods_before.len(), 1, "{pods_before:?}");

    // Consent given: the forward opens, with no VM replacement and no link restart.
    Api::<Namespace>::all(c.client.clone())
        .patch(
            "other",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"metadata": {"labels": {"wgnet.dev/allow-gateway-ingress": "true"}}}),
            ),
        )
        .await
        .expect("label");
    let gw = wait_gw(
        &c,
        "apps",
        "edge",
        Duration::from_secs(60),
        "Ready with consent",
        is_ready,
    )
    .await;
    let shop = c
        .request("tcp", &addr, 8443, Duration::from_secs(10))
        .unwrap_or_else(|| panic!("8443 unanswered\n{}", c.logs()));
    assert!(shop.starts_with("shop tcp 80"), "{shop}");
    assert_eq!(
        firewall_ports(&c, &gw),
        vec!["tcp/8080", "tcp/8443", "udp/51820"]
    );

    // Consent withdrawn: only that port closes.
    Api::<Namespace>::all(c.client.clone())
        .patch(
            "other",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"metadata": {"labels": {"wgnet.dev/allow-gateway-ingress": null}}}),
            ),
        )
        .await
        .expect("unlabel");
    wait_gw(
        &c,
        "apps",
        "edge",
        Duration::from_secs(60),
        "denied again",
        |g| ready(g).is_some_and(|(_, r, _)| r == "CrossNamespaceForwardDenied"),
    )
    .await;
    let closed = wgnet_tests::netns::wait_for(Duration::from_secs(10), || {
        (!c.answers("tcp", &addr, 8443)).then_some(())
    });
    assert!(
        closed.is_some(),
        "8443 still answers after consent was withdrawn"
    );
    assert!(c.answers("tcp", &addr, 8080), "8080 unaffected");

    // A forward added live reaches its Service with the same VM, IP and link process.
    service(&c.client, "apps", "api", &[(9000, "TCP")]).await;
    c.backend("apps", "api", "9000", ",", "api").await;
    let mut gw = gws.get("edge").await.expect("get");
    gw.spec.forwards.push(
        serde_json::from_value(json!({"port": 9090, "service": "api", "targetPort": 9000}))
            .expect("forward"),
    );
    gw.spec.forwards.retain(|f| f.port != 8443);
    gws.replace("edge", &PostParams::default(), &gw)
        .await
        .expect("add forward");
    let answered = c
        .request("tcp", &addr, 9090, Duration::from_secs(20))
        .unwrap_or_else(|| panic!("9090 unanswered\n{}", c.logs()));
    assert!(answered.starts_with("api tcp 9000"), "{answered}");
    let gw = wait_gw(
        &c,
        "apps",
        "edge",
        Duration::from_secs(30),
        "Ready after edit",
        is_ready,
    )
    .await;
    assert_eq!(
        gw.status
            .as_ref()
            .and_then(|s| s.address.clone())
            .as_deref(),
        Some(addr.as_str())
    );
    assert_eq!(instance_id(&c), vm_before, "the VM was not replaced");
    assert_eq!(c.pods(), pods_before, "the link pod was not restarted");

    // The Service is recreated with a new ClusterIP: traffic follows.
    Api::<Service>::namespaced(c.client.clone(), "apps")
        .delete("web", &DeleteParams::default())
        .await
        .expect("delete svc");
    let new_ip = service(&c.client, "apps", "web", &[(80, "TCP")]).await;
    assert_ne!(new_ip, ip);
    c.backend("apps", "web", "80", ",", "web2").await;
    let moved = wgnet_tests::netns::wait_for(Duration::from_secs(20), || {
        c.request("tcp", &addr, 8080, Duration::from_secs(1))
            .filter(|a| a.starts_with("web2 "))
    });
    assert!(
        moved.is_some(),
        "traffic never followed the new ClusterIP\n{}",
        c.logs()
    );
    let gw = gws.get("edge").await.expect("get");
    assert!(gw.status.as_ref().is_some_and(|s| {
        s.forwards
            .iter()
            .any(|f| f.cluster_ip.as_deref() == Some(new_ip.as_str()))
    }));
    let _ = gw.name_any();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn drift_is_repaired_with_the_same_address() {
    let c = Cluster::start(LatencyProfile::instant()).await;
    let _op = operator_with(&c, Duration::from_secs(5)).await;
    namespace(&c.client, "apps", &[]).await;
    service(&c.client, "apps", "web", &[(80, "TCP")]).await;
    c.backend("apps", "web", "80", ",", "web").await;
    create(
        &c,
        &gateway(
            "edge",
            json!([{"port": 8080, "service": "web", "targetPort": 80}]),
        ),
    )
    .await;
    let gw = wait_gw(
        &c,
        "apps",
        "edge",
        Duration::from_secs(120),
        "Ready",
        is_ready,
    )
    .await;
    let addr = gw
        .status
        .as_ref()
        .and_then(|s| s.address.clone())
        .expect("address");
    let gcp = gw
        .status
        .as_ref()
        .and_then(|s| s.gcp.clone())
        .expect("gcp status");
    let (inst, fw) = (
        gcp.instance.expect("instance"),
        gcp.firewall.expect("firewall"),
    );
    assert!(
        c.request("tcp", &addr, 8080, Duration::from_secs(20))
            .is_some(),
        "{}",
        c.logs()
    );
    let id = |c: &Cluster| {
        c.emu
            .get("instance", PROJECT, "us-central1-a", &inst)
            .map(|i| i["id"].clone())
    };
    let first = id(&c).expect("instance");

    // Deleted out of band: recreated with the same reserved IP, and traffic returns.
    assert!(
        c.emu
            .remove_resource("instance", PROJECT, "us-central1-a", &inst)
    );
    let back = wgnet_tests::netns::wait_for(Duration::from_secs(90), || {
        id(&c).filter(|i| *i != first)?;
        c.request("tcp", &addr, 8080, Duration::from_secs(1))
    });
    assert!(
        back.is_some(),
        "never repaired after the VM was deleted\n{}",
        c.logs()
    );

    // A Spot-style stop: started again, same address.
    assert!(c.emu.preempt_instance(PROJECT, "us-central1-a", &inst));
    let stopped = wgnet_tests::netns::wait_for(Duration::from_secs(10), || {
        (!c.answers("tcp", &addr, 8080)).then_some(())
    });
    assert!(stopped.is_some(), "the stopped VM still answered");
    let back = c.request("tcp", &addr, 8080, Duration::from_secs(90));
    assert!(
        back.is_some(),
        "never repaired after the VM was stopped\n{}",
        c.logs()
    );

    // A firewall edited by hand is restored.
    assert!(
        c.emu
            .edit_firewall(PROJECT, &fw, "sourceRanges", json!(["192.0.2.0/24"]))
    );
    let restored = wgnet_tests::netns::wait_for(Duration::from_secs(30), || {
        let f = c.emu.get("firewall", PROJECT, "global", &fw)?;
        (f["sourceRanges"] == json!(["0.0.0.0/0"])).then_some(())
    });
    assert!(restored.is_some(), "the firewall was not restored");
    let gw = wait_gw(
        &c,
        "apps",
        "edge",
        Duration::from_secs(60),
        "Ready after repairs",
        is_ready,
    )
    .await;
    assert_eq!(
        gw.status.as_ref().and_then(|s| s.address.clone()),
        Some(addr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_link_replicas_keep_serving_through_eviction_crash_and_rolling_update() {
    use k8s_openapi::api::coordination::v1::Lease;
    use k8s_openapi::api::policy::v1::PodDisruptionBudget;
    let c = Cluster::start(LatencyProfile::instant()).await;
    let _op = operator(&c).await;
    namespace(&c.client, "apps", &[]).await;
    service(&c.client, "apps", "web", &[(80, "TCP")]).await;
    c.backend("apps", "web", "80", ",", "web").await;
    let mut gw = gateway(
        "edge",
        json!([{"port": 8080, "service": "web", "targetPort": 80}]),
    );
    gw.spec.link.replicas = 2;
    create(&c, &gw).await;
    let gw = wait_gw(
        &c,
        "apps",
        "edge",
        Duration::from_secs(120),
        "Ready",
        is_ready,
    )
    .await;
    let addr = gw
        .status
        .as_ref()
        .and_then(|s| s.address.clone())
        .expect("address");
    assert!(
        c.request("tcp", &addr, 8080, Duration::from_secs(20))
            .is_some(),
        "{}",
        c.logs()
    );
    assert_eq!(c.pods().len(), 2);
    let pdb = Api::<PodDisruptionBudget>::namespaced(c.client.clone(), "apps")
        .get("edge-link")
        .await
        .expect("PDB for 2 replicas");
    assert!(pdb.spec.and_then(|s| s.min_available).is_some());

    let holder = || async {
        Api::<Lease>::namespaced(c.client.clone(), "apps")
            .get("edge-link")
            .await
            .ok()
            .and_then(|l| l.spec)
            .and_then(|s| s.holder_identity)
    };
    let first = holder().await.expect("a holder");
    // Only the holder has wg0.
    let with_wg0: Vec<String> = c
        .pods()
        .iter()
        .filter(|(_, name, _)| c.pod_has_wg0(name))
        .map(|(_, name, _)| name.clone())
        .collect();
    assert_eq!(
        with_wg0,
        vec![first.clone()],
        "exactly the holder carries the key"
    );

    c.stop_pod(&first);
    let started = std::time::Instant::now();
    let served = c.request("tcp", &addr, 8080, Duration::from_secs(30));
    assert!(
        served.is_some(),
        "no service after the holder died\n{}",
        c.logs()
    );
    let took = started.elapsed();
    let second = holder().await.expect("a new holder");
    assert_ne!(second, first);
    eprintln!("failover after the holder was stopped: served again in {took:?}");

    // The holder's link crashes (SIGKILL, no fencing): the pod is restarted in place or the
    // standby takes over once the lease expires; either way service returns.
    c.kill_pod(&second);
    assert!(
        c.request("tcp", &addr, 8080, Duration::from_secs(40))
            .is_some(),
        "no service after the holder crashed\n{}",
        c.logs()
    );

    // A rolling update (new pod template) keeps serving: surge one new pod, then retire old
    // ones one at a time; every probe during the rollout is answered within the failover
    // bound, and the address never changes.
    let before: Vec<String> = c.pods().into_iter().map(|(_, n, _)| n).collect();
    let gws: Api<Gateway> = Api::namespaced(c.client.clone(), "apps");
    gws.patch(
        "edge",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"link": {"resources": {"requests": {"cpu": "20m"}}}}})),
    )
    .await
    .expect("edit link resources");
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let mut probes = 0;
    loop {
        let names: Vec<String> = c.pods().into_iter().map(|(_, n, _)| n).collect();
        let rolled = names.len() == 2 && names.iter().all(|n| !before.contains(n));
        assert!(
            c.request("tcp", &addr, 8080, Duration::from_secs(10))
                .is_some(),
            "a probe went unanswered during the rollout (pods {names:?})\n{}",
            c.logs()
        );
        probes += 1;
        if rolled {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the rollout never finished: {names:?}\n{}",
            c.logs()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(probes > 1, "the rollout was observed while in progress");
    let d = Api::<Deployment>::namespaced(c.client.clone(), "apps")
        .get("edge-link")
        .await
        .expect("deployment");
    let strategy = d.spec.and_then(|s| s.strategy).expect("strategy");
    assert_eq!(strategy.type_.as_deref(), Some("RollingUpdate"));
    wait_gw(
        &c,
        "apps",
        "edge",
        Duration::from_secs(60),
        "Ready after the rollout",
        is_ready,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gcp_denials_dns_without_its_crd_and_delete_while_provisioning() {
    use wgnet_tests::gcp::{Fault, FaultAction};
    let c = Cluster::start(LatencyProfile::instant()).await;
    let op = operator_with(&c, Duration::from_secs(5)).await;
    namespace(&c.client, "apps", &[]).await;
    service(&c.client, "apps", "web", &[(80, "TCP")]).await;
    c.backend("apps", "web", "80", ",", "web").await;

    // Instance creation is denied: the condition carries GCP's reason and message, the rest
    // of the resources still advance, and lifting the denial heals it on the next pass.
    c.emu.add_fault(Fault {
        method: Some("POST".into()),
        path_contains: "/instances".into(),
        remaining: None,
        action: FaultAction::Deny(
            "Required 'compute.instances.create' permission for 'projects/wgnet-test'".into(),
        ),
    });
    let mut gw = gateway(
        "edge",
        json!([{"port": 8080, "service": "web", "targetPort": 80}]),
    );
    gw.spec.dns_hostnames = vec!["edge.example.test".into()];
    let gws = create(&c, &gw).await;
    let gw = wait_gw(
        &c,
        "apps",
        "edge",
        Duration::from_secs(60),
        "PermissionDenied",
        |g| {
            g.status.as_ref().is_some_and(|s| {
                s.conditions
                    .iter()
                    .any(|c| c.type_ == conditions::CLOUD_READY && c.reason == "PermissionDenied")
            })
        },
    )
    .await;
    let (status, reason, message) = ready(&gw).expect("ready");
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "ReconcileFailed")
    );
    assert!(message.contains("compute.instances.create"), "{message}");
    assert!(
        gw.status.as_ref().and_then(|s| s.address.clone()).is_some(),
        "the address was reserved regardless"
    );
    // The failure is counted under the step and GCP's reason. The pass writes its status
    // before it returns the error that the error policy counts, so the count may trail the
    // condition by a moment: wait for it, bounded.
    wait_metric(
        &op,
        "wgnet_reconcile_errors_total{kind=\"Gateway\",step=\"cloud\",reason=\"PermissionDenied\"}",
        Duration::from_secs(10),
    )
    .await;
    c.emu.clear_faults();
    let gw = wait_gw(
        &c,
        "apps",
        "edge",
        Duration::from_secs(120),
        "Ready after the denial is lifted",
        is_ready,
    )
    .await;

    // No external-dns CRD in this cluster: said in DNSReady, never in Ready.
    let dns = gw
        .status
        .as_ref()
        .and_then(|s| {
            s.conditions
                .iter()
                .find(|c| c.type_ == conditions::DNS_READY)
                .cloned()
        })
        .expect("DNSReady");
    assert_eq!(
        (dns.status.as_str(), dns.reason.as_str()),
        ("False", "DNSEndpointCRDMissing"),
        "{}",
        dns.message
    );

    // A second Gateway deleted while its cloud resources are still being created.
    c.emu
        .set_profile(LatencyProfile::gcp_typical().scaled_by(0.05));
    let brief = gws
        .create(
            &PostParams::default(),
            &gateway(
                "brief",
                json!([{"port": 8081, "service": "web", "targetPort": 80}]),
            ),
        )
        .await
        .expect("create second");
    let brief_name = wgnet_cloud::GatewayId {
        cluster: CLUSTER.into(),
        namespace: "apps".into(),
        name: "brief".into(),
        uid: brief.metadata.uid.clone().expect("uid"),
    }
    .resource_name();
    wait_gw(
        &c,
        "apps",
        "brief",
        Duration::from_secs(30),
        "provisioning started",
        |g| {
            g.status
                .as_ref()
                .and_then(|s| s.gcp.as_ref())
                .is_some_and(|g| !g.pending_operations.is_empty() || g.network.is_some())
        },
    )
    .await;
    delete_and_wait(&c, &gws, "brief", Duration::from_secs(120)).await;
    // Only the first Gateway's resources are left, and it still serves.
    let strays: Vec<String> = c
        .emu
        .inventory()
        .into_iter()
        .filter(|i| i.name.contains(&brief_name))
        .map(|i| format!("{} {}", i.kind, i.name))
        .collect();
    assert!(
        strays.is_empty(),
        "left behind by the deleted Gateway: {strays:?}"
    );
    let addr = gws
        .get("edge")
        .await
        .expect("edge")
        .status
        .and_then(|s| s.address)
        .expect("address");
    assert!(
        c.request("tcp", &addr, 8080, Duration::from_secs(20))
            .is_some()
    );
}

/// Creates a Service of `type_` with one named port per `(port, protocol)`.
async fn typed_service(
    client: &Client,
    ns: &str,
    name: &str,
    type_: &str,
    ports: &[(i32, &str)],
) -> Service {
    let ports: Vec<_> = ports
        .iter()
        .map(|(p, proto)| json!({"name": format!("{}-{p}", proto.to_lowercase()), "port": p, "protocol": proto}))
        .collect();
    let svc: Service = serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": ns},
        "spec": {"type": type_, "selector": {"app": name}, "ports": ports}
    }))
    .expect("service");
    Api::<Service>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &svc)
        .await
        .expect("create service")
}

fn address_of(gw: &Gateway) -> String {
    gw.status
        .as_ref()
        .and_then(|s| s.address.clone())
        .expect("address")
}

fn instance_of(gw: &Gateway) -> String {
    gw.status
        .as_ref()
        .and_then(|s| s.gcp.as_ref())
        .and_then(|g| g.instance.clone())
        .expect("instance name")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nodeport_unpublished_port_deleted_service_and_two_gateways_side_by_side() {
    let c = Cluster::start(LatencyProfile::instant()).await;
    let _op = operator(&c).await;
    namespace(&c.client, "apps", &[]).await;
    let np = typed_service(&c.client, "apps", "np", "NodePort", &[(80, "TCP")]).await;
    let _np_ip = np
        .spec
        .as_ref()
        .and_then(|s| s.cluster_ip.clone())
        .expect("cluster IP");
    assert!(
        np.spec
            .as_ref()
            .and_then(|s| s.ports.as_ref())
            .and_then(|p| p[0].node_port)
            .is_some(),
        "the API server allocates node ports"
    );
    c.backend("apps", "np", "80,81", ",", "np").await;
    service(&c.client, "apps", "dns", &[(53, "UDP")]).await;
    c.backend("apps", "dns", ",", "53", "dns").await;

    // Port 81 is not published by the Service: that forward is denied and stays closed in
    // the firewall while the NodePort one serves.
    let one = create(
        &c,
        &gateway(
            "one",
            json!([
                {"port": 8080, "service": "np", "targetPort": 80},
                {"port": 9000, "service": "np", "targetPort": 81}
            ]),
        ),
    )
    .await;
    let gw = wait_gw(
        &c,
        "apps",
        "one",
        Duration::from_secs(120),
        "TargetPortNotListening with the tunnel up",
        |g| {
            ready(g).is_some_and(|(_, r, _)| r == "TargetPortNotListening")
                && g.status.as_ref().is_some_and(|s| {
                    s.forwards_ready.as_deref() == Some("1/2")
                        && s.conditions
                            .iter()
                            .any(|c| c.type_ == conditions::TUNNEL_READY && c.status == "True")
                })
        },
    )
    .await;
    let (_, _, msg) = ready(&gw).expect("ready condition");
    assert!(msg.contains("81"), "the message names the port: {msg}");
    let addr_one = address_of(&gw);
    let tcp = c
        .request("tcp", &addr_one, 8080, Duration::from_secs(30))
        .unwrap_or_else(|| panic!("8080 unanswered\n{}", c.logs()));
    assert!(tcp.starts_with("np tcp 80"), "{tcp}");
    assert_eq!(firewall_ports(&c, &gw), vec!["tcp/8080", "udp/51820"]);
    assert!(!c.answers("tcp", &addr_one, 9000));

    // Publishing the port fixes it: Ready, the firewall opens, traffic reaches port 81.
    Api::<Service>::namespaced(c.client.clone(), "apps")
        .patch(
            "np",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"ports": [
                {"name": "tcp-80", "port": 80, "protocol": "TCP"},
                {"name": "tcp-81", "port": 81, "protocol": "TCP"}
            ]}})),
        )
        .await
        .expect("publish port 81");
    let gw = wait_gw(
        &c,
        "apps",
        "one",
        Duration::from_secs(60),
        "Ready once published",
        is_ready,
    )
    .await;
    assert_eq!(
        firewall_ports(&c, &gw),
        vec!["tcp/8080", "tcp/9000", "udp/51820"]
    );
    let fixed = c
        .request("tcp", &addr_one, 9000, Duration::from_secs(20))
        .unwrap_or_else(|| panic!("9000 unanswered after the fix\n{}", c.logs()));
    assert!(fixed.starts_with("np tcp 81"), "{fixed}");

    // A second Gateway in the same namespace: its own VM, address, firewall and link.
    create(
        &c,
        &gateway(
            "two",
            json!([{"port": 5353, "protocol": "UDP", "service": "dns", "targetPort": 53}]),
        ),
    )
    .await;
    let two = wait_gw(
        &c,
        "apps",
        "two",
        Duration::from_secs(120),
        "second Gateway Ready",
        is_ready,
    )
    .await;
    let addr_two = address_of(&two);
    assert_ne!(addr_one, addr_two);
    assert_ne!(instance_of(&gw), instance_of(&two));
    assert_eq!(firewall_ports(&c, &two), vec!["udp/51820", "udp/5353"]);
    let udp = c
        .request("udp", &addr_two, 5353, Duration::from_secs(30))
        .unwrap_or_else(|| panic!("5353 unanswered\n{}", c.logs()));
    assert!(udp.starts_with("dns udp 53"), "{udp}");
    assert!(c.answers("tcp", &addr_one, 8080), "the first keeps serving");
    assert!(
        !c.answers("tcp", &addr_two, 8080),
        "a port is served only by its own Gateway"
    );
    assert_eq!(c.pods().len(), 2, "{:?}", c.pods());

    // The Service is deleted: only its forwards close; the VM and the address stay.
    Api::<Service>::namespaced(c.client.clone(), "apps")
        .delete("np", &DeleteParams::default())
        .await
        .expect("delete np");
    let gw = wait_gw(
        &c,
        "apps",
        "one",
        Duration::from_secs(60),
        "ServiceNotFound",
        |g| ready(g).is_some_and(|(_, r, _)| r == "ServiceNotFound"),
    )
    .await;
    assert_eq!(address_of(&gw), addr_one);
    assert_eq!(firewall_ports(&c, &gw), vec!["udp/51820"]);
    let closed = wgnet_tests::netns::wait_for(Duration::from_secs(10), || {
        (!c.answers("tcp", &addr_one, 8080)).then_some(())
    });
    assert!(closed.is_some(), "8080 still answers without its Service");
    assert!(
        c.emu
            .get("instance", PROJECT, "us-central1-a", &instance_of(&gw))
            .is_some(),
        "the VM is kept"
    );

    // Deleting one Gateway leaves the other's resources alone.
    delete_and_wait(&c, &one, "two", Duration::from_secs(90)).await;
    let instances: Vec<String> = c
        .emu
        .inventory()
        .into_iter()
        .filter(|i| i.kind == "instance")
        .map(|i| i.name)
        .collect();
    assert_eq!(instances, vec![instance_of(&gw)]);
    assert!(
        c.request("udp", &addr_two, 5353, Duration::from_secs(2))
            .is_none(),
        "the deleted Gateway's address stops answering"
    );
    let still = wait_gw(
        &c,
        "apps",
        "one",
        Duration::from_secs(10),
        "one untouched",
        |g| g.metadata.deletion_timestamp.is_none(),
    )
    .await;
    assert_eq!(address_of(&still), addr_one);
}

/// A namespace whose PodSecurity level forbids the link (baseline: no NET_ADMIN, no
/// hostPath, no privileged init) gets `Ready=False/LinkPodsRejected` quoting the admission
/// refusal, not "Provisioning" forever; labelling the namespace so the link is allowed
/// lets the ReplicaSet create the pod and the Gateway becomes Ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn podsecurity_refusal_is_reported_and_recovers_when_the_namespace_allows_the_link() {
    let c = Cluster::start(LatencyProfile::instant()).await;
    let _op = operator(&c).await;
    namespace(
        &c.client,
        "apps",
        &[("pod-security.kubernetes.io/enforce", "baseline")],
    )
    .await;
    service(&c.client, "apps", "web", &[(80, "TCP")]).await;
    c.backend("apps", "web", "80", ",", "web").await;
    let gws = create(
        &c,
        &gateway(
            "edge",
            json!([{"port": 8080, "service": "web", "targetPort": 80}]),
        ),
    )
    .await;
    let gw = wait_gw(
        &c,
        "apps",
        "edge",
        Duration::from_secs(90),
        "LinkPodsRejected",
        |g| ready(g).is_some_and(|(_, r, _)| r == "LinkPodsRejected"),
    )
    .await;
    let (status, _, message) = ready(&gw).expect("Ready condition");
    assert_eq!(status, "False");
    assert!(
        message.contains("violates PodSecurity \"baseline"),
        "the refusal is quoted: {message}"
    );

    // The namespace owner (or an admin) allows the link: the ReplicaSet's next attempt
    // creates the pod, and the Gateway serves.
    Api::<Namespace>::all(c.client.clone())
        .patch(
            "apps",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"pod-security.kubernetes.io/enforce": "privileged"}}})),
        )
        .await
        .expect("relabel namespace");
    let gw = wait_gw(
        &c,
        "apps",
        "edge",
        Duration::from_secs(240),
        "Ready after the namespace allows the link",
        is_ready,
    )
    .await;
    let addr = address_of(&gw);
    let answer = c
        .request("tcp", &addr, 8080, Duration::from_secs(30))
        .unwrap_or_else(|| panic!("8080 unanswered\n{}", c.logs()));
    assert!(answer.starts_with("web tcp 80"), "{answer}");
    delete_and_wait(&c, &gws, "edge", Duration::from_secs(90)).await;
}

/// Deletion never wedges on an unreachable project. A Gateway whose project denies every
/// call (nothing was ever created) is deleted at once instead of staying Terminating; one
/// whose resources exist but can no longer be deleted stays Terminating with a message
/// naming the escape, and the admin annotation releases it with a Warning event that lists
/// what was left in GCP (and the resources are indeed still there).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deletion_never_wedges_on_a_project_that_denies_access() {
    use k8s_openapi::api::events::v1::Event;
    use wgnet_tests::gcp::{Fault, FaultAction};
    let c = Cluster::start(LatencyProfile::instant()).await;
    let _op = operator_with(&c, Duration::from_secs(5)).await;
    namespace(&c.client, "apps", &[]).await;
    service(&c.client, "apps", "web", &[(80, "TCP")]).await;
    c.backend("apps", "web", "80", ",", "web").await;
    let deny = |path: &str| Fault {
        method: None,
        path_contains: path.into(),
        remaining: None,
        action: FaultAction::Deny(format!("Permission denied on resource project {PROJECT}")),
    };

    // 1. Nothing created: every call to the project is denied.
    c.emu.add_fault(deny(&format!("projects/{PROJECT}/")));
    let gws = create(
        &c,
        &gateway(
            "denied",
            json!([{"port": 8080, "service": "web", "targetPort": 80}]),
        ),
    )
    .await;
    wait_gw(
        &c,
        "apps",
        "denied",
        Duration::from_secs(60),
        "a denial reported",
        |g| ready(g).is_some_and(|(_, r, _)| r == "ReconcileFailed"),
    )
    .await;
    delete_and_wait(&c, &gws, "denied", Duration::from_secs(30)).await;
    c.emu.clear_faults();

    // 2. Created, then the project stops answering deletes.
    create(
        &c,
        &gateway(
            "edge",
            json!([{"port": 8080, "service": "web", "targetPort": 80}]),
        ),
    )
    .await;
    let gw = wait_gw(
        &c,
        "apps",
        "edge",
        Duration::from_secs(90),
        "Ready",
        is_ready,
    )
    .await;
    let instance = instance_of(&gw);
    c.emu.add_fault(Fault {
        method: Some("DELETE".into()),
        path_contains: format!("projects/{PROJECT}/"),
        remaining: None,
        action: FaultAction::Deny(format!("Permission denied on resource project {PROJECT}")),
    });
    gws.delete("edge", &DeleteParams::default())
        .await
        .expect("delete");
    let gw = wait_gw(
        &c,
        "apps",
        "edge",
        Duration::from_secs(60),
        "Terminating with the escape named",
        |g| {
            ready(g).is_some_and(|(_, r, m)| {
                r == "Terminating" && m.contains("wgnet.dev/abandon-cloud-resources=true")
            })
        },
    )
    .await;
    assert!(gw.metadata.deletion_timestamp.is_some());
    gws.patch(
        "edge",
        &PatchParams::default(),
        &Patch::Merge(
            json!({"metadata": {"annotations": {"wgnet.dev/abandon-cloud-resources": "true"}}}),
        ),
    )
    .await
    .expect("annotate");
    wgnet_tests::until(Duration::from_secs(30), || async {
        gws.get_opt("edge")
            .await
            .ok()
            .and_then(|g| g.is_none().then_some(()))
    })
    .await
    .unwrap_or_else(|| panic!("the annotation did not release the Gateway\n{}", c.logs()));
    let events = Api::<Event>::namespaced(c.client.clone(), "apps")
        .list(&ListParams::default())
        .await
        .expect("events")
        .items;
    let abandoned = events
        .iter()
        .find(|e| e.reason.as_deref() == Some("Abandoned"))
        .unwrap_or_else(|| panic!("no Abandoned event: {events:?}"));
    assert_eq!(abandoned.type_.as_deref(), Some("Warning"));
    let note = abandoned.note.clone().unwrap_or_default();
    assert!(note.contains(&format!("instance {instance}")), "{note}");
    assert!(
        c.emu
            .get("instance", PROJECT, "us-central1-a", &instance)
            .is_some(),
        "the instance is indeed left in GCP"
    );
}

/// Issue 19, item 7: `sourceRanges` restrict who reaches the forwards, never the link's
/// tunnel. The emulated GCP enforces its firewall rules at the VM (see the cluster's
/// booter): with the forwards limited to an office range that the node (the link's source,
/// 203.0.113.30) is not in, the tunnel still comes up; the client (203.0.113.20), outside
/// the range, gets no answer until the range admits it. Before, the one firewall rule
/// carried the WireGuard port under the same `sourceRanges`, and the Gateway never became
/// Ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn source_ranges_restrict_the_clients_never_the_tunnel() {
    let c = Cluster::start(LatencyProfile::instant()).await;
    let _op = operator(&c).await;
    namespace(&c.client, "apps", &[]).await;
    service(&c.client, "apps", "web", &[(80, "TCP")]).await;
    c.backend("apps", "web", "80", ",", "web").await;
    let mut gw = gateway(
        "office",
        json!([{"port": 8080, "service": "web", "targetPort": 80}]),
    );
    gw.spec.source_ranges = vec!["192.0.2.0/24".into()];
    let gws = create(&c, &gw).await;
    let gw = wait_gw(
        &c,
        "apps",
        "office",
        Duration::from_secs(120),
        "Ready with the forwards limited to the office range",
        is_ready,
    )
    .await;
    let addr = address_of(&gw);
    assert!(
        !c.answers("tcp", &addr, 8080),
        "a client outside sourceRanges reached the forward"
    );
    gws.patch(
        "office",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"sourceRanges": ["192.0.2.0/24", "203.0.113.20/32"]}})),
    )
    .await
    .expect("widen the range");
    assert!(
        c.request("tcp", &addr, 8080, Duration::from_secs(60))
            .is_some(),
        "the client was never admitted\n{}",
        c.logs()
    );
    delete_and_wait(&c, &gws, "office", Duration::from_secs(90)).await;
    assert!(c.emu.inventory().is_empty(), "{:?}", c.emu.inventory());
}

/// Runs the control plane's kubectl as the admin; (success, stdout + stderr).
async fn kubectl(c: &Cluster, args: &[&str]) -> (bool, String) {
    let kubeconfig = c.cp.admin_kubeconfig();
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(
            wgnet_tests::controlplane::binary("kubectl").unwrap_or_else(|e| panic!("{e}")),
        )
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .arg("--request-timeout=20s")
        .args(&args)
        .output()
    })
    .await
    .expect("kubectl task joins")
    .expect("kubectl runs");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Polls Service `name` in `apps` until `f` holds (bounded, 120 s); the last object.
async fn wait_svc(c: &Cluster, name: &str, what: &str, f: impl Fn(&Service) -> bool) -> Service {
    let timeout = Duration::from_secs(120);
    wait_obj(c, "apps", name, timeout, what, f, |s: &Service| &s.status).await
}

/// The published ports of a Service's first ingress, as `port/PROTO`.
fn lb_ports(svc: &Service) -> Vec<String> {
    svc.status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|l| l.ingress.as_ref())
        .and_then(|i| i.first())
        .and_then(|i| i.ports.clone())
        .unwrap_or_default()
        .iter()
        .map(|p| format!("{}/{}", p.port, p.protocol))
        .collect()
}

/// Issue 20, part 1: `kubectl expose --type=LoadBalancer` with the operator's class gets a
/// public IP in `status.loadBalancer` (ipMode Proxy) from a Gateway the operator manages;
/// a client on the internet reaches the pod through it; a port added to the Service
/// follows live; Events on the Service say what happened; deleting the Service removes
/// the Gateway and every GCP resource before the Service goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_load_balancer_service_gets_a_public_ip_follows_port_edits_and_releases_everything() {
    let c = Cluster::start(LatencyProfile::instant()).await;
    let _op = operator(&c).await;
    namespace(&c.client, "apps", &[]).await;
    c.backend("apps", "web", "80", "53", "web").await;
    let pod = Api::<k8s_openapi::api::core::v1::Pod>::namespaced(c.client.clone(), "apps")
        .list(&ListParams::default().labels("app=web"))
        .await
        .expect("pods")
        .items
        .first()
        .map(|p| p.name_any())
        .expect("the backend pod");
    let (ok, out) = kubectl(
        &c,
        &[
            "-n",
            "apps",
            "expose",
            "pod",
            &pod,
            "--name=web",
            "--type=LoadBalancer",
            "--port=8080",
            "--target-port=80",
            r#"--overrides={"apiVersion":"v1","spec":{"loadBalancerClass":"wgnet.dev/gateway"}}"#,
        ],
    )
    .await;
    assert!(ok, "kubectl expose: {out}");

    let ingress_ip = |s: &Service| {
        s.status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|l| l.ingress.as_ref())
            .and_then(|i| i.first())
            .and_then(|i| i.ip.clone())
    };
    let svc = wait_svc(&c, "web", "a public IP in status", |s| {
        ingress_ip(s).is_some()
    })
    .await;
    let ip = ingress_ip(&svc).expect("ip");
    assert!(ip.starts_with("203.0.113."), "{ip}");
    let ing = &svc
        .status
        .as_ref()
        .expect("status")
        .load_balancer
        .as_ref()
        .expect("lb")
        .ingress
        .as_ref()
        .expect("ingress")[0];
    assert_eq!(ing.ip_mode.as_deref(), Some("Proxy"));
    assert_eq!(lb_ports(&svc), vec!["8080/TCP"]);
    assert!(
        svc.finalizers()
            .iter()
            .any(|f| f == "wgnet.dev/loadbalancer")
    );
    let cond = svc
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "wgnet.dev/GatewayReady"))
        .expect("the GatewayReady condition");
    assert_eq!(
        (cond.status.as_str(), cond.reason.as_str()),
        ("True", "Ready")
    );

    // The Gateway is an ordinary one: listed by kubectl, owned by the Service, same IP.
    let (ok, out) = kubectl(&c, &["-n", "apps", "get", "gw"]).await;
    assert!(
        ok && out.contains("web") && out.contains(&ip),
        "kubectl get gw: {out}"
    );
    let gw = Api::<Gateway>::namespaced(c.client.clone(), "apps")
        .get("web")
        .await
        .expect("the Service's Gateway");
    assert_eq!(address_of(&gw), ip);
    let owner = gw.owner_references().first().cloned().expect("owner");
    assert_eq!(
        (owner.kind.as_str(), owner.uid.as_str()),
        ("Service", svc.uid().unwrap_or_default().as_str())
    );

    let tcp = c
        .request("tcp", &ip, 8080, Duration::from_secs(20))
        .unwrap_or_else(|| panic!("TCP 8080 unanswered\n{}", c.logs()));
    assert!(tcp.starts_with("web tcp 80 from "), "{tcp}");
    assert!(!c.answers("udp", &ip, 5353), "no UDP port yet");

    // A port edit follows live, on the same address.
    Api::<Service>::namespaced(c.client.clone(), "apps")
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"ports": [
                {"name": "http", "port": 8080, "targetPort": 80, "protocol": "TCP"},
                {"name": "dns", "port": 5353, "targetPort": 53, "protocol": "UDP"}
            ]}})),
        )
        .await
        .expect("add a port");
    let svc = wait_svc(&c, "web", "the new port published", |s| {
        lb_ports(s) == ["8080/TCP", "5353/UDP"]
    })
    .await;
    assert_eq!(ingress_ip(&svc).as_deref(), Some(ip.as_str()));
    let udp = c
        .request("udp", &ip, 5353, Duration::from_secs(30))
        .unwrap_or_else(|| panic!("UDP 5353 unanswered after the edit\n{}", c.logs()));
    assert!(udp.starts_with("web udp 53 from "), "{udp}");
    assert!(
        c.request("tcp", &ip, 8080, Duration::from_secs(20))
            .is_some()
    );

    let events = serde_json::to_string(
        &Api::<k8s_openapi::api::events::v1::Event>::namespaced(c.client.clone(), "apps")
            .list(&ListParams::default())
            .await
            .expect("events")
            .items
            .into_iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.kind.as_deref()) == Some("Service"))
            .collect::<Vec<_>>(),
    )
    .expect("events body");
    for reason in ["Claimed", "Ready", "PortsChanged"] {
        assert!(
            events.contains(&format!("\"reason\":\"{reason}\"")),
            "a {reason} event on the Service: {events}"
        );
    }

    // Deleting the Service holds it until the Gateway and its GCP resources are gone.
    let (ok, out) = kubectl(
        &c,
        &["-n", "apps", "delete", "service", "web", "--timeout=110s"],
    )
    .await;
    assert!(ok, "kubectl delete service: {out}\n{}", c.logs());
    assert!(
        Api::<Gateway>::namespaced(c.client.clone(), "apps")
            .get_opt("web")
            .await
            .expect("get")
            .is_none(),
        "the Gateway goes before the Service"
    );
    assert_gcp_holds_nothing(&c);
    assert!(!c.answers("tcp", &ip, 8080), "the address stops answering");
}

/// Issue 20, part 2, inside the test cluster: a Gateway whose forwards ask for the PROXY
/// protocol hands HAProxy (`accept-proxy`) and nginx (`listen ... proxy_protocol`) pods,
/// both Debian's packages run by the kubelet stand-in, the internet client's own address
/// and port: they answer with it and log it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn proxy_protocol_forwards_give_haproxy_and_nginx_pods_the_clients_address() {
    use wgnet_tests::proxied;
    let c = Cluster::start(LatencyProfile::instant()).await;
    let _op = operator(&c).await;
    namespace(&c.client, "apps", &[]).await;
    let nginx_dir = c.dir().join("nginx");
    std::fs::create_dir_all(&nginx_dir).expect("nginx dir");
    let cm: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": "proxied"},
        "data": {
            "haproxy.cfg": proxied::haproxy_config("*:8081"),
            "nginx.conf": proxied::nginx_config("8082", &nginx_dir),
        }
    }))
    .expect("configmap");
    Api::<ConfigMap>::namespaced(c.client.clone(), "apps")
        .create(&PostParams::default(), &cm)
        .await
        .expect("create configmap");
    for (app, image, command) in [
        (
            "haproxy",
            "haproxy:2.6",
            json!(["haproxy", "-db", "-f", "/etc/proxied/haproxy.cfg"]),
        ),
        (
            "nginx",
            "nginx:1.22",
            json!(["nginx", "-e", "stderr", "-c", "/etc/proxied/nginx.conf"]),
        ),
    ] {
        let pod = serde_json::from_value(json!({
            "metadata": {"name": app, "labels": {"app": app}},
            "spec": {
                "containers": [{"name": app, "image": image, "command": command,
                                "volumeMounts": [{"name": "config", "mountPath": "/etc/proxied"}]}],
                "volumes": [{"name": "config", "configMap": {"name": "proxied"}}]
            }
        }))
        .expect("pod");
        c.run_pod("apps", &pod).await;
    }
    service(&c.client, "apps", "haproxy", &[(8081, "TCP")]).await;
    service(&c.client, "apps", "nginx", &[(8082, "TCP")]).await;
    create(
        &c,
        &gateway(
            "edge",
            json!([
                {"port": 8443, "service": "haproxy", "targetPort": 8081, "proxyProtocol": "v2"},
                {"port": 9443, "service": "nginx", "targetPort": 8082, "proxyProtocol": "v2"}
            ]),
        ),
    )
    .await;
    let gw = wait_gw(
        &c,
        "apps",
        "edge",
        Duration::from_secs(120),
        "Ready",
        is_ready,
    )
    .await;
    let addr = address_of(&gw);
    for (port, server) in [(8443, "haproxy"), (9443, "nginx")] {
        let answer = wgnet_tests::netns::wait_for(Duration::from_secs(20), || {
            let (ok, out, _) = c
                .client_ns
                .try_sh(&format!("curl -s --max-time 3 http://{addr}:{port}/"));
            (ok && !out.is_empty()).then(|| out.trim().to_owned())
        })
        .unwrap_or_else(|| panic!("{server} through {port} unanswered\n{}", c.logs()));
        assert!(
            answer.starts_with(&format!("{server} saw 203.0.113.20:")),
            "{server} must see the client's own address: {answer}"
        );
        let logged = wgnet_tests::netns::wait_for(Duration::from_secs(5), || {
            c.kubelet
                .logs()
                .contains(&format!("{server} logged 203.0.113.20:"))
                .then_some(())
        });
        assert!(
            logged.is_some(),
            "{server} logs the client's address\n{}",
            c.kubelet.logs()
        );
    }
}
