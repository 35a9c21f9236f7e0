//! Which Gateways a watch brought news of: a number per Gateway (`namespace/name`) that
//! rises with every watch event that starts a pass for it (its own spec, finalizers or
//! deletion; its link's Deployment, ConfigMap, Secrets and pods; the Services and
//! Namespaces its forwards name). Memory only; the watches call [`News::mark`].
//!
//! A pass that the controller's own schedule starts (a poll of a Gateway waiting for its
//! VM) compares the number with the one its last full pass began at: equal means nothing
//! the cluster holds for this Gateway changed since, so the poll reads only what no watch
//! covers (see [`super::reports::Quiet`]). Kubernetes' controller runtime does not say why
//! a pass runs; this is how a pass tells.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

/// The news number of every Gateway marked since this process started.
#[derive(Debug, Default)]
pub struct News {
    next: AtomicU64,
    last: Mutex<HashMap<String, u64>>,
}

impl News {
    /// A watch event about Gateway `namespace/name`.
    pub fn mark(&self, namespace: &str, name: &str) {
        // Ordering: the number only has to differ from any number a pass read before
        // this mark; the map's lock orders the two.
        let n = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        last.insert(format!("{namespace}/{name}"), n);
    }

    /// The number of the latest news of Gateway `namespace/name` (0: none yet).
    pub fn of(&self, namespace: &str, name: &str) -> u64 {
        let last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        last.get(&format!("{namespace}/{name}"))
            .copied()
            .unwrap_or(0)
    }

    /// Drops what is kept of a Gateway that is gone.
    pub fn forget(&self, namespace: &str, name: &str) {
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        last.remove(&format!("{namespace}/{name}"));
    }

    /// Marks the Gateways among `owners` (a child's owner references).
    pub fn mark_owners(
        &self,
        namespace: &str,
        owners: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference],
    ) {
        let gateway = <crate::api::Gateway as kube::Resource>::api_version(&());
        for o in owners
            .iter()
            .filter(|o| o.kind == super::KIND && o.api_version == gateway)
        {
            self.mark(namespace, &o.name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

    #[test]
    fn every_mark_changes_the_number_and_only_of_its_gateway() {
        let news = News::default();
        assert_eq!(news.of("apps", "edge"), 0);
        news.mark("apps", "edge");
        let first = news.of("apps", "edge");
        assert_ne!(first, 0);
        news.mark("apps", "other");
        assert_eq!(news.of("apps", "edge"), first, "another Gateway's news");
        news.mark("apps", "edge");
        assert_ne!(news.of("apps", "edge"), first);
        news.forget("apps", "edge");
        assert_eq!(news.of("apps", "edge"), 0);
    }

    #[test]
    fn a_childs_owners_are_marked_only_when_they_are_gateways() {
        let news = News::default();
        let owner = |api_version: &str, kind: &str, name: &str| OwnerReference {
            api_version: api_version.into(),
            kind: kind.into(),
            name: name.into(),
            uid: "u".into(),
            ..Default::default()
        };
        news.mark_owners(
            "apps",
            &[
                owner("wgnet.dev/v1alpha1", "EgressGateway", "egress"),
                owner("apps/v1", "ReplicaSet", "edge"),
            ],
        );
        assert_eq!(news.of("apps", "egress"), 0);
        assert_eq!(news.of("apps", "edge"), 0);
        news.mark_owners("apps", &[owner("wgnet.dev/v1alpha1", "Gateway", "edge")]);
        assert_ne!(news.of("apps", "edge"), 0);
    }
}
