//! Runs real `wgnet-link` processes inside network namespaces for end-to-end tests: a
//! config directory per link, logs captured to a file, HTTP endpoints queried from inside
//! the namespace, and the process killed on drop. I/O boundary: the link binary (built on
//! demand) and `curl` inside the namespace.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use crate::netns::{Netns, wait_for};

/// One ingress forward from a test's `(port, "TCP"|"UDP", clusterIP, targetPort)`.
pub fn ingress_forward(
    (port, proto, ip, target): (u16, &str, &str, u16),
) -> wgnet_link::config::IngressForward {
    wgnet_link::config::IngressForward {
        port,
        protocol: protocol(proto),
        cluster_ip: ip.parse().expect("a test's ClusterIP is an IPv4 address"),
        target_port: target,
        proxy_protocol: None,
    }
}

/// One egress forward from a test's `(name, port, "TCP"|"UDP", targetHost, targetPort)`.
pub fn egress_forward(
    (name, port, proto, host, target): (&str, u16, &str, &str, u16),
) -> wgnet_link::config::EgressForward {
    wgnet_link::config::EgressForward {
        name: name.into(),
        port,
        protocol: protocol(proto),
        target_host: host.into(),
        target_port: target,
    }
}

fn protocol(p: &str) -> wgnet_link::net::Protocol {
    match p {
        "UDP" => wgnet_link::net::Protocol::Udp,
        _ => wgnet_link::net::Protocol::Tcp,
    }
}

/// An ingress `config.json` with the VM at `endpoint` as peer.
pub fn ingress_config(
    address: &str,
    mtu: u16,
    endpoint: &str,
    vm_public_key: &str,
    keepalive: u16,
    forwards: &[(u16, &str, &str, u16)],
) -> String {
    ingress_config_with(
        address,
        mtu,
        endpoint,
        vm_public_key,
        keepalive,
        forwards.iter().copied().map(ingress_forward).collect(),
    )
}

/// An ingress `config.json` with forwards as the link reads them (PROXY protocol ones
/// included).
pub fn ingress_config_with(
    address: &str,
    mtu: u16,
    endpoint: &str,
    vm_public_key: &str,
    keepalive: u16,
    forwards: Vec<wgnet_link::config::IngressForward>,
) -> String {
    use wgnet_link::config::{IngressDocument, LinkDocument, PeerDocument};
    LinkDocument::Ingress(IngressDocument {
        address: address.into(),
        mtu,
        peer: PeerDocument {
            endpoint: endpoint.into(),
            public_key: vm_public_key.into(),
            persistent_keepalive: keepalive,
            allowed_ips: vec![],
        },
        forwards,
        resync_seconds: 30,
    })
    .to_json()
}

/// An egress `config.json`.
pub fn egress_config(
    resolve_interval_seconds: u64,
    forwards: &[(&str, u16, &str, &str, u16)],
) -> String {
    use wgnet_link::config::{EgressDocument, LinkDocument};
    LinkDocument::Egress(EgressDocument {
        forwards: forwards.iter().copied().map(egress_forward).collect(),
        resolve_interval_seconds,
    })
    .to_json()
}

/// Path of the `wgnet-link` binary next to the running test (see [`workspace_binary`]).
pub fn binary() -> PathBuf {
    workspace_binary("wgnet-link")
}

/// Path of a workspace binary (`wgnet-link`, `wgnet-operator`) next to the running test.
/// Both are built once per test process in one cargo invocation (a no-op when up to date):
/// `cargo test -p wgnet-tests` alone would not rebuild another package's binary, a stale
/// one would test old code, and one invocation keeps a single feature set for both.
pub fn workspace_binary(name: &str) -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    let dir = DIR.get_or_init(|| {
        let exe = std::env::current_exe().expect("test executable path");
        // Tests and benches run from target/<profile>/deps/, binaries (the sandbox) from
        // target/<profile>/ itself.
        let parent = exe.parent().expect("an executable lives in a directory");
        let dir = if parent.file_name().is_some_and(|n| n == "deps") {
            parent.parent().expect("target/<profile>/deps has a parent")
        } else {
            parent
        }
        .to_path_buf();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args([
            "build",
            "--quiet",
            "-p",
            "wgnet-link",
            "--bin",
            "wgnet-link",
            "-p",
            "wgnet-operator",
            "--bin",
            "wgnet-operator",
        ]);
        // The test's own CARGO_PKG_*/CARGO_MANIFEST_DIR would leak into build scripts that
        // declare them with rerun-if-env-changed (ring does), making this build and the
        // outer one invalidate each other's artifacts every time.
        for (k, _) in std::env::vars_os() {
            let k = k.to_string_lossy().into_owned();
            if k.starts_with("CARGO_") && !matches!(k.as_str(), "CARGO_HOME" | "CARGO_TARGET_DIR") {
                cmd.env_remove(k);
            }
        }
        if dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        let ok = cmd
            .current_dir(crate::repo_root())
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            ok,
            "could not build the workspace binaries into {}",
            dir.display()
        );
        dir
    });
    let bin = dir.join(name);
    assert!(bin.exists(), "{} was not built", bin.display());
    bin
}

/// One running link.
pub struct Link {
    /// The namespace it runs in.
    pub ns: String,
    /// Its config directory (`config.json` and the key file).
    pub dir: PathBuf,
    /// Its log file.
    pub log: PathBuf,
    child: Option<Child>,
}

impl Link {
    /// Starts `wgnet-link --config-dir dir --http 127.0.0.1:9090 <extra>` in `ns`.
    pub fn start(ns: &Netns, dir: &Path, extra: &[&str]) -> Self {
        Self::start_with_env(ns, dir, extra, &[])
    }

    /// As [`Link::start`] with extra environment (for example KUBECONFIG). When `extra`
    /// names a ConfigMap the directory holds only the log.
    pub fn start_with_env(ns: &Netns, dir: &Path, extra: &[&str], env: &[(&str, String)]) -> Self {
        std::fs::create_dir_all(dir).expect("link dir");
        let log = dir.join(format!("link-{}.log", ns.name));
        let out = std::fs::File::create(&log).expect("link log");
        let err = out.try_clone().expect("link log");
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &ns.name]).arg(binary());
        if !extra.contains(&"--configmap") {
            cmd.arg("--config-dir").arg(dir);
        }
        cmd.args(["--http", "127.0.0.1:9090"])
            .args(extra)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawning wgnet-link");
        Self {
            ns: ns.name.clone(),
            dir: dir.to_owned(),
            log,
            child: Some(child),
        }
    }

    /// `GET path` on the link's HTTP port: (status code, body).
    pub fn get(&self, path: &str) -> (u16, String) {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.ns,
                "curl",
                "-s",
                "-m",
                "2",
                "-w",
                "\n%{http_code}",
            ])
            .arg(format!("http://127.0.0.1:9090{path}"))
            .output();
        let text = out
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
        (code.trim().parse().unwrap_or(0), body.to_owned())
    }

    /// One metric's value from `/metrics`.
    pub fn metric(&self, name: &str) -> Option<f64> {
        let (_, body) = self.get("/metrics");
        body.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
            .and_then(|v| v.trim().parse().ok())
    }

    /// Waits until `/readyz` answers 200.
    pub fn wait_ready(&self, timeout: Duration) {
        let ok = wait_for(timeout, || (self.get("/readyz").0 == 200).then_some(()));
        assert!(
            ok.is_some(),
            "link in {} never became ready: {:?}\n{}",
            self.ns,
            self.get("/readyz"),
            self.logs()
        );
    }

    /// The log so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGTERM and wait (bounded) for a clean exit; returns whether it exited by itself.
    pub fn stop(&mut self) -> bool {
        let Some(mut c) = self.child.take() else {
            return true;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        let exited = wait_for(Duration::from_secs(10), || c.try_wait().ok().flatten()).is_some();
        if !exited {
            let _ = c.kill();
            let _ = c.wait();
        }
        exited
    }

    /// SIGKILL (a crash): no fencing runs.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.kill();
    }
}
