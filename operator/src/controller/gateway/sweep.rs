//! The orphan sweep: every resync, deletes GCP resources carrying this install's and
//! cluster's labels whose Gateway (by uid) no longer exists. Nothing without those labels
//! is ever touched. I/O: lists Gateways through the API, GCP through [`Cloud`].

use std::collections::BTreeSet;
use std::future::Future;

use kube::Resource;
use kube::api::Api;
use kube::core::DeserializeGuard;
use wgnet_cloud::{Cloud, GatewayId, Recorded, Target};

use super::{OPERATION_WAIT, SETTLING};
use crate::api::Gateway;
use crate::controller::Context;
use crate::controller::error::{Error, KubeCall, ObserveError};

/// Runs [`sweep_once`] every resync period until `shutdown` resolves.
pub async fn sweep_loop<C: Cloud>(
    ctx: std::sync::Arc<Context<C>>,
    shutdown: impl Future<Output = ()> + Send,
) {
    let sweep = async {
        loop {
            tokio::time::sleep(ctx.settings.resync).await;
            match sweep_once(&ctx).await {
                Ok(n) => ctx.metrics.swept(n),
                Err(e) => tracing::warn!(error = %e, "orphan sweep"),
            }
        }
    };
    tokio::select! {
        () = sweep => {}
        () = shutdown => {}
    }
}

/// One orphan sweep; returns how many gateways' resources it deleted.
pub async fn sweep_once<C: Cloud>(ctx: &Context<C>) -> Result<usize, Error> {
    let gws = Api::<DeserializeGuard<Gateway>>::all(ctx.client.clone())
        .list(&Default::default())
        .await
        .map_err(|e| ObserveError::from(KubeCall::new("list Gateways")(e)))?;
    let mut live = BTreeSet::new();
    let mut projects: BTreeSet<String> = ctx.settings.sweep_projects.iter().cloned().collect();
    for g in &gws.items {
        if let Some(uid) = g.meta().uid.clone() {
            live.insert(uid);
        }
        if let Ok(g) = &g.0 {
            projects.insert(g.spec.gcp.project_id.clone());
        }
    }
    let mut deleted = 0;
    for project in projects {
        let owned = ctx.cloud.list_owned(&project).await.map_err(Error::Cloud)?;
        for o in owned.into_iter().filter(|o| !live.contains(&o.target.uid)) {
            let t = Target {
                id: GatewayId {
                    cluster: ctx.settings.cluster_id.clone(),
                    namespace: o.target.namespace.clone(),
                    name: o.target.name.clone(),
                    uid: o.target.uid.clone(),
                },
                project: o.target.project.clone(),
                region: o.target.region.clone(),
                zone: o.target.zone.clone(),
            };
            tracing::info!(namespace = %t.id.namespace, name = %t.id.name, project = %t.project, kinds = ?o.kinds, "deleting orphaned GCP resources");
            let mut rec = Recorded::default();
            // Bounded: what is not done in 30 steps is picked up by the next sweep.
            for _ in 0..30 {
                let p = ctx.cloud.delete(&t, &rec).await;
                rec = p.recorded;
                if p.done {
                    deleted += 1;
                    break;
                }
                if !p.errors.is_empty() {
                    tracing::warn!(errors = ?p.errors, "orphan sweep: will retry next time");
                    break;
                }
                if rec.pending.is_empty() {
                    tokio::time::sleep(SETTLING).await;
                } else {
                    let _ =
                        tokio::time::timeout(OPERATION_WAIT, ctx.cloud.wait_any(&t, &rec)).await;
                }
            }
        }
    }
    Ok(deleted)
}
