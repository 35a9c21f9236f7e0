//! Fixtures the controllers' unit tests share: a Gateway, the operator's settings, a GCP
//! denial. Test-only.

use std::time::Duration;

use wgnet_cloud::CloudError;

use super::Settings;
use crate::api::Gateway;
use crate::children::LinkImage;
use crate::policy::{Policy, Projects};

/// Gateway `apps/edge` (uid `u1`, generation 3) forwarding 8080 to Service `web` port 80,
/// with `wireguard` as its `spec.wireguard`.
pub fn gateway_with(wireguard: serde_json::Value) -> Gateway {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "wgnet.dev/v1alpha1", "kind": "Gateway",
        "metadata": {"name": "edge", "namespace": "apps", "uid": "u1", "generation": 3},
        "spec": {
            "gcp": {"projectID": "p", "region": "us-central1", "zone": "us-central1-a"},
            "wireguard": wireguard,
            "forwards": [{"port": 8080, "service": "web", "targetPort": 80}]
        }
    }))
    .expect("a valid Gateway")
}

/// [`gateway_with`] the default WireGuard settings.
pub fn gateway() -> Gateway {
    gateway_with(serde_json::json!({}))
}

/// The link image every test uses.
pub fn link_image() -> LinkImage {
    LinkImage {
        image: "link".into(),
        pull_policy: "IfNotPresent".into(),
        privileged_init: false,
    }
}

/// Settings with the default policy and `allowed` projects (empty: any).
pub fn settings(allowed: &[&str]) -> Settings {
    let projects = if allowed.is_empty() {
        Projects::Any
    } else {
        Projects::Only(allowed.iter().map(|s| (*s).to_owned()).collect())
    };
    Settings {
        link: link_image(),
        cluster_id: "c1".into(),
        resync: Duration::from_secs(300),
        policy: Policy::new(projects),
        sweep_projects: vec![],
        sweep_min_age: Duration::ZERO,
        load_balancer: Default::default(),
    }
}

/// Compute refusing an instance insert for a missing permission.
pub fn denied() -> CloudError {
    CloudError::Api {
        api: "compute",
        method: "insert instance",
        what: "wg-x".into(),
        status: 403,
        reason: "forbidden".into(),
        message: "Required 'compute.instances.create' permission".into(),
    }
}
