//! Pieces the in-process operator end-to-end tests share: the operator running against a
//! `Cluster`, and deleting an object until the API server no longer has it.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Service;
use kube::api::{DeleteParams, PostParams};
use kube::{Api, Client};
use serde_json::json;
use tokio::sync::watch;
use wgnet_operator::api::Gateway;
use wgnet_operator::children::LinkImage;
use wgnet_operator::controller::{self, Context, Settings};
use wgnet_operator::metrics::Metrics;
use wgnet_tests::cluster::Cluster;
use wgnet_tests::fixtures::{self, CLUSTER, INSTALL, PROJECT};

/// The operator running in-process against the cluster; stops on drop.
pub struct Operator {
    stop: watch::Sender<bool>,
    /// Its metrics.
    #[allow(dead_code)] // read by the Gateway tests only
    pub metrics: Arc<Metrics>,
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// Starts both controllers with `resync`, wired as `wgnet-operator` wires them: GCP is
/// read back (and the project's snapshot retaken) once per resync, so a test's short
/// resync also shortens how soon out-of-band changes are seen.
pub async fn operator_with(c: &Cluster, resync: Duration) -> Operator {
    let mut cloud = fixtures::cloud_for(&c.emu, c.key.clone(), INSTALL, "wgnet").await;
    cloud.set_verify_every(resync);
    let metrics = Arc::new(Metrics::default());
    let settings = Settings {
        link: LinkImage {
            image: "ghcr.io/wgnet-dev/wgnet-link:test".into(),
            pull_policy: "IfNotPresent".into(),
            privileged_init: true,
        },
        cluster_id: CLUSTER.into(),
        resync,
        policy: wgnet_operator::policy::Policy::new(wgnet_operator::policy::Projects::Only(vec![
            PROJECT.into(),
        ])),
        sweep_projects: vec![PROJECT.into()],
        sweep_min_age: Duration::ZERO,
        load_balancer: load_balancer_defaults(),
    };
    // The operator acts as the chart's ServiceAccount: the chart's RBAC authorizes it.
    let ctx = Arc::new(Context::new(
        c.operator_client().await,
        cloud,
        settings,
        metrics.clone(),
        Some("test".into()),
    ));
    let (stop, mut rx) = watch::channel(false);
    tokio::spawn(controller::run(ctx, async move {
        let _ = rx.wait_for(|s| *s).await;
    }));
    Operator { stop, metrics }
}

/// Deletes `name` and waits (at most `timeout`) until it is gone, finalizers included.
#[allow(dead_code)] // used by the Gateway tests only
pub async fn delete_and_wait<K>(c: &Cluster, api: &Api<K>, name: &str, timeout: Duration)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.delete(name, &DeleteParams::default())
        .await
        .expect("delete");
    let deadline = tokio::time::Instant::now() + timeout;
    while api.get_opt(name).await.expect("get").is_some() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name} never released\n{}",
            c.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The operator's LoadBalancer defaults in the tests: Gateways for LoadBalancer Services
/// go to the test project, in the emulator's region.
pub fn load_balancer_defaults() -> controller::loadbalancer::LoadBalancerSettings {
    controller::loadbalancer::LoadBalancerSettings {
        project: Some(PROJECT.into()),
        region: Some("us-central1".into()),
        zone: Some("us-central1-a".into()),
        ..Default::default()
    }
}

/// Creates a Service and returns its ClusterIP.
#[allow(dead_code)] // used by the Gateway tests only
pub async fn service(client: &Client, ns: &str, name: &str, ports: &[(i32, &str)]) -> String {
    let ports: Vec<_> = ports
        .iter()
        .map(|(p, proto)| json!({"name": format!("{}-{p}", proto.to_lowercase()), "port": p, "protocol": proto}))
        .collect();
    let svc: Service = serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": ns},
        "spec": {"selector": {"app": name}, "ports": ports}
    }))
    .expect("service");
    let svc = Api::<Service>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &svc)
        .await
        .expect("create service");
    svc.spec.and_then(|s| s.cluster_ip).expect("cluster IP")
}

/// A Gateway `name` in the tests' project and zone, keepalive 5 s, with `forwards`.
#[allow(dead_code)] // used by the Gateway tests only
pub fn gateway(name: &str, forwards: serde_json::Value) -> Gateway {
    serde_json::from_value(json!({
        "apiVersion": "wgnet.dev/v1alpha1",
        "kind": "Gateway",
        "metadata": {"name": name},
        "spec": {
            "gcp": {"projectID": PROJECT, "region": "us-central1", "zone": "us-central1-a"},
            "wireguard": {"keepalive": 5},
            "forwards": forwards
        }
    }))
    .expect("gateway")
}

/// Clients on the internet reach the `web` backend (TCP 80, UDP 53, behind Service `web`)
/// through `addr`'s forwards 8080 and 5353 within `timeout` each, and an unlisted port does
/// not answer.
#[allow(dead_code)] // used by the Gateway tests only
pub fn assert_serves_web(c: &Cluster, addr: &str, timeout: Duration) {
    let tcp = c
        .request("tcp", addr, 8080, timeout)
        .unwrap_or_else(|| panic!("TCP 8080 unanswered\n{}", c.logs()));
    assert!(tcp.starts_with("web tcp 80 from 10.244.0."), "{tcp}");
    let udp = c.request("udp", addr, 5353, timeout).expect("UDP 5353");
    assert!(udp.starts_with("web udp 53 from 10.244.0."), "{udp}");
    assert!(
        !c.answers("tcp", addr, 9999),
        "an unlisted port must not answer"
    );
}

/// Panics naming what GCP still holds, besides the operator's own service account.
#[allow(dead_code)] // used by the Gateway tests only
pub fn assert_gcp_holds_nothing(c: &Cluster) {
    let left: Vec<_> = c
        .emu
        .inventory()
        .into_iter()
        .filter(|i| !i.name.starts_with("wgnet-operator@"))
        .map(|i| format!("{} {}", i.kind, i.name))
        .collect();
    assert!(left.is_empty(), "GCP resources left behind: {left:?}");
}
