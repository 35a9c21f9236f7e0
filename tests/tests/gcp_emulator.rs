//! The GCP emulator's contract over HTTP: authentication, operations, requestId replay,
//! Google error bodies, schema checks, Secret Manager IAM with etags, the metadata server
//! (wait_for_change, instance token, guest attributes), quotas and the request log.

use std::time::Duration;

use serde_json::{Value, json};
use wgnet_tests::gcp::{Config, GcpEmulator, LatencyProfile};

const P: &str = "wgnet-test";

struct Client {
    http: reqwest::Client,
    token: String,
    base: String,
}

impl Client {
    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("emulator answers");
        let status = resp.status().as_u16();
        let v = resp.json().await.unwrap_or(Value::Null);
        (status, v)
    }
}

async fn start(profile: LatencyProfile) -> (GcpEmulator, Client) {
    let emu = GcpEmulator::start(Config {
        profile,
        ..Config::default()
    })
    .await
    .expect("starts");
    let token = emu.issue_token("op@wgnet-test.iam.gserviceaccount.com", true);
    let c = Client {
        http: reqwest::Client::new(),
        token,
        base: emu.url(),
    };
    (emu, c)
}

use reqwest::Method;

#[tokio::test]
async fn calls_need_a_valid_token() {
    let (emu, c) = start(LatencyProfile::instant()).await;
    let bad = Client {
        token: "ya29.forged".into(),
        http: reqwest::Client::new(),
        base: emu.url(),
    };
    let (s, v) = bad
        .call(
            Method::GET,
            &format!("/compute/v1/projects/{P}/global/networks"),
            None,
        )
        .await;
    assert_eq!(s, 401);
    assert_eq!(v["error"]["errors"][0]["reason"], "authError");
    let (s, _) = c
        .call(
            Method::GET,
            &format!("/compute/v1/projects/{P}/global/networks"),
            None,
        )
        .await;
    assert_eq!(s, 200);
    // A project that does not exist is a 404 naming the project, as in GCP.
    let (s, err) = c
        .call(
            Method::GET,
            "/compute/v1/projects/elsewhere/global/networks",
            None,
        )
        .await;
    assert_eq!(s, 404);
    assert_eq!(
        err["error"]["message"],
        "The resource 'projects/elsewhere' was not found"
    );
    // The token endpoint refuses forged assertions.
    let resp = reqwest::Client::new()
        .post(emu.token_url())
        .header("content-type", "application/x-www-form-urlencoded")
        .body("grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&assertion=a.b.c")
        .send()
        .await
        .expect("answer");
    assert_eq!(resp.status().as_u16(), 400);
}

/// In the poll-driven profile, reading a resource is time passing for the operation aimed
/// at it: a caller whose every answer to an insert was lost knows no operation to poll,
/// and GCP finishes the insert anyway. (The seeded fault campaign once left an instance
/// PROVISIONING forever this way.)
#[tokio::test]
async fn reads_of_a_resource_advance_its_unfollowed_operation() {
    let (_emu, c) = start(LatencyProfile::polls()).await;
    let regional = format!("/compute/v1/projects/{P}/regions/us-central1");
    let (s, op) = c
        .call(
            Method::POST,
            &format!("{regional}/addresses"),
            Some(json!({"name": "a1"})),
        )
        .await;
    assert_eq!(s, 200, "{op}");
    let name = op["name"].as_str().expect("op name").to_owned();
    let address = format!("{regional}/addresses/a1");
    for _ in 0..2 {
        let (s, _) = c.call(Method::GET, &address, None).await;
        assert_eq!(s, 200);
    }
    let (_, o) = c
        .call(Method::GET, &format!("{regional}/operations/{name}"), None)
        .await;
    assert_eq!(o["status"], "DONE", "two reads of the address finished it");
}

#[tokio::test]
async fn operations_progress_by_polls_and_request_ids_replay() {
    let (emu, c) = start(LatencyProfile::polls()).await;
    let path = format!(
        "/compute/v1/projects/{P}/global/networks?requestId=6f1c2b1e-58a2-4c57-9d0e-3f1a2b3c4d5e"
    );
    let body = json!({"name": "n1", "autoCreateSubnetworks": true});
    let (s, op) = c.call(Method::POST, &path, Some(body.clone())).await;
    assert_eq!(s, 200);
    assert_eq!(op["status"], "PENDING");
    assert_eq!(op["kind"], "compute#operation");
    let name = op["name"].as_str().expect("op name").to_owned();
    // A retried insert with the same requestId returns the same operation, no 409.
    let (s, again) = c.call(Method::POST, &path, Some(body.clone())).await;
    assert_eq!((s, again["name"].as_str()), (200, Some(name.as_str())));
    // Without it, the name is taken.
    let (s, err) = c
        .call(
            Method::POST,
            &format!("/compute/v1/projects/{P}/global/networks"),
            Some(body),
        )
        .await;
    assert_eq!(s, 409);
    assert_eq!(err["error"]["errors"][0]["reason"], "alreadyExists");
    let op_path = format!("/compute/v1/projects/{P}/global/operations/{name}");
    let (_, o1) = c.call(Method::GET, &op_path, None).await;
    let (_, o2) = c.call(Method::GET, &op_path, None).await;
    assert_eq!(
        (o1["status"].as_str(), o2["status"].as_str()),
        (Some("RUNNING"), Some("DONE"))
    );
    // Zero UUIDs are refused like GCP does.
    let (s, _) = c
        .call(
            Method::POST,
            &format!("/compute/v1/projects/{P}/global/networks?requestId=00000000-0000-0000-0000-000000000000"),
            Some(json!({"name": "n2"})),
        )
        .await;
    assert_eq!(s, 400);
    assert_eq!(emu.inventory().len(), 1);
}

#[tokio::test]
async fn wait_returns_when_the_operation_is_done() {
    let mut profile = LatencyProfile::instant();
    profile.firewall_insert = Duration::from_millis(300);
    let (_emu, c) = start(profile).await;
    c.call(
        Method::POST,
        &format!("/compute/v1/projects/{P}/global/networks"),
        Some(json!({"name": "n"})),
    )
    .await;
    let (s, op) = c
        .call(
            Method::POST,
            &format!("/compute/v1/projects/{P}/global/firewalls"),
            Some(json!({"name": "f", "network": "global/networks/n", "allowed": [{"IPProtocol": "udp", "ports": ["51820"]}]})),
        )
        .await;
    assert_eq!((s, op["status"].as_str()), (200, Some("RUNNING")));
    let started = std::time::Instant::now();
    let (_, done) = c
        .call(
            Method::POST,
            &format!(
                "/compute/v1/projects/{P}/global/operations/{}/wait",
                op["name"].as_str().unwrap_or_default()
            ),
            None,
        )
        .await;
    assert_eq!(done["status"], "DONE");
    assert!(started.elapsed() >= Duration::from_millis(200));
    // The network is in use by the firewall: GCP accepts the delete, and its operation
    // ends in error.
    let (s, op) = c
        .call(
            Method::DELETE,
            &format!("/compute/v1/projects/{P}/global/networks/n"),
            None,
        )
        .await;
    assert_eq!(s, 200);
    let name = op["name"].as_str().expect("operation name").to_owned();
    let (_, done) = c
        .call(
            Method::POST,
            &format!("/compute/v1/projects/{P}/global/operations/{name}/wait"),
            None,
        )
        .await;
    assert_eq!(done["status"], "DONE");
    assert_eq!(
        done["error"]["errors"][0]["code"],
        "RESOURCE_IN_USE_BY_ANOTHER_RESOURCE"
    );
    let (s, _) = c
        .call(
            Method::GET,
            &format!("/compute/v1/projects/{P}/global/networks/n"),
            None,
        )
        .await;
    assert_eq!(s, 200, "the network is still there");
}

#[tokio::test]
async fn bodies_are_checked_against_the_discovery_schemas() {
    let (_emu, c) = start(LatencyProfile::instant()).await;
    let (s, err) = c
        .call(
            Method::POST,
            &format!("/compute/v1/projects/{P}/global/networks"),
            Some(json!({"name": "n", "autoCreateSubnet": true})),
        )
        .await;
    assert_eq!(s, 400);
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("Unknown name \"autoCreateSubnet\""),
        "{err}"
    );
    let (s, _) = c
        .call(
            Method::POST,
            &format!("/compute/v1/projects/{P}/global/networks"),
            Some(json!({"name": "Bad_Name"})),
        )
        .await;
    assert_eq!(s, 400);
    let (s, err) = c
        .call(
            Method::POST,
            &format!("/v1/projects/{P}/secrets?secretId=s"),
            Some(json!({"replication": {"automatic": {}}, "labelz": {}})),
        )
        .await;
    assert_eq!(s, 400);
    assert_eq!(err["error"]["status"], "INVALID_ARGUMENT");
}

#[tokio::test]
async fn secret_policies_use_etags_and_gate_instance_access() {
    let (emu, c) = start(LatencyProfile::instant()).await;
    let (s, _) = c
        .call(
            Method::POST,
            &format!("/v1/projects/{P}/serviceAccounts"),
            Some(json!({"accountId": "vm-account", "serviceAccount": {"description": "d"}})),
        )
        .await;
    assert_eq!(s, 200);
    c.call(
        Method::POST,
        &format!("/v1/projects/{P}/secrets?secretId=key"),
        Some(json!({"replication": {"automatic": {}}})),
    )
    .await;
    let (s, v) = c
        .call(
            Method::POST,
            &format!("/v1/projects/{P}/secrets/key:addVersion"),
            Some(json!({"payload": {"data": "c2VjcmV0"}})),
        )
        .await;
    assert_eq!(s, 200);
    assert!(
        v["name"]
            .as_str()
            .unwrap_or_default()
            .ends_with("/secrets/key/versions/1")
    );
    let vm = Client {
        token: emu.issue_token("vm-account@wgnet-test.iam.gserviceaccount.com", false),
        http: reqwest::Client::new(),
        base: emu.url(),
    };
    let access = format!("/v1/projects/{P}/secrets/key/versions/latest:access");
    let (s, err) = vm.call(Method::GET, &access, None).await;
    assert_eq!(
        (s, err["error"]["status"].as_str()),
        (403, Some("PERMISSION_DENIED"))
    );
    // The VM's account cannot touch anything else either.
    let (s, _) = vm
        .call(
            Method::GET,
            &format!("/compute/v1/projects/{P}/global/networks"),
            None,
        )
        .await;
    assert_eq!(s, 403);
    let (_, policy) = c
        .call(
            Method::GET,
            &format!("/v1/projects/{P}/secrets/key:getIamPolicy"),
            None,
        )
        .await;
    let binding = json!({"role": "roles/secretmanager.secretAccessor", "members": ["serviceAccount:vm-account@wgnet-test.iam.gserviceaccount.com"]});
    let set = |etag: &Value| json!({"policy": {"bindings": [binding.clone()], "etag": etag}});
    let (s, _) = c
        .call(
            Method::POST,
            &format!("/v1/projects/{P}/secrets/key:setIamPolicy"),
            Some(set(&policy["etag"])),
        )
        .await;
    assert_eq!(s, 200);
    // The same etag again is stale.
    let (s, err) = c
        .call(
            Method::POST,
            &format!("/v1/projects/{P}/secrets/key:setIamPolicy"),
            Some(set(&policy["etag"])),
        )
        .await;
    assert_eq!((s, err["error"]["status"].as_str()), (409, Some("ABORTED")));
    let (s, v) = vm.call(Method::GET, &access, None).await;
    assert_eq!(s, 200);
    assert_eq!(v["payload"]["data"], "c2VjcmV0");
}

#[tokio::test]
async fn metadata_server_serves_attributes_tokens_and_guest_attributes() {
    let (emu, c) = start(LatencyProfile::instant()).await;
    c.call(
        Method::POST,
        &format!("/compute/v1/projects/{P}/global/networks"),
        Some(json!({"name": "n"})),
    )
    .await;
    c.call(
        Method::POST,
        &format!("/v1/projects/{P}/serviceAccounts"),
        Some(json!({"accountId": "vm-account"})),
    )
    .await;
    let (s, _) = c
        .call(
            Method::POST,
            &format!("/compute/v1/projects/{P}/zones/us-central1-a/instances"),
            Some(json!({
                "name": "vm",
                "machineType": "zones/us-central1-a/machineTypes/e2-small",
                "disks": [{"boot": true, "initializeParams": {"sourceImage": "projects/debian-cloud/global/images/family/debian-12"}}],
                "networkInterfaces": [{"network": "global/networks/n", "accessConfigs": [{"type": "ONE_TO_ONE_NAT"}]}],
                "serviceAccounts": [{"email": "vm-account@wgnet-test.iam.gserviceaccount.com"}],
                "metadata": {"items": [{"key": "wgnet-mtu", "value": "1380"}, {"key": "enable-guest-attributes", "value": "TRUE"}]},
            })),
        )
        .await;
    assert_eq!(s, 200);
    let md = format!(
        "{}/computeMetadata/v1",
        emu.metadata_url(P, "us-central1-a", "vm")
    );
    let http = reqwest::Client::new();
    let get = |path: &str| {
        http.get(format!("{md}/{path}"))
            .header("Metadata-Flavor", "Google")
    };
    // The header is mandatory.
    let r = http
        .get(format!("{md}/instance/attributes/wgnet-mtu"))
        .send()
        .await
        .expect("answer");
    assert_eq!(r.status().as_u16(), 403);
    let r = get("instance/attributes/wgnet-mtu")
        .send()
        .await
        .expect("answer");
    let etag = r
        .headers()
        .get("etag")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .expect("etag");
    assert_eq!(r.text().await.expect("body"), "1380");
    // wait_for_change returns when setMetadata changes the value.
    let waiter = tokio::spawn(
        get(&format!(
            "instance/attributes/wgnet-mtu?wait_for_change=true&last_etag={etag}&timeout_sec=10"
        ))
        .send(),
    );
    // No pause needed before the change: with last_etag the wait returns at once when the
    // value already moved, so the answer is the same whichever runs first.
    let (_, inst) = c
        .call(
            Method::GET,
            &format!("/compute/v1/projects/{P}/zones/us-central1-a/instances/vm"),
            None,
        )
        .await;
    let (s, _) = c
        .call(
            Method::POST,
            &format!("/compute/v1/projects/{P}/zones/us-central1-a/instances/vm/setMetadata"),
            Some(json!({"fingerprint": inst["metadata"]["fingerprint"], "items": [{"key": "wgnet-mtu", "value": "1280"}, {"key": "enable-guest-attributes", "value": "TRUE"}]})),
        )
        .await;
    assert_eq!(s, 200);
    let changed = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("woke up")
        .expect("task")
        .expect("answer");
    assert_eq!(changed.text().await.expect("body"), "1280");
    // A stale fingerprint is 412.
    let (s, _) = c
        .call(
            Method::POST,
            &format!("/compute/v1/projects/{P}/zones/us-central1-a/instances/vm/setMetadata"),
            Some(json!({"fingerprint": inst["metadata"]["fingerprint"], "items": []})),
        )
        .await;
    assert_eq!(s, 412);
    // The instance's account gets a token.
    let tok: Value = get("instance/service-accounts/default/token")
        .send()
        .await
        .expect("answer")
        .json()
        .await
        .expect("json");
    assert!(tok["access_token"].as_str().is_some_and(|t| !t.is_empty()));
    // Guest attributes: written inside, read through Compute.
    let r = http
        .put(format!("{md}/instance/guest-attributes/wgnet/state"))
        .header("Metadata-Flavor", "Google")
        .body("ready")
        .send()
        .await
        .expect("answer");
    assert_eq!(r.status().as_u16(), 200);
    let (s, ga) = c
        .call(Method::GET, &format!("/compute/v1/projects/{P}/zones/us-central1-a/instances/vm/getGuestAttributes?queryPath=wgnet%2F"), None)
        .await;
    assert_eq!(s, 200);
    assert_eq!(
        ga["queryValue"]["items"],
        json!([{"namespace": "wgnet", "key": "state", "value": "ready"}])
    );
    let ip = get("instance/network-interfaces/0/access-configs/0/external-ip")
        .send()
        .await
        .expect("answer")
        .text()
        .await
        .expect("ip");
    assert!(ip.starts_with("198.51.100."), "{ip}");
}

#[tokio::test]
async fn quotas_faults_and_the_request_log() {
    let (emu, c) = start(LatencyProfile::instant()).await;
    emu.set_quota_per_minute(Some(2));
    let list = format!("/compute/v1/projects/{P}/global/firewalls");
    let statuses: Vec<u16> =
        futures_util::future::join_all((0..3).map(|_| c.call(Method::GET, &list, None)))
            .await
            .into_iter()
            .map(|(s, _)| s)
            .collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 403).count(),
        1,
        "{statuses:?}"
    );
    emu.set_quota_per_minute(None);
    emu.fail_next(Some("GET"), "/firewalls", 1, 503);
    assert_eq!(c.call(Method::GET, &list, None).await.0, 503);
    assert_eq!(c.call(Method::GET, &list, None).await.0, 200);
    let log = emu.request_log();
    assert_eq!(log.len(), 5);
    assert!(log.iter().all(|l| l.api == "compute" && !l.is_write()));
}
