//! `wgnet-sandbox` (`make demo`, `make sandbox`): the whole product on one machine, with
//! the cloud emulated and everything else real. It starts a real Kubernetes control plane
//! (etcd, kube-apiserver, controller manager, scheduler, kube-proxy, built from source) with
//! the chart installed by `helm install`, the GCP emulator (which boots each gateway VM from
//! its own startup-script in a network namespace owning its "public" address), the real
//! `wgnet-operator` binary authenticated as the chart's ServiceAccount, and the kubelet
//! stand-in that runs pods as real processes; applies `examples/demo/` with kubectl; waits
//! for Ready; fetches a page through the gateway's public IP from an "internet" client.
//! Then it deletes the Gateway and shows the cloud inventory empty, or, with `--keep`,
//! prints a kubeconfig and waits for Ctrl-C so you can use kubectl against it. Everything
//! it created is removed when it ends, on Ctrl-C too. Needs root (network namespaces,
//! nftables).

use std::process::{Child, Command};
use std::time::{Duration, Instant};

use kube::Api;
use serde_json::Value;
use wgnet_tests::cluster::{Cluster, OPERATOR_NAMESPACE, OPERATOR_SA, OperatorRun};
use wgnet_tests::controlplane::{self, ControlPlane};
use wgnet_tests::gateway::VmKind;
use wgnet_tests::gcp::LatencyProfile;
use wgnet_tests::link::workspace_binary;

/// Kills the operator process when the sandbox ends, however it ends.
struct Operator(Child);

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn say(line: &str) {
    #[allow(clippy::print_stdout)]
    {
        println!("{line}");
    }
}

fn step(line: &str) {
    say(&format!("\n==> {line}"));
}

const USAGE: &str = "usage: wgnet-sandbox [--keep] [--vm namespace|qemu]

Runs the whole product locally as root: a real Kubernetes control plane, the GCP emulator,
the real operator and link, and a client on an emulated internet. It applies
examples/demo/, waits until the Gateway is Ready and fetches a page through its public IP.

  (no flag)  then deletes the Gateway, shows the emulated cloud empty, and exits (make demo)
  --keep     then prints a kubeconfig and keeps everything running until Ctrl-C, so you can
             try kubectl get gw, kubectl explain gateway.spec, kubectl describe gw, edit
             forwards live and delete; Ctrl-C cleans up and exits 0 (make sandbox)
  --vm qemu  boots each gateway VM as a Debian 12 guest with its own kernel (kernel
             WireGuard) under qemu, as make test-vm does (needs make deps-vm; the image is
             built once, about a minute; the guest boots and installs in about a minute)
  --vm namespace
             (default) runs each VM's startup script in a network namespace, with
             wireguard-go for the kernel module
  -h, --help this text

Environment: WGNET_SANDBOX_TIMEOUT (seconds to wait for Ready, default 300),
K8S_VERSION (the Kubernetes release to build and run, see scripts/k8s-bins.sh).";

fn kubectl(kubeconfig: &std::path::Path, args: &[&str]) -> Result<String, String> {
    let bin = controlplane::binary("kubectl").map_err(|e| e.to_string())?;
    let out = Command::new(bin)
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .output()
        .map_err(|e| format!("cannot run kubectl ({e})"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "kubectl {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .map(|v| v.split_whitespace().next() == Some("0"))
        })
        .unwrap_or(false)
}

fn inventory(c: &Cluster) -> Vec<String> {
    c.emu
        .inventory()
        .into_iter()
        .filter(|i| !i.name.starts_with("wgnet-operator@"))
        .map(|i| {
            format!(
                "  {:<15} {:<15} {:<14} {}",
                i.kind, i.project, i.scope, i.name
            )
        })
        .collect()
}

fn condition(gw: &Value, type_: &str) -> Option<(String, String, String)> {
    gw["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
        .map(|c| {
            let s = |k: &str| c[k].as_str().unwrap_or_default().to_owned();
            (s("status"), s("reason"), s("message"))
        })
}

async fn demo(c: &Cluster, kubeconfig: &std::path::Path, keep: bool) -> Result<(), String> {
    let root = wgnet_tests::repo_root();
    let examples = root.join("examples/demo");

    step("starting the operator (the real wgnet-operator binary, as the chart's ServiceAccount)");
    let log = c.dir().join("operator.log");
    let token =
        ControlPlane::service_account_token(&c.client, OPERATOR_NAMESPACE, OPERATOR_SA, None)
            .await
            .map_err(|e| e.to_string())?;
    let operator_kubeconfig = c.dir().join("operator.kubeconfig");
    std::fs::write(
        &operator_kubeconfig,
        c.cp.kubeconfig_for_token(c.cp.url(), &token),
    )
    .map_err(|e| format!("operator kubeconfig: {e}"))?;
    let out = std::fs::File::create(&log).map_err(|e| format!("operator log: {e}"))?;
    let _op = Operator(
        Command::new(workspace_binary("wgnet-operator"))
            .args([
                "--link-image",
                "wgnet-link:sandbox",
                // The emulator's two projects; examples/demo/ uses wgnet-sandbox.
                "--allowed-projects",
                "wgnet-sandbox,wgnet-test",
                "--cluster-id",
                "sandbox",
                "--resync",
                "60",
                "--metrics-addr",
                "127.0.0.1:0",
                "--health-addr",
                "127.0.0.1:0",
                "--compute-endpoint",
                &c.emu.compute_url(),
                "--iam-endpoint",
                &c.emu.iam_url(),
                "--secrets-endpoint",
                &c.emu.secrets_url(),
            ])
            .arg("--gcp-credentials")
            .arg(&c.key)
            .env("KUBECONFIG", &operator_kubeconfig)
            .env("POD_NAMESPACE", OPERATOR_NAMESPACE)
            .env("RUST_LOG", "info")
            .stdout(out.try_clone().map_err(|e| format!("operator log: {e}"))?)
            .stderr(out)
            .spawn()
            .map_err(|e| format!("cannot start wgnet-operator: {e}"))?,
    );
    say(&format!("    operator log: {}", log.display()));

    step("kubectl apply -f examples/demo/ (namespace, Deployment and Service web, Gateway hello)");
    for f in ["namespace.yaml", "web.yaml", "web-service.yaml"] {
        let path = examples.join(f);
        say(kubectl(kubeconfig, &["apply", "-f", &path.to_string_lossy()])?.trim_end());
    }
    say(kubectl(
        kubeconfig,
        &[
            "-n",
            "demo",
            "rollout",
            "status",
            "deployment/web",
            "--timeout=120s",
        ],
    )?
    .trim_end());
    let gw_file = examples.join("gateway.yaml");
    say(kubectl(kubeconfig, &["apply", "-f", &gw_file.to_string_lossy()])?.trim_end());

    step("waiting for Ready (cloud resources, VM boot, link tunnel)");
    let gws: Api<kube::api::DynamicObject> = Api::namespaced_with(
        c.client.clone(),
        "demo",
        &kube::api::ApiResource::from_gvk_with_plural(
            &kube::api::GroupVersionKind::gvk("wgnet.dev", "v1alpha1", "Gateway"),
            "gateways",
        ),
    );
    let started = Instant::now();
    let mut last = String::new();
    let address = loop {
        let gw = gws
            .get("hello")
            .await
            .map_err(|e| format!("reading the Gateway: {e}"))?;
        let gw = serde_json::to_value(&gw).map_err(|e| e.to_string())?;
        let ready = condition(&gw, "Ready");
        let cloud = condition(&gw, "CloudReady");
        let line = format!(
            "Ready={} ({}) CloudReady={} address={}",
            ready.as_ref().map(|r| r.0.as_str()).unwrap_or("-"),
            ready.as_ref().map(|r| r.1.as_str()).unwrap_or("-"),
            cloud.as_ref().map(|r| r.1.as_str()).unwrap_or("-"),
            gw["status"]["address"].as_str().unwrap_or("-"),
        );
        if line != last {
            say(&format!(
                "    {:>5.1}s  {line}",
                started.elapsed().as_secs_f64()
            ));
            last = line;
        }
        if ready.as_ref().is_some_and(|r| r.0 == "True") {
            break gw["status"]["address"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
        }
        if started.elapsed()
            > Duration::from_secs(
                std::env::var("WGNET_SANDBOX_TIMEOUT")
                    .ok()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(300),
            )
        {
            return Err(format!(
                "the Gateway was not Ready within 5 minutes; operator log: {}",
                log.display()
            ));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };

    step(&format!(
        "curl http://{address}:8080/ from a client namespace on the emulated internet"
    ));
    let mut page = None;
    for _ in 0..20 {
        let (ok, out, _) = c
            .client_ns
            .try_sh(&format!("curl -s --max-time 3 http://{address}:8080/"));
        if ok && !out.is_empty() {
            page = Some(out);
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let page = page.ok_or("the page did not load through the gateway")?;
    say(&format!("    {}", page.trim_end()));

    step("kubectl get gateways -A");
    say(kubectl(kubeconfig, &["get", "gateways", "-A"])?.trim_end());
    step("the GCP emulator's inventory (what the operator created)");
    for l in inventory(c) {
        say(&l);
    }

    if keep {
        let bin = controlplane::binaries().map_err(|e| e.to_string())?;
        step("the sandbox keeps running; in another shell, as root:");
        say(&format!("    export KUBECONFIG={}", kubeconfig.display()));
        say(&format!(
            "    export PATH={}:$PATH   # kubectl of the same release",
            bin.display()
        ));
        say("    kubectl get gw -A");
        say("    kubectl explain gateway.spec");
        say("    kubectl -n demo describe gw hello");
        say("    kubectl -n demo edit gw hello      # change forwards live");
        say(&format!(
            "    ip netns exec {} curl http://{address}:8080/   # the internet client",
            c.client_ns.name
        ));
        say("    kubectl -n demo delete gw hello");
        say("Press Ctrl-C to stop and clean up.");
        tokio::signal::ctrl_c()
            .await
            .map_err(|e| format!("waiting for Ctrl-C: {e}"))?;
        return Ok(());
    }

    step("kubectl delete gateway hello (the finalizer holds it until GCP is clean)");
    say(kubectl(
        kubeconfig,
        &[
            "-n",
            "demo",
            "delete",
            "gateway",
            "hello",
            "--wait=true",
            "--timeout=180s",
        ],
    )?
    .trim_end());
    let left = inventory(c);
    if left.is_empty() {
        say("    inventory: empty, nothing left behind");
    } else {
        return Err(format!("resources left behind:\n{}", left.join("\n")));
    }
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> std::process::ExitCode {
    let mut keep = false;
    let mut vms = VmKind::Namespace;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--keep" => keep = true,
            "--vm" => match args.next().as_deref() {
                Some("qemu") => vms = VmKind::Guest,
                Some("namespace") => vms = VmKind::Namespace,
                _ => {
                    eprintln!("wgnet-sandbox: --vm takes namespace or qemu\n{USAGE}");
                    return std::process::ExitCode::from(2);
                }
            },
            "-h" | "--help" => {
                say(USAGE);
                return std::process::ExitCode::SUCCESS;
            }
            other => {
                eprintln!("wgnet-sandbox: unknown argument {other:?}\n{USAGE}");
                return std::process::ExitCode::from(2);
            }
        }
    }
    if !is_root() {
        eprintln!(
            "wgnet-sandbox: needs root (it creates network namespaces and nftables rules); run `sudo make demo`"
        );
        return std::process::ExitCode::from(2);
    }
    say("wireguard-gateway-operator sandbox");
    say("  real:     wgnet-operator, wgnet-link (WireGuard in userspace, nftables, routes),");
    if vms == VmKind::Guest {
        say("            the VM: a Debian 12 guest with its own kernel under qemu, running its");
        say(
            "            startup script from metadata (kernel WireGuard, nftables installed by apt),",
        );
    } else {
        say(
            "            the VM's own startup script (wireguard-go stands in for the kernel module),",
        );
    }
    say("            the Kubernetes control plane (etcd, kube-apiserver, controller manager,");
    say("            scheduler, kube-proxy in nftables mode), helm, kubectl,");
    say("            TCP from an internet client to the public address");
    say("  emulated: Google Cloud (Compute, IAM, Secret Manager: a local emulator),");
    say("            the kubelet (a stand-in runs each pod as a process in a network namespace),");
    say(
        "            the internet (TEST-NET addresses in network namespaces, no route off this machine)",
    );
    let c = Cluster::start_with_vms(
        LatencyProfile::gcp_typical().scaled_by(0.05),
        OperatorRun::ByTheTest,
        vms,
    )
    .await;
    let kubeconfig = c.cp.admin_kubeconfig();
    say(&format!(
        "  control plane ready in {:.1} s; kubeconfig while it runs: {} (GCP latencies: typical x0.05)",
        c.cp.started_in.as_secs_f64(),
        kubeconfig.display()
    ));
    let result = tokio::select! {
        r = demo(&c, &kubeconfig, keep) => r,
        // Ctrl-C is how a user ends the sandbox: a normal exit once cleaned up.
        _ = tokio::signal::ctrl_c() => if keep { Ok(()) } else { Err("interrupted".into()) },
    };
    if result.is_err() {
        // What went wrong, before the files go away with the cleanup.
        let log = std::fs::read_to_string(c.dir().join("operator.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(30).collect();
        eprintln!("--- operator log (last lines) ---");
        for l in tail.iter().rev() {
            eprintln!("{l}");
        }
        eprintln!("--- link pods and VMs ---\n{}", c.logs());
    }
    step("cleaning up (namespaces, processes, emulators)");
    drop(c);
    match result {
        Ok(()) => {
            say("done.");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("wgnet-sandbox: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
