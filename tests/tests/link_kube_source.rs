//! The link configured through the Kubernetes API (a real kube-apiserver): a ConfigMap and a
//! Secret watched by name, edits applied to the kernel's nftables table without a restart,
//! a deleted Secret reported while the last good data plane stays. Needs root.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Api, DeleteParams, ObjectMeta, PostParams};
use wgnet_tests::controlplane::{self, ControlPlane};
use wgnet_tests::fixtures::TempDir;
use wgnet_tests::link::Link;
use wgnet_tests::netns::{self, Netns, RootLink, wait_for};

fn config(forwards: &[(u16, &str)]) -> String {
    let forwards: Vec<(u16, &str, &str, u16)> = forwards
        .iter()
        .map(|(port, ip)| (*port, "TCP", *ip, 80))
        .collect();
    // No peer yet: the link applies the forwards and waits for the VM.
    wgnet_tests::link::ingress_config("10.99.0.2/29", 1380, "", "", 25, &forwards)
}

fn configmap(forwards: &[(u16, &str)]) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some("gw-link".into()),
            ..ObjectMeta::default()
        },
        data: Some(BTreeMap::from([(
            "config.json".to_owned(),
            config(forwards),
        )])),
        ..ConfigMap::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configmap_and_secret_edits_apply_without_a_restart() {
    netns::require_root();
    let tag = netns::unique_tag();
    let subnet = netns::Subnet::claim();
    let root_ip = subnet.host(1).to_string();
    let ns = Netns::new("kln", &tag);
    let _api = RootLink::new(
        &format!("wgk{tag}"),
        &format!("{root_ip}/30"),
        &ns,
        "api0",
        &format!("{}/30", subnet.host(2)),
    );
    let server = ControlPlane::start(controlplane::Options {
        bind: root_ip.parse().expect("ip"),
        controllers: false,
    })
    .await
    .unwrap_or_else(|e| panic!("control plane: {e}"));
    let client = server.admin_client().await.expect("client");
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let secrets: Api<Secret> = Api::namespaced(client, "default");
    let (key, _) = netns::wg_keypair();
    cms.create(&PostParams::default(), &configmap(&[(8080, "10.96.0.10")]))
        .await
        .expect("configmap");
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some("gw-link-key".into()),
            ..ObjectMeta::default()
        },
        data: Some(BTreeMap::from([(
            "private-key".to_owned(),
            ByteString(key.clone().into_bytes()),
        )])),
        ..Secret::default()
    };
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .expect("secret");

    let dir = TempDir::new();
    let kubeconfig = dir.0.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        server.kubeconfig_for_token(server.url(), server.token("wgnet-admin")),
    )
    .expect("kubeconfig");
    let link = Link::start_with_env(
        &ns,
        &dir.0,
        &["--configmap", "gw-link", "--secret", "gw-link-key"],
        &[
            ("KUBECONFIG", kubeconfig.display().to_string()),
            ("POD_NAMESPACE", "default".into()),
        ],
    );
    let table = || ns.try_sh("nft list table ip wgnet_link").1;
    let applied = wait_for(Duration::from_secs(20), || {
        table().contains("dnat to 10.96.0.10:80").then_some(())
    });
    assert!(
        applied.is_some(),
        "the ConfigMap never reached the kernel:\n{}",
        link.logs()
    );
    assert_eq!(
        link.get("/readyz").1.trim(),
        "no handshake with the peer yet",
        "an empty peer waits"
    );
    let pid = link.pid();

    // An edit is watched, not polled from a volume: it lands without a restart.
    let mut cm = cms.get("gw-link").await.expect("get");
    cm.data = configmap(&[(8080, "10.96.0.10"), (9090, "10.96.0.11")]).data;
    cms.replace("gw-link", &PostParams::default(), &cm)
        .await
        .expect("replace");
    let edited = wait_for(Duration::from_secs(10), || {
        table().contains("dnat to 10.96.0.11:80").then_some(())
    });
    assert!(edited.is_some(), "the edit never applied:\n{}", link.logs());
    assert_eq!(link.metric("wgnet_link_forwards"), Some(2.0));
    assert_eq!(link.pid(), pid);

    // The Secret disappears: reported, and the data plane already applied stays.
    secrets
        .delete("gw-link-key", &DeleteParams::default())
        .await
        .expect("delete");
    let reported = wait_for(Duration::from_secs(10), || {
        link.get("/readyz")
            .1
            .contains("the key Secret is missing")
            .then_some(())
    });
    assert!(reported.is_some(), "{:?}", link.get("/readyz"));
    assert!(table().contains("dnat to 10.96.0.11:80"));
    assert!(
        !link.logs().contains(&key),
        "the private key reached the log"
    );
    // Text logs written to a file (as a container runtime does) carry no colour codes.
    assert!(
        !link.logs().contains('\u{1b}'),
        "ANSI escape codes in a log file:\n{}",
        link.logs()
    );
}
