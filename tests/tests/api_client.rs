//! The operator's API server client (`wgnet_operator::apiclient`) against a real API
//! server: requests in flight share one HTTP/2 connection, where kube's default client
//! opens a connection for each. Needs the control-plane binaries (`make k8s-bins`).

use std::collections::HashSet;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Api, ListParams, WatchParams};
use wgnet_tests::controlplane::{self, ControlPlane};

/// Watches held open at once: each is a request in flight for as long as it is held.
const WATCHES: usize = 12;

/// This process's established TCP connections to `port` (from /proc: the sockets among
/// its own file descriptors whose remote port is `port`).
fn connections_to(port: u16) -> usize {
    let mine: HashSet<String> = std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|l| {
            let l = l.to_string_lossy().into_owned();
            Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_owned())
        })
        .collect();
    let port = format!(":{port:04X}");
    ["/proc/self/net/tcp", "/proc/self/net/tcp6"]
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .flat_map(|t| t.lines().skip(1).map(str::to_owned).collect::<Vec<_>>())
        .filter(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            // remote address, state (01: established), inode
            cols.len() > 9 && cols[2].ends_with(&port) && cols[3] == "01" && mine.contains(cols[9])
        })
        .count()
}

/// Opens [`WATCHES`] watches of Namespaces at once through `client` and returns how many
/// connections this process then holds to the API server, the watches still open.
async fn connections_for_watches(client: &kube::Client, port: u16) -> usize {
    let api: Api<Namespace> = Api::all(client.clone());
    let params = WatchParams::default().timeout(60);
    let watches = futures_util::future::join_all((0..WATCHES).map(|_| api.watch(&params, "0")))
        .await
        .into_iter()
        .collect::<Result<Vec<_>, _>>()
        .expect("every watch starts");
    let held = connections_to(port);
    drop(watches);
    held
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_in_flight_share_one_http2_connection() {
    let server = ControlPlane::start(controlplane::Options {
        controllers: false,
        ..controlplane::Options::default()
    })
    .await
    .unwrap_or_else(|e| panic!("control plane: {e}"));
    let port: u16 = server
        .url()
        .rsplit(':')
        .next()
        .and_then(|p| p.trim_end_matches('/').parse().ok())
        .expect("the API server's URL names a port");
    let config = server
        .admin_config()
        .await
        .expect("the admin's configuration");

    let client = wgnet_operator::apiclient::build(config.clone()).expect("the operator's client");
    // Plain requests and their errors work as through kube's own client.
    let namespaces = Api::<Namespace>::all(client.clone())
        .list(&ListParams::default())
        .await
        .expect("list Namespaces");
    assert!(
        namespaces
            .items
            .iter()
            .any(|n| n.metadata.name.as_deref() == Some("default"))
    );
    let missing = Api::<ConfigMap>::namespaced(client.clone(), "default")
        .get_opt("no-such-config-map")
        .await
        .expect("a 404 is an answer");
    assert!(missing.is_none());
    assert_eq!(connections_for_watches(&client, port).await, 1);
    drop(client);

    // kube's default client, for contrast: a connection per request in flight.
    let http1 = kube::Client::try_from(config).expect("kube's client");
    let held = connections_for_watches(&http1, port).await;
    assert!(
        held >= WATCHES,
        "kube's HTTP/1.1 client held {held} connections"
    );
}
