//! Test infrastructure shared by every crate of the workspace.
//!
//! This library depends on no project crate, so any crate can dev-depend on it. It holds
//! the pieces that stand in for what these machines lack: the CRD schema validator (the API
//! server's admission checks), the stand-in Kubernetes API server built on it, and the GCP
//! emulator; the network-namespace harness joins them in a later issue.

pub mod apiserver;
pub mod crd_schema;
pub mod gcp;
pub mod netns;
pub mod serve;

/// Path of the repository root, for tests that read `crds/` and `testdata/`.
pub fn repo_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate lives one level below the repository root")
        .to_path_buf()
}
