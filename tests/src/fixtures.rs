//! Fixtures that provision through the cloud crate against the GCP emulator: a client
//! with fast retries, typical desired states, and converge/teardown loops bounded in passes.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::gcp::{Config, GcpEmulator, LatencyProfile};
use wgnet_cloud::api::{Credentials, Endpoints, RetryPolicy};
use wgnet_cloud::gcp::{GcpCloud, GcpConfig};
use wgnet_cloud::{
    Cloud, DeleteProgress, Desired, GatewayId, Progress, Protocol, Recorded, SecretBytes, Target,
};

/// The emulator's test project.
pub const PROJECT: &str = "wgnet-test";
/// The operator install id used by tests.
pub const INSTALL: &str = "wgnet";
/// The cluster id used by tests.
pub const CLUSTER: &str = "cluster-1";

/// A temporary directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// A fresh, empty directory.
    pub fn new() -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "wgnet-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        Self(dir)
    }
}

impl Default for TempDir {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// An emulator with a cloud client for it.
pub struct Env {
    /// The emulator.
    pub emu: GcpEmulator,
    /// A client with the operator's key.
    pub cloud: GcpCloud,
    /// Holds the key file.
    pub _dir: TempDir,
}

/// An emulator with `profile` and a client.
pub async fn env(profile: LatencyProfile) -> Env {
    env_with(profile, Duration::from_secs(3600)).await
}

/// As [`env`], with a token lifetime.
pub async fn env_with(profile: LatencyProfile, token_ttl: Duration) -> Env {
    let emu = GcpEmulator::start(Config {
        profile,
        token_ttl,
        ..Config::default()
    })
    .await
    .expect("emulator starts");
    let dir = TempDir::new();
    let key = dir.0.join("key.json");
    emu.write_key_file("wgnet-operator@wgnet-test.iam.gserviceaccount.com", &key)
        .expect("key file");
    let cloud = cloud_for(&emu, key, INSTALL, "wgnet").await;
    Env {
        emu,
        cloud,
        _dir: dir,
    }
}

/// A client of `emu` for operator install `install`, with fast retries for tests.
pub async fn cloud_for(emu: &GcpEmulator, key: PathBuf, install: &str, network: &str) -> GcpCloud {
    GcpCloud::new(GcpConfig {
        credentials: Credentials::KeyFile(key),
        endpoints: Endpoints {
            compute: emu.compute_url(),
            iam: emu.iam_url(),
            secrets: emu.secrets_url(),
        },
        retry: RetryPolicy {
            min_delay: Duration::from_millis(2),
            max_delay: Duration::from_millis(40),
            max_retries: 5,
            request_timeout: Duration::from_secs(10),
        },
        install: install.into(),
        cluster: CLUSTER.into(),
        network: network.into(),
        observer: None,
        // As the operator runs; drift tests read back on every pass (set_verify_every).
        verify_every: wgnet_cloud::gcp::DEFAULT_VERIFY_EVERY,
        // Tests run many gateways' calls back to back; the budget is tested on its own.
        budget: wgnet_cloud::budget::Budget {
            per_second: 100_000.0,
            burst: 100_000.0,
        },
    })
    .await
    .expect("cloud client")
}

/// The target of a gateway `name` in the test project.
pub fn target(name: &str, uid: &str) -> Target {
    Target {
        id: GatewayId {
            cluster: CLUSTER.into(),
            namespace: "default".into(),
            name: name.into(),
            uid: uid.into(),
        },
        project: PROJECT.into(),
        region: "us-central1".into(),
        zone: "us-central1-a".into(),
    }
}

/// A typical desired state for a gateway `name` with `ports`.
pub fn desired(name: &str, uid: &str, ports: &[(u16, Protocol)]) -> Desired {
    Desired {
        target: target(name, uid),
        machine_type: "e2-small".into(),
        image: "projects/debian-cloud/global/images/family/debian-12".into(),
        disk_size_gb: 10,
        reserved_ip: true,
        spot: false,
        listen_port: 51820,
        ports: ports.to_vec(),
        source_ranges: vec!["0.0.0.0/0".into()],
        metadata: [("wgnet-listen-port".to_owned(), "51820".to_owned())].into(),
        vm_key: SecretBytes::new(format!("PRIVATE-KEY-OF-{name}").into_bytes()),
        key_version: 1,
    }
}

/// Calls `ensure` until ready (bounded), waiting on operations in between like the
/// operator's requeue does.
pub async fn converge(
    cloud: &GcpCloud,
    d: &Desired,
    mut rec: Recorded,
    max_passes: usize,
) -> (Recorded, Progress, usize) {
    for pass in 1..=max_passes {
        let p = cloud.ensure(d, &rec).await;
        rec = p.recorded.clone();
        if p.ready {
            return (rec, p, pass);
        }
        if rec.pending.is_empty() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        } else {
            cloud.wait_any(&d.target, &rec).await;
        }
    }
    let p = cloud.ensure(d, &rec).await;
    panic!(
        "not ready after {max_passes} passes: waiting {:?}, errors {:?}",
        p.waiting, p.errors
    );
}

/// Calls `delete` until done (bounded).
pub async fn teardown(
    cloud: &GcpCloud,
    t: &Target,
    mut rec: Recorded,
    max_passes: usize,
) -> DeleteProgress {
    for _ in 0..max_passes {
        let p = cloud.delete(t, &rec).await;
        rec = p.recorded.clone();
        if p.done {
            return p;
        }
        if rec.pending.is_empty() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        } else {
            cloud.wait_any(t, &rec).await;
        }
    }
    let p = cloud.delete(t, &rec).await;
    panic!(
        "not deleted after {max_passes} passes: waiting {:?}, errors {:?}",
        p.waiting, p.errors
    );
}

/// Kinds of live resources, sorted, ignoring the operator's own identity.
pub fn kinds(emu: &GcpEmulator) -> Vec<&'static str> {
    let mut k: Vec<_> = emu.inventory().into_iter().map(|i| i.kind).collect();
    k.sort_unstable();
    k
}
