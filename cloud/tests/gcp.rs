//! The GCP implementation against the emulator over real sockets: lifecycle, drift repair,
//! lost answers, fault campaigns, IAM propagation, permission and quota errors, two gateways
//! sharing the network, and token refresh through a real RS256 key file.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;
use wgnet_cloud::{Cloud, Protocol, Recorded};
use wgnet_tests::gcp::{Fault, FaultAction, LatencyProfile};

#[tokio::test]
async fn lifecycle_create_resync_change_delete() {
    let e = env(LatencyProfile::polls()).await;
    let d = desired("web", "uid-1", &[(443, Protocol::Tcp), (80, Protocol::Tcp)]);
    let (rec, p, _) = converge(&e.cloud, &d, Recorded::default(), 30).await;
    let name = d.target.id.resource_name();
    let ip = p.address.clone().expect("reserved address");
    assert!(ip.starts_with("203.0.113."), "{ip}");
    assert_eq!(p.vm_status.as_deref(), Some("RUNNING"));
    assert_eq!(
        kinds(&e.emu),
        [
            "address",
            // The forwards' rule and the tunnel's own rule.
            "firewall",
            "firewall",
            "instance",
            "network",
            "secret",
            "serviceAccount"
        ]
    );

    // What was created, as GCP holds it.
    let fw = e
        .emu
        .get("firewall", PROJECT, "global", &name)
        .expect("firewall");
    assert_eq!(fw["targetTags"], json!([name]));
    assert_eq!(fw["sourceRanges"], json!(["0.0.0.0/0"]));
    assert_eq!(
        fw["allowed"],
        json!([{"IPProtocol": "udp", "ports": ["51820"]}, {"IPProtocol": "tcp", "ports": ["80", "443"]}])
    );
    // The WireGuard port has a rule of its own, from anywhere.
    let tunnel = e
        .emu
        .get("firewall", PROJECT, "global", &format!("{name}-wg"))
        .expect("tunnel firewall");
    assert_eq!(tunnel["targetTags"], json!([name]));
    assert_eq!(tunnel["sourceRanges"], json!(["0.0.0.0/0"]));
    assert_eq!(
        tunnel["allowed"],
        json!([{"IPProtocol": "udp", "ports": ["51820"]}])
    );
    let inst = e
        .emu
        .get("instance", PROJECT, "us-central1-a", &name)
        .expect("instance");
    assert_eq!(
        inst["networkInterfaces"][0]["accessConfigs"][0]["natIP"],
        json!(ip)
    );
    assert_eq!(
        inst["shieldedInstanceConfig"]["enableSecureBoot"],
        json!(true)
    );
    assert_eq!(inst["labels"]["wgnet-gateway-uid"], json!("uid-1"));
    // GCP's shapes (issue 18, item 7): full URLs and server-filled fields, no
    // insert-only `initializeParams`; every pass above read them and stayed quiet.
    assert!(
        inst["zone"]
            .as_str()
            .is_some_and(|z| z.ends_with("/projects/wgnet-test/zones/us-central1-a")),
        "{}",
        inst["zone"]
    );
    assert!(
        inst["machineType"]
            .as_str()
            .is_some_and(|m| m.ends_with("/zones/us-central1-a/machineTypes/e2-small"))
    );
    assert!(
        inst["disks"][0]["source"].is_string() && inst["disks"][0]["initializeParams"].is_null()
    );
    assert!(inst["networkInterfaces"][0]["subnetwork"].is_string());
    assert!(inst["tags"]["fingerprint"].is_string() && inst["cpuPlatform"].is_string());
    let items = inst["metadata"]["items"]
        .as_array()
        .expect("metadata items");
    for key in [
        "enable-guest-attributes",
        "block-project-ssh-keys",
        "wgnet-listen-port",
    ] {
        assert!(items.iter().any(|i| i["key"] == key), "metadata {key}");
    }
    let email = format!("{name}@{PROJECT}.iam.gserviceaccount.com");
    assert_eq!(inst["serviceAccounts"][0]["email"], json!(email));
    assert_eq!(
        e.emu.secret_payload(PROJECT, &name).as_deref(),
        Some(d.vm_key.expose())
    );
    let policy = e
        .emu
        .get("secretPolicy", PROJECT, "global", &name)
        .expect("policy");
    assert_eq!(
        policy["bindings"],
        json!([{"role": "roles/secretmanager.secretAccessor", "members": [format!("serviceAccount:{email}")]}])
    );
    // Every body the crate sent passed the discovery-schema checks.
    assert!(
        e.emu.request_log().iter().all(|c| c.status != 400),
        "{:?}",
        e.emu.request_log()
    );

    // An unchanged resync writes nothing and makes at most five reads: one list per kind
    // for the whole project (issue 23), and nothing more while that snapshot is current.
    e.emu.clear_request_log();
    let again = e.cloud.ensure(&d, &rec).await;
    assert!(again.ready, "{:?}", again.errors);
    assert_eq!(again.writes, 0);
    let log = e.emu.request_log();
    assert!(log.iter().all(|c| !c.is_write()), "{log:?}");
    assert!(log.len() <= 5, "{log:?}");
    e.emu.clear_request_log();
    let quiet = e.cloud.ensure(&d, &again.recorded).await;
    assert!(quiet.ready && quiet.writes == 0);
    assert!(e.emu.request_log().is_empty(), "{:?}", e.emu.request_log());

    // Changing forwards patches the firewall only: same VM, same IP.
    let mut d2 = d.clone();
    d2.ports = vec![(443, Protocol::Tcp), (5353, Protocol::Udp)];
    e.emu.clear_request_log();
    let (rec, p2, _) = converge(&e.cloud, &d2, again.recorded, 10).await;
    let writes: Vec<_> = e
        .emu
        .request_log()
        .into_iter()
        .filter(|c| c.is_write())
        .collect();
    assert_eq!(writes.len(), 1, "{writes:?}");
    assert_eq!(writes[0].method, "PATCH");
    assert_eq!(p2.address.as_deref(), Some(ip.as_str()));
    let inst2 = e
        .emu
        .get("instance", PROJECT, "us-central1-a", &name)
        .expect("instance");
    assert_eq!(inst2["id"], inst["id"]);
    let fw = e
        .emu
        .get("firewall", PROJECT, "global", &name)
        .expect("firewall");
    assert_eq!(
        fw["allowed"],
        json!([{"IPProtocol": "udp", "ports": ["5353", "51820"]}, {"IPProtocol": "tcp", "ports": ["443"]}])
    );

    // Orphan sweeps find it by labels and markers.
    let owned = e.cloud.list_owned(PROJECT).await.expect("list owned");
    assert_eq!(owned.len(), 1);
    assert_eq!(owned[0].target.uid, "uid-1");
    assert_eq!(owned[0].target.zone, "us-central1-a");

    teardown(&e.cloud, &d.target, rec, 30).await;
    assert!(e.emu.inventory().is_empty(), "{:?}", e.emu.inventory());
    assert!(e.cloud.list_owned(PROJECT).await.expect("list").is_empty());
}

#[tokio::test]
async fn drift_is_repaired_with_the_same_address() {
    let mut e = env(LatencyProfile::instant()).await;
    // Every pass reads back (the operator's read back once a verify window, and a VM
    // found RUNNING is read again within half a minute).
    e.cloud.set_verify_every(Duration::ZERO);
    let d = desired("drift", "uid-2", &[(443, Protocol::Tcp)]);
    let (rec, p, _) = converge(&e.cloud, &d, Recorded::default(), 20).await;
    let name = d.target.id.resource_name();
    let ip = p.address.expect("address");

    // Spot preemption: the VM is started again.
    assert!(e.emu.preempt_instance(PROJECT, "us-central1-a", &name));
    let (rec, p, _) = converge(&e.cloud, &d, rec, 10).await;
    assert_eq!(p.vm_status.as_deref(), Some("RUNNING"));

    // Deleted out of band: recreated with the same reserved IP.
    assert!(
        e.emu
            .remove_resource("instance", PROJECT, "us-central1-a", &name)
    );
    let (rec, p, _) = converge(&e.cloud, &d, rec, 10).await;
    assert_eq!(p.address.as_deref(), Some(ip.as_str()));
    let inst = e
        .emu
        .get("instance", PROJECT, "us-central1-a", &name)
        .expect("recreated");
    assert_eq!(
        inst["networkInterfaces"][0]["accessConfigs"][0]["natIP"],
        json!(ip)
    );

    // Someone opened SSH on the firewall: restored.
    assert!(e.emu.edit_firewall(
        PROJECT,
        &name,
        "allowed",
        json!([{"IPProtocol": "tcp", "ports": ["22"]}])
    ));
    let (rec, _, _) = converge(&e.cloud, &d, rec, 10).await;
    let fw = e
        .emu
        .get("firewall", PROJECT, "global", &name)
        .expect("firewall");
    assert_eq!(
        fw["allowed"],
        json!([{"IPProtocol": "udp", "ports": ["51820"]}, {"IPProtocol": "tcp", "ports": ["443"]}])
    );
    teardown(&e.cloud, &d.target, rec, 20).await;
    assert!(e.emu.inventory().is_empty());
}

/// Issue 19, item 13: a deleted service account, secret, IAM grant or network is recreated
/// on the next pass that reads them back (every pass here; the operator's are every resync).
/// Before, a status that recorded them as done was trusted forever.
#[tokio::test]
async fn drift_of_the_account_secret_grant_and_network_is_repaired() {
    const ROLE: &str = "roles/secretmanager.secretAccessor";
    let mut e = env(LatencyProfile::instant()).await;
    e.cloud.set_verify_every(Duration::ZERO);
    let d = desired("drift2", "uid-drift2", &[(443, Protocol::Tcp)]);
    let (mut rec, _, _) = converge(&e.cloud, &d, Recorded::default(), 20).await;
    let name = d.target.id.resource_name();
    let email = format!("{name}@{PROJECT}.iam.gserviceaccount.com");
    let member = format!("serviceAccount:{email}");
    let exists = |kind: &str, scope: &str, n: &str| e.emu.get(kind, PROJECT, scope, n).is_some();

    // Someone removed the grant: the VM could no longer read its key.
    assert!(e.emu.clear_secret_bindings(PROJECT, &name));
    (rec, _, _) = converge(&e.cloud, &d, rec, 10).await;
    assert_eq!(
        e.emu.secret_members(PROJECT, &name, ROLE),
        vec![member.clone()]
    );

    // The account was deleted: recreated, and granted again (a new account of the same
    // email does not inherit the old one's grants).
    assert!(
        e.emu
            .remove_resource("serviceAccount", PROJECT, "global", &email)
    );
    (rec, _, _) = converge(&e.cloud, &d, rec, 10).await;
    assert!(exists("serviceAccount", "global", &email));
    assert!(
        e.emu.secret_members(PROJECT, &name, ROLE).contains(&member),
        "{:?}",
        e.emu.secret_members(PROJECT, &name, ROLE)
    );

    // The secret was deleted: recreated with the key, and granted again.
    assert!(e.emu.remove_resource("secret", PROJECT, "global", &name));
    (rec, _, _) = converge(&e.cloud, &d, rec, 10).await;
    assert!(exists("secret", "global", &name));
    assert_eq!(
        e.emu.secret_members(PROJECT, &name, ROLE),
        vec![member.clone()]
    );

    // A cleanup script deleted the VM, its firewall rules and the network: all come back.
    assert!(
        e.emu
            .remove_resource("instance", PROJECT, "us-central1-a", &name)
    );
    for fw in [name.clone(), format!("{name}-wg")] {
        e.emu.remove_resource("firewall", PROJECT, "global", &fw);
    }
    assert!(e.emu.remove_resource("network", PROJECT, "global", "wgnet"));
    (rec, _, _) = converge(&e.cloud, &d, rec, 20).await;
    assert!(exists("network", "global", "wgnet"));
    assert!(exists("instance", "us-central1-a", &name));
    teardown(&e.cloud, &d.target, rec, 20).await;
    assert!(e.emu.inventory().is_empty(), "{:?}", e.emu.inventory());
}

/// Issue 19, item 10 (GCP half): the custom role in scripts/gcp-operator-role.yaml holds
/// exactly the permissions of the calls the crate makes over a gateway's whole life:
/// create, report, change, preemption, key rotation, adoption by a recreated Gateway, drift
/// repair, the orphan sweep's listings, waiting on operations and deletion.
#[tokio::test]
async fn the_custom_role_holds_exactly_the_permissions_the_crate_uses() {
    use std::collections::BTreeSet;
    let mut e = env(LatencyProfile::gcp_typical().scaled_by(0.01)).await;
    e.cloud.set_verify_every(Duration::ZERO);
    let mut d = desired("role", "uid-role-1", &[(443, Protocol::Tcp)]);
    let (rec, _, _) = converge(&e.cloud, &d, Recorded::default(), 40).await;
    e.cloud.vm_report(&d.target).await.expect("report");
    d.ports.push((53, Protocol::Udp));
    d.key_version = 2;
    d.vm_key = wgnet_cloud::SecretBytes::new(vec![9; 32]);
    let (rec, _, _) = converge(&e.cloud, &d, rec, 40).await;
    let name = d.target.id.resource_name();
    assert!(e.emu.preempt_instance(PROJECT, "us-central1-a", &name));
    let (rec, _, _) = converge(&e.cloud, &d, rec, 40).await;
    assert!(e.emu.clear_secret_bindings(PROJECT, &name));
    let (_, _, _) = converge(&e.cloud, &d, rec, 40).await;
    // The Gateway recreated under its name (a new uid) adopts and relabels.
    d.target.id.uid = "uid-role-2".into();
    let (rec, _, _) = converge(&e.cloud, &d, Recorded::default(), 40).await;
    e.cloud.list_owned(PROJECT).await.expect("sweep listing");
    // A steady resync reads the project's snapshot (lists of every kind).
    e.cloud.set_verify_every(Duration::from_secs(300));
    let steady = e.cloud.ensure(&d, &rec).await;
    assert!(steady.ready, "{:?}", steady.errors);
    teardown(&e.cloud, &d.target, rec, 40).await;

    let mut used = BTreeSet::new();
    for call in e.emu.request_log() {
        let p = wgnet_tests::gcp::permissions::permissions_of(&call)
            .unwrap_or_else(|c| panic!("no permission rule for {c}"));
        used.extend(p.into_iter().map(str::to_owned));
    }
    let role = |file: &str| -> BTreeSet<String> {
        let v: serde_yaml::Value = serde_yaml::from_str(
            &std::fs::read_to_string(wgnet_tests::repo_root().join("scripts").join(file))
                .expect("role file"),
        )
        .expect("role yaml");
        v["includedPermissions"]
            .as_sequence()
            .expect("includedPermissions")
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect()
    };
    let project = role("gcp-operator-role.yaml");
    let secrets = role("gcp-operator-secrets-role.yaml");
    // The name-scoped role holds only rights on one secret: creating and listing secrets
    // are checked on the project, where a condition on the secret's name cannot hold.
    assert!(
        secrets.iter().all(|p| p.starts_with("secretmanager.")
            && p != "secretmanager.secrets.create"
            && p != "secretmanager.secrets.list"),
        "{secrets:?}"
    );
    assert!(
        !project.iter().any(|p| secrets.contains(p)),
        "no permission is in both roles"
    );
    let listed: BTreeSet<String> = project.union(&secrets).cloned().collect();
    assert_eq!(
        listed,
        used,
        "the two role files in scripts/ must list exactly: {}",
        used.iter()
            .map(|p| format!("- {p}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// Issue 18, item 1: accepted operations that end in error. A Spot VM whose zone has no
/// capacity (on insert, then on restart after a preemption) and a quota hit are reported
/// with their own reason and retried on later passes, never wedged; a failed insert leaves
/// nothing behind and the next pass creates the VM.
#[tokio::test]
async fn failed_operations_are_reported_and_retried() {
    let e = env(LatencyProfile::gcp_typical().scaled_by(0.01)).await;
    let mut d = desired("spot", "uid-spot", &[(443, Protocol::Tcp)]);
    d.spot = true;
    let fail = |path: &str, code: &str, n: usize| Fault {
        method: Some("POST".into()),
        path_contains: path.into(),
        remaining: Some(n),
        action: FaultAction::FailOperation(code.into(), format!("{code} (injected)")),
    };
    e.emu
        .add_fault(fail("/instances", "ZONE_RESOURCE_POOL_EXHAUSTED", 1));
    // Passes until the failure is reported (the operation fails after it was accepted).
    let mut rec = Recorded::default();
    let mut seen = None;
    for _ in 0..40 {
        let p = e.cloud.ensure(&d, &rec).await;
        rec = p.recorded.clone();
        if let Some(err) = p.errors.iter().find(|x| x.is_capacity_exhausted()) {
            seen = Some(err.reason_code());
            break;
        }
        if !rec.pending.is_empty() {
            e.cloud.wait_any(&d.target, &rec).await;
        }
    }
    assert_eq!(seen, Some("CapacityExhausted"));
    let name = d.target.id.resource_name();
    assert!(
        e.emu
            .get("instance", PROJECT, "us-central1-a", &name)
            .is_none(),
        "a failed insert leaves no VM"
    );
    let (rec, p, _) = converge(&e.cloud, &d, rec, 40).await;
    assert_eq!(p.vm_status.as_deref(), Some("RUNNING"));

    // Preempted, and the restart finds no capacity twice: RUNNING again afterwards.
    assert!(e.emu.preempt_instance(PROJECT, "us-central1-a", &name));
    e.emu
        .add_fault(fail("/start", "ZONE_RESOURCE_POOL_EXHAUSTED", 2));
    let (rec, p, _) = converge(&e.cloud, &d, rec, 60).await;
    assert_eq!(p.vm_status.as_deref(), Some("RUNNING"));

    // A quota hit on a firewall change is QuotaExceeded, then heals.
    let mut d2 = d.clone();
    d2.ports.push((8443, Protocol::Tcp));
    e.emu.add_fault(Fault {
        method: Some("PATCH".into()),
        path_contains: "/firewalls/".into(),
        remaining: Some(1),
        action: FaultAction::FailOperation(
            "QUOTA_EXCEEDED".into(),
            "Quota exceeded (injected)".into(),
        ),
    });
    let mut quota = None;
    let mut r2 = rec.clone();
    for _ in 0..40 {
        let p = e.cloud.ensure(&d2, &r2).await;
        r2 = p.recorded.clone();
        if let Some(err) = p.errors.iter().find(|x| x.is_quota()) {
            quota = Some((err.reason_code(), err.retry_after()));
            break;
        }
        if !r2.pending.is_empty() {
            e.cloud.wait_any(&d2.target, &r2).await;
        }
    }
    assert_eq!(quota, Some(("QuotaExceeded", Duration::from_secs(60))));
    let (rec, _, _) = converge(&e.cloud, &d2, r2, 40).await;
    teardown(&e.cloud, &d2.target, rec, 40).await;
    assert!(e.emu.inventory().is_empty(), "{:?}", e.emu.inventory());
}

/// Issue 18, item 4: GCP's length limits (service account displayName 100 bytes and
/// description 256, labels and names 63), with the longest namespace (63) and Gateway name
/// (52). Before, the display name was 130 bytes and the ownership marker 290: such a
/// Gateway never provisioned.
#[tokio::test]
async fn the_longest_namespace_and_name_provision_sweep_and_delete() {
    let e = env(LatencyProfile::instant()).await;
    let mut d = desired(&"g".repeat(52), "uid-long", &[(443, Protocol::Tcp)]);
    d.target.id.namespace = "n".repeat(63);
    let (rec, p, _) = converge(&e.cloud, &d, Recorded::default(), 20).await;
    assert!(p.ready);
    let owned = e.cloud.list_owned(PROJECT).await.expect("listing");
    let mine: Vec<_> = owned
        .iter()
        .filter(|o| o.target.namespace == d.target.id.namespace)
        .collect();
    assert_eq!(
        mine.len(),
        1,
        "one gateway, whichever resource names it: {owned:?}"
    );
    assert!(mine[0].kinds.contains(&"serviceAccount"), "{:?}", mine[0]);
    assert_eq!(mine[0].target.zone, "us-central1-a");
    teardown(&e.cloud, &d.target, rec, 20).await;
    assert!(e.emu.inventory().is_empty());
}

/// Issue 18, item 3: every list is paged (here two items a page, as GCP may page at any
/// size), and the orphan sweep's listings follow `nextPageToken`. Before, it read the first
/// page only, and whatever came later (the 21st service account on GCP) leaked.
#[tokio::test]
async fn the_sweep_reads_every_page() {
    let e = env(LatencyProfile::instant()).await;
    let mut recs = Vec::new();
    for i in 0..5 {
        let d = desired(
            &format!("paged-{i}"),
            &format!("uid-paged-{i}"),
            &[(443, Protocol::Tcp)],
        );
        let (rec, _, _) = converge(&e.cloud, &d, Recorded::default(), 20).await;
        recs.push((d, rec));
    }
    e.emu.set_page_cap(Some(2));
    let owned = e.cloud.list_owned(PROJECT).await.expect("listing");
    assert_eq!(owned.len(), 5, "{owned:?}");
    for o in &owned {
        for kind in ["firewall", "secret", "serviceAccount"] {
            assert!(o.kinds.contains(&kind), "{kind} of {:?}", o.target);
        }
    }
    e.emu.set_page_cap(None);
    for (d, rec) in recs {
        teardown(&e.cloud, &d.target, rec, 20).await;
    }
    assert!(e.emu.inventory().is_empty());
}

/// Issue 18, item 6: a project that does not exist answers 404 naming the project. That
/// is an error (ProjectNotFound), never "the resource is absent": a pass must not try to
/// create into it as if it were empty, and a delete must not call everything gone.
#[tokio::test]
async fn a_missing_project_is_an_error_not_an_empty_project() {
    let e = env(LatencyProfile::instant()).await;
    let mut d = desired("lost", "uid-lost", &[(443, Protocol::Tcp)]);
    d.target.project = "no-such-project-1".into();
    let p = e.cloud.ensure(&d, &Recorded::default()).await;
    assert!(!p.ready);
    assert!(
        p.errors
            .iter()
            .any(|x| x.reason_code() == "ProjectNotFound"),
        "{:?}",
        p.errors
    );
    assert_eq!(
        p.writes, 0,
        "nothing is created into a project that is not there"
    );
    let del = e.cloud.delete(&d.target, &Recorded::default()).await;
    assert!(!del.done, "a delete in a missing project is not a success");
    assert!(
        del.errors.iter().all(|x| x.is_project_not_found()) && !del.errors.is_empty(),
        "{:?}",
        del.errors
    );
}

/// Issue 18, item 5: real machine types of any general-purpose family provision, and a
/// zone GCP does not have is a clear InvalidArgument naming it (retried slowly, never a
/// tight loop), and deletion still cleans up what was created.
#[tokio::test]
async fn real_machine_types_work_and_unknown_zones_are_refused() {
    let e = env(LatencyProfile::instant()).await;
    let mut d = desired("n2d", "uid-n2d", &[(443, Protocol::Tcp)]);
    d.machine_type = "n2d-standard-2".into();
    let (rec, _, _) = converge(&e.cloud, &d, Recorded::default(), 20).await;
    teardown(&e.cloud, &d.target, rec, 20).await;

    let mut d = desired("zoneless", "uid-zoneless", &[(443, Protocol::Tcp)]);
    d.target.zone = "us-central1-z".into();
    let mut rec = Recorded::default();
    let mut refused = None;
    for _ in 0..10 {
        let p = e.cloud.ensure(&d, &rec).await;
        rec = p.recorded.clone();
        if let Some(err) = p
            .errors
            .iter()
            .find(|x| x.reason_code() == "InvalidArgument")
        {
            refused = Some((err.to_string(), err.retry_after()));
            break;
        }
    }
    let (message, retry) = refused.expect("an InvalidArgument error");
    assert!(message.contains("us-central1-z"), "{message}");
    assert_eq!(retry, Duration::from_secs(300));
    teardown(&e.cloud, &d.target, rec, 20).await;
    assert!(e.emu.inventory().is_empty(), "{:?}", e.emu.inventory());
}

/// Issue 23, goal 3: a per-project request budget keeps the operator under the project's
/// API quota however many Gateways it works on at once. Fifteen gateways provisioned together
/// against a quota of 60 calls per group per second: without a budget the emulator refuses
/// calls for the quota; with 25 calls a second (bursts of 25, so at most 50 in any second)
/// it refuses none, and every gateway still converges.
#[tokio::test]
async fn the_request_budget_keeps_a_project_under_its_quota() {
    use futures_util::future::join_all;
    async fn provision(cloud: &wgnet_cloud::gcp::GcpCloud, tag: &str) -> Vec<Recorded> {
        let ds: Vec<_> = (0..15)
            .map(|i| {
                desired(
                    &format!("{tag}{i}"),
                    &format!("uid-{tag}{i}"),
                    &[(443, Protocol::Tcp)],
                )
            })
            .collect();
        join_all(
            ds.iter()
                .map(|d| async move { converge(cloud, d, Recorded::default(), 200).await.0 }),
        )
        .await
    }
    let refused = |e: &Env| {
        e.emu
            .request_log()
            .iter()
            .filter(|c| matches!(c.status, 403 | 429))
            .count()
    };
    // Without a budget (the fixtures' is effectively unlimited).
    let e = env(LatencyProfile::instant()).await;
    e.emu.set_quota(Some(60), Duration::from_secs(1));
    provision(&e.cloud, "free").await;
    let unbudgeted = refused(&e);
    assert!(unbudgeted > 0, "the scenario must press the quota");

    // With a budget.
    let e = env(LatencyProfile::instant()).await;
    e.emu.set_quota(Some(60), Duration::from_secs(1));
    let key = e._dir.0.join("key.json");
    let mut cloud = cloud_for(&e.emu, key, INSTALL, "wgnet").await;
    cloud.set_budget(wgnet_cloud::budget::Budget {
        per_second: 25.0,
        burst: 25.0,
    });
    let recs = provision(&cloud, "kept").await;
    assert_eq!(
        refused(&e),
        0,
        "no call refused for quota ({unbudgeted} without the budget)"
    );
    assert_eq!(recs.len(), 15);
    eprintln!(
        "budget: {unbudgeted} calls refused for quota without it, 0 with it, {} calls in all",
        e.emu.request_log().len()
    );
}

#[tokio::test]
async fn lost_answers_on_every_write_converge_without_duplicates() {
    let e = env(LatencyProfile::instant()).await;
    for (method, path) in [
        ("POST", "/global/networks"),
        ("POST", "/global/firewalls"),
        ("POST", "/addresses"),
        ("POST", "/instances"),
        ("POST", "/serviceAccounts"),
        ("POST", "/secrets"),
        ("POST", ":addVersion"),
        ("POST", ":setIamPolicy"),
    ] {
        e.emu.add_fault(Fault {
            method: Some(method.into()),
            path_contains: path.into(),
            remaining: Some(1),
            action: FaultAction::DropResponse,
        });
    }
    let d = desired("lossy", "uid-3", &[(443, Protocol::Tcp)]);
    let (rec, _, _) = converge(&e.cloud, &d, Recorded::default(), 20).await;
    let name = d.target.id.resource_name();
    // Every drop happened (the writes were applied, their answers lost) ...
    let dropped = e.emu.request_log().iter().filter(|c| c.status == 0).count();
    assert_eq!(dropped, 8);
    // ... and each resource exists exactly once, with one key version.
    assert_eq!(
        kinds(&e.emu),
        [
            "address",
            // The forwards' rule and the tunnel's own rule.
            "firewall",
            "firewall",
            "instance",
            "network",
            "secret",
            "serviceAccount"
        ]
    );
    assert_eq!(e.emu.secret_versions(PROJECT, &name), Some(1));

    // A fresh start from nothing recorded (status lost) adopts everything and changes
    // nothing: the only writes are inserts GCP refuses as alreadyExists (a rule or an
    // address never recorded is inserted rather than read first).
    e.emu.clear_request_log();
    let p = e.cloud.ensure(&d, &Recorded::default()).await;
    let p = if p.ready {
        p
    } else {
        e.cloud.ensure(&d, &p.recorded).await
    };
    assert!(p.ready, "{:?} {:?}", p.waiting, p.errors);
    let accepted: Vec<_> = e
        .emu
        .request_log()
        .into_iter()
        .filter(|c| c.is_write() && c.status != 409)
        .map(|c| format!("{} {} {}", c.method, c.path, c.status))
        .collect();
    assert!(accepted.is_empty(), "{accepted:?}");
    assert_eq!(e.emu.secret_versions(PROJECT, &name), Some(1));
    teardown(&e.cloud, &d.target, rec, 20).await;
    assert!(e.emu.inventory().is_empty());
}

/// Issue 18's proof: a seeded campaign of 200 create/change/delete cycles against every
/// fault the emulator has, all at once: 429/500/503 answers, writes served and left
/// unanswered (so retries reuse their requestId and get the operation replayed),
/// operations failing after they were accepted (capacity, quota, internal), one-item
/// pages, and a long-lived neighbour sharing the network (so every network delete fails
/// "in use"). After each cycle only the neighbour's resources are left, never two of
/// anything; at the end nothing is.
#[tokio::test]
async fn seeded_fault_campaign_leaks_nothing() {
    const SEED: u64 = 0x5eed;
    const CYCLES: usize = 200;
    let e = env(LatencyProfile::polls()).await;
    let keeper = desired("keeper", "uid-keeper", &[(22, Protocol::Tcp)]);
    let (keeper_rec, _, _) = converge(&e.cloud, &keeper, Recorded::default(), 20).await;
    let baseline = e.emu.inventory().len();
    e.emu.random_failures(0.15, SEED, &[429, 500, 503]);
    e.emu.random_write_faults(
        0.1,
        0.1,
        &[
            "ZONE_RESOURCE_POOL_EXHAUSTED",
            "QUOTA_EXCEEDED",
            "INTERNAL_ERROR",
        ],
    );
    e.emu.set_page_cap(Some(1));
    let (mut answered_errors, mut unanswered, mut passes) = (0, 0, 0);
    for cycle in 0..CYCLES {
        let mut d = desired(
            &format!("gw{cycle}"),
            &format!("uid-c{cycle}"),
            &[(443, Protocol::Tcp), (53, Protocol::Udp)],
        );
        let (rec, _, n) = converge(&e.cloud, &d, Recorded::default(), 300).await;
        passes += n;
        d.ports.push((8443, Protocol::Tcp));
        let (rec, _, n) = converge(&e.cloud, &d, rec, 300).await;
        passes += n;
        let name = d.target.id.resource_name();
        let mine: Vec<&str> = e
            .emu
            .inventory()
            .iter()
            .filter(|i| i.name.starts_with(&name))
            .map(|i| i.kind)
            .collect();
        let mut sorted = mine.clone();
        sorted.sort_unstable();
        assert_eq!(
            sorted,
            [
                "address",
                "firewall",
                "firewall",
                "instance",
                "secret",
                "serviceAccount"
            ],
            "cycle {cycle}: one of each, never two"
        );
        if cycle % 25 == 0 {
            let owned = e.cloud.list_owned(PROJECT).await;
            if let Ok(owned) = owned {
                assert_eq!(owned.len(), 2, "cycle {cycle}: {owned:?}");
            }
        }
        teardown(&e.cloud, &d.target, rec, 300).await;
        assert_eq!(
            e.emu.inventory().len(),
            baseline,
            "cycle {cycle}: only the neighbour is left: {:?}",
            e.emu.inventory()
        );
        for c in e.emu.request_log() {
            match c.status {
                0 => unanswered += 1,
                429 | 500 | 503 => answered_errors += 1,
                _ => {}
            }
        }
        e.emu.clear_request_log();
    }
    e.emu.clear_faults();
    e.emu.set_page_cap(None);
    teardown(&e.cloud, &keeper.target, keeper_rec, 40).await;
    assert!(e.emu.inventory().is_empty(), "{:?}", e.emu.inventory());
    // The campaign really injected faults (figures for the issue note).
    let failed_ops = e.emu.failed_operations();
    eprintln!(
        "campaign seed {SEED:#x}: {CYCLES} cycles, {passes} converge passes, {answered_errors} injected error answers, {unanswered} unanswered writes, {failed_ops} failed operations, 0 leaked, 0 duplicated"
    );
    assert!(
        answered_errors > 400 && unanswered > 100 && failed_ops > 100,
        "{answered_errors} / {unanswered} / {failed_ops}"
    );
}

#[tokio::test]
async fn iam_propagation_delay_is_waited_out() {
    let mut profile = LatencyProfile::instant();
    profile.iam_propagation = Duration::from_millis(400);
    let e = env(profile).await;
    let d = desired("iam", "uid-4", &[]);
    let first = e.cloud.ensure(&d, &Recorded::default()).await;
    assert!(!first.ready);
    assert!(first.errors.is_empty(), "{:?}", first.errors);
    assert!(
        first
            .waiting
            .iter()
            .any(|w| w.contains("to propagate in IAM")),
        "{:?}",
        first.waiting
    );
    // Passes go on waiting (never failing) until IAM has caught up.
    let rec = std::sync::Mutex::new(first.recorded);
    let bound = wgnet_tests::until(Duration::from_secs(10), || async {
        let r = rec.lock().expect("rec").clone();
        let p = e.cloud.ensure(&d, &r).await;
        assert!(p.errors.is_empty(), "{:?}", p.errors);
        *rec.lock().expect("rec") = p.recorded.clone();
        p.recorded.iam_bound.then_some(())
    })
    .await;
    assert!(bound.is_some(), "the binding never landed");
    let (rec, _, _) = converge(&e.cloud, &d, rec.into_inner().expect("rec"), 10).await;
    assert!(rec.iam_bound);
    teardown(&e.cloud, &d.target, rec, 20).await;
}

#[tokio::test]
async fn permission_denied_surfaces_once_with_the_message() {
    let e = env(LatencyProfile::instant()).await;
    e.emu.add_fault(Fault {
        method: Some("POST".into()),
        path_contains: "/global/firewalls".into(),
        remaining: None,
        action: FaultAction::Deny(
            "Required 'compute.firewalls.create' permission for 'projects/wgnet-test/global/firewalls/x'".into(),
        ),
    });
    let d = desired("denied", "uid-5", &[(443, Protocol::Tcp)]);
    let mut rec = Recorded::default();
    let mut last = None;
    for _ in 0..3 {
        let p = e.cloud.ensure(&d, &rec).await;
        rec = p.recorded.clone();
        last = Some(p);
    }
    let p = last.expect("ran");
    assert!(!p.ready);
    let err = p
        .errors
        .iter()
        .find(|e| e.is_permission_denied())
        .expect("permission error");
    assert_eq!(err.reason_code(), "PermissionDenied");
    assert!(
        err.to_string().contains("compute.firewalls.create"),
        "{err}"
    );
    assert!(err.retry_after() >= Duration::from_secs(60));
    // Never retried inside a pass: one attempt per rule (forwards, tunnel) per pass.
    let inserts = e
        .emu
        .request_log()
        .iter()
        .filter(|c| c.method == "POST" && c.path.ends_with("/global/firewalls"))
        .count();
    assert_eq!(inserts, 6);
    // Everything else still advanced.
    assert!(
        rec.service_account_email.is_some()
            && rec.secret_version.is_some()
            && rec.instance.is_some()
    );
    e.emu.clear_faults();
    let (rec, _, _) = converge(&e.cloud, &d, rec, 10).await;
    teardown(&e.cloud, &d.target, rec, 20).await;
}

#[tokio::test]
async fn quota_exhaustion_backs_off_and_reports() {
    let e = env(LatencyProfile::instant()).await;
    e.emu.set_quota_per_minute(Some(2));
    let d = desired("quota", "uid-6", &[(443, Protocol::Tcp)]);
    let p = e.cloud.ensure(&d, &Recorded::default()).await;
    assert!(!p.ready);
    let err = p.errors.iter().find(|e| e.is_quota()).expect("quota error");
    assert_eq!(err.reason_code(), "QuotaExceeded");
    assert_eq!(p.requeue_after(), Some(Duration::from_secs(60)));
    // Bounded: each call gives up after its retries, nothing loops.
    let rejected = e
        .emu
        .request_log()
        .iter()
        .filter(|c| c.status == 403 || c.status == 429)
        .count();
    assert!(rejected > 0 && rejected <= 6 * 8, "{rejected}");
    e.emu.set_quota_per_minute(None);
    let (rec, _, _) = converge(&e.cloud, &d, p.recorded, 10).await;
    teardown(&e.cloud, &d.target, rec, 20).await;
}

#[tokio::test]
async fn two_gateways_share_the_network_until_the_last_is_gone() {
    let e = env(LatencyProfile::instant()).await;
    let a = desired("a", "uid-a", &[(443, Protocol::Tcp)]);
    let b = desired("b", "uid-b", &[(8443, Protocol::Tcp)]);
    let ((ra, pa, _), (rb, pb, _)) = tokio::join!(
        converge(&e.cloud, &a, Recorded::default(), 20),
        converge(&e.cloud, &b, Recorded::default(), 20)
    );
    assert_ne!(pa.address, pb.address);
    assert_ne!(a.target.id.resource_name(), b.target.id.resource_name());
    let networks = e
        .emu
        .inventory()
        .into_iter()
        .filter(|i| i.kind == "network")
        .count();
    assert_eq!(networks, 1);
    teardown(&e.cloud, &a.target, ra, 20).await;
    assert_eq!(
        kinds(&e.emu),
        [
            "address",
            // The forwards' rule and the tunnel's own rule.
            "firewall",
            "firewall",
            "instance",
            "network",
            "secret",
            "serviceAccount"
        ]
    );
    // The survivor is untouched and still ready.
    let again = e.cloud.ensure(&b, &rb).await;
    assert!(again.ready && again.writes == 0, "{:?}", again.errors);
    teardown(&e.cloud, &b.target, rb, 20).await;
    assert!(e.emu.inventory().is_empty());
}

#[tokio::test]
async fn name_collision_is_an_error_and_never_deleted() {
    let e = env(LatencyProfile::instant()).await;
    let d = desired("taken", "uid-7", &[]);
    // Another install's gateway with the same namespace/name and cluster id.
    let mut other = desired("taken", "uid-x", &[]);
    other.target.id.cluster = CLUSTER.into();
    // Same project, different install label.
    let cloud2 = env_with_install(&e, "other-install").await;
    let (rec2, _, _) = converge(&cloud2, &other, Recorded::default(), 20).await;
    let p = e.cloud.ensure(&d, &Recorded::default()).await;
    let err = p
        .errors
        .iter()
        .find(|e| e.reason_code() == "NameCollision")
        .expect("collision");
    assert!(
        err.to_string().contains("does not belong to this gateway"),
        "{err}"
    );
    // Deleting ours leaves theirs alone.
    teardown(&e.cloud, &d.target, p.recorded, 20).await;
    assert!(kinds(&e.emu).contains(&"instance"));
    teardown(&cloud2, &other.target, rec2, 20).await;
    assert!(e.emu.inventory().is_empty());
}

async fn env_with_install(e: &Env, install: &str) -> wgnet_cloud::gcp::GcpCloud {
    let key = e._dir.0.join(format!("{install}.json"));
    e.emu
        .write_key_file("other@wgnet-test.iam.gserviceaccount.com", &key)
        .expect("key");
    cloud_for(&e.emu, key, install, "wgnet-other").await
}

#[tokio::test]
async fn tokens_come_from_the_key_file_and_are_refreshed() {
    // gcp_auth renews tokens 20 s before expiry, so a 21 s lifetime renews after about 1 s.
    let mut e = env_with(LatencyProfile::instant(), Duration::from_secs(21)).await;
    // Every pass reads, so the passes below keep calling GCP.
    e.cloud.set_verify_every(Duration::ZERO);
    let d = desired("tok", "uid-8", &[]);
    let (rec, _, _) = converge(&e.cloud, &d, Recorded::default(), 20).await;
    let before = e.emu.tokens_issued();
    assert!(before >= 1);
    // Passes keep working while the token nears its end, and one of them renews it.
    let renewed = wgnet_tests::until(Duration::from_secs(10), || async {
        let p = e.cloud.ensure(&d, &rec).await;
        assert!(p.ready, "{:?}", p.errors);
        (e.emu.tokens_issued() > before).then_some(p)
    })
    .await;
    let p = renewed.expect("token was not refreshed");
    // No call was ever unauthenticated.
    assert!(e.emu.request_log().iter().all(|c| c.status != 401));
    teardown(&e.cloud, &d.target, p.recorded, 20).await;
}

#[tokio::test]
async fn key_material_never_appears_in_progress_or_errors() {
    let e = env(LatencyProfile::instant()).await;
    e.emu.fail_next(Some("POST"), ":addVersion", 10, 400);
    let d = desired("secretive", "uid-9", &[]);
    let p = e.cloud.ensure(&d, &Recorded::default()).await;
    assert!(!p.errors.is_empty());
    let shown = format!(
        "{p:?} {}",
        p.errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(";")
    );
    assert!(!shown.contains("PRIVATE-KEY-OF"), "{shown}");
    e.emu.clear_faults();
    let (rec, _, _) = converge(&e.cloud, &d, p.recorded, 10).await;
    teardown(&e.cloud, &d.target, rec, 20).await;
}

/// Recorded operations come back from `status.gcp`, which anyone who may write a
/// Gateway's status can change: one whose scope or name is not what this gateway's own
/// operations look like is dropped, never pasted into a URL. A value such as
/// `zones/z/instances/<vm>/stop?` would otherwise become a Compute POST that stops the VM.
#[tokio::test]
async fn hostile_pending_operations_are_dropped_not_followed() {
    let e = env(LatencyProfile::instant()).await;
    let d = desired("web", "uid-h", &[(443, Protocol::Tcp)]);
    let (rec, _, _) = converge(&e.cloud, &d, Recorded::default(), 30).await;
    let name = d.target.id.resource_name();
    let op = |resource: &str, scope: String, op: String| wgnet_cloud::PendingOp {
        resource: wgnet_cloud::ResourceKind::parse(resource).expect("a kind"),
        name: op,
        scope,
        description: "insert instance".into(),
    };
    let mut hostile = rec.clone();
    hostile.pending = vec![
        op(
            "instance",
            format!("zones/us-central1-a/instances/{name}/stop?x="),
            "op".into(),
        ),
        op(
            "instance",
            "zones/us-central1-a".into(),
            format!("../instances/{name}/stop"),
        ),
        op(
            "address",
            "regions/europe-west1".into(),
            "operation-1".into(),
        ),
        op(
            "firewall",
            "global/../../../other-project/global".into(),
            "operation-1".into(),
        ),
    ];
    e.emu.clear_request_log();
    let p = e.cloud.ensure(&d, &hostile).await;
    e.cloud.wait_any(&d.target, &hostile).await;
    let followed: Vec<String> = e
        .emu
        .request_log()
        .iter()
        .filter(|c| {
            c.path.contains("/stop")
                || c.path.contains("other-project")
                || c.path.contains("europe-west1")
        })
        .map(|c| format!("{} {}", c.method, c.path))
        .collect();
    assert!(
        followed.is_empty(),
        "hostile operations were followed: {followed:?}"
    );
    assert_eq!(p.vm_status.as_deref(), Some("RUNNING"), "{:?}", p.errors);
    assert!(p.recorded.pending.is_empty(), "{:?}", p.recorded.pending);
    let gone = e.cloud.delete(&d.target, &hostile).await;
    let followed = e
        .emu
        .request_log()
        .iter()
        .filter(|c| c.path.contains("/stop"))
        .count();
    assert_eq!(
        followed, 0,
        "the delete path followed one: {:?}",
        gone.errors
    );
    teardown(&e.cloud, &d.target, rec, 20).await;
}

/// The key version the instance metadata names for its VM.
fn key_attribute(e: &Env, name: &str) -> String {
    let inst = e
        .emu
        .get("instance", PROJECT, "us-central1-a", name)
        .expect("instance");
    inst["metadata"]["items"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|i| i["key"] == wgnet_cloud::vm::KEY_VERSION_ATTRIBUTE)
        .and_then(|i| i["value"].as_str())
        .unwrap_or_default()
        .to_owned()
}

/// Issue 19, item 5: a key rotation whose upload fails never reaches the VM. The metadata
/// names the exact secret version holding the key, and only one that exists; before, the
/// metadata announced the new key version while `latest` still held the old key, and the
/// VM recorded the new version with the old key and never fetched again.
#[tokio::test]
async fn a_failed_key_upload_never_reaches_the_vm_metadata() {
    let e = env(LatencyProfile::instant()).await;
    let mut d = desired("rot", "uid-r", &[]);
    let (rec, _, _) = converge(&e.cloud, &d, Recorded::default(), 30).await;
    let name = d.target.id.resource_name();
    let first = key_attribute(&e, &name);
    assert!(
        first.ends_with(&format!("/secrets/{name}/versions/1")),
        "{first}"
    );

    e.emu.add_fault(Fault {
        method: Some("POST".into()),
        path_contains: ":addVersion".into(),
        remaining: None,
        action: FaultAction::Deny("Permission 'secretmanager.versions.add' denied".into()),
    });
    d.vm_key = wgnet_cloud::SecretBytes::new(b"PRIVATE-KEY-2".to_vec());
    d.key_version = 2;
    let mut rec = rec;
    for _ in 0..3 {
        let p = e.cloud.ensure(&d, &rec).await;
        assert!(
            p.errors.iter().any(|e| e.is_permission_denied()),
            "{:?}",
            p.errors
        );
        rec = p.recorded;
    }
    assert_eq!(
        key_attribute(&e, &name),
        first,
        "a version that does not exist was announced"
    );

    e.emu.clear_faults();
    let (rec, _, _) = converge(&e.cloud, &d, rec, 10).await;
    let second = key_attribute(&e, &name);
    assert!(
        second.ends_with(&format!("/secrets/{name}/versions/2")),
        "{second}"
    );
    teardown(&e.cloud, &d.target, rec, 20).await;
}

/// Issue 23, goal 2 (the shared network): ten gateways of one project provisioned together
/// read the network they share once, not once per gateway per pass; a failed pass forgets
/// it, so a network deleted out of band is still found and recreated (see
/// `drift_of_the_account_secret_grant_and_network_is_repaired`).
#[tokio::test]
async fn gateways_of_one_project_read_their_shared_network_once() {
    use futures_util::future::join_all;
    let e = env(LatencyProfile::instant()).await;
    let key = e._dir.0.join("key.json");
    let mut cloud = cloud_for(&e.emu, key, INSTALL, "wgnet").await;
    cloud.set_verify_every(Duration::from_secs(300));
    let ds: Vec<_> = (0..10)
        .map(|i| {
            desired(
                &format!("net{i}"),
                &format!("uid-net{i}"),
                &[(443, Protocol::Tcp)],
            )
        })
        .collect();
    let recs = join_all(
        ds.iter()
            .map(|d| async { converge(&cloud, d, Recorded::default(), 200).await.0 }),
    )
    .await;
    assert!(recs.iter().all(|r| r.instance.is_some()), "all converged");
    let reads = e
        .emu
        .request_log()
        .iter()
        .filter(|c| c.method == "GET" && c.path.ends_with("/global/networks/wgnet"))
        .count();
    let passes = e
        .emu
        .request_log()
        .iter()
        .filter(|c| c.method == "GET" && c.path.contains("/instances/"))
        .count();
    assert_eq!(
        reads, 1,
        "one read of the shared network for ten gateways ({passes} instance reads)"
    );
}

/// Issue 23, goal 5: a new gateway's firewalls and address are inserted without being read
/// first (at 5,000 Gateways those reads, all answered 404, were a tenth of every GCP call);
/// resources that exist without a record (a status lost, a name adopted) are refused as
/// alreadyExists, read, and taken over without a duplicate or an error.
#[tokio::test]
async fn new_rules_and_addresses_are_inserted_without_a_read_first() {
    let e = env(LatencyProfile::polls()).await;
    // The project's first gateway reads its address first: the project may not exist
    // (see `a_missing_project_is_an_error_not_an_empty_project`). Its network seen,
    // the next one does not.
    let neighbour = desired("neighbour", "uid-neighbour", &[(443, Protocol::Tcp)]);
    converge(&e.cloud, &neighbour, Recorded::default(), 30).await;
    e.emu.clear_request_log();
    let d = desired("fresh", "uid-fresh", &[(443, Protocol::Tcp)]);
    let (_, first, _) = converge(&e.cloud, &d, Recorded::default(), 30).await;
    let log = e.emu.request_log();
    let missing_reads: Vec<_> = log
        .iter()
        .filter(|c| c.method == "GET" && c.status == 404)
        .filter(|c| c.path.contains("/firewalls/") || c.path.contains("/addresses/"))
        .map(|c| c.path.clone())
        .collect();
    assert!(
        missing_reads.is_empty(),
        "read before insert: {missing_reads:?}"
    );
    let inserts = |log: &[wgnet_tests::gcp::LoggedCall], what: &str| {
        log.iter()
            .filter(|c| c.method == "POST" && c.path.ends_with(what))
            .map(|c| c.status)
            .collect::<Vec<_>>()
    };
    assert_eq!(inserts(&log, "/global/firewalls"), [200, 200], "both rules");
    assert_eq!(inserts(&log, "/addresses"), [200]);

    // The record lost: the same gateway converges again onto what exists.
    e.emu.clear_request_log();
    let (_, again, _) = converge(&e.cloud, &d, Recorded::default(), 30).await;
    assert_eq!(again.address, first.address, "the same address");
    assert!(again.errors.is_empty(), "{:?}", again.errors);
    let log = e.emu.request_log();
    assert_eq!(inserts(&log, "/global/firewalls"), [409, 409]);
    assert_eq!(inserts(&log, "/addresses"), [409]);
    let mut left = kinds(&e.emu);
    left.dedup();
    assert_eq!(
        left,
        [
            "address",
            "firewall",
            "instance",
            "network",
            "secret",
            "serviceAccount"
        ]
    );
    assert_eq!(
        e.emu.inventory().len(),
        13,
        "two gateways' six resources and one network"
    );
}

/// Issue 23, goal 5: a gateway whose resources all exist, polled while it waits for its
/// VM's report, reads none of them again until the next verification (at 5,000 Gateways
/// such polls, two firewall reads and an instance read each, took most of every project's
/// request budget and slowed creation to a third); a spec edit is verified and applied
/// at once.
#[tokio::test]
async fn polls_between_verifications_read_no_resource_and_an_edit_is_applied_at_once() {
    let e = env(LatencyProfile::instant()).await;
    // The project's snapshot is taken before this gateway exists (by another gateway's
    // steady pass), so it cannot vouch for it until the next one.
    let other = desired("first", "uid-first", &[(443, Protocol::Tcp)]);
    let (first, _, _) = converge(&e.cloud, &other, Recorded::default(), 20).await;
    assert!(e.cloud.ensure(&other, &first).await.ready);
    let d = desired("poll", "uid-poll", &[(443, Protocol::Tcp)]);
    let (rec, p, _) = converge(&e.cloud, &d, Recorded::default(), 20).await;
    assert!(p.ready);
    let name = d.target.id.resource_name();
    let own = || -> Vec<String> {
        e.emu
            .request_log()
            .into_iter()
            .filter(|c| c.path.contains(name.as_str()))
            .map(|c| format!("{} {}", c.method, c.path))
            .collect()
    };
    e.emu.clear_request_log();
    for _ in 0..3 {
        let p = e.cloud.ensure(&d, &rec).await;
        assert!(p.ready, "{:?}", p.waiting);
        assert_eq!(p.vm_status.as_deref(), Some("RUNNING"));
        assert_eq!(p.writes, 0);
    }
    assert_eq!(
        own(),
        Vec::<String>::new(),
        "polls read the gateway's resources"
    );

    // Another source range: the next pass reads the rule back and patches it.
    let mut edited = d.clone();
    edited.source_ranges = vec!["198.51.100.0/24".into()];
    let (_, p, _) = converge(&e.cloud, &edited, rec, 20).await;
    assert!(p.ready);
    let fw = e
        .emu
        .get("firewall", PROJECT, "global", &name)
        .expect("firewall");
    assert_eq!(fw["sourceRanges"], json!(["198.51.100.0/24"]));
    assert!(own().iter().any(|c| c.starts_with("PATCH ")), "{:?}", own());
}

/// Issue 23, goal 5: a poll of a VM's report is sent only while the project's request
/// budget has room to spare, so the polls of thousands of waiting Gateways never take the
/// calls that creating the others needs (they took over half of them at 5,000).
#[tokio::test]
async fn a_poll_of_a_vms_report_is_sent_only_with_budget_to_spare() {
    let mut e = env(LatencyProfile::instant()).await;
    // Four calls at once, then hardly any: the test never waits for a refill.
    e.cloud.set_budget(wgnet_cloud::budget::Budget {
        per_second: 0.001,
        burst: 4.0,
    });
    let t = wgnet_tests::fixtures::target("spare", "uid-spare");
    let reads = |e: &Env| {
        e.emu
            .request_log()
            .iter()
            .filter(|c| c.path.contains("getGuestAttributes"))
            .count()
    };
    assert!(
        e.cloud
            .vm_report_if_spare(&t)
            .await
            .expect("read")
            .is_some(),
        "a full bucket has room"
    );
    for _ in 0..2 {
        e.cloud.vm_report(&t).await.expect("read");
    }
    assert_eq!(reads(&e), 3);
    // One token of four left: the poll waits for another pass; nothing is sent.
    assert_eq!(
        e.cloud.vm_report_if_spare(&t).await.expect("no error"),
        None
    );
    assert_eq!(reads(&e), 3);
    // A read that cannot wait still goes.
    e.cloud.vm_report(&t).await.expect("read");
    assert_eq!(reads(&e), 4);
}

/// Issue 23, goal 2: a resync of steady gateways reads each kind of resource with one list
/// per project, not one read per gateway; drift it shows is repaired, and what it cannot
/// show (an absent resource) is read one by one.
#[tokio::test]
async fn a_resync_of_steady_gateways_lists_each_kind_once_per_project() {
    use futures_util::future::join_all;
    let e = env(LatencyProfile::instant()).await;
    let key = e._dir.0.join("key.json");
    let mut cloud = cloud_for(&e.emu, key.clone(), INSTALL, "wgnet").await;
    cloud.set_verify_every(Duration::from_secs(300));
    let (ds, recs) = converged(&cloud, "snap", 10).await;
    assert!(recs.iter().all(|r| r.instance.is_some()), "all converged");
    let names: Vec<String> = ds.iter().map(|d| d.target.id.resource_name()).collect();

    // Out of band, before the next snapshot: one gateway's rule opened to SSH, another's
    // tunnel rule deleted, a third VM's metadata edited (the snapshot keeps only a digest
    // of it).
    assert!(e.emu.edit_firewall(
        PROJECT,
        &names[3],
        "allowed",
        json!([{"IPProtocol": "tcp", "ports": ["22"]}])
    ));
    assert!(
        e.emu
            .remove_resource("firewall", PROJECT, "global", &format!("{}-wg", names[7]))
    );

    assert!(e.emu.edit_instance_metadata(
        PROJECT,
        "us-central1-a",
        &names[5],
        "wgnet-listen-port",
        "22"
    ));

    // A restarted operator's first resync: the orphan sweep, then every gateway's pass, a
    // verifying one. The sweep's lists are the snapshot the passes read (it listed
    // secrets, firewalls and service accounts again, at IAM's default page of 20: most
    // of the calls of a steady resync at 300 gateways).
    let mut restarted = cloud_for(&e.emu, key, INSTALL, "wgnet").await;
    restarted.set_verify_every(Duration::from_secs(300));
    e.emu.clear_request_log();
    let owned = restarted.list_owned(PROJECT).await.expect("sweep");
    assert_eq!(owned.len(), 10, "every gateway's resources are found");
    let passes = join_all(ds.iter().zip(&recs).map(|(d, r)| restarted.ensure(d, r))).await;
    let log: Vec<_> = e
        .emu
        .request_log()
        .into_iter()
        .filter(|c| c.api != "oauth")
        .collect();
    let lists: Vec<&str> = log
        .iter()
        .filter(|c| is_list_page(c))
        .map(|c| c.path.as_str())
        .collect();
    assert_eq!(lists.len(), 5, "one list per kind: {lists:?}");
    // Only the two drifted gateways read or wrote their own resources.
    for (i, n) in names.iter().enumerate() {
        let own: Vec<String> = log
            .iter()
            .filter(|c| c.path.contains(n.as_str()))
            .map(|c| format!("{} {}", c.method, c.path))
            .collect();
        match i {
            3 => assert!(
                own.iter()
                    .all(|c| c.starts_with("PATCH ") && !c.contains("-wg")),
                "{own:?}"
            ),
            7 => assert!(
                own.iter().all(|c| c.contains("-wg")) && !own.is_empty(),
                "{own:?}"
            ),
            5 => assert!(own.iter().any(|c| c.contains("/setMetadata")), "{own:?}"),
            _ => assert!(
                own.is_empty(),
                "gateway {i} read its own resources: {own:?}"
            ),
        }
    }
    assert_eq!(passes.iter().map(|p| p.writes).sum::<usize>(), 3);
    assert!(
        log.len() <= 5 + 1 + 6,
        "5 lists, the shared network, and the three repairs: {:?}",
        log.iter()
            .map(|c| format!("{} {}", c.method, c.path))
            .collect::<Vec<_>>()
    );

    // Both repairs converge; the next pass of every gateway then calls nothing at all
    // (within the window, the record and the snapshot stand).
    let mut recs2 = Vec::new();
    for (d, p) in ds.iter().zip(passes) {
        recs2.push(converge(&restarted, d, p.recorded, 20).await.0);
    }
    let fw = e
        .emu
        .get("firewall", PROJECT, "global", &names[3])
        .expect("firewall");
    assert_eq!(
        fw["allowed"],
        json!([{"IPProtocol": "udp", "ports": ["51820"]}, {"IPProtocol": "tcp", "ports": ["443"]}])
    );
    assert!(
        e.emu
            .get("firewall", PROJECT, "global", &format!("{}-wg", names[7]))
            .is_some()
    );
    let vm = e
        .emu
        .get("instance", PROJECT, "us-central1-a", &names[5])
        .expect("instance");
    let port = vm["metadata"]["items"]
        .as_array()
        .and_then(|items| items.iter().find(|i| i["key"] == "wgnet-listen-port"))
        .map(|i| i["value"].clone());
    assert_eq!(port, Some(json!("51820")));
    e.emu.clear_request_log();
    let quiet = join_all(
        ds.iter()
            .zip(&recs2)
            .enumerate()
            .filter(|(i, _)| ![3, 5, 7].contains(i))
            .map(|(_, (d, r))| restarted.ensure(d, r)),
    )
    .await;
    assert!(quiet.iter().all(|p| p.ready && p.writes == 0));
    let calls: Vec<_> = e
        .emu
        .request_log()
        .into_iter()
        .filter(|c| c.api != "oauth")
        .map(|c| format!("{} {}", c.method, c.path))
        .collect();
    assert!(calls.is_empty(), "{calls:?}");
}

/// Issue 23, goal 5: pages of lists (megabytes: a page of instances carries their startup
/// scripts) travel over connections of their own. An HTTP/1 connection keeps the read
/// buffer its largest answer grew for as long as it lives; pooled with the small calls,
/// every connection a page passed through kept one (14 MB of the operator's peak heap at
/// 2,000 Gateways). No connection carries both a page and any other call.
#[tokio::test]
async fn list_pages_and_calls_use_separate_connections() {
    let e = env(LatencyProfile::instant()).await;
    let ds: Vec<_> = (0..3)
        .map(|i| {
            desired(
                &format!("lane{i}"),
                &format!("uid-lane{i}"),
                &[(443, Protocol::Tcp)],
            )
        })
        .collect();
    let mut recs = Vec::new();
    for d in &ds {
        recs.push(converge(&e.cloud, d, Recorded::default(), 30).await.0);
    }
    // Lists (the sweep's snapshot of the project), then calls again on the same client.
    let owned = e.cloud.list_owned(PROJECT).await.expect("sweep");
    assert_eq!(owned.len(), 3);
    for (d, r) in ds.iter().zip(recs) {
        converge(&e.cloud, d, r, 30).await;
    }
    let names: Vec<String> = ds.iter().map(|d| d.target.id.resource_name()).collect();
    assert!(
        e.emu
            .remove_resource("firewall", PROJECT, "global", &format!("{}-wg", names[0]))
    );
    converge(&e.cloud, &ds[0], Recorded::default(), 30).await;

    let log: Vec<_> = e
        .emu
        .request_log()
        .into_iter()
        .filter(|c| c.api != "oauth")
        .collect();
    let pages: std::collections::BTreeSet<u64> = log
        .iter()
        .filter(|c| is_list_page(c))
        .map(|c| c.connection)
        .collect();
    let calls: std::collections::BTreeSet<u64> = log
        .iter()
        .filter(|c| !is_list_page(c))
        .map(|c| c.connection)
        .collect();
    assert!(
        !pages.is_empty() && !calls.is_empty(),
        "both kinds were sent"
    );
    assert!(
        pages.is_disjoint(&calls),
        "connections carrying both a list page and a call: {:?}",
        pages.intersection(&calls).collect::<Vec<_>>()
    );
}

/// Issue 23, goal 5: a project's first snapshot lists instances with their metadata's
/// entries (startup scripts, 14 KB a VM); later ones ask GCP for a partial response
/// without them, and a VM's metadata fingerprint stands for the entries the first list
/// saw. A metadata edit made between two snapshots changes the fingerprint: that VM alone
/// is read and repaired.
#[tokio::test]
async fn later_snapshots_list_instances_without_metadata_and_still_see_it_drift() {
    use futures_util::future::join_all;
    let e = env(LatencyProfile::instant()).await;
    let key = e._dir.0.join("key.json");
    let mut cloud = cloud_for(&e.emu, key.clone(), INSTALL, "wgnet").await;
    cloud.set_verify_every(Duration::from_secs(300));
    let (ds, recs) = converged(&cloud, "meta", 3).await;
    let names: Vec<String> = ds.iter().map(|d| d.target.id.resource_name()).collect();
    let instance_lists = |e: &Env| -> Vec<String> {
        e.emu
            .request_log()
            .into_iter()
            .filter(|c| c.method == "GET" && c.path.ends_with("/aggregated/instances"))
            .map(|c| c.query)
            .collect()
    };

    // A restarted operator: its passes verify, and its first snapshot is its first list.
    let mut cloud = cloud_for(&e.emu, key, INSTALL, "wgnet").await;
    cloud.set_verify_every(Duration::from_secs(300));
    e.emu.clear_request_log();
    cloud.list_owned(PROJECT).await.expect("first sweep");
    let first = instance_lists(&e);
    assert!(
        first.len() == 1 && !first[0].contains("fields="),
        "the first list reads the entries: {first:?}"
    );

    assert!(e.emu.edit_instance_metadata(
        PROJECT,
        "us-central1-a",
        &names[1],
        "wgnet-listen-port",
        "22"
    ));
    e.emu.clear_request_log();
    cloud.list_owned(PROJECT).await.expect("second sweep");
    let second = instance_lists(&e);
    assert!(
        second.len() == 1 && second[0].contains("fields=") && second[0].contains("maxResults=500"),
        "later lists ask for no entries: {second:?}"
    );
    // The partial answer carries no entries (what the operator asked GCP for).
    let partial: serde_json::Value = reqwest::Client::new()
        .get(format!(
            "{}projects/{PROJECT}/aggregated/instances?{}",
            e.emu.compute_url(),
            second[0]
        ))
        .bearer_auth(
            e.emu
                .issue_token("reader@wgnet-test.iam.gserviceaccount.com", true),
        )
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    let listed = partial["items"]["zones/us-central1-a"]["instances"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(listed.len(), 3, "{partial}");
    assert!(
        listed
            .iter()
            .all(|i| i["metadata"].get("items").is_none()
                && i["metadata"]["fingerprint"].is_string()),
        "{partial}"
    );

    let passes = join_all(ds.iter().zip(&recs).map(|(d, r)| cloud.ensure(d, r))).await;
    let log = e.emu.request_log();
    for (i, n) in names.iter().enumerate() {
        let own: Vec<String> = log
            .iter()
            .filter(|c| c.path.contains(n.as_str()))
            .map(|c| format!("{} {}", c.method, c.path))
            .collect();
        if i == 1 {
            assert!(
                own.iter()
                    .any(|c| c.starts_with("GET ") && c.ends_with(n.as_str())),
                "{own:?}"
            );
            assert!(own.iter().any(|c| c.ends_with("/setMetadata")), "{own:?}");
        } else {
            assert!(
                own.is_empty(),
                "gateway {i} read its own resources: {own:?}"
            );
        }
    }
    converge(&cloud, &ds[1], passes[1].recorded.clone(), 20).await;
    let vm = e
        .emu
        .get("instance", PROJECT, "us-central1-a", &names[1])
        .expect("instance");
    let port = vm["metadata"]["items"]
        .as_array()
        .and_then(|items| items.iter().find(|i| i["key"] == "wgnet-listen-port"))
        .map(|i| i["value"].clone());
    assert_eq!(port, Some(json!("51820")));
}

/// `n` gateways named `<prefix><i>`, each serving 443/tcp, converged: their desired states
/// and records.
async fn converged(
    cloud: &wgnet_cloud::gcp::GcpCloud,
    prefix: &str,
    n: usize,
) -> (Vec<wgnet_cloud::Desired>, Vec<Recorded>) {
    let ds: Vec<_> = (0..n)
        .map(|i| {
            desired(
                &format!("{prefix}{i}"),
                &format!("uid-{prefix}{i}"),
                &[(443, Protocol::Tcp)],
            )
        })
        .collect();
    let recs = futures_util::future::join_all(
        ds.iter()
            .map(|d| async { converge(cloud, d, Recorded::default(), 200).await.0 }),
    )
    .await;
    (ds, recs)
}

/// Whether the emulator logged `c` as a page of one of the snapshot's five lists (the log's
/// path has no query).
fn is_list_page(c: &wgnet_tests::gcp::LoggedCall) -> bool {
    c.method == "GET"
        && [
            "/firewalls",
            "/aggregated/instances",
            "/aggregated/addresses",
            "/serviceAccounts",
            "/secrets",
        ]
        .iter()
        .any(|k| c.path.ends_with(k))
}
