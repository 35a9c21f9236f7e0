//! kubectl against a real kube-apiserver: the project's CRDs apply, every valid sample is
//! accepted, every invalid one is refused with its message, and what the README tells a
//! user to type works: `create namespace`, `create secret`, `get` with the printer columns,
//! `explain`, `describe`, `delete`. kubectl is the one built with the control plane
//! (scripts/k8s-bins.sh), the same release as the server.

use std::path::Path;
use std::process::Command;

use wgnet_tests::controlplane::{self, ControlPlane};

/// Runs kubectl with the server's kubeconfig; returns (success, stdout, stderr).
async fn kubectl(kubeconfig: &Path, args: &[&str]) -> (bool, String, String) {
    let kubeconfig = kubeconfig.to_owned();
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    let printable = args.join(" ");
    let out = tokio::task::spawn_blocking(move || {
        Command::new(controlplane::binary("kubectl").unwrap_or_else(|e| panic!("{e}")))
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .arg("--request-timeout=20s")
            .args(&args)
            .current_dir(wgnet_tests::repo_root())
            .output()
    })
    .await
    .expect("kubectl task joins")
    .unwrap_or_else(|e| panic!("cannot run kubectl ({e}); install it with `make deps`"));
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    eprintln!("kubectl {printable}\n{stdout}{stderr}");
    (out.status.success(), stdout, stderr)
}

/// Removes the test's temporary directory when the test ends, also on failure.
struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn samples(dir: &str) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> =
        std::fs::read_dir(wgnet_tests::repo_root().join("testdata/crs").join(dir))
            .expect("samples readable")
            .map(|e| e.expect("entry").path())
            .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
            .collect();
    files.sort();
    files
}

/// The user-facing workflow of issue 6: `kubectl apply -f crds/`, then the samples.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_applies_crds_and_samples() {
    let server = ControlPlane::start(controlplane::Options {
        controllers: false,
        ..controlplane::Options::default()
    })
    .await
    .unwrap_or_else(|e| panic!("control plane: {e}"));
    let dir = std::env::temp_dir().join(format!("wgnet-kubectl-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let _cleanup = TempDir(dir.clone());
    let kc = server.admin_kubeconfig();

    let (ok, out, _) = kubectl(&kc, &["apply", "-f", "crds/"]).await;
    assert!(
        ok && out.contains("gateways.wgnet.dev created"),
        "CRDs must apply"
    );
    // The README's install steps: kubectl speaks protobuf for these built-in kinds.
    let (ok, _, err) = kubectl(&kc, &["create", "namespace", "my-app"]).await;
    assert!(ok, "create namespace: {err}");
    let key = dir.join("wg0.conf");
    std::fs::write(&key, "[Interface]\n").expect("write file");
    let from = format!("--from-file=wg0.conf={}", key.display());
    let (ok, _, err) = kubectl(
        &kc,
        &["-n", "my-app", "create", "secret", "generic", "vpn", &from],
    )
    .await;
    assert!(ok, "create secret: {err}");
    let (ok, _, err) = kubectl(
        &kc,
        &[
            "wait",
            "--for=condition=Established",
            "crd/gateways.wgnet.dev",
            "crd/egressgateways.wgnet.dev",
        ],
    )
    .await;
    assert!(ok, "CRDs established: {err}");
    // The OpenAPI document catches up with a new CRD a moment after it is Established.
    let mut explained = (false, String::new(), String::new());
    for _ in 0..50 {
        explained = kubectl(&kc, &["explain", "gateway.spec.forwards"]).await;
        if explained.0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let (ok, out, err) = explained;
    assert!(ok && out.contains("targetPort"), "explain: {out}{err}");

    for file in samples("valid") {
        let (ok, _, err) = kubectl(&kc, &["apply", "-f", file.to_str().expect("utf-8 path")]).await;
        assert!(ok, "{} must be accepted: {err}", file.display());
    }
    for file in samples("invalid") {
        let text = std::fs::read_to_string(&file).expect("sample readable");
        let expect = text
            .lines()
            .find_map(|l| l.strip_prefix("# expect: "))
            .expect("expect line")
            .trim()
            .to_owned();
        let (ok, _, err) = kubectl(&kc, &["apply", "-f", file.to_str().expect("utf-8 path")]).await;
        assert!(!ok, "{} must be rejected", file.display());
        // kubectl folds the server's message into one line; compare without quoting differences.
        let squash = |s: &str| s.replace(['"', '\''], "");
        assert!(
            squash(&err).contains(&squash(&expect)),
            "{}: expected {expect:?} in {err}",
            file.display()
        );
    }

    let (ok, out, _) = kubectl(&kc, &["get", "gateways", "-n", "my-app", "-o", "name"]).await;
    assert!(
        ok && out.contains("gateway.wgnet.dev/edge") && out.contains("gateway.wgnet.dev/edge-all"),
        "{out}"
    );
    let (ok, out, _) = kubectl(&kc, &["get", "gw", "-n", "my-app"]).await;
    let header = out.lines().next().unwrap_or_default();
    for column in ["NAME", "ADDRESS", "READY", "FORWARDS", "AGE"] {
        assert!(ok && header.contains(column), "column {column} in {out}");
    }
    let (ok, out, _) = kubectl(&kc, &["describe", "gw", "edge-all", "-n", "my-app"]).await;
    assert!(ok && out.contains("europe-west4-b"), "{out}");
    assert!(out.contains("Events:"), "{out}");
    assert!(
        kubectl(&kc, &["delete", "gw", "edge-all", "-n", "my-app"])
            .await
            .0
    );
    let (ok, out, _) = kubectl(
        &kc,
        &[
            "get",
            "egw",
            "-n",
            "my-app",
            "-o",
            "jsonpath={.items[*].metadata.name}",
        ],
    )
    .await;
    assert!(ok && out.contains("onprem-db"), "{out}");
    let (_, out, _) = kubectl(&kc, &["get", "gateways", "-n", "my-app", "-o", "name"]).await;
    assert!(
        !out.contains("edge-all"),
        "deleted Gateway still listed: {out}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
