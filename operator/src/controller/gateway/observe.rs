//! The observe step: every read a Gateway pass decides on, straight from the API server
//! (never a cache, so a decision never rests on stale state; the watches only say when to
//! look again). I/O only; no decisions. What is read is kept without its managedFields and
//! kubectl's copy (see [`slim_meta`]): a pass holds it across its waits on GCP.

use std::collections::BTreeSet;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret, Service};
use kube::api::Api;
use kube::{Resource, ResourceExt};

use super::{key_secret_name, link_name};
use crate::api::Gateway;
use crate::controller::error::{KubeCall, ObserveError};
use crate::controller::slim_meta;
use crate::forwards::Observed;
use crate::keys::WipedSecret;

/// `obj` without what no pass reads.
fn slim<K: Resource>(mut obj: K) -> K {
    slim_meta(obj.meta_mut());
    obj
}

/// What the spec names: the forwards' Namespaces and Services, and the key Secret.
#[derive(Clone, Debug, Default)]
pub struct Inputs {
    /// The forwards' Namespaces and Services.
    pub forwards: Observed,
    /// The Gateway's key Secret, if it exists (wiped when the pass drops it).
    pub key_secret: Option<WipedSecret>,
    /// How many live Gateways of the namespace are older (counted only when the policy
    /// limits them; 0 otherwise).
    pub rank: usize,
}

/// Reads the Namespaces and Services the forwards name, and the key Secret; with
/// `count_gateways`, the namespace's Gateways (their metadata only) to rank this one.
pub async fn inputs(
    client: &kube::Client,
    gw: &Gateway,
    count_gateways: bool,
) -> Result<Inputs, ObserveError> {
    let gw_ns = gw.namespace().unwrap_or_default();
    let mut seen = Observed::default();
    let mut namespaces = BTreeSet::new();
    let mut services = BTreeSet::new();
    for f in &gw.spec.forwards {
        let ns = f.namespace.clone().unwrap_or_else(|| gw_ns.clone());
        if ns != gw_ns {
            namespaces.insert(ns.clone());
        }
        services.insert((ns, f.service.clone()));
    }
    let ns_api: Api<Namespace> = Api::all(client.clone());
    for n in namespaces {
        if let Some(obj) = ns_api
            .get_opt(&n)
            .await
            .map_err(KubeCall::new("read Namespace"))?
        {
            seen.namespaces.insert(n, slim(obj));
        }
    }
    for (ns, name) in services {
        let api: Api<Service> = Api::namespaced(client.clone(), &ns);
        if let Some(obj) = api
            .get_opt(&name)
            .await
            .map_err(KubeCall::new("read Service"))?
        {
            seen.services.insert((ns, name), slim(obj));
        }
    }
    let key_secret = Api::<Secret>::namespaced(client.clone(), &gw_ns)
        .get_opt(&key_secret_name(&gw.name_any()))
        .await
        .map_err(KubeCall::new("read key Secret"))?
        .map(|s| WipedSecret(slim(s)));
    let rank = if count_gateways {
        let all = Api::<Gateway>::namespaced(client.clone(), &gw_ns)
            .list_metadata(&kube::api::ListParams::default())
            .await
            .map_err(KubeCall::new("list Gateways"))?;
        rank_of(gw, all.items.iter().map(|g| &g.metadata))
    } else {
        0
    };
    Ok(Inputs {
        forwards: seen,
        key_secret,
        rank,
    })
}

/// How many of `peers` (the namespace's Gateways) are older than `gw` and not being
/// deleted: by creation time, then name, so every pass and replica ranks alike.
fn rank_of<'a>(
    gw: &Gateway,
    peers: impl Iterator<Item = &'a k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta>,
) -> usize {
    let key = |m: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| {
        (
            m.creation_timestamp.as_ref().map(|t| t.0),
            m.name.clone().unwrap_or_default(),
        )
    };
    let mine = key(&gw.metadata);
    peers
        .filter(|m| m.deletion_timestamp.is_none() && m.uid != gw.metadata.uid)
        .filter(|m| key(m) < mine)
        .count()
}

/// What the cluster says of the link: its Lease's holder, that holder's pod, and the
/// Deployment (read only when nobody holds the Lease, to say why).
#[derive(Clone, Debug, Default)]
pub struct LinkObserved {
    /// The Lease's holder identity, when set.
    pub holder: Option<String>,
    /// The holder's pod, if it exists.
    pub holder_pod: Option<Pod>,
    /// The link Deployment (only read when there is no holder).
    pub deployment: Option<Deployment>,
}

/// Reads the link's Lease, its holder's pod, or else the link Deployment.
pub async fn link(client: &kube::Client, gw: &Gateway) -> Result<LinkObserved, ObserveError> {
    let ns = gw.namespace().unwrap_or_default();
    let link = link_name(&gw.name_any());
    let holder = Api::<Lease>::namespaced(client.clone(), &ns)
        .get_opt(&link)
        .await
        .map_err(KubeCall::new("read link Lease"))?
        .and_then(|l| l.spec)
        .and_then(|s| s.holder_identity)
        .filter(|h| !h.is_empty());
    let Some(holder) = holder else {
        let deployment = Api::<Deployment>::namespaced(client.clone(), &ns)
            .get_opt(&link)
            .await
            .map_err(KubeCall::new("read link Deployment"))?
            .map(slim);
        return Ok(LinkObserved {
            deployment,
            ..LinkObserved::default()
        });
    };
    let holder_pod = Api::<Pod>::namespaced(client.clone(), &ns)
        .get_opt(&holder)
        .await
        .map_err(KubeCall::new("read link pod"))?
        .map(slim);
    Ok(LinkObserved {
        holder: Some(holder),
        holder_pod,
        deployment: None,
    })
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use http_body_util::Full;
    use kube::ResourceExt as _;
    use serde_json::json;

    use super::{inputs, link};
    use crate::controller::LAST_APPLIED;
    use crate::controller::testing::gateway;

    /// Metadata as the API server returns it for an object applied with `kubectl apply`.
    fn meta(name: &str) -> serde_json::Value {
        json!({
            "name": name,
            "managedFields": [{"manager": "kubectl", "operation": "Apply",
                               "fieldsV1": {"f:metadata": {"f:labels": {}}}}],
            "annotations": {LAST_APPLIED: "{\"kind\":\"copy\"}", "kept": "yes"}
        })
    }

    /// A stand-in API server holding the objects a pass reads for Gateway `apps/edge`
    /// (forwarding to `other/web`); with `held`, the link's Lease names a pod.
    fn api_server(held: bool) -> kube::Client {
        let svc = tower::service_fn(move |req: hyper::Request<kube::client::Body>| {
            let body = match req.uri().path() {
                "/api/v1/namespaces/other" => {
                    Some(json!({"kind": "Namespace", "metadata": meta("other")}))
                }
                "/api/v1/namespaces/other/services/web" => {
                    Some(json!({"kind": "Service", "metadata": meta("web"),
                    "spec": {"ports": [{"port": 80}]}}))
                }
                "/api/v1/namespaces/apps/secrets/edge-keys" => {
                    Some(json!({"kind": "Secret", "metadata": meta("edge-keys")}))
                }
                "/apis/coordination.k8s.io/v1/namespaces/apps/leases/edge-link" if held => {
                    Some(json!({"kind": "Lease", "metadata": meta("edge-link"),
                    "spec": {"holderIdentity": "edge-link-0"}}))
                }
                "/api/v1/namespaces/apps/pods/edge-link-0" => {
                    Some(json!({"kind": "Pod", "metadata": meta("edge-link-0")}))
                }
                "/apis/apps/v1/namespaces/apps/deployments/edge-link" => {
                    Some(json!({"kind": "Deployment", "metadata": meta("edge-link")}))
                }
                _ => None,
            };
            let resp = match body {
                Some(b) => hyper::Response::new(Full::new(Bytes::from(b.to_string()))),
                None => {
                    let status = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                        "reason": "NotFound", "code": 404, "message": "not found"});
                    let mut r = hyper::Response::new(Full::new(Bytes::from(status.to_string())));
                    *r.status_mut() = hyper::StatusCode::NOT_FOUND;
                    r
                }
            };
            async move { Ok::<_, std::convert::Infallible>(resp) }
        });
        kube::Client::new(svc, "default")
    }

    /// What a pass holds of every object it read: no managedFields and no kubectl copy,
    /// every other annotation kept.
    fn slim<K: kube::Resource>(obj: &K) -> bool {
        obj.managed_fields().is_empty()
            && obj.annotations().get(LAST_APPLIED).is_none()
            && obj.annotations().get("kept").map(String::as_str) == Some("yes")
    }

    #[tokio::test]
    async fn a_pass_holds_what_it_read_without_managed_fields_or_kubectls_copy() {
        let mut gw = gateway();
        gw.spec.forwards[0].namespace = Some("other".into());

        let read = inputs(&api_server(true), &gw, false).await.expect("inputs");
        let ns = read
            .forwards
            .namespaces
            .get("other")
            .expect("the Namespace");
        let svc = read
            .forwards
            .services
            .get(&("other".to_owned(), "web".to_owned()))
            .expect("the Service");
        let secret = read.key_secret.as_deref().expect("the key Secret");
        assert!(slim(ns) && slim(svc) && slim(secret));

        let held = link(&api_server(true), &gw).await.expect("the link");
        assert_eq!(held.holder.as_deref(), Some("edge-link-0"));
        assert!(slim(held.holder_pod.as_ref().expect("the holder's pod")));

        let unheld = link(&api_server(false), &gw).await.expect("the link");
        assert!(slim(unheld.deployment.as_ref().expect("the Deployment")));
    }
}
