//! The observe step: every read a Gateway pass decides on, straight from the API server
//! (never a cache, so a decision never rests on stale state; the watches only say when to
//! look again). I/O only; no decisions.

use std::collections::BTreeSet;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret, Service};
use kube::ResourceExt;
use kube::api::Api;

use super::{key_secret_name, link_name};
use crate::api::Gateway;
use crate::controller::error::{KubeCall, ObserveError};
use crate::forwards::Observed;
use crate::keys::WipedSecret;

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
            seen.namespaces.insert(n, obj);
        }
    }
    for (ns, name) in services {
        let api: Api<Service> = Api::namespaced(client.clone(), &ns);
        if let Some(obj) = api
            .get_opt(&name)
            .await
            .map_err(KubeCall::new("read Service"))?
        {
            seen.services.insert((ns, name), obj);
        }
    }
    let key_secret = Api::<Secret>::namespaced(client.clone(), &gw_ns)
        .get_opt(&key_secret_name(&gw.name_any()))
        .await
        .map_err(KubeCall::new("read key Secret"))?
        .map(WipedSecret);
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
            .map_err(KubeCall::new("read link Deployment"))?;
        return Ok(LinkObserved {
            deployment,
            ..LinkObserved::default()
        });
    };
    let holder_pod = Api::<Pod>::namespaced(client.clone(), &ns)
        .get_opt(&holder)
        .await
        .map_err(KubeCall::new("read link pod"))?;
    Ok(LinkObserved {
        holder: Some(holder),
        holder_pod,
        deployment: None,
    })
}
