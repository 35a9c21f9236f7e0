//! Test infrastructure shared by every crate of the workspace.
//!
//! It holds the real Kubernetes control plane the tests run against (built from source and
//! started per test), and the pieces that stand in for what these machines lack: the
//! kubelet (pods as processes in network namespaces), the GCP emulator, the
//! network-namespace harness, the CRD schema validator for pure schema tests, and fixtures
//! that provision and boot a gateway VM. It depends on the cloud crate only (for those fixtures); the cloud crate's
//! own tests dev-depend on it, a cycle Cargo allows for dev-dependencies.

pub mod chart;
pub mod clock;
pub mod cluster;
pub mod controlplane;
pub mod crd_schema;
pub mod fixtures;
pub mod gateway;
pub mod gcp;
pub mod guest;
pub mod kubelet;
pub mod link;
pub mod netns;
pub mod proxied;
pub mod rbac;
pub mod serve;

/// Path of the repository root, for tests that read `crds/` and `testdata/`.
pub fn repo_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate lives one level below the repository root")
        .to_path_buf()
}

/// Polls `f` every 200 ms until it yields, for at most `timeout`: the async counterpart of
/// [`netns::wait_for`], for conditions read through the API.
pub async fn until<T, F: std::future::Future<Output = Option<T>>>(
    timeout: std::time::Duration,
    mut f: impl FnMut() -> F,
) -> Option<T> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return Some(v);
        }
        if tokio::time::Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}
