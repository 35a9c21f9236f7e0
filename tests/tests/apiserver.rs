//! The stand-in API server, driven through the real kube client, kube-runtime and kubectl.
//! Each test pins one semantic the operator relies on; each would fail without it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret, Service};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{
    Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams, WatchEvent,
    WatchParams,
};
use kube::core::{ApiResource, GroupVersionKind};
use kube::{Client, Config};
use serde_json::{Value, json};
use wgnet_tests::apiserver::{ApiServer, Config as ServerConfig};

type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

async fn start_with(config: ServerConfig) -> (ApiServer, Client) {
    let server = ApiServer::start(config)
        .await
        .expect("stand-in API server starts");
    let url = server.url().parse().expect("server URL parses");
    let client = Client::try_from(Config::new(url)).expect("client builds");
    (server, client)
}

async fn start() -> (ApiServer, Client) {
    start_with(ServerConfig::default()).await
}

fn cm(name: &str, labels: &[(&str, &str)]) -> ConfigMap {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>()},
        "data": {"k": "v"},
    }))
    .expect("configmap literal")
}

/// Installs the project's generated Gateway CRD and returns an API for Gateways in `ns`.
async fn gateways(client: &Client, ns: &str) -> Api<DynamicObject> {
    let text =
        std::fs::read_to_string(wgnet_tests::repo_root().join("crds/gateways.wgnet.dev.yaml"))
            .expect("crds/ present");
    let crd: CustomResourceDefinition = serde_yaml::from_str(&text).expect("CRD parses");
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.create(&PostParams::default(), &crd)
        .await
        .expect("CRD is accepted");
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("wgnet.dev", "v1alpha1", "Gateway"),
        "gateways",
    );
    Api::namespaced_with(client.clone(), ns, &ar)
}

fn gateway(name: &str) -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": "wgnet.dev/v1alpha1", "kind": "Gateway",
        "metadata": {"name": name},
        "spec": {"gcp": {"projectID": "my-gcp-project", "region": "us-central1", "zone": "us-central1-a"},
                 "forwards": [{"port": 443, "service": "web"}]},
    }))
    .expect("gateway literal")
}

/// kube-rs reads `/version` and runs discovery; CRD kinds appear once the CRD is created.
#[tokio::test]
async fn discovery_serves_builtin_and_crd_kinds() -> TestResult {
    let (_server, client) = start().await;
    let version = client.apiserver_version().await?;
    assert_eq!(version.major, "1");
    let discovery = kube::discovery::Discovery::new(client.clone())
        .run()
        .await?;
    let kinds: Vec<String> = discovery
        .groups()
        .flat_map(|g| g.recommended_resources())
        .map(|(ar, _)| ar.kind)
        .collect();
    for kind in [
        "Namespace",
        "Service",
        "ConfigMap",
        "Secret",
        "Deployment",
        "Lease",
        "RoleBinding",
        "NetworkPolicy",
        "PodDisruptionBudget",
    ] {
        assert!(
            kinds.iter().any(|k| k == kind),
            "{kind} missing from discovery: {kinds:?}"
        );
    }
    assert!(
        !kinds.iter().any(|k| k == "Gateway"),
        "Gateway served before its CRD exists"
    );
    gateways(&client, "default").await;
    let discovery = kube::discovery::Discovery::new(client.clone())
        .run()
        .await?;
    let (ar, caps) = discovery
        .resolve_gvk(&GroupVersionKind::gvk("wgnet.dev", "v1alpha1", "Gateway"))
        .expect("Gateway discovered");
    assert_eq!(ar.plural, "gateways");
    assert_eq!(caps.scope, kube::discovery::Scope::Namespaced);
    assert!(
        caps.subresources
            .iter()
            .any(|(s, _)| s.plural == "gateways/status")
            || ar.plural == "gateways"
    );
    Ok(())
}

/// Objects get a uid, a creationTimestamp, generation 1 and a resourceVersion from one
/// monotonic counter; generateName makes a unique name.
#[tokio::test]
async fn object_lifecycle_fields_are_set_by_the_server() -> TestResult {
    let (_server, client) = start().await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let a = cms.create(&PostParams::default(), &cm("a", &[])).await?;
    let b = cms.create(&PostParams::default(), &cm("b", &[])).await?;
    let (ma, mb) = (&a.metadata, &b.metadata);
    assert!(ma.uid.is_some() && ma.uid != mb.uid);
    assert!(ma.creation_timestamp.is_some());
    assert_eq!(ma.generation, Some(1));
    let rv = |m: &kube::api::ObjectMeta| {
        m.resource_version
            .as_deref()
            .and_then(|v| v.parse::<u64>().ok())
            .expect("numeric rv")
    };
    assert!(rv(mb) > rv(ma), "resource versions must increase");
    let mut generated = cm("", &[]);
    generated.metadata.name = None;
    generated.metadata.generate_name = Some("gen-".into());
    let g1 = cms.create(&PostParams::default(), &generated).await?;
    let g2 = cms.create(&PostParams::default(), &generated).await?;
    let (n1, n2) = (
        g1.metadata.name.expect("named"),
        g2.metadata.name.expect("named"),
    );
    assert!(
        n1.starts_with("gen-") && n1.len() > 4 && n1 != n2,
        "{n1} {n2}"
    );
    let err = cms
        .create(&PostParams::default(), &cm("a", &[]))
        .await
        .expect_err("duplicate name");
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 409 && s.reason == "AlreadyExists"),
        "{err}"
    );
    let err = Api::<ConfigMap>::namespaced(client.clone(), "nope")
        .create(&PostParams::default(), &cm("x", &[]))
        .await
        .expect_err("no namespace");
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 404),
        "{err}"
    );
    Ok(())
}

/// generation changes with the spec only: not with metadata, not with status.
#[tokio::test]
async fn generation_tracks_spec_changes_only() -> TestResult {
    let (_server, client) = start().await;
    let gws = gateways(&client, "default").await;
    gws.create(&PostParams::default(), &gateway("edge")).await?;
    let pp = PatchParams::default();
    let labelled = gws
        .patch(
            "edge",
            &pp,
            &Patch::Merge(json!({"metadata": {"labels": {"a": "b"}}})),
        )
        .await?;
    assert_eq!(
        labelled.metadata.generation,
        Some(1),
        "a label is not a spec change"
    );
    let status = gws
        .patch_status(
            "edge",
            &pp,
            &Patch::Merge(json!({"status": {"address": "203.0.113.9"}})),
        )
        .await?;
    assert_eq!(
        status.metadata.generation,
        Some(1),
        "status is not a spec change"
    );
    let changed = gws
        .patch(
            "edge",
            &pp,
            &Patch::Merge(json!({"spec": {"gcp": {"machineType": "e2-medium"}}})),
        )
        .await?;
    assert_eq!(changed.metadata.generation, Some(2));
    let rv = changed.metadata.resource_version.clone();
    let same = gws
        .patch(
            "edge",
            &pp,
            &Patch::Merge(json!({"spec": {"gcp": {"machineType": "e2-medium"}}})),
        )
        .await?;
    assert_eq!(
        same.metadata.resource_version, rv,
        "a no-op write must not bump the resourceVersion"
    );
    Ok(())
}

/// Label selectors with every operator, and field selectors on name and namespace.
#[tokio::test]
async fn list_filters_by_label_and_field_selectors() -> TestResult {
    let (_server, client) = start().await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    cms.create(
        &PostParams::default(),
        &cm("web", &[("app", "web"), ("tier", "front")]),
    )
    .await?;
    cms.create(&PostParams::default(), &cm("db", &[("app", "db")]))
        .await?;
    cms.create(&PostParams::default(), &cm("none", &[])).await?;
    let names = |l: kube::api::ObjectList<ConfigMap>| {
        let mut n: Vec<String> = l
            .items
            .into_iter()
            .filter_map(|c| c.metadata.name)
            .collect();
        n.sort();
        n
    };
    for (selector, want) in [
        ("app=web", vec!["web"]),
        ("app!=web", vec!["db", "none"]),
        ("app in (web,db)", vec!["db", "web"]),
        ("app notin (web)", vec!["db", "none"]),
        ("tier", vec!["web"]),
        ("!app", vec!["none"]),
    ] {
        let got = names(cms.list(&ListParams::default().labels(selector)).await?);
        assert_eq!(got, want, "selector {selector}");
    }
    assert_eq!(
        names(
            cms.list(&ListParams::default().fields("metadata.name=db"))
                .await?
        ),
        vec!["db"]
    );
    let all: Api<ConfigMap> = Api::all(client.clone());
    assert_eq!(
        names(
            all.list(&ListParams::default().fields("metadata.namespace=kube-system"))
                .await?
        ),
        Vec::<String>::new()
    );
    Ok(())
}

/// A watch from a resourceVersion replays later changes, then streams ADDED, MODIFIED and
/// DELETED; BOOKMARKs arrive when asked; timeoutSeconds ends the stream.
#[tokio::test]
async fn watch_streams_changes_from_a_resource_version() -> TestResult {
    let (_server, client) = start().await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let first = cms.create(&PostParams::default(), &cm("a", &[])).await?;
    let from = first.metadata.resource_version.clone().expect("rv");
    cms.create(&PostParams::default(), &cm("b", &[])).await?;
    let mut stream = cms
        .watch(&WatchParams::default().timeout(5), &from)
        .await?
        .boxed();
    let mut seen = Vec::new();
    cms.patch(
        "a",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"k": "w"}})),
    )
    .await?;
    cms.delete("b", &DeleteParams::default()).await?;
    let mut bookmarks = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while let Ok(next) = tokio::time::timeout_at(deadline, stream.try_next()).await {
        let Some(ev) = next? else { break };
        match ev {
            WatchEvent::Added(o) => {
                seen.push(format!("ADDED {}", o.metadata.name.unwrap_or_default()))
            }
            WatchEvent::Modified(o) => {
                seen.push(format!("MODIFIED {}", o.metadata.name.unwrap_or_default()))
            }
            WatchEvent::Deleted(o) => {
                seen.push(format!("DELETED {}", o.metadata.name.unwrap_or_default()))
            }
            WatchEvent::Bookmark(_) => bookmarks += 1,
            WatchEvent::Error(e) => panic!("watch error {e:?}"),
        }
    }
    assert_eq!(seen, vec!["ADDED b", "MODIFIED a", "DELETED b"]);
    assert!(bookmarks >= 1, "bookmarks were requested");
    Ok(())
}

/// `timeoutSeconds` ends a watch stream even when nothing changes, so clients re-watch.
#[tokio::test]
async fn watch_ends_after_timeout_seconds() -> TestResult {
    let (_server, client) = start().await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let mut stream = cms
        .watch(&WatchParams::default().timeout(1).disable_bookmarks(), "0")
        .await?
        .boxed();
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        while stream.try_next().await?.is_some() {}
        Ok::<_, kube::Error>(())
    })
    .await;
    assert!(
        matches!(ended, Ok(Ok(()))),
        "watch did not end after timeoutSeconds: {ended:?}"
    );
    Ok(())
}

/// A resourceVersion older than the kept history gets 410 Gone, so clients relist.
#[tokio::test]
async fn watch_from_expired_version_is_gone() -> TestResult {
    let (_server, client) = start_with(ServerConfig {
        history: 3,
        ..ServerConfig::default()
    })
    .await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let first = cms.create(&PostParams::default(), &cm("a", &[])).await?;
    for i in 0..5 {
        cms.create(&PostParams::default(), &cm(&format!("x{i}"), &[]))
            .await?;
    }
    let from = first.metadata.resource_version.expect("rv");
    let mut stream = cms
        .watch(&WatchParams::default().timeout(2), &from)
        .await?
        .boxed();
    match stream.try_next().await? {
        Some(WatchEvent::Error(e)) => assert_eq!(e.code, 410, "{e:?}"),
        other => panic!("expected 410 Gone, got {other:?}"),
    }
    Ok(())
}

/// A label-filtered watch reports an object that stops matching as DELETED.
#[tokio::test]
async fn filtered_watch_reports_objects_leaving_the_selector() -> TestResult {
    let (_server, client) = start().await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let c = cms
        .create(&PostParams::default(), &cm("a", &[("app", "web")]))
        .await?;
    let rv = c.metadata.resource_version.expect("rv");
    let mut stream = cms
        .watch(&WatchParams::default().labels("app=web").timeout(3), &rv)
        .await?
        .boxed();
    cms.patch(
        "a",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"app": "db"}}})),
    )
    .await?;
    loop {
        match stream.try_next().await? {
            Some(WatchEvent::Bookmark(_)) => continue,
            Some(WatchEvent::Deleted(o)) => {
                break assert_eq!(o.metadata.name.as_deref(), Some("a"));
            }
            other => panic!("expected DELETED, got {other:?}"),
        }
    }
    Ok(())
}

/// An update carrying a stale resourceVersion is refused with 409 Conflict.
#[tokio::test]
async fn stale_update_conflicts() -> TestResult {
    let (_server, client) = start().await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let old = cms.create(&PostParams::default(), &cm("a", &[])).await?;
    let mut fresh = old.clone();
    fresh.data = Some(BTreeMap::from([("k".into(), "1".into())]));
    cms.replace("a", &PostParams::default(), &fresh).await?;
    let mut stale = old;
    stale.data = Some(BTreeMap::from([("k".into(), "2".into())]));
    let err = cms
        .replace("a", &PostParams::default(), &stale)
        .await
        .expect_err("stale update");
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 409 && s.reason == "Conflict"),
        "{err}"
    );
    assert_eq!(cms.get("a").await?.data.expect("data")["k"], "1");
    Ok(())
}

/// JSON patch (with a failing `test`), merge patch and strategic merge patch each change
/// exactly what they say.
#[tokio::test]
async fn json_merge_and_strategic_patches_apply() -> TestResult {
    let (_server, client) = start().await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    cms.create(&PostParams::default(), &cm("a", &[])).await?;
    let p: json_patch::Patch = serde_json::from_value(
        json!([{"op": "test", "path": "/data/k", "value": "v"}, {"op": "add", "path": "/data/n", "value": "1"}]),
    )?;
    let patched = cms
        .patch("a", &PatchParams::default(), &Patch::Json::<()>(p))
        .await?;
    assert_eq!(patched.data.expect("data")["n"], "1");
    let failing: json_patch::Patch = serde_json::from_value(
        json!([{"op": "test", "path": "/data/k", "value": "other"}, {"op": "remove", "path": "/data/k"}]),
    )?;
    assert!(
        cms.patch("a", &PatchParams::default(), &Patch::Json::<()>(failing))
            .await
            .is_err(),
        "failed test op must reject the patch"
    );
    assert_eq!(cms.get("a").await?.data.expect("data")["k"], "v");
    let merged = cms
        .patch(
            "a",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"k": null, "m": "2"}})),
        )
        .await?;
    assert_eq!(
        merged.data.expect("data"),
        BTreeMap::from([("m".into(), "2".into()), ("n".into(), "1".into())])
    );

    let deploys: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let d: Deployment = serde_json::from_value(
        json!({"metadata": {"name": "d"}, "spec": {"selector": {"matchLabels": {"a": "b"}},
        "template": {"metadata": {"labels": {"a": "b"}}, "spec": {"containers": [{"name": "one", "image": "one:1"}, {"name": "two", "image": "two:1"}]}}}}),
    )?;
    deploys.create(&PostParams::default(), &d).await?;
    let out = deploys
        .patch("d", &PatchParams::default(), &Patch::Strategic(json!({"spec": {"template": {"spec": {"containers": [{"name": "two", "image": "two:2"}]}}}})))
        .await?;
    let images: Vec<String> = out
        .spec
        .expect("spec")
        .template
        .spec
        .expect("pod spec")
        .containers
        .into_iter()
        .filter_map(|c| c.image)
        .collect();
    assert_eq!(
        images,
        vec!["one:1", "two:2"],
        "strategic merge keeps the other container"
    );
    Ok(())
}

/// Server-side apply creates when absent, records the field manager, answers 409 when
/// another manager owns a field with a different value, succeeds with force, and removes
/// fields a manager stops applying.
#[tokio::test]
async fn server_side_apply_tracks_managers_and_conflicts() -> TestResult {
    let (_server, client) = start().await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let config = |data: Value| json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a"}, "data": data});
    let created = cms
        .patch(
            "a",
            &PatchParams::apply("alice"),
            &Patch::Apply(config(json!({"x": "1", "y": "1"}))),
        )
        .await?;
    let managers: Vec<String> = created
        .metadata
        .managed_fields
        .unwrap_or_default()
        .into_iter()
        .filter_map(|m| m.manager)
        .collect();
    assert_eq!(managers, vec!["alice"]);
    let err = cms
        .patch(
            "a",
            &PatchParams::apply("bob"),
            &Patch::Apply(config(json!({"x": "2"}))),
        )
        .await
        .expect_err("conflict");
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 409 && s.message.contains("alice")),
        "{err}"
    );
    // Same value is shared ownership, not a conflict.
    cms.patch(
        "a",
        &PatchParams::apply("bob"),
        &Patch::Apply(config(json!({"y": "1"}))),
    )
    .await?;
    let forced = cms
        .patch(
            "a",
            &PatchParams::apply("bob").force(),
            &Patch::Apply(config(json!({"x": "2", "y": "1"}))),
        )
        .await?;
    assert_eq!(forced.data.expect("data")["x"], "2");
    // alice stops applying y; bob still owns it, so it stays. Then alice drops z.
    cms.patch(
        "a",
        &PatchParams::apply("alice"),
        &Patch::Apply(config(json!({"z": "1"}))),
    )
    .await?;
    let after = cms
        .patch(
            "a",
            &PatchParams::apply("alice"),
            &Patch::Apply(config(json!({}))),
        )
        .await?;
    let data = after.data.expect("data");
    assert_eq!(
        data.get("y").map(String::as_str),
        Some("1"),
        "field owned by bob survives"
    );
    assert!(
        !data.contains_key("z"),
        "field alice no longer applies is removed: {data:?}"
    );
    Ok(())
}

/// Writes to the main resource ignore status; writes to /status change only status.
#[tokio::test]
async fn status_subresource_is_separate() -> TestResult {
    let (_server, client) = start().await;
    let gws = gateways(&client, "default").await;
    let mut g = gateway("edge");
    g.data["status"] = json!({"address": "198.51.100.1"});
    let created = gws.create(&PostParams::default(), &g).await?;
    assert!(
        created.data.get("status").is_none(),
        "status is dropped on create"
    );
    let main = gws
        .patch(
            "edge",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"address": "x"}})),
        )
        .await?;
    assert!(
        main.data.get("status").is_none(),
        "main resource must ignore status"
    );
    let status = gws
        .patch_status("edge", &PatchParams::default(), &Patch::Merge(json!({"spec": {"gcp": {"machineType": "n2-standard-2"}}, "status": {"address": "203.0.113.5"}})))
        .await?;
    assert_eq!(status.data["status"]["address"], "203.0.113.5");
    assert_eq!(
        status.data["spec"]["gcp"]["machineType"], "e2-small",
        "status write must not touch spec"
    );
    Ok(())
}

/// An object with finalizers gets a deletionTimestamp and stays until they are removed.
#[tokio::test]
async fn finalizers_hold_deletion() -> TestResult {
    let (_server, client) = start().await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let mut c = cm("held", &[]);
    c.metadata.finalizers = Some(vec!["wgnet.dev/gateway-teardown".into()]);
    cms.create(&PostParams::default(), &c).await?;
    cms.delete("held", &DeleteParams::default()).await?;
    let held = cms.get("held").await?;
    assert!(
        held.metadata.deletion_timestamp.is_some(),
        "deletion is pending"
    );
    cms.patch(
        "held",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await?;
    let err = cms
        .get("held")
        .await
        .expect_err("gone after the last finalizer");
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 404),
        "{err}"
    );
    Ok(())
}

/// Dependents whose owners are all gone are garbage-collected; deleting a namespace removes
/// its contents.
#[tokio::test]
async fn owner_references_and_namespaces_cascade() -> TestResult {
    let (_server, client) = start().await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let owner = cms
        .create(&PostParams::default(), &cm("owner", &[]))
        .await?;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "default");
    let dep: Secret = serde_json::from_value(
        json!({"metadata": {"name": "dep", "ownerReferences": [{
        "apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner.metadata.uid, "controller": true}]},
        "stringData": {"k": "secret-value"}}),
    )?;
    let dep = secrets.create(&PostParams::default(), &dep).await?;
    assert!(
        dep.data
            .expect("stringData folded into data")
            .contains_key("k")
    );
    cms.delete("owner", &DeleteParams::default()).await?;
    assert!(
        secrets.get_opt("dep").await?.is_none(),
        "dependent must be collected"
    );

    let nss: Api<Namespace> = Api::all(client.clone());
    nss.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "tmp"}}))?,
    )
    .await?;
    Api::<ConfigMap>::namespaced(client.clone(), "tmp")
        .create(&PostParams::default(), &cm("x", &[]))
        .await?;
    nss.delete("tmp", &DeleteParams::default()).await?;
    assert!(
        nss.get_opt("tmp").await?.is_none(),
        "empty namespace is removed"
    );
    assert!(
        Api::<ConfigMap>::all(client.clone())
            .list(&ListParams::default().fields("metadata.namespace=tmp"))
            .await?
            .items
            .is_empty()
    );
    Ok(())
}

/// Services get a ClusterIP and defaulted ports, as the operator's forward classification expects.
#[tokio::test]
async fn services_get_cluster_ips() -> TestResult {
    let (_server, client) = start().await;
    let svcs: Api<Service> = Api::namespaced(client.clone(), "default");
    let svc: Service = serde_json::from_value(
        json!({"metadata": {"name": "web"}, "spec": {"ports": [{"port": 80}]}}),
    )?;
    let s = svcs.create(&PostParams::default(), &svc).await?;
    let spec = s.spec.expect("spec");
    assert!(
        spec.cluster_ip
            .as_deref()
            .is_some_and(|ip| ip.starts_with("10.96.")),
        "{:?}",
        spec.cluster_ip
    );
    let port = &spec.ports.expect("ports")[0];
    assert_eq!(port.protocol.as_deref(), Some("TCP"));
    Ok(())
}

/// Custom resources get schema defaults, and bad ones are refused with 422 and the rule's
/// message, including transition rules that compare with the stored object.
#[tokio::test]
async fn custom_resources_are_defaulted_and_validated() -> TestResult {
    let (_server, client) = start().await;
    let gws = gateways(&client, "default").await;
    let created = gws.create(&PostParams::default(), &gateway("edge")).await?;
    assert_eq!(created.data["spec"]["wireguard"]["listenPort"], 51820);
    assert_eq!(created.data["spec"]["sourceRanges"], json!(["0.0.0.0/0"]));
    let mut bad = gateway("bad");
    bad.data["spec"]["forwards"] = json!([{"port": 51820, "protocol": "UDP", "service": "web"}]);
    let err = gws
        .create(&PostParams::default(), &bad)
        .await
        .expect_err("UDP on listen port");
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 422 && s.message.contains("must not use the WireGuard listen port")),
        "{err}"
    );
    let err = gws
        .patch(
            "edge",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"gcp": {"zone": "us-central1-b"}}})),
        )
        .await
        .expect_err("zone is immutable");
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 422 && s.message.contains("zone is immutable")),
        "{err}"
    );
    // Unknown fields are pruned unless the client asks for strict validation.
    let pruned = gws
        .patch(
            "edge",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"bogus": 1}})),
        )
        .await?;
    assert!(pruned.data["spec"].get("bogus").is_none());
    Ok(())
}

/// Injected faults, latency and the request log behave as documented.
#[tokio::test]
async fn test_controls_inject_faults_and_log_requests() -> TestResult {
    let (server, client) = start().await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    // 500 because kube's client retries 503 on its own.
    server.fail_next(Some("POST"), "/configmaps", 2, 500);
    for _ in 0..2 {
        let err = cms
            .create(&PostParams::default(), &cm("a", &[]))
            .await
            .expect_err("injected");
        assert!(
            matches!(err, kube::Error::Api(ref s) if s.code == 500),
            "{err}"
        );
    }
    cms.create(&PostParams::default(), &cm("a", &[])).await?;
    server.set_latency(Duration::from_millis(200));
    let started = std::time::Instant::now();
    cms.get("a").await?;
    assert!(
        started.elapsed() >= Duration::from_millis(200),
        "latency applies"
    );
    server.set_latency(Duration::ZERO);
    let posts: Vec<u16> = server
        .request_log()
        .iter()
        .filter(|r| r.method == "POST")
        .map(|r| r.status)
        .collect();
    assert_eq!(posts, vec![500, 500, 201]);
    Ok(())
}

/// kube-runtime's Controller runs unchanged against the server: it reconciles Gateways with a
/// finalizer, owns ConfigMaps it server-side-applies, writes status, and on deletion runs
/// cleanup and releases the object; the owned ConfigMap is then garbage-collected.
#[tokio::test]
async fn kube_runtime_controller_runs_end_to_end() -> TestResult {
    use kube::runtime::controller::{Action, Controller};
    use kube::runtime::finalizer::{Event, finalizer};
    use kube::runtime::watcher;

    let (_server, client) = start().await;
    let gws = gateways(&client, "default").await;
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("wgnet.dev", "v1alpha1", "Gateway"),
        "gateways",
    );
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let cleaned = Arc::new(std::sync::atomic::AtomicUsize::new(0));

    struct Ctx {
        client: Client,
        ar: ApiResource,
        cleaned: Arc<std::sync::atomic::AtomicUsize>,
    }
    async fn reconcile(
        obj: Arc<DynamicObject>,
        ctx: Arc<Ctx>,
    ) -> Result<Action, kube::runtime::finalizer::Error<kube::Error>> {
        let api: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), "default", &ctx.ar);
        let ctx2 = ctx.clone();
        finalizer(&api, "wgnet.dev/gateway-teardown", obj, |event| async move {
            match event {
                Event::Apply(gw) => {
                    let name = gw.metadata.name.clone().unwrap_or_default();
                    let owner = json!({"apiVersion": "wgnet.dev/v1alpha1", "kind": "Gateway", "name": name, "uid": gw.metadata.uid, "controller": true});
                    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": format!("{name}-link"),
                        "labels": {"app.kubernetes.io/managed-by": "test"}, "ownerReferences": [owner]}, "data": {"port": "443"}});
                    let cms: Api<ConfigMap> = Api::namespaced(ctx2.client.clone(), "default");
                    cms.patch(&format!("{name}-link"), &PatchParams::apply("wgnet.dev/test").force(), &Patch::Apply(cm)).await?;
                    let api: Api<DynamicObject> = Api::namespaced_with(ctx2.client.clone(), "default", &ctx2.ar);
                    api.patch_status(&name, &PatchParams::default(), &Patch::Merge(json!({"status": {"observedGeneration": gw.metadata.generation}}))).await?;
                    Ok(Action::requeue(Duration::from_secs(300)))
                }
                Event::Cleanup(_) => {
                    ctx2.cleaned.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    Ok(Action::await_change())
                }
            }
        })
        .await
    }
    fn error_policy(
        _: Arc<DynamicObject>,
        _: &kube::runtime::finalizer::Error<kube::Error>,
        _: Arc<Ctx>,
    ) -> Action {
        Action::requeue(Duration::from_millis(200))
    }

    let ctx = Arc::new(Ctx {
        client: client.clone(),
        ar: ar.clone(),
        cleaned: cleaned.clone(),
    });
    let controller = Controller::new_with(gws.clone(), watcher::Config::default(), ar.clone())
        .owns(
            cms.clone(),
            watcher::Config::default().labels("app.kubernetes.io/managed-by=test"),
        )
        .run(reconcile, error_policy, ctx)
        .for_each(|_| async {});
    let handle = tokio::spawn(controller);

    gws.create(&PostParams::default(), &gateway("edge")).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let gw = gws.get("edge").await?;
        if cms.get_opt("edge-link").await?.is_some() && gw.data["status"]["observedGeneration"] == 1
        {
            assert_eq!(
                gw.metadata.finalizers.as_deref(),
                Some(&["wgnet.dev/gateway-teardown".to_owned()][..])
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "controller did not reconcile: {:?}\nrequests: {:#?}",
            gw.data.get("status"),
            _server
                .request_log()
                .iter()
                .rev()
                .take(15)
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Deleting a child makes the controller restore it (owns() watch).
    cms.delete("edge-link", &DeleteParams::default()).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while cms.get_opt("edge-link").await?.is_none() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "owned ConfigMap not restored"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    gws.delete("edge", &DeleteParams::default()).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while gws.get_opt("edge").await?.is_some() || cms.get_opt("edge-link").await?.is_some() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "deletion did not complete"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        cleaned.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "cleanup ran once"
    );
    handle.abort();
    Ok(())
}

/// kube-apiserver keeps managedFields timestamps on a no-op write, so re-applying the same
/// object changes nothing and wakes no watcher; controllers that apply on every pass rely on
/// it (otherwise each apply triggers the next pass).
#[tokio::test]
async fn a_repeated_apply_is_a_no_op() -> TestResult {
    let (_server, client) = start().await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let body = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "same"}, "data": {"k": "v"}});
    let first = cms
        .patch(
            "same",
            &PatchParams::apply("op").force(),
            &Patch::Apply(&body),
        )
        .await?;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let again = cms
        .patch(
            "same",
            &PatchParams::apply("op").force(),
            &Patch::Apply(&body),
        )
        .await?;
    assert_eq!(
        first.metadata.resource_version,
        again.metadata.resource_version
    );
    assert_eq!(first.metadata.managed_fields, again.metadata.managed_fields);
    let changed = cms
        .patch(
            "same",
            &PatchParams::apply("op").force(),
            &Patch::Apply(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "same"}, "data": {"k": "w"}})),
        )
        .await?;
    assert_ne!(
        changed.metadata.resource_version,
        first.metadata.resource_version
    );
    Ok(())
}
