//! The reconcile tier that needs neither root nor network namespaces: the real control
//! plane on loopback (with the chart installed, so the chart's RBAC authorizes the
//! operator), the GCP emulator on loopback, the operator in-process. No node runs pods, so
//! the tunnel never comes up; what is checked is what the reconciler decides and writes:
//! GCP resources, the link's objects and their pruning, status, and deletion.

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use tokio::sync::watch;
use wgnet_operator::api::{Gateway, conditions};
use wgnet_operator::children::LinkImage;
use wgnet_operator::controller::{self, Context, Settings};
use wgnet_operator::metrics::Metrics;
use wgnet_operator::policy::{Policy, Projects};
use wgnet_tests::cluster::{OPERATOR_NAMESPACE, OPERATOR_SA, helm_install};
use wgnet_tests::controlplane::{self, ControlPlane};
use wgnet_tests::fixtures::{self, CLUSTER, INSTALL, PROJECT, TempDir};
use wgnet_tests::gcp::{Config, GcpEmulator};
use wgnet_tests::until;

/// Everything on loopback.
struct Env {
    cp: ControlPlane,
    client: Client,
    emu: GcpEmulator,
    metrics: std::sync::Arc<Metrics>,
    stop: watch::Sender<bool>,
    _dir: TempDir,
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// The environment with the default policy over the test project.
async fn env() -> Env {
    env_with(Policy::new(Projects::Only(vec![PROJECT.into()]))).await
}

async fn env_with(policy: Policy) -> Env {
    env_with_resync(policy, Duration::from_secs(5)).await
}

async fn env_with_resync(policy: Policy, resync: Duration) -> Env {
    let mut cp = ControlPlane::start(controlplane::Options {
        bind: std::net::Ipv4Addr::LOCALHOST,
        controllers: false,
    })
    .await
    .unwrap_or_else(|e| panic!("control plane: {e}"));
    helm_install(&cp, &["nodeSelector.wgnet\\.dev/no-such-node=none"])
        .unwrap_or_else(|e| panic!("helm install: {e}"));
    cp.start_controllers()
        .await
        .unwrap_or_else(|e| panic!("controllers: {e}"));
    let client = cp.admin_client().await.expect("admin client");
    let emu = GcpEmulator::start(Config::default())
        .await
        .expect("GCP emulator");
    let dir = TempDir::new();
    let key = dir.0.join("key.json");
    emu.write_key_file("wgnet-operator@wgnet-test.iam.gserviceaccount.com", &key)
        .expect("key file");
    let mut cloud = fixtures::cloud_for(&emu, key, INSTALL, "wgnet").await;
    // As wgnet-operator wires it: GCP is read back once per resync.
    cloud.set_verify_every(resync);
    let settings = Settings {
        link: LinkImage {
            image: "ghcr.io/wgnet-dev/wgnet-link:test".into(),
            pull_policy: "IfNotPresent".into(),
            privileged_init: false,
        },
        cluster_id: CLUSTER.into(),
        resync,
        policy,
        sweep_projects: vec![PROJECT.into()],
        sweep_min_age: Duration::ZERO,
        load_balancer: controller::loadbalancer::LoadBalancerSettings {
            project: Some(PROJECT.into()),
            region: Some("us-central1".into()),
            ..Default::default()
        },
    };
    let operator = cp
        .service_account_client(OPERATOR_NAMESPACE, OPERATOR_SA)
        .await
        .expect("operator client");
    let metrics = std::sync::Arc::new(Metrics::default());
    let ctx = std::sync::Arc::new(Context::new(
        operator,
        cloud,
        settings,
        metrics.clone(),
        Some("reconcile-tier".into()),
    ));
    let (stop, mut rx) = watch::channel(false);
    tokio::spawn(controller::run(ctx, async move {
        let _ = rx.wait_for(|s| *s).await;
    }));
    Env {
        cp,
        client,
        emu,
        metrics,
        stop,
        _dir: dir,
    }
}

/// The Gateway once `f` holds (bounded), or a panic with its status and the cluster.
async fn wait_gw(e: &Env, what: &str, f: impl Fn(&Gateway) -> bool) -> Gateway {
    let api: Api<Gateway> = Api::namespaced(e.client.clone(), "apps");
    let found = until(Duration::from_secs(60), || async {
        api.get_opt("edge").await.ok().flatten().filter(|g| f(g))
    })
    .await;
    found.unwrap_or_else(|| {
        panic!(
            "{what}: not reached; {}\n{}",
            inventory_of(&e.emu),
            e.cp.describe()
        )
    })
}

fn inventory_of(emu: &GcpEmulator) -> String {
    format!("GCP inventory: {:?}", emu.inventory())
}

/// Namespace `apps` with a Service `web` (port 80 to the named port `http`); the Service.
async fn apps_with_web(e: &Env) -> Service {
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": "apps"}})).expect("ns");
    Api::<Namespace>::all(e.client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .expect("namespace");
    let svc: Service = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"ports": [{"port": 80, "targetPort": "http", "protocol": "TCP"}]}
    }))
    .expect("service");
    Api::<Service>::namespaced(e.client.clone(), "apps")
        .create(&PostParams::default(), &svc)
        .await
        .expect("service")
}

fn condition(gw: &Gateway, t: &str) -> Option<(String, String)> {
    gw.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == t)
        .map(|c| (c.status.clone(), c.reason.clone()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reconciler_provisions_builds_prunes_and_deletes_without_a_node() {
    let e = env().await;
    let svc = apps_with_web(&e).await;
    let cluster_ip = svc
        .spec
        .and_then(|s| s.cluster_ip)
        .expect("the API server allocates a ClusterIP");
    let gw = gateway("edge");
    let gws: Api<Gateway> = Api::namespaced(e.client.clone(), "apps");
    gws.create(&PostParams::default(), &gw)
        .await
        .expect("create");

    // GCP is provisioned; the VM never reports (nothing boots it) and no pod runs the link.
    let gw = wait_gw(&e, "every GCP resource exists", |g| {
        g.status
            .as_ref()
            .and_then(|s| s.gcp.as_ref())
            .is_some_and(|s| s.instance.is_some() && s.iam_bound && s.firewall.is_some())
    })
    .await;
    assert_eq!(
        condition(&gw, conditions::TUNNEL_READY),
        Some(("False".into(), "Provisioning".into()))
    );
    assert_eq!(
        condition(&gw, conditions::READY),
        Some(("False".into(), "Provisioning".into()))
    );
    assert!(
        gw.finalizers()
            .iter()
            .any(|f| f == "wgnet.dev/gateway-teardown")
    );
    let status = gw.status.clone().expect("status");
    assert_eq!(status.forwards_ready.as_deref(), Some("1/1"));
    let kinds: Vec<&str> = e.emu.inventory().iter().map(|i| i.kind).collect();
    for k in [
        "network",
        "firewall",
        "address",
        "instance",
        "serviceAccount",
        "secret",
    ] {
        assert!(kinds.contains(&k), "{k} in {kinds:?}");
    }

    // The link's objects: its config names the Service's ClusterIP, its policy allows the
    // Service port and the named targetPort, and the key it reads is its own only.
    let cm = Api::<ConfigMap>::namespaced(e.client.clone(), "apps")
        .get("edge-link")
        .await
        .expect("config map");
    let doc = cm
        .data
        .and_then(|d| d.get("config.json").cloned())
        .expect("config.json");
    let parsed: wgnet_link::config::LinkDocument =
        serde_json::from_str(&doc).expect("the link's own document type reads it");
    let wgnet_link::config::LinkDocument::Ingress(ingress) = parsed else {
        panic!("an ingress document: {doc}")
    };
    assert_eq!(ingress.forwards.len(), 1);
    assert_eq!(ingress.forwards[0].cluster_ip.to_string(), cluster_ip);
    assert_eq!(
        Some(ingress.peer.endpoint.clone()),
        status.address.as_ref().map(|a| format!("{a}:51820"))
    );
    let np = Api::<NetworkPolicy>::namespaced(e.client.clone(), "apps")
        .get("edge-link")
        .await
        .expect("network policy");
    let np = serde_json::to_string(&np.spec).expect("json");
    assert!(
        np.contains("\"port\":80") && np.contains("\"port\":\"http\""),
        "{np}"
    );
    let key = Api::<Secret>::namespaced(e.client.clone(), "apps")
        .get("edge-link-key")
        .await
        .expect("link key");
    assert_eq!(
        key.data.map(|d| d.keys().cloned().collect::<Vec<_>>()),
        Some(vec!["private-key".to_owned()])
    );

    // Two replicas bring a disruption budget; back to one, it is pruned.
    let pdbs = Api::<PodDisruptionBudget>::namespaced(e.client.clone(), "apps");
    gws.patch(
        "edge",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"link": {"replicas": 2}}})),
    )
    .await
    .expect("scale up");
    let budget = until(Duration::from_secs(30), || async {
        pdbs.get_opt("edge-link").await.ok().flatten()
    })
    .await;
    assert!(budget.is_some(), "no budget for two replicas");
    gws.patch(
        "edge",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"link": {"replicas": 1}}})),
    )
    .await
    .expect("scale down");
    let pruned = until(Duration::from_secs(30), || async {
        pdbs.get_opt("edge-link")
            .await
            .ok()
            .and_then(|p| p.is_none().then_some(()))
    })
    .await;
    assert!(pruned.is_some(), "the budget outlived the second replica");
    let d = Api::<Deployment>::namespaced(e.client.clone(), "apps")
        .get("edge-link")
        .await
        .expect("deployment");
    assert_eq!(d.spec.and_then(|s| s.replicas), Some(1));

    // Deletion drains GCP before the finalizer goes.
    gws.delete("edge", &DeleteParams::default())
        .await
        .expect("delete");
    let gone = until(Duration::from_secs(90), || async {
        gws.get_opt("edge")
            .await
            .ok()
            .and_then(|g| g.is_none().then_some(()))
    })
    .await;
    assert!(
        gone.is_some(),
        "the Gateway was never released; {}",
        inventory_of(&e.emu)
    );
    let left: Vec<String> = e
        .emu
        .inventory()
        .into_iter()
        .map(|i| format!("{} {}", i.kind, i.name))
        .collect();
    assert!(left.is_empty(), "left in GCP: {left:?}");
}

/// Issue 23, goal 5: a pass whose link objects have not changed applies none of them (at
/// thousands of Gateways, a dozen passes each, those applies saturated the API server), and
/// passes that watches start moments apart read the VM's report once; an object someone
/// else edits is still applied again by the pass the edit starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passes_send_only_what_changed_and_repair_what_others_edit() {
    let (e, _) = waiting_gateway().await;
    // Each pass reads the link's Lease once; applies are patches in the Gateway's namespace.
    let count = |verb: &str, resource: &str| operator_requests(&e, verb, resource);
    let applies = count("patch", "*");

    // Passes that watches start in quick succession (here: edits of the forwarded
    // Service, which change nothing the link is given) apply nothing, and reuse the VM
    // report the first of them read instead of each reading it.
    let reports = || {
        e.emu
            .request_log()
            .iter()
            .filter(|c| c.path.contains("getGuestAttributes"))
            .count()
    };
    let (passes, read) = (count("get", "coordination.k8s.io/leases"), reports());
    let services = Api::<Service>::namespaced(e.client.clone(), "apps");
    for i in 0..5 {
        let before = count("get", "coordination.k8s.io/leases");
        services
            .patch(
                "web",
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"labels": {"touch": i.to_string()}}})),
            )
            .await
            .expect("touch the Service");
        let ran = until(Duration::from_secs(30), || async {
            (count("get", "coordination.k8s.io/leases") > before).then_some(())
        })
        .await;
        assert!(ran.is_some(), "the Service edit started no pass");
    }
    let (passes, read) = (
        count("get", "coordination.k8s.io/leases") - passes,
        reports() - read,
    );
    assert!(
        read < passes,
        "{passes} passes read the VM's report {read} times"
    );
    assert_eq!(
        count("patch", "*"),
        applies,
        "passes over unchanged link objects applied them again"
    );

    // Someone edits the link's config: the watch sees it, and the pass it starts puts the
    // operator's document back.
    let cms = Api::<ConfigMap>::namespaced(e.client.clone(), "apps");
    let doc = |cm: ConfigMap| cm.data.and_then(|d| d.get("config.json").cloned());
    let want = doc(cms.get("edge-link").await.expect("config map"));
    assert!(want.is_some());
    cms.patch(
        "edge-link",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"config.json": "{}"}})),
    )
    .await
    .expect("edit");
    let repaired = until(Duration::from_secs(30), || async {
        let now = doc(cms.get("edge-link").await.ok()?);
        (now == want).then_some(())
    })
    .await;
    assert!(repaired.is_some(), "the edited config was never repaired");

    // Someone deletes the link's Role (a kind nothing but its watch reports, and the
    // memo would otherwise trust for ten resync periods): the pass the deletion starts
    // puts it back.
    let roles = Api::<k8s_openapi::api::rbac::v1::Role>::namespaced(e.client.clone(), "apps");
    roles
        .delete("edge-link", &DeleteParams::default())
        .await
        .expect("delete the Role");
    let back = until(Duration::from_secs(30), || async {
        roles.get_opt("edge-link").await.ok().flatten()
    })
    .await;
    assert!(back.is_some(), "the deleted Role was never put back");
}

/// A Gateway waiting for its VM (every GCP resource exists, the VM never reports) is
/// looked at with growing patience; while no watch brings news of it, those looks read
/// its VM's report and nothing from the cluster. A changed report is seen by the next
/// look and reaches status through a full pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polls_of_a_gateway_waiting_for_its_vm_read_only_the_vms_report() {
    let (e, gw) = waiting_gateway().await;
    // Every full pass reads the link's Lease once.
    let lease_reads = || operator_requests(&e, "get", "coordination.k8s.io/leases");
    let m = &e.metrics;
    let (polls, passes, leases) = (m.polls("Gateway"), m.reconciles("Gateway"), lease_reads());
    let polled = until(Duration::from_secs(60), || async {
        (m.polls("Gateway") >= polls + 3).then_some(())
    })
    .await;
    assert!(
        polled.is_some(),
        "no three polls in 60 s: {} passes, {} of them polls",
        m.reconciles("Gateway") - passes,
        m.polls("Gateway") - polls
    );
    let polls = m.polls("Gateway") - polls;
    let full = m.reconciles("Gateway") - passes - polls;
    let leases = lease_reads() - leases;
    // One more read than full passes counted: a pass may be between the two.
    assert!(
        leases as u64 <= full + 1,
        "{polls} polls and {full} full passes read the Lease {leases} times"
    );

    let instance = gw
        .status
        .and_then(|s| s.gcp)
        .and_then(|g| g.instance)
        .expect("instance");
    e.emu.put_guest_attribute_for_test(
        PROJECT,
        "us-central1-a",
        &instance,
        "wgnet/state",
        "booting",
    );
    wait_gw(&e, "the VM's new report in status", |g| {
        g.status
            .as_ref()
            .and_then(|s| s.gcp.as_ref())
            .is_some_and(|s| s.vm_state.as_deref() == Some("booting"))
    })
    .await;
}

/// A Gateway `edge` of `apps` whose GCP resources all exist and whose VM never reports,
/// under a resync longer than any test: only its patience's looks (every 2 s at first)
/// and the passes that watches start run.
async fn waiting_gateway() -> (Env, Gateway) {
    let e = env_with_resync(
        Policy::new(Projects::Only(vec![PROJECT.into()])),
        Duration::from_secs(600),
    )
    .await;
    apps_with_web(&e).await;
    Api::<Gateway>::namespaced(e.client.clone(), "apps")
        .create(&PostParams::default(), &gateway("edge"))
        .await
        .expect("create");
    let gw = wait_gw(&e, "every GCP resource exists", |g| {
        g.status
            .as_ref()
            .and_then(|s| s.gcp.as_ref())
            .is_some_and(|s| s.instance.is_some() && s.pending_operations.is_empty())
    })
    .await;
    (e, gw)
}

/// The operator's requests so far with `verb` on `resource` in namespace `apps` (`*`: the
/// link's objects, that is anything but Gateways and Events).
fn operator_requests(e: &Env, verb: &str, resource: &str) -> usize {
    let user = format!("system:serviceaccount:{OPERATOR_NAMESPACE}:{OPERATOR_SA}");
    e.cp.audit()
        .iter()
        .filter(|r| {
            r.user == user
                && r.verb == verb
                && r.namespace == "apps"
                && match resource {
                    "*" => {
                        !r.resource.starts_with("wgnet.dev/") && !r.resource.starts_with("events.")
                    }
                    _ => r.resource == resource,
                }
        })
        .count()
}

/// A Gateway of `apps` named `name` forwarding 8080 to `web`.
fn gateway(name: &str) -> Gateway {
    serde_json::from_value(json!({
        "apiVersion": "wgnet.dev/v1alpha1", "kind": "Gateway",
        "metadata": {"name": name, "namespace": "apps"},
        "spec": {
            "gcp": {"projectID": PROJECT, "region": "us-central1", "zone": "us-central1-a"},
            "forwards": [{"port": 8080, "service": "web", "targetPort": 80}]
        }
    }))
    .expect("gateway")
}

/// Waits (bounded) until Gateway `name`'s VM is recorded.
async fn provisioned(gws: &Api<Gateway>, name: &str) {
    let done = until(Duration::from_secs(60), || async {
        gws.get_opt(name).await.ok().flatten().filter(|g| {
            g.status
                .as_ref()
                .and_then(|s| s.gcp.as_ref())
                .is_some_and(|s| s.instance.is_some() && s.iam_bound)
        })
    })
    .await;
    assert!(done.is_some(), "{name} was never provisioned");
}

/// Releases Gateway `name` without deleting its GCP resources (the abandon annotation).
async fn abandon(gws: &Api<Gateway>, name: &str) {
    gws.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(
            json!({"metadata": {"annotations": {"wgnet.dev/abandon-cloud-resources": "true"}}}),
        ),
    )
    .await
    .expect("annotate");
    gws.delete(name, &DeleteParams::default())
        .await
        .expect("delete");
    let gone = until(Duration::from_secs(60), || async {
        gws.get_opt(name)
            .await
            .ok()
            .and_then(|g| g.is_none().then_some(()))
    })
    .await;
    assert!(gone.is_some(), "{name} was never released");
}

/// Issue 19, item 2: the orphan sweep deletes what no Gateway uses, and never what a live
/// Gateway uses. `edge` is recreated under its old name (a new uid) and adopts the
/// resources its predecessor left, still labelled with the old uid; `gone` is not
/// recreated. The sweep removes `gone`'s resources and sends no delete for `edge`'s. Before,
/// it picked orphans by uid and deleted `edge`'s VM, account, secret, firewall and address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweep_deletes_orphans_and_never_a_recreated_gateways_resources() {
    let e = env().await;
    apps_with_web(&e).await;
    let gws: Api<Gateway> = Api::namespaced(e.client.clone(), "apps");
    for name in ["edge", "gone"] {
        gws.create(&PostParams::default(), &gateway(name))
            .await
            .expect("create");
        provisioned(&gws, name).await;
    }
    let resource = |name: &str| {
        wgnet_cloud::GatewayId {
            cluster: CLUSTER.into(),
            namespace: "apps".into(),
            name: name.into(),
            uid: String::new(),
        }
        .resource_name()
    };
    let (edge, gone) = (resource("edge"), resource("gone"));
    for name in ["edge", "gone"] {
        abandon(&gws, name).await;
    }
    e.emu.clear_request_log();
    gws.create(&PostParams::default(), &gateway("edge"))
        .await
        .expect("recreate");
    provisioned(&gws, "edge").await;

    // Sweeps run every resync (5 s here): wait until one has removed `gone`.
    let swept = until(Duration::from_secs(90), || async {
        let left = e.emu.inventory().iter().any(|i| i.name.contains(&gone));
        (!left).then_some(())
    })
    .await;
    assert!(
        swept.is_some(),
        "the orphan was never swept; {}",
        inventory_of(&e.emu)
    );
    let deletes: Vec<String> = e
        .emu
        .request_log()
        .into_iter()
        .filter(|c| c.method == "DELETE" && c.path.contains(&edge))
        .map(|c| c.path)
        .collect();
    assert!(
        deletes.is_empty(),
        "the live Gateway's resources were deleted: {deletes:?}"
    );
    for kind in ["instance", "address", "secret", "firewall"] {
        assert!(
            e.emu
                .inventory()
                .iter()
                .any(|i| i.kind == kind && i.name.contains(&edge)),
            "edge's {kind} is gone"
        );
    }
}

/// Issue 19, item 3: the admin policy refuses, before anything is created, a machine type
/// outside the allowed ones, a DNS name outside the namespace's suffixes and a Gateway
/// beyond the namespace's limit; the refusal names the rule. Deleting the older Gateway
/// lets the newest in without an edit. Before, every one of them was provisioned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_policy_refuses_spending_and_names_before_anything_is_created() {
    let mut policy = Policy::new(Projects::Only(vec![PROJECT.into()]));
    policy.max_gateways_per_namespace = 1;
    policy
        .dns_suffixes
        .insert("apps".into(), vec!["apps.example.test".into()]);
    let e = env_with(policy).await;
    apps_with_web(&e).await;
    let gws: Api<Gateway> = Api::namespaced(e.client.clone(), "apps");
    let create = |g: Gateway| {
        let gws = gws.clone();
        async move {
            gws.create(&PostParams::default(), &g)
                .await
                .expect("create")
        }
    };
    create(gateway("a-first")).await;
    provisioned(&gws, "a-first").await;

    let mut big = gateway("big");
    big.spec.gcp.machine_type = "n2-standard-64".into();
    create(big).await;
    let mut named = gateway("named");
    named.spec.dns_hostnames = vec!["www.bank.example".into()];
    create(named).await;
    create(gateway("z-extra")).await;

    let refused = |name: &'static str| {
        let gws = gws.clone();
        async move {
            until(Duration::from_secs(60), || async {
                let g = gws.get_opt(name).await.ok().flatten()?;
                let c = g
                    .status?
                    .conditions
                    .into_iter()
                    .find(|c| c.type_ == conditions::READY && c.reason == "PolicyRefused")?;
                Some(c.message)
            })
            .await
            .unwrap_or_else(|| panic!("{name} was not refused by the policy"))
        }
    };
    let m = refused("big").await;
    assert!(
        m.contains("spec.gcp.machineType") && m.contains("--allowed-machine-types"),
        "{m}"
    );
    let m = refused("named").await;
    assert!(
        m.contains("spec.dnsHostnames") && m.contains("www.bank.example"),
        "{m}"
    );
    let m = refused("z-extra").await;
    assert!(m.contains("--max-gateways-per-namespace"), "{m}");

    // Nothing of the refused ones exists: one VM, one address, one key Secret.
    let inv = e.emu.inventory();
    let count = |kind: &str| inv.iter().filter(|i| i.kind == kind).count();
    assert_eq!(
        (count("instance"), count("address"), count("secret")),
        (1, 1, 1),
        "{}",
        inventory_of(&e.emu)
    );
    let secrets = Api::<Secret>::namespaced(e.client.clone(), "apps")
        .list(&Default::default())
        .await
        .expect("secrets");
    let names: Vec<String> = secrets.items.iter().map(|s| s.name_any()).collect();
    assert!(
        names.iter().all(|n| n.starts_with("a-first")),
        "only the admitted Gateway has a key Secret: {names:?}"
    );

    // The older Gateway goes: the newest is admitted without an edit of its own.
    for name in ["a-first", "big", "named"] {
        gws.delete(name, &DeleteParams::default())
            .await
            .expect("delete");
    }
    provisioned(&gws, "z-extra").await;
}

/// Rights the operator holds without sending them itself: Kubernetes refuses to let it grant
/// the link's Role anything it does not hold (RBAC escalation check), its own election
/// Lease is written only with --leader-elect (exercised by operator_process's two-replica
/// test), and an admission plugin checks the finalizers right. Each is `verb group/resource`.
const HELD_FOR_OTHERS: &[&str] = &[
    "create coordination.k8s.io/leases",
    "update coordination.k8s.io/leases",
    "patch coordination.k8s.io/leases",
    // Checked by the OwnerReferencesPermissionEnforcement admission plugin, which a cluster
    // may enable, when a child names its owner with blockOwnerDeletion; never a request.
    "update wgnet.dev/gateways/finalizers",
    "update wgnet.dev/egressgateways/finalizers",
];

/// Issue 19, item 10: the chart's ClusterRole grants exactly what the operator asks of the
/// API server (as the real API server's audit log records it over a Gateway's and an
/// EgressGateway's whole life, with DNS, a PDB and their pruning), plus [`HELD_FOR_OTHERS`].
/// Before, it granted verbs the operator never sends (delete on Secrets, ConfigMaps,
/// Deployments, ServiceAccounts, Roles; core-group Events).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chart_grants_exactly_what_the_operator_uses() {
    use wgnet_tests::gcp::{Fault, FaultAction};
    let mut policy = Policy::new(Projects::Only(vec![PROJECT.into()]));
    policy.max_gateways_per_namespace = 1;
    let e = env_with(policy).await;
    e.cp.install_crd(
        &wgnet_tests::repo_root().join("testdata/crds/dnsendpoints.externaldns.k8s.io.yaml"),
    )
    .await
    .expect("DNSEndpoint CRD");
    apps_with_web(&e).await;
    // A second namespace the Gateway forwards into (its consent label is read).
    let other: Namespace =
        serde_json::from_value(json!({"metadata": {"name": "other"}})).expect("ns");
    Api::<Namespace>::all(e.client.clone())
        .create(&PostParams::default(), &other)
        .await
        .expect("namespace");
    // A Lease naming a holder, as a running link would: the operator looks for its pod.
    let lease: k8s_openapi::api::coordination::v1::Lease = serde_json::from_value(json!({
        "metadata": {"name": "edge-link"},
        "spec": {"holderIdentity": "edge-link-0", "leaseDurationSeconds": 15}
    }))
    .expect("lease");
    Api::<k8s_openapi::api::coordination::v1::Lease>::namespaced(e.client.clone(), "apps")
        .create(&PostParams::default(), &lease)
        .await
        .expect("lease");
    // The first VM inserts are denied.
    e.emu.add_fault(Fault {
        method: Some("POST".into()),
        path_contains: "/instances".into(),
        remaining: Some(3),
        action: FaultAction::Deny("Required 'compute.instances.create' permission".into()),
    });
    let gws: Api<Gateway> = Api::namespaced(e.client.clone(), "apps");
    let mut gw = gateway("edge");
    gw.spec.dns_hostnames = vec!["edge.example.test".into()];
    gw.spec.link.replicas = 2;
    gw.spec.forwards.push(
        serde_json::from_value(json!({"port": 8081, "service": "web", "namespace": "other"}))
            .expect("forward"),
    );
    gws.create(&PostParams::default(), &gw)
        .await
        .expect("create");
    provisioned(&gws, "edge").await;
    // A Gateway beyond the namespace's limit is refused on every retry: the same Warning
    // again is a patch of the Event's series.
    gws.create(&PostParams::default(), &gateway("z-extra"))
        .await
        .expect("create");
    let user = format!("system:serviceaccount:{OPERATOR_NAMESPACE}:{OPERATOR_SA}");
    let repeated = until(Duration::from_secs(60), || async {
        e.cp.audit()
            .iter()
            .any(|r| r.user == user && r.verb == "patch" && r.resource == "events.k8s.io/events")
            .then_some(())
    })
    .await;
    assert!(repeated.is_some(), "a repeated refusal patches its Event");
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(e.client.clone(), "apps");
    let pdb = until(Duration::from_secs(60), || async {
        pdbs.get_opt("edge-link").await.ok().flatten()
    })
    .await;
    assert!(pdb.is_some(), "two replicas get a PDB");
    // One replica and no DNS names: the PDB and the DNSEndpoint are pruned.
    gws.patch(
        "edge",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"dnsHostnames": [], "link": {"replicas": 1}}})),
    )
    .await
    .expect("edit");
    let pruned = until(Duration::from_secs(60), || async {
        pdbs.get_opt("edge-link")
            .await
            .ok()
            .and_then(|p| p.is_none().then_some(()))
    })
    .await;
    assert!(pruned.is_some(), "the PDB is pruned");

    // An EgressGateway, Ready as far as the operator goes (no node runs its pod).
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "vpn"},
        "stringData": {"wg0.conf": format!(
            "[Interface]\nPrivateKey = {K}\nAddress = 10.8.0.2/32\n[Peer]\nPublicKey = {K}\nEndpoint = 203.0.113.40:51820\nAllowedIPs = 10.0.0.0/24\n",
            K = "dwdtCnMYpX08FsFyUbJmRd9ML4frwJkqsXf7pR25LCo=")}
    }))
    .expect("secret");
    Api::<Secret>::namespaced(e.client.clone(), "apps")
        .create(&PostParams::default(), &secret)
        .await
        .expect("vpn secret");
    let egw: wgnet_operator::api::EgressGateway = serde_json::from_value(json!({
        "apiVersion": "wgnet.dev/v1alpha1", "kind": "EgressGateway",
        "metadata": {"name": "corp", "namespace": "apps"},
        "spec": {"configSecretRef": {"name": "vpn"},
                 "forwards": [{"name": "db", "port": 1434, "servicePort": 1433, "targetHost": "10.0.0.5", "targetPort": 1433}]}
    }))
    .expect("egw");
    let egws: Api<wgnet_operator::api::EgressGateway> = Api::namespaced(e.client.clone(), "apps");
    egws.create(&PostParams::default(), &egw)
        .await
        .expect("create egw");
    let svc = until(Duration::from_secs(60), || async {
        Api::<Service>::namespaced(e.client.clone(), "apps")
            .get_opt("corp")
            .await
            .ok()
            .flatten()
    })
    .await;
    // Issue 20: the Service's port may differ from the link's.
    let ports = svc
        .and_then(|s| s.spec)
        .and_then(|s| s.ports)
        .expect("the EgressGateway's Service");
    assert_eq!(
        (ports[0].port, ports[0].target_port.clone()),
        (
            1433,
            Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(1434))
        )
    );

    // Issue 20, part 1: a LoadBalancer Service of the operator's class gets a Gateway (a
    // server-side apply that creates it), a condition in its status and a finalizer; a
    // type change releases it: the Gateway is deleted, then the finalizer and the status.
    let lb: Service = serde_json::from_value(json!({
        "metadata": {"name": "lb", "namespace": "other"},
        "spec": {"type": "LoadBalancer", "loadBalancerClass": "wgnet.dev/gateway",
                 "selector": {"app": "lb"}, "ports": [{"port": 443}]}
    }))
    .expect("service");
    let others: Api<Service> = Api::namespaced(e.client.clone(), "other");
    others
        .create(&PostParams::default(), &lb)
        .await
        .expect("create the LoadBalancer Service");
    let lb_condition = |s: &Service| {
        s.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.type_ == "wgnet.dev/GatewayReady"))
            .map(|c| (c.status.clone(), c.reason.clone()))
    };
    let other_gws: Api<Gateway> = Api::namespaced(e.client.clone(), "other");
    let served = until(Duration::from_secs(60), || async {
        let svc = others.get("lb").await.ok()?;
        let gw = other_gws.get_opt("lb").await.ok()??;
        (svc.finalizers()
            .iter()
            .any(|f| f == "wgnet.dev/loadbalancer")
            && lb_condition(&svc).is_some()
            && gw.spec.forwards.len() == 1)
            .then_some(lb_condition(&svc))
    })
    .await;
    assert_eq!(
        served.flatten(),
        Some(("False".to_owned(), "Provisioning".to_owned())),
        "the Service is claimed and says its Gateway is provisioning"
    );
    others
        .patch(
            "lb",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"spec": {"type": "ClusterIP", "loadBalancerClass": null,
                "externalTrafficPolicy": null, "allocateLoadBalancerNodePorts": null}}),
            ),
        )
        .await
        .expect("change the type");
    let released = until(Duration::from_secs(90), || async {
        let svc = others.get("lb").await.ok()?;
        let gone = other_gws.get_opt("lb").await.ok()?.is_none();
        (gone
            && !svc
                .finalizers()
                .iter()
                .any(|f| f == "wgnet.dev/loadbalancer")
            && lb_condition(&svc).is_none())
        .then_some(())
    })
    .await;
    assert!(
        released.is_some(),
        "a type change deletes the Gateway and releases the Service:\n{}",
        inventory_of(&e.emu)
    );
    // Releasing clears the status and then the finalizer, each write on the object the
    // previous one returned: no write of the operator is refused as a conflict.
    let conflicts: Vec<String> =
        e.cp.audit()
            .iter()
            .filter(|r| {
                r.user == format!("system:serviceaccount:{OPERATOR_NAMESPACE}:{OPERATOR_SA}")
                    && r.resource.ends_with("services")
                    && r.code == 409
            })
            .map(|r| format!("{} {}", r.verb, r.resource))
            .collect();
    assert!(
        conflicts.is_empty(),
        "Service writes refused as conflicts: {conflicts:?}"
    );

    egws.delete("corp", &DeleteParams::default())
        .await
        .expect("delete egw");
    for name in ["edge", "z-extra"] {
        gws.delete(name, &DeleteParams::default())
            .await
            .expect("delete");
    }
    let gone = until(Duration::from_secs(60), || async {
        let left = gws.list(&Default::default()).await.ok()?;
        left.items.is_empty().then_some(())
    })
    .await;
    assert!(gone.is_some(), "the Gateways are released");

    let mut used = std::collections::BTreeSet::new();
    let mut denied = std::collections::BTreeSet::new();
    for r in e.cp.audit().iter().filter(|r| r.user == user) {
        used.insert(format!("{} {}", r.verb, r.resource));
        // A server-side apply that creates its object answers 201, and the API server
        // authorizes it as a create as well as a patch.
        if r.verb == "patch" && r.code == 201 {
            used.insert(format!("create {}", r.resource));
        }
        if r.code == 403 {
            denied.insert(format!("{} {} in {:?}", r.verb, r.resource, r.namespace));
        }
    }
    assert!(denied.is_empty(), "the chart's RBAC denies: {denied:#?}");
    let docs = wgnet_tests::chart::render(
        "wgnet",
        OPERATOR_NAMESPACE,
        &[
            "dns.enabled=true",
            &format!("gcp.allowedProjects={{{PROJECT}}}"),
        ],
    )
    .expect("render");
    let role: k8s_openapi::api::rbac::v1::ClusterRole =
        wgnet_tests::chart::one(&docs, "ClusterRole").expect("ClusterRole");
    let mut granted = std::collections::BTreeSet::new();
    for rule in role.rules.unwrap_or_default() {
        for g in rule.api_groups.unwrap_or_default() {
            for r in rule.resources.clone().unwrap_or_default() {
                for v in &rule.verbs {
                    granted.insert(format!("{v} {g}/{r}"));
                }
            }
        }
    }
    let unused: Vec<&String> = granted
        .iter()
        .filter(|g| !used.contains(*g) && !HELD_FOR_OTHERS.contains(&g.as_str()))
        .collect();
    assert!(
        unused.is_empty(),
        "granted but never used: {unused:#?}\nused: {used:#?}"
    );
}

/// Issue 20, part 4: DNS records end to end on the real API server with external-dns's
/// CRD: the DNSEndpoint carries an A record of the Gateway's public IP, follows the IP when
/// it changes (an ephemeral address, the VM deleted out of band and recreated), and is
/// removed when `dnsHostnames` is cleared and, through its owner, with the Gateway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_records_follow_the_address_and_go_with_the_names_and_the_gateway() {
    use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
    let e = env().await;
    e.cp.install_crd(
        &wgnet_tests::repo_root().join("testdata/crds/dnsendpoints.externaldns.k8s.io.yaml"),
    )
    .await
    .expect("DNSEndpoint CRD");
    apps_with_web(&e).await;
    let gws: Api<Gateway> = Api::namespaced(e.client.clone(), "apps");
    let mut gw = gateway("edge");
    gw.spec.dns_hostnames = vec![
        "edge.apps.example.test".into(),
        "www.apps.example.test".into(),
    ];
    gw.spec.gcp.reserved_ip = false;
    gws.create(&PostParams::default(), &gw)
        .await
        .expect("create");
    let gvk = GroupVersionKind::gvk("externaldns.k8s.io", "v1alpha1", "DNSEndpoint");
    let eps: Api<DynamicObject> = Api::namespaced_with(
        e.client.clone(),
        "apps",
        &ApiResource::from_gvk_with_plural(&gvk, "dnsendpoints"),
    );
    // The records, once they name `want` (any address when `None`).
    let records = |want: Option<String>| {
        let eps = eps.clone();
        let gws = gws.clone();
        async move {
            until(Duration::from_secs(60), || async {
                let address = gws.get("edge").await.ok()?.status?.address?;
                if want.as_ref().is_some_and(|w| *w == address) {
                    return None;
                }
                let ep = eps.get_opt("edge").await.ok().flatten()?;
                let endpoints = ep.data["spec"]["endpoints"].as_array()?.clone();
                let all_point_at_it = endpoints.len() == 2
                    && endpoints.iter().all(|r| {
                        r["recordType"] == "A" && r["targets"] == json!([address.clone()])
                    });
                all_point_at_it.then_some(address)
            })
            .await
        }
    };
    let first = records(None)
        .await
        .unwrap_or_else(|| panic!("no DNSEndpoint for the address\n{}", e.cp.describe()));

    // The VM is deleted out of band: recreated with a new ephemeral address, and the
    // records follow it.
    let g = gws.get("edge").await.expect("gateway");
    let instance = g
        .status
        .and_then(|s| s.gcp)
        .and_then(|g| g.instance)
        .expect("instance recorded");
    assert!(
        e.emu
            .remove_resource("instance", PROJECT, "us-central1-a", &instance)
    );
    let second = records(Some(first.clone()))
        .await
        .unwrap_or_else(|| panic!("the records never followed the new address from {first}"));
    assert_ne!(first, second);

    // No names: the record goes.
    gws.patch(
        "edge",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"dnsHostnames": []}})),
    )
    .await
    .expect("edit");
    let gone = until(Duration::from_secs(60), || async {
        eps.get_opt("edge")
            .await
            .ok()
            .and_then(|x| x.is_none().then_some(()))
    })
    .await;
    assert!(
        gone.is_some(),
        "the DNSEndpoint is removed when the names are"
    );

    // Names again, then the Gateway goes: its record goes with it.
    gws.patch(
        "edge",
        &PatchParams::default(),
        &Patch::Merge(
            json!({"spec": {"dnsHostnames": ["edge.apps.example.test", "www.apps.example.test"]}}),
        ),
    )
    .await
    .expect("edit");
    records(None).await.expect("published again");
    gws.delete("edge", &DeleteParams::default())
        .await
        .expect("delete");
    let gone = until(Duration::from_secs(90), || async {
        let ep = eps.get_opt("edge").await.ok()?;
        let gw = gws.get_opt("edge").await.ok()?;
        (ep.is_none() && gw.is_none()).then_some(())
    })
    .await;
    assert!(gone.is_some(), "the DNSEndpoint goes with the Gateway");
    assert!(e.emu.inventory().is_empty(), "{}", inventory_of(&e.emu));
}

/// Issue 20, part 1, against a hostile or careless neighbour: a LoadBalancer Service named
/// like an existing Gateway never takes that Gateway over (`NameCollision` on the Service,
/// the Gateway untouched) and, when the Service is deleted, never deletes it. The operator
/// may delete Gateways (RBAC cannot scope it to its own), so this is the guarantee.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_balancer_service_never_takes_or_deletes_a_gateway_it_does_not_own() {
    let e = env().await;
    apps_with_web(&e).await;
    let gws: Api<Gateway> = Api::namespaced(e.client.clone(), "apps");
    gws.create(&PostParams::default(), &gateway("edge"))
        .await
        .expect("the user's Gateway");
    let before = wait_gw(&e, "the user's Gateway provisioning", |g| {
        g.status.is_some()
    })
    .await;
    let svcs: Api<Service> = Api::namespaced(e.client.clone(), "apps");
    let lb: Service = serde_json::from_value(json!({
        "metadata": {"name": "edge"},
        "spec": {"type": "LoadBalancer", "loadBalancerClass": "wgnet.dev/gateway",
                 "selector": {"app": "edge"}, "ports": [{"name": "a", "port": 443}, {"name": "b", "port": 444}]}
    }))
    .expect("service");
    svcs.create(&PostParams::default(), &lb)
        .await
        .expect("the LoadBalancer Service");
    let refused = until(Duration::from_secs(60), || async {
        let svc = svcs.get("edge").await.ok()?;
        let c = svc
            .status?
            .conditions?
            .into_iter()
            .find(|c| c.type_ == "wgnet.dev/GatewayReady")?;
        (c.reason == "NameCollision").then_some(c.message)
    })
    .await
    .unwrap_or_else(|| panic!("no NameCollision on the Service\n{}", e.cp.describe()));
    assert!(refused.contains("Gateway named \"edge\""), "{refused}");
    let after = gws.get("edge").await.expect("the user's Gateway");
    assert_eq!(after.spec, before.spec, "the Gateway's spec is untouched");
    assert!(after.owner_references().is_empty(), "no owner was added");
    assert!(after.labels().get("wgnet.dev/service").is_none());

    svcs.delete("edge", &DeleteParams::default())
        .await
        .expect("delete the Service");
    let gone = until(Duration::from_secs(60), || async {
        svcs.get_opt("edge")
            .await
            .ok()
            .and_then(|s| s.is_none().then_some(()))
    })
    .await;
    assert!(gone.is_some(), "the Service is released");
    let kept = gws.get("edge").await.expect("the user's Gateway survives");
    assert!(
        kept.metadata.deletion_timestamp.is_none(),
        "and is not being deleted"
    );
}

/// The operator's event recorder against the real API server: a repeat within the window
/// patches the first Event's series instead of creating another; a different reason is
/// another Event; a note longer than events.k8s.io/v1 allows is cut, not refused; a series
/// whose Event was deleted starts a new Event. It remembers one small entry per series.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_repeat_as_series_and_long_notes_are_cut() {
    use k8s_openapi::api::core::v1::ObjectReference;
    use k8s_openapi::api::events::v1::Event;
    use wgnet_operator::events::{NOTE_LIMIT, Note, Recorder};
    let cp = ControlPlane::start(controlplane::Options {
        bind: std::net::Ipv4Addr::LOCALHOST,
        controllers: false,
    })
    .await
    .unwrap_or_else(|e| panic!("control plane: {e}"));
    let client = cp.admin_client().await.expect("admin client");
    let regarding = ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("ConfigMap".into()),
        namespace: Some("default".into()),
        name: Some("edge".into()),
        uid: Some("6c1d2f6e-0000-4000-8000-000000000001".into()),
        ..ObjectReference::default()
    };
    let recorder = Recorder::new(client.clone(), "wgnet-operator", Some("test-0".into()));
    let note = |reason, note| Note {
        warning: true,
        reason,
        action: "Reconcile",
        note,
    };
    for detail in ["first", "second", "third"] {
        recorder
            .publish(note("Denied", detail), &regarding)
            .await
            .expect("publish");
    }
    let long = "x".repeat(3 * NOTE_LIMIT);
    recorder
        .publish(note("TooLong", &long), &regarding)
        .await
        .expect("a long note is published, cut");
    assert_eq!(recorder.remembered(), 2, "one entry per series");

    let events = Api::<Event>::namespaced(client.clone(), "default");
    let listed = events.list(&Default::default()).await.expect("list events");
    let of = |reason: &str| -> Vec<Event> {
        listed
            .items
            .iter()
            .filter(|e| e.reason.as_deref() == Some(reason))
            .cloned()
            .collect()
    };
    let denied = of("Denied");
    assert_eq!(denied.len(), 1, "repeats are one Event: {denied:?}");
    let series = denied[0].series.as_ref().expect("a series");
    assert_eq!(series.count, 3);
    assert_eq!(denied[0].note.as_deref(), Some("first"));
    assert_eq!(denied[0].reporting_instance.as_deref(), Some("test-0"));
    assert_eq!(denied[0].type_.as_deref(), Some("Warning"));
    let cut = of("TooLong");
    assert_eq!(cut.len(), 1);
    assert_eq!(cut[0].note.as_deref().map(str::len), Some(NOTE_LIMIT));
    assert!(cut[0].series.is_none());

    // The Event holding a series is deleted (its TTL, a person): the next repeat creates
    // a new one rather than failing on the patch.
    events
        .delete(&denied[0].name_any(), &DeleteParams::default())
        .await
        .expect("delete the Event");
    recorder
        .publish(note("Denied", "fourth"), &regarding)
        .await
        .expect("a repeat after the Event went");
    let again = events.list(&Default::default()).await.expect("list events");
    let denied: Vec<&Event> = again
        .items
        .iter()
        .filter(|e| e.reason.as_deref() == Some("Denied"))
        .collect();
    assert_eq!(denied.len(), 1, "{denied:?}");
    assert_eq!(denied[0].note.as_deref(), Some("fourth"));
    assert!(denied[0].series.is_none(), "a new Event, not a series");
}
