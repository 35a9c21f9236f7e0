//! Every typed body of `wgnet_cloud::gcp::wire`, filled in with every field, is one Google's
//! discovery documents (`testdata/gcp-discovery/`) accept under the schema it is named
//! after: no unknown field names, no value of the wrong JSON type, enum values GCP knows.

use std::collections::BTreeMap;

use serde::Serialize;
use wgnet_cloud::gcp::wire::*;
use wgnet_tests::gcp::discovery::Discovery;

fn check<T: Serialize>(d: &Discovery, schema: &str, body: &T) {
    let v = serde_json::to_value(body).expect("json");
    if let Err(e) = d.check(schema, &v) {
        panic!("{schema}: {e}\n{v:#}");
    }
}

fn labels() -> BTreeMap<String, String> {
    [("wgnet-install".to_owned(), "wgnet".to_owned())].into()
}

#[test]
fn compute_bodies_match_the_discovery_schemas() {
    let d = Discovery::load(&["compute.v1.json"]).expect("compute discovery");
    check(
        &d,
        "Operation",
        &Operation {
            name: "operation-1".into(),
            status: "DONE".into(),
            zone: Some("zones/z".into()),
            region: Some("regions/r".into()),
            error: Some(OperationError {
                errors: vec![OperationErrorItem {
                    code: "QUOTA_EXCEEDED".into(),
                    message: "m".into(),
                }],
            }),
        },
    );
    check(
        &d,
        "Network",
        &Network {
            name: "wgnet".into(),
            description: "marker".into(),
            auto_create_subnetworks: true,
            routing_config: Some(RoutingConfig {
                routing_mode: "REGIONAL".into(),
            }),
        },
    );
    check(
        &d,
        "Firewall",
        &Firewall {
            name: "wg-x".into(),
            description: "marker".into(),
            network: "projects/p/global/networks/wgnet".into(),
            direction: "INGRESS".into(),
            priority: 1000,
            disabled: false,
            allowed: vec![Allowed {
                ip_protocol: "udp".into(),
                ports: vec!["51820".into()],
            }],
            source_ranges: vec!["0.0.0.0/0".into()],
            target_tags: vec!["wg-x".into()],
            creation_timestamp: Some("2026-11-30T12:00:00.000-08:00".into()),
        },
    );
    check(
        &d,
        "Address",
        &Address {
            name: "wg-x".into(),
            description: "marker".into(),
            address_type: "EXTERNAL".into(),
            network_tier: "PREMIUM".into(),
            labels: labels(),
            status: Some("RESERVED".into()),
            address: Some("203.0.113.7".into()),
        },
    );
    let metadata = Metadata {
        fingerprint: Some("abc=".into()),
        items: vec![MetadataItem {
            key: "startup-script".into(),
            value: "#!/bin/sh".into(),
        }],
    };
    check(&d, "Metadata", &metadata);
    check(
        &d,
        "Instance",
        &Instance {
            name: "wg-x".into(),
            description: "marker".into(),
            machine_type: "zones/z/machineTypes/e2-micro".into(),
            labels: labels(),
            label_fingerprint: Some("abc=".into()),
            tags: Some(Tags {
                items: vec!["wg-x".into()],
            }),
            disks: vec![AttachedDisk {
                boot: true,
                auto_delete: true,
                initialize_params: Some(DiskParams {
                    source_image: "projects/debian-cloud/global/images/family/debian-12".into(),
                    disk_size_gb: "10".into(),
                    disk_type: "zones/z/diskTypes/pd-balanced".into(),
                }),
            }],
            network_interfaces: vec![NetworkInterface {
                network: "projects/p/global/networks/wgnet".into(),
                access_configs: vec![AccessConfig {
                    name: "External NAT".into(),
                    type_: "ONE_TO_ONE_NAT".into(),
                    network_tier: "PREMIUM".into(),
                    nat_ip: Some("203.0.113.7".into()),
                }],
            }],
            service_accounts: vec![InstanceServiceAccount {
                email: "wg-x@p.iam.gserviceaccount.com".into(),
                scopes: vec!["https://www.googleapis.com/auth/cloud-platform".into()],
            }],
            metadata: Some(metadata.clone()),
            shielded_instance_config: Some(ShieldedInstanceConfig {
                enable_secure_boot: true,
                enable_vtpm: true,
                enable_integrity_monitoring: true,
            }),
            scheduling: Some(Scheduling {
                provisioning_model: "SPOT".into(),
                instance_termination_action: Some("STOP".into()),
                automatic_restart: false,
                on_host_maintenance: "TERMINATE".into(),
            }),
            can_ip_forward: false,
            deletion_protection: false,
            status: Some("RUNNING".into()),
        },
    );
    check(
        &d,
        "InstancesSetLabelsRequest",
        &SetLabelsRequest {
            label_fingerprint: Some("abc=".into()),
            labels: labels(),
        },
    );
}

#[test]
fn iam_and_secret_manager_bodies_match_the_discovery_schemas() {
    let iam = Discovery::load(&["iam.v1.json"]).expect("iam discovery");
    let account = ServiceAccount {
        email: Some("wg-x@p.iam.gserviceaccount.com".into()),
        display_name: "wgnet gateway apps/edge".into(),
        description: "marker".into(),
    };
    check(&iam, "ServiceAccount", &account);
    check(
        &iam,
        "CreateServiceAccountRequest",
        &CreateServiceAccountRequest {
            account_id: "wg-x".into(),
            service_account: account,
        },
    );
    let sm = Discovery::load(&["secretmanager.v1.json"]).expect("secret manager discovery");
    check(
        &sm,
        "Secret",
        &Secret {
            name: "projects/123/secrets/wg-x".into(),
            labels: labels(),
            replication: Some(Replication::default()),
            create_time: Some("2026-11-30T20:00:00Z".into()),
        },
    );
    check(
        &sm,
        "AddSecretVersionRequest",
        &AddSecretVersionRequest {
            payload: SecretPayload {
                data: "a2V5".into(),
            },
        },
    );
    let policy = Policy {
        bindings: vec![Binding {
            role: "roles/secretmanager.secretAccessor".into(),
            members: vec!["serviceAccount:wg-x@p.iam.gserviceaccount.com".into()],
        }],
        etag: Some("BwY=".into()),
    };
    check(&sm, "Policy", &policy);
    check(&sm, "SetIamPolicyRequest", &SetIamPolicyRequest { policy });
}

/// A field this crate does not declare fails the check: the test can fail.
#[test]
fn the_check_refuses_an_unknown_field() {
    let d = Discovery::load(&["compute.v1.json"]).expect("compute discovery");
    let v = serde_json::json!({"name": "wg-x", "allowedPorts": ["1"]});
    assert!(d.check("Firewall", &v).is_err());
}
