//! The chart's life in a real cluster: `helm install` runs the operator as the chart's own
//! pod (non-root, the GCP key from the chart's Secret volume, the emulator's endpoints as
//! values) and a Gateway becomes Ready through it; `helm upgrade` with a changed value
//! rolls the operator while the Gateway keeps serving, and the new pod reconciles; `helm
//! uninstall` removes the operator but leaves the CRDs, the Gateway and its data plane.
//! Needs root and `helm`.

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use wgnet_operator::api::{Gateway, conditions};
use wgnet_tests::chart;
use wgnet_tests::cluster::{Cluster, OPERATOR_NAMESPACE, OperatorRun, RELEASE};
use wgnet_tests::fixtures::PROJECT;
use wgnet_tests::gcp::LatencyProfile;
use wgnet_tests::until;

const DEPLOYMENT: &str = "wgnet-wireguard-gateway-operator";

/// The operator Deployment once it is fully rolled out (every replica updated and ready,
/// no old one left); `None` while it is not, or when it does not exist.
async fn rolled_out(client: &Client) -> Option<Deployment> {
    let d = Api::<Deployment>::namespaced(client.clone(), OPERATOR_NAMESPACE)
        .get_opt(DEPLOYMENT)
        .await
        .ok()??;
    let want = d.spec.as_ref()?.replicas.unwrap_or(1);
    let s = d.status.as_ref()?;
    let done = s.observed_generation >= d.metadata.generation
        && s.updated_replicas == Some(want)
        && s.ready_replicas == Some(want)
        && s.replicas == Some(want);
    done.then_some(d)
}

async fn ready_address(client: &Client) -> Option<String> {
    let gw = Api::<Gateway>::namespaced(client.clone(), "apps")
        .get("edge")
        .await
        .ok()?;
    let status = gw.status?;
    status
        .conditions
        .iter()
        .any(|c| c.type_ == conditions::READY && c.status == "True")
        .then_some(status.address)?
}

fn helm(args: &[&str]) {
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    chart::helm_cmd(&args).unwrap_or_else(|e| panic!("helm {}: {e}", args.join(" ")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn helm_install_upgrade_and_uninstall_keep_the_gateway_serving() {
    let c = Cluster::start_with(LatencyProfile::instant(), OperatorRun::ByTheChart).await;
    let first = until(Duration::from_secs(120), || rolled_out(&c.client))
        .await
        .unwrap_or_else(|| panic!("the chart's operator never became ready\n{}", c.logs()));
    let first_rs = first.status.and_then(|s| s.observed_generation);

    c.namespace("apps", &[]).await;
    let svc: Service = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]}
    }))
    .expect("service");
    Api::<Service>::namespaced(c.client.clone(), "apps")
        .create(&PostParams::default(), &svc)
        .await
        .expect("service");
    c.backend("apps", "web", "80", ",", "web").await;
    let gw: Gateway = serde_json::from_value(json!({
        "apiVersion": "wgnet.dev/v1alpha1", "kind": "Gateway",
        "metadata": {"name": "edge"},
        "spec": {
            "gcp": {"projectID": PROJECT, "region": "us-central1", "zone": "us-central1-a"},
            "wireguard": {"keepalive": 5},
            "forwards": [{"port": 8080, "service": "web", "targetPort": 80}]
        }
    }))
    .expect("gateway");
    let gws: Api<Gateway> = Api::namespaced(c.client.clone(), "apps");
    gws.create(&PostParams::default(), &gw)
        .await
        .expect("create gateway");
    let addr = until(Duration::from_secs(120), || ready_address(&c.client))
        .await
        .unwrap_or_else(|| panic!("never Ready through the chart's operator\n{}", c.logs()));
    let answer = c
        .request("tcp", &addr, 8080, Duration::from_secs(20))
        .unwrap_or_else(|| panic!("8080 unanswered\n{}", c.logs()));
    assert!(answer.starts_with("web tcp 80"), "{answer}");
    let operator_pods = |c: &Cluster| -> Vec<String> {
        c.kubelet
            .pods()
            .into_iter()
            .filter(|p| p.owner == format!("{OPERATOR_NAMESPACE}/{DEPLOYMENT}"))
            .map(|p| p.name)
            .collect()
    };
    let before = operator_pods(&c);
    assert_eq!(before.len(), 1, "{before:?}");
    // The chart's securityContext is applied: the operator is not root.
    let pid = c
        .kubelet
        .pods()
        .into_iter()
        .find(|p| p.name == before[0])
        .map(|p| p.pid)
        .expect("operator pod");
    let uid = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("Uid:")
                .map(|v| v.split_whitespace().next().unwrap_or("").to_owned())
        })
        .unwrap_or_default();
    assert_eq!(uid, "65532", "the operator runs as the chart's runAsUser");

    // helm upgrade with a changed value: the operator pod is replaced, the Gateway keeps
    // serving throughout, and the new pod reconciles a change.
    let chart_dir = chart::dir().display().to_string();
    let kubeconfig = c.cp.admin_kubeconfig().display().to_string();
    helm(&[
        "upgrade",
        RELEASE,
        &chart_dir,
        "--namespace",
        OPERATOR_NAMESPACE,
        "--kubeconfig",
        &kubeconfig,
        "--reuse-values",
        "--set",
        "logLevel=debug",
    ]);
    let upgraded = until(Duration::from_secs(120), || async {
        rolled_out(&c.client).await.filter(|d| {
            d.status.as_ref().and_then(|s| s.observed_generation) > first_rs
                && operator_pods(&c).iter().all(|p| !before.contains(p))
                && operator_pods(&c).len() == 1
        })
    })
    .await
    .unwrap_or_else(|| panic!("the upgrade never rolled out\n{}", c.logs()));
    let env = upgraded
        .spec
        .and_then(|s| s.template.spec)
        .map(|p| p.containers[0].env.clone().unwrap_or_default())
        .unwrap_or_default();
    assert!(
        env.iter()
            .any(|e| e.name == "RUST_LOG" && e.value.as_deref() == Some("debug")),
        "the changed value reached the pod: {env:?}"
    );
    assert!(
        c.answers("tcp", &addr, 8080),
        "the Gateway stopped serving across the upgrade\n{}",
        c.logs()
    );
    let mut gw = gws.get("edge").await.expect("get");
    gw.spec.forwards.push(
        serde_json::from_value(json!({"port": 9090, "service": "web", "targetPort": 80}))
            .expect("forward"),
    );
    gws.replace("edge", &PostParams::default(), &gw)
        .await
        .expect("add forward");
    let answer = c
        .request("tcp", &addr, 9090, Duration::from_secs(60))
        .unwrap_or_else(|| panic!("the new operator pod never applied 9090\n{}", c.logs()));
    assert!(answer.starts_with("web tcp 80"), "{answer}");

    // Everything the operator pod asked was allowed by the chart's RBAC.
    let user = format!("system:serviceaccount:{OPERATOR_NAMESPACE}:{DEPLOYMENT}");
    let denied: Vec<String> =
        c.cp.audit()
            .into_iter()
            .filter(|r| r.user == user && r.code == 403)
            .map(|r| format!("{} {} in {:?}", r.verb, r.resource, r.namespace))
            .collect();
    assert!(denied.is_empty(), "the chart's RBAC denies: {denied:#?}");
    assert!(
        c.cp.audit()
            .iter()
            .any(|r| r.user == user && r.verb == "watch"),
        "the audit log holds the operator pod's requests"
    );

    // helm uninstall: the operator goes; CRDs (Helm never deletes crds/) and the Gateway
    // stay, and its data plane keeps serving without the operator.
    helm(&[
        "uninstall",
        RELEASE,
        "--namespace",
        OPERATOR_NAMESPACE,
        "--kubeconfig",
        &kubeconfig,
        "--wait",
    ]);
    until(Duration::from_secs(60), || async {
        Api::<Deployment>::namespaced(c.client.clone(), OPERATOR_NAMESPACE)
            .get_opt(DEPLOYMENT)
            .await
            .ok()
            .and_then(|d| d.is_none().then_some(()))
    })
    .await
    .expect("the operator Deployment is gone");
    let crds: Api<CustomResourceDefinition> = Api::all(c.client.clone());
    for name in ["gateways.wgnet.dev", "egressgateways.wgnet.dev"] {
        assert!(
            crds.get_opt(name).await.expect("get crd").is_some(),
            "{name} was removed by helm uninstall"
        );
    }
    let gw = gws
        .get("edge")
        .await
        .expect("the Gateway survives uninstall");
    assert!(
        gw.metadata.deletion_timestamp.is_none(),
        "{}",
        gw.name_any()
    );
    assert!(
        c.answers("tcp", &addr, 8080),
        "the data plane stopped with the operator\n{}",
        c.logs()
    );
}
