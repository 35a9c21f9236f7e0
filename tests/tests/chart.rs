//! The Helm chart: `helm lint --strict`, rendering with several value sets, and every
//! rendered manifest parsed into its typed k8s-openapi struct and checked (security
//! context, mounts, flags, RBAC), plus values.schema.json rejecting bad values. Needs
//! `helm` (`make deps` installs it).

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Container, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde_yaml::Value;
use wgnet_tests::chart;
use wgnet_tests::rbac::{Access, Grants};

const NS: &str = "wgnet-system";

fn kinds(docs: &[Value]) -> Vec<String> {
    let mut k: Vec<String> = docs
        .iter()
        .filter_map(|d| d.get("kind").and_then(Value::as_str).map(str::to_owned))
        .collect();
    k.sort();
    k
}

fn operator_container(d: &Deployment) -> Container {
    let pod = d
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.clone())
        .expect("pod spec");
    assert_eq!(pod.containers.len(), 1);
    pod.containers[0].clone()
}

fn args(c: &Container) -> Vec<String> {
    c.args.clone().unwrap_or_default()
}

/// Security settings every rendering must have, whatever the values.
fn check_restricted(d: &Deployment) {
    let pod = d
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.clone())
        .expect("pod spec");
    let psc = pod.security_context.clone().expect("pod securityContext");
    assert_eq!(psc.run_as_non_root, Some(true));
    assert!(psc.run_as_user.is_some_and(|u| u != 0));
    assert_eq!(
        psc.seccomp_profile.map(|s| s.type_).as_deref(),
        Some("RuntimeDefault")
    );
    assert_eq!(pod.host_network, None);
    let c = operator_container(d);
    let sc = c
        .security_context
        .clone()
        .expect("container securityContext");
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_ne!(sc.privileged, Some(true));
    let caps = sc.capabilities.expect("capabilities");
    assert_eq!(caps.drop, Some(vec!["ALL".to_owned()]));
    assert!(caps.add.unwrap_or_default().is_empty());
    let probe_path = |p: Option<k8s_openapi::api::core::v1::Probe>| {
        p.and_then(|p| p.http_get).and_then(|h| h.path)
    };
    assert_eq!(
        probe_path(c.liveness_probe.clone()).as_deref(),
        Some("/healthz")
    );
    assert_eq!(
        probe_path(c.readiness_probe.clone()).as_deref(),
        Some("/readyz")
    );
    let res = c.resources.clone().expect("resources");
    assert!(res.requests.is_some_and(|r| r.contains_key("memory")));
    assert!(res.limits.is_some_and(|l| l.contains_key("memory")));
    for mount in c.volume_mounts.clone().unwrap_or_default() {
        assert_eq!(mount.read_only, Some(true), "{} is writable", mount.name);
    }
    let env: Vec<String> = c
        .env
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert!(env.contains(&"POD_NAME".into()) && env.contains(&"POD_NAMESPACE".into()));
}

fn check_rbac(docs: &[Value], sa: &str) -> ClusterRole {
    let role: ClusterRole = chart::one(docs, "ClusterRole").expect("ClusterRole");
    for r in role.rules.clone().unwrap_or_default() {
        for v in &r.verbs {
            assert!(
                !["*", "escalate", "bind", "impersonate", "deletecollection"].contains(&v.as_str()),
                "verb {v} in {r:?}"
            );
        }
        for res in r.resources.iter().flatten() {
            assert!(!res.contains('*'), "wildcard resource in {r:?}");
            // Secrets are created and patched (link keys), never rewritten wholesale.
            if res == "secrets" {
                assert!(!r.verbs.contains(&"update".to_owned()), "{r:?}");
            }
        }
        for g in r.api_groups.iter().flatten() {
            assert_ne!(g, "*");
        }
    }
    let binding: ClusterRoleBinding =
        chart::one(docs, "ClusterRoleBinding").expect("ClusterRoleBinding");
    assert_eq!(
        binding.role_ref.name,
        role.metadata.name.clone().unwrap_or_default()
    );
    let subjects = binding.subjects.unwrap_or_default();
    assert_eq!(subjects.len(), 1);
    assert_eq!(subjects[0].name, sa);
    assert_eq!(subjects[0].namespace.as_deref(), Some(NS));
    role
}

fn access(verb: &str, group: &str, resource: &str, ns: Option<&str>) -> Access {
    Access {
        verb: verb.into(),
        group: group.into(),
        resource: resource.into(),
        namespace: ns.map(Into::into),
        name: Some("x".into()),
    }
}

#[test]
fn lint_is_strict_clean_with_defaults_and_with_every_option() {
    chart::lint(&["gcp.allowedProjects={my-project-1}"])
        .unwrap_or_else(|e| panic!("helm lint: {e}"));
    chart::lint(&[
        "replicaCount=2",
        "gcp.credentials.existingSecret=gcp-key",
        "gcp.allowedProjects={my-project-1,my-project-2}",
        "dns.enabled=true",
        "link.privilegedInit=false",
        "metrics.serviceMonitor.enabled=true",
        "logFormat=json",
    ])
    .unwrap_or_else(|e| panic!("helm lint: {e}"));
}

#[test]
fn defaults_render_a_restricted_single_replica_operator_with_ambient_credentials() {
    // The one value without a default: which projects tenants may spend.
    let docs = chart::render("wgnet", NS, &["gcp.allowedProjects={my-project-1}"]).expect("render");
    assert_eq!(
        kinds(&docs),
        vec![
            "ClusterRole",
            "ClusterRoleBinding",
            "CustomResourceDefinition",
            "CustomResourceDefinition",
            "Deployment",
            "Service",
            "ServiceAccount"
        ]
    );
    for d in &docs {
        let kind = d.get("kind").and_then(Value::as_str).unwrap_or_default();
        if !matches!(
            kind,
            "ClusterRole" | "ClusterRoleBinding" | "CustomResourceDefinition"
        ) {
            assert_eq!(
                d.get("metadata")
                    .and_then(|m| m.get("namespace"))
                    .and_then(Value::as_str),
                Some(NS),
                "{kind} in the release namespace"
            );
        }
    }
    let dep: Deployment = chart::one(&docs, "Deployment").expect("Deployment");
    check_restricted(&dep);
    assert_eq!(dep.spec.as_ref().and_then(|s| s.replicas), Some(1));
    let c = operator_container(&dep);
    let a = args(&c);
    assert!(
        a.contains(&"--link-image=ghcr.io/wgnet-dev/wgnet-link:0.1.0".to_owned()),
        "{a:?}"
    );
    assert_eq!(
        c.image.as_deref(),
        Some("ghcr.io/wgnet-dev/wgnet-operator:0.1.0")
    );
    assert!(
        !a.iter().any(|x| x.starts_with("--gcp-credentials")),
        "ambient by default"
    );
    assert!(!a.contains(&"--leader-elect".to_owned()));
    assert!(
        a.contains(&"--log-format=json".to_owned()),
        "the chart logs json by default: {a:?}"
    );
    assert!(!a.contains(&"--no-privileged-init".to_owned()));
    // The admin policy's defaults reach the operator (issue 19, item 3).
    for want in [
        "--allowed-projects=my-project-1",
        "--allowed-machine-types=e2-micro,e2-small,e2-medium",
        "--allowed-images=projects/debian-cloud/global/images/family/debian-12",
        "--max-disk-size-gb=20",
        "--max-gateways-per-namespace=5",
        "--gcp-requests-per-second=20",
    ] {
        assert!(a.contains(&want.to_owned()), "missing {want} in {a:?}");
    }
    assert!(!a.iter().any(|x| x.starts_with("--allowed-dns-suffixes")));
    assert!(c.volume_mounts.is_none());
    let sa: ServiceAccount = chart::one(&docs, "ServiceAccount").expect("ServiceAccount");
    let sa_name = sa.metadata.name.clone().expect("name");
    assert_eq!(
        dep.spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref())
            .and_then(|p| p.service_account_name.clone()),
        Some(sa_name.clone())
    );
    let svc: Service = chart::one(&docs, "Service").expect("metrics Service");
    let ports = svc.spec.and_then(|s| s.ports).unwrap_or_default();
    assert_eq!(ports[0].port, 8080);
    check_rbac(&docs, &sa_name);
    let g = Grants::for_service_account(&docs, NS, &sa_name).expect("grants");
    assert!(
        !g.allows(&access(
            "create",
            "externaldns.k8s.io",
            "dnsendpoints",
            Some("apps")
        )),
        "no DNS rights unless enabled"
    );
    assert!(g.allows(&access(
        "update",
        "wgnet.dev",
        "gateways/status",
        Some("apps")
    )));
    // Deleting Gateways is granted for those serving LoadBalancer Services; RBAC cannot
    // scope it further, so the operator deletes only Gateways whose controlling owner is
    // the Service it releases (operator_reconcile's
    // `a_load_balancer_service_never_takes_or_deletes_a_gateway_it_does_not_own`).
    assert!(g.allows(&access("delete", "wgnet.dev", "gateways", Some("apps"))));
    assert!(
        !g.allows(&access("update", "wgnet.dev", "gateways", Some("apps"))),
        "Gateways are applied (patch), never replaced"
    );
    // The chart's CRDs are the generated ones, byte for byte (make check-generated too).
    for f in ["gateways.wgnet.dev.yaml", "egressgateways.wgnet.dev.yaml"] {
        let top =
            std::fs::read_to_string(wgnet_tests::repo_root().join("crds").join(f)).expect("crd");
        let copy = std::fs::read_to_string(chart::dir().join("crds").join(f)).expect("chart crd");
        assert_eq!(top, copy, "{f}: run `make generate`");
    }
    let crd: Vec<CustomResourceDefinition> = docs
        .iter()
        .filter(|d| d.get("kind").and_then(Value::as_str) == Some("CustomResourceDefinition"))
        .map(|d| serde_yaml::from_value(d.clone()).expect("CRD"))
        .collect();
    assert_eq!(crd.len(), 2);
}

#[test]
fn every_option_renders_as_documented() {
    let docs = chart::render(
        "edge",
        NS,
        &[
            "replicaCount=2",
            "gcp.credentials.existingSecret=gcp-key",
            "gcp.credentials.key=sa.json",
            "gcp.allowedProjects={my-project-1,my-project-2}",
            "gcp.install=lab",
            "clusterID=homelab",
            "dns.enabled=true",
            "link.privilegedInit=false",
            "link.image.tag=v9",
            "metrics.serviceMonitor.enabled=true",
            "logFormat=json",
            "serviceAccount.annotations.iam\\.gke\\.io/gcp-service-account=op@p.iam.gserviceaccount.com",
            "policy.machineTypes={e2-*}",
            "policy.maxDiskSizeGB=30",
            "policy.maxGatewaysPerNamespace=0",
            "policy.dnsSuffixes.apps={apps.example.com,b.example}",
        ],
    )
    .expect("render");
    assert!(kinds(&docs).contains(&"ServiceMonitor".to_owned()));
    let dep: Deployment = chart::one(&docs, "Deployment").expect("Deployment");
    check_restricted(&dep);
    let c = operator_container(&dep);
    let a = args(&c);
    for want in [
        "--gcp-credentials=/var/run/secrets/wgnet/gcp/sa.json",
        "--allowed-projects=my-project-1,my-project-2",
        "--install=lab",
        "--cluster-id=homelab",
        "--no-privileged-init",
        "--link-image=ghcr.io/wgnet-dev/wgnet-link:v9",
        "--log-format=json",
        "--leader-elect",
        "--allowed-machine-types=e2-*",
        "--max-disk-size-gb=30",
        "--max-gateways-per-namespace=0",
        "--allowed-dns-suffixes=apps=apps.example.com,apps=b.example",
    ] {
        assert!(a.contains(&want.to_owned()), "missing {want} in {a:?}");
    }
    let mounts = c.volume_mounts.clone().expect("mounts");
    assert_eq!(mounts.len(), 1);
    assert_eq!(mounts[0].mount_path, "/var/run/secrets/wgnet/gcp");
    assert_eq!(mounts[0].read_only, Some(true));
    let vols = dep
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|p| p.volumes.clone())
        .expect("volumes");
    let secret = vols[0].secret.clone().expect("secret volume");
    assert_eq!(secret.secret_name.as_deref(), Some("gcp-key"));
    assert_eq!(secret.default_mode, Some(0o400));
    assert_eq!(secret.items.unwrap_or_default()[0].key, "sa.json");
    let pdb: PodDisruptionBudget = chart::one(&docs, "PodDisruptionBudget").expect("PDB");
    assert!(pdb.spec.and_then(|s| s.max_unavailable).is_some());
    let sa: ServiceAccount = chart::one(&docs, "ServiceAccount").expect("ServiceAccount");
    assert!(
        sa.metadata
            .annotations
            .unwrap_or_default()
            .contains_key("iam.gke.io/gcp-service-account")
    );
    let sa_name = sa.metadata.name.expect("name");
    check_rbac(&docs, &sa_name);
    let g = Grants::for_service_account(&docs, NS, &sa_name).expect("grants");
    assert!(g.allows(&access(
        "patch",
        "externaldns.k8s.io",
        "dnsendpoints",
        Some("apps")
    )));
    // The operator's own election Lease, in its namespace.
    assert!(g.allows(&access("update", "coordination.k8s.io", "leases", Some(NS))));
}

#[test]
fn the_schema_rejects_bad_values_with_a_clear_message() {
    for (set, names) in [
        ("logFormat=yaml", "logFormat"),
        ("replicaCount=0", "replicaCount"),
        ("gcp.allowedProjects={Not_A_Project}", "allowedProjects"),
        ("resyncSeconds=5", "resyncSeconds"),
        ("policy.maxDiskSizeGB=5", "maxDiskSizeGB"),
        ("gcp.install=an-install-name-too-long", "install"),
        ("policy.machineTypes={}", "machineTypes"),
        ("link.image.pullPolicy=Sometimes", "pullPolicy"),
        ("gcp.endpoints.compute=ftp://x", "compute"),
        ("unknownValue=1", "unknownValue"),
    ] {
        match chart::render("wgnet", NS, &[set]) {
            Ok(_) => panic!("{set} was accepted"),
            Err(e) => assert!(e.contains(names), "{set}: {e}"),
        }
    }
    let e = chart::render("wgnet", NS, &[]).expect_err("projects are required");
    assert!(e.contains("gcp.allowedProjects is required"), "{e}");
    let e = chart::render(
        "wgnet",
        NS,
        &["serviceAccount.create=false", "gcp.allowedProjects={*}"],
    )
    .expect_err("a name is needed");
    assert!(e.contains("serviceAccount.name is required"), "{e}");
}
