//! The orphan sweep: every resync, deletes GCP resources carrying this install's and
//! cluster's labels whose Gateway (by uid) no longer exists. Nothing without those labels
//! is ever touched. I/O: lists Gateways through the API, GCP through [`Cloud`].

use std::collections::BTreeSet;
use std::future::Future;

use kube::Resource as _;
use kube::api::{Api, ListParams};
use kube::core::{DeserializeGuard, PartialObjectMeta};
use wgnet_cloud::{Cloud, GatewayId, Recorded, Target};

use super::{OPERATION_WAIT, SETTLING};
use crate::api::Gateway;
use crate::controller::Context;
use crate::controller::error::{Error, KubeCall, ObserveError};

/// Runs [`sweep_once`] every resync period until `shutdown` resolves.
pub async fn sweep_loop<C: Cloud>(
    ctx: std::sync::Arc<Context<C>>,
    gateways: super::Gateways,
    shutdown: impl Future<Output = ()> + Send,
) {
    let sweep = async {
        loop {
            // The sweep's own period: a timer, not a wait for some event.
            tokio::time::sleep(ctx.settings.resync).await;
            match sweep_once(&ctx, &gateways).await {
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

/// Gateways listed a page at a time: a single list of thousands, each parsed twice by
/// `DeserializeGuard`, was most of the operator's peak memory.
const PAGE: u32 = 200;

/// Pages one list may take: a server that kept answering with a continue token cannot loop
/// the sweep (20 million Gateways at [`PAGE`]).
const MAX_PAGES: usize = 100_000;

/// Calls `f` on every object `api` lists, `page` at a time, following continue tokens for
/// at most `max_pages` pages.
async fn each_page<K>(
    api: &Api<K>,
    page: u32,
    max_pages: usize,
    mut f: impl FnMut(&K),
) -> Result<(), Error>
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let mut params = ListParams::default().limit(page);
    for _ in 0..max_pages {
        let page = api
            .list(&params)
            .await
            .map_err(|e| Error::from(ObserveError::from(KubeCall::new("list Gateways")(e))))?;
        page.items.iter().for_each(&mut f);
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => return Ok(()),
        }
    }
    // An incomplete list of live Gateways must never lead to a deletion.
    Err(Error::from(ObserveError::Unending {
        what: "list Gateways",
        pages: max_pages,
    }))
}

/// Whether a creation time (RFC 3339) is younger than `min_age`. An unreadable or missing
/// time counts as old: the other checks still protect what a live Gateway uses.
fn too_young(created: Option<&str>, min_age: std::time::Duration) -> bool {
    let Some(t) = created.and_then(|c| c.parse::<k8s_openapi::jiff::Timestamp>().ok()) else {
        return false;
    };
    k8s_openapi::jiff::Timestamp::now()
        .duration_since(t)
        .try_into()
        .is_ok_and(|age: std::time::Duration| age < min_age)
}

/// One orphan sweep; returns how many gateways' resources it deleted.
///
/// GCP is listed first and every candidate is checked again right before its deletion:
/// resources whose Gateway uid is not live are left alone when a Gateway of that namespace
/// and name exists now (a Gateway recreated under the same name, or created during the
/// sweep, uses them by name and adopts them), or when the newest of them is younger than
/// the minimum age. A project that cannot be listed is reported and the others are still
/// swept.
pub async fn sweep_once<C: Cloud>(
    ctx: &Context<C>,
    gateways: &super::Gateways,
) -> Result<usize, Error> {
    let mut projects: BTreeSet<String> = ctx.settings.sweep_projects.iter().cloned().collect();
    // The Gateways the controller's cache holds narrow what is kept of each project's list
    // to the candidates: holding every Gateway's resources at once was, at thousands of
    // Gateways, one of the operator's largest allocations. They decide nothing (the cache
    // may lag): the list read after GCP does. A Gateway the cache does not hold yet is a
    // candidate until that list; its project, if no other Gateway uses it, is swept by a
    // later sweep. Listing every Gateway here instead (a page of full objects after
    // another, every resync) was the API server's largest answer to this operator.
    let mut live_before = BTreeSet::new();
    for g in gateways.state() {
        if let Ok(g) = &g.0 {
            projects.insert(g.spec.gcp.project_id.clone());
        }
        if let Some(uid) = g.meta().uid.as_ref() {
            live_before.insert(uid.clone());
        }
    }
    let mut owned = Vec::new();
    for project in projects {
        match ctx.cloud.list_owned(&project).await {
            Ok(o) => owned.extend(
                o.into_iter()
                    .filter(|o| !live_before.contains(&o.target.uid)),
            ),
            Err(e) => {
                tracing::warn!(%project, error = %e, "orphan sweep: cannot list this project; the others are swept")
            }
        }
    }
    // The live uids, read after GCP: a Gateway created meanwhile is in this list.
    let mut live = BTreeSet::new();
    let meta = Api::<PartialObjectMeta<Gateway>>::all(ctx.client.clone());
    each_page(&meta, PAGE, MAX_PAGES, |g| {
        if let Some(uid) = &g.metadata.uid {
            live.insert(uid.clone());
        }
    })
    .await?;
    let mut deleted = 0;
    for o in owned.into_iter().filter(|o| !live.contains(&o.target.uid)) {
        if too_young(o.newest.as_deref(), ctx.settings.sweep_min_age) {
            continue;
        }
        // Right before deleting: a Gateway of this namespace and name, whatever its uid,
        // owns these resources by name.
        let by_name =
            Api::<DeserializeGuard<Gateway>>::namespaced(ctx.client.clone(), &o.target.namespace)
                .get_opt(&o.target.name)
                .await;
        match by_name {
            Ok(None) => {}
            Ok(Some(_)) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "orphan sweep: cannot check the Gateway; left for the next sweep");
                continue;
            }
        }
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
                // Nothing of ours to wait on (another Gateway's delete holds the shared
                // network, say): a short pause keeps the bounded loop from spinning on GCP.
                tokio::time::sleep(SETTLING).await;
            } else {
                let _ = tokio::time::timeout(OPERATION_WAIT, ctx.cloud.wait_any(&t, &rec)).await;
            }
        }
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use bytes::Bytes;
    use http_body_util::Full;
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::api::Api;

    use super::{each_page, too_young};
    use crate::controller::error::{Error, ObserveError};

    /// A stand-in API server whose ConfigMap list answers page `i` (the continue token
    /// `p<i>`) with the names `pages[i]` and a token for the next page, if any, or always
    /// with a token when `endless`. Records each request's query.
    fn paged(
        pages: Vec<Vec<&'static str>>,
        endless: bool,
        queries: Arc<Mutex<Vec<String>>>,
    ) -> kube::Client {
        let svc = tower::service_fn(move |req: hyper::Request<kube::client::Body>| {
            let query = req.uri().query().unwrap_or_default().to_owned();
            let i = query
                .split('&')
                .find_map(|kv| kv.strip_prefix("continue=p"))
                .and_then(|n| n.parse::<usize>().ok())
                .unwrap_or(0);
            queries.lock().expect("not poisoned").push(query);
            let items: Vec<_> = pages
                .get(i)
                .into_iter()
                .flatten()
                .map(|n| serde_json::json!({"metadata": {"name": n, "namespace": "default"}}))
                .collect();
            let next = (endless || i + 1 < pages.len()).then(|| format!("p{}", i + 1));
            let body = serde_json::json!({
                "apiVersion": "v1",
                "kind": "ConfigMapList",
                "metadata": {"continue": next.unwrap_or_default()},
                "items": items,
            });
            async move {
                Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(Bytes::from(
                    body.to_string(),
                ))))
            }
        });
        kube::Client::new(svc, "default")
    }

    #[tokio::test]
    async fn every_page_is_visited_and_an_endless_list_is_an_error() {
        let queries = Arc::new(Mutex::new(Vec::new()));
        let client = paged(
            vec![vec!["a", "b"], vec!["c", "d"], vec!["e"]],
            false,
            queries.clone(),
        );
        let mut names = Vec::new();
        each_page(&Api::<ConfigMap>::all(client), 2, 10, |c: &ConfigMap| {
            names.push(c.metadata.name.clone().unwrap_or_default());
        })
        .await
        .expect("three pages");
        assert_eq!(names, ["a", "b", "c", "d", "e"]);
        let queries = queries.lock().expect("not poisoned").clone();
        assert_eq!(queries.len(), 3);
        assert!(queries.iter().all(|q| q.contains("limit=2")), "{queries:?}");
        assert!(queries[2].contains("continue=p2"), "{queries:?}");

        // A server that never stops handing out continue tokens: an error after the
        // bound, never a partial list taken as complete.
        let client = paged(vec![vec!["x"]], true, Arc::default());
        let mut seen = 0;
        let err = each_page(&Api::<ConfigMap>::all(client), 2, 5, |_: &ConfigMap| {
            seen += 1;
        })
        .await
        .expect_err("an endless list");
        assert!(
            matches!(err, Error::Observe(ObserveError::Unending { pages: 5, .. })),
            "{err}"
        );
        assert_eq!(seen, 1, "only the first page has items");
    }

    #[test]
    fn only_recent_creation_times_are_too_young() {
        let hour = Duration::from_secs(3600);
        let now = k8s_openapi::jiff::Timestamp::now().to_string();
        assert!(too_young(Some(&now), hour));
        assert!(!too_young(Some("2020-01-01T00:00:00Z"), hour));
        assert!(!too_young(Some(&now), Duration::ZERO));
        assert!(!too_young(None, hour) && !too_young(Some("yesterday"), hour));
    }
}
