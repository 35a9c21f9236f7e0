//! `wgnet-sandbox` (`make demo`): the whole product on one machine, with the cloud and the
//! cluster emulated and the data plane real. It starts the stand-in Kubernetes API server,
//! the GCP emulator (which boots each gateway VM from its own startup-script in a network
//! namespace owning its "public" address), the real `wgnet-operator` binary, and the kubelet
//! stand-in that runs real `wgnet-link` pods; applies `examples/demo/` with kubectl; waits
//! for Ready; fetches a page through the gateway's public IP from an "internet" client;
//! deletes the Gateway and shows the cloud inventory empty. Everything it created is
//! removed when it ends, on Ctrl-C too. Needs root (network namespaces, nftables).

use std::process::{Child, Command};
use std::time::{Duration, Instant};

use kube::Api;
use serde_json::Value;
use wgnet_tests::cluster::Cluster;
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

fn kubectl(kubeconfig: &std::path::Path, args: &[&str]) -> Result<String, String> {
    let out = Command::new("kubectl")
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .output()
        .map_err(|e| format!("cannot run kubectl ({e}); `make deps` installs it"))?;
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

async fn demo(c: &Cluster, kubeconfig: &std::path::Path) -> Result<(), String> {
    let root = wgnet_tests::repo_root();
    let examples = root.join("examples/demo");

    step("starting the operator (the real wgnet-operator binary, built from this checkout)");
    let log = c.dir().join("operator.log");
    let out = std::fs::File::create(&log).map_err(|e| format!("operator log: {e}"))?;
    let _op = Operator(
        Command::new(workspace_binary("wgnet-operator"))
            .args([
                "--link-image",
                "wgnet-link:sandbox",
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
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "info")
            .stdout(out.try_clone().map_err(|e| format!("operator log: {e}"))?)
            .stderr(out)
            .spawn()
            .map_err(|e| format!("cannot start wgnet-operator: {e}"))?,
    );
    say(&format!("    operator log: {}", log.display()));

    step("kubectl apply -f examples/demo/ (namespace, Service web, Gateway hello)");
    for f in ["namespace.yaml", "web-service.yaml"] {
        let path = examples.join(f);
        say(kubectl(kubeconfig, &["apply", "-f", &path.to_string_lossy()])?.trim_end());
    }
    let ip = kubectl(
        kubeconfig,
        &[
            "-n",
            "demo",
            "get",
            "service",
            "web",
            "-o",
            "jsonpath={.spec.clusterIP}",
        ],
    )?;
    let site = c.dir().join("site");
    std::fs::create_dir_all(&site).map_err(|e| format!("site dir: {e}"))?;
    std::fs::write(
        site.join("index.html"),
        "Hello from inside the cluster: Service demo/web answered through a WireGuard gateway.\n",
    )
    .map_err(|e| format!("index.html: {e}"))?;
    let backend = c.service_host(&ip);
    drop(backend.spawn(
        &format!(
            "cd '{}' && exec python3 -m http.server 80 --bind {ip}",
            site.display()
        ),
        &[],
    ));
    say(&format!(
        "    a small HTTP server answers on the Service's ClusterIP {ip}:80"
    ));
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

    // The stand-in API server does not render server-side tables, so the CRD's printer
    // columns are spelled out here (a real cluster shows them for a plain `get`).
    step("kubectl get gateways -A");
    say(kubectl(
        kubeconfig,
        &[
            "get",
            "gateways",
            "-A",
            "-o",
            "custom-columns=NAMESPACE:.metadata.namespace,NAME:.metadata.name,ADDRESS:.status.address,READY:.status.conditions[?(@.type==\"Ready\")].status,FORWARDS:.status.forwardsReady",
        ],
    )?
    .trim_end());
    step("the GCP emulator's inventory (what the operator created)");
    for l in inventory(c) {
        say(&l);
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
    if !is_root() {
        eprintln!(
            "wgnet-sandbox: needs root (it creates network namespaces and nftables rules); run `sudo make demo`"
        );
        return std::process::ExitCode::from(2);
    }
    say("wireguard-gateway-operator sandbox");
    say("  real:     wgnet-operator, wgnet-link (WireGuard in userspace, nftables, routes),");
    say("            the VM's own startup script (wireguard-go stands in for the kernel module),");
    say("            kubectl, TCP from an internet client to the public address");
    say("  emulated: Google Cloud (Compute, IAM, Secret Manager: a local emulator),");
    say("            Kubernetes (a stand-in API server; a kubelet stand-in runs link pods),");
    say(
        "            the internet (TEST-NET addresses in network namespaces, no route off this machine)",
    );
    let c = Cluster::start(LatencyProfile::gcp_typical().scaled_by(0.05)).await;
    let kubeconfig = c.dir().join("kubeconfig");
    say(&format!(
        "  kubeconfig while it runs: {} (GCP latencies: typical x0.05)",
        kubeconfig.display()
    ));
    let result = tokio::select! {
        r = demo(&c, &kubeconfig) => r,
        _ = tokio::signal::ctrl_c() => Err("interrupted".into()),
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
