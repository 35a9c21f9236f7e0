//! A whole "cluster and cloud" for operator end-to-end tests, in network namespaces:
//!
//! - a real control plane ([`ControlPlane`]: etcd, kube-apiserver, kube-controller-manager,
//!   kube-scheduler) and the GCP emulator, both on the root side of one veth into the
//!   "internet" namespace (a bridge on 203.0.113.0/24 that NATs towards them);
//! - the chart installed with `helm install` (CRDs, ServiceAccount, RBAC), so an operator
//!   that authenticates as [`Cluster::operator_client`] has exactly the chart's rights;
//! - a node namespace running real kube-proxy in nftables mode (ClusterIP and NodePort from
//!   real EndpointSlices) and the kubelet stand-in ([`Kubelet`]), which runs every Pod the
//!   scheduler binds to the node as a real process in a pod namespace routed from the node
//!   (pods in 10.244.0.0/24, Services in 10.96.0.0/12, both only inside these namespaces);
//! - a VM booter that "boots" every RUNNING emulator instance by running its own
//!   startup-script (from its metadata) in a namespace owning the instance's public IP
//!   (or, with [`VmKind::Guest`], as a Debian guest under qemu that runs it itself), and
//!   tears it down when the instance stops or disappears.
//!
//! Everything runs on TEST-NET and private test addresses with no route off the machine,
//! and is removed on drop. I/O boundary: `ip`/`nft`/`helm`/processes, the servers, and
//! background threads driving the kubelet and booter loops.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Child;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use kube::api::{Api, PostParams};
use serde_json::{Value, json};

use crate::controlplane::{self, ControlPlane};
use crate::fixtures::TempDir;
use crate::gateway::{VmKind, echo_py};
use crate::gcp::{Config, GcpEmulator, LatencyProfile};
use crate::guest::{Guest, GuestSpec};
use crate::kubelet::{self, Kubelet};
use crate::netns::{self, Netns, RootLink, wait_for};

/// The chart's release name and namespace in every test cluster.
pub const RELEASE: &str = "wgnet";
/// The namespace the chart is installed into.
pub const OPERATOR_NAMESPACE: &str = "wgnet-system";
/// The operator's ServiceAccount as the chart names it for [`RELEASE`].
pub const OPERATOR_SA: &str = "wgnet-wireguard-gateway-operator";

/// One booted VM.
struct VmRun {
    /// The qemu guest when the cluster boots guests; dropped (powered off) before its
    /// namespace.
    guest: Option<Guest>,
    id: String,
    iface: String,
    ns: Netns,
    dir: TempDir,
    /// The GCP firewall ruleset last loaded into the VM's namespace.
    firewall: String,
}

#[derive(Default)]
struct World {
    vms: BTreeMap<String, VmRun>,
    log: Vec<String>,
}

/// The environment; drop tears it all down.
pub struct Cluster {
    /// The kubelet stand-in of the one node.
    pub kubelet: Kubelet,
    /// The GCP emulator.
    pub emu: Arc<GcpEmulator>,
    /// The control plane.
    pub cp: ControlPlane,
    /// An admin client of it (system:masters), for the tests' own set-up and checks.
    pub client: Client,
    /// Key file of the operator's GCP service account.
    pub key: PathBuf,
    /// The client namespace on the "internet".
    pub client_ns: Netns,
    /// The node namespace.
    pub node: Netns,
    kube_proxy: Option<Child>,
    dir: TempDir,
    world: Arc<Mutex<World>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    _root: RootLink,
    net: Netns,
    /// Last: the addresses are free for others only once the root link is gone.
    _subnet: netns::Subnet,
}

fn sh(ns: &Netns, cmd: &str) {
    ns.sh(cmd);
}

/// Attaches a new veth end named `ifname` (address `addr`) in `ns` to `bridge` in the
/// namespace named `host`.
fn attach(host: &str, bridge: &str, ns: &Netns, ifname: &str, addr: &str) {
    attach_port(host, bridge, ns, ifname);
    sh(
        ns,
        &format!("ip addr add {addr} dev {ifname} && ip link set {ifname} up"),
    );
}

/// As [`attach`] without an address: a port for a bridge in `ns` (a guest's host side).
fn attach_port(host: &str, bridge: &str, ns: &Netns, ifname: &str) {
    let tag = netns::unique_tag();
    let (a, b) = (format!("ca{tag}"), format!("cb{tag}"));
    netns::ip(&["link", "add", &a, "type", "veth", "peer", "name", &b]);
    netns::ip(&["link", "set", &a, "netns", host]);
    netns::ip(&["link", "set", &b, "netns", &ns.name, "name", ifname]);
    netns::ip(&["-n", host, "link", "set", &a, "master", bridge]);
    netns::ip(&["-n", host, "link", "set", &a, "up"]);
}

/// `helm install` of the chart into the control plane (CRDs from the chart's `crds/`).
/// The operator's own pod is kept off the node (the tests run the operator themselves,
/// authenticated as the chart's ServiceAccount), unless `run_operator` asks the kubelet
/// stand-in to run it; `extra` are further `--set` values.
pub fn helm_install(cp: &ControlPlane, extra: &[&str]) -> Result<String, String> {
    let kubeconfig = cp.admin_kubeconfig();
    let chart = crate::chart::dir();
    let allowed = format!("gcp.allowedProjects={{{}}}", crate::fixtures::PROJECT);
    let mut args: Vec<String> = [
        "install",
        RELEASE,
        &chart.display().to_string(),
        "--namespace",
        OPERATOR_NAMESPACE,
        "--create-namespace",
        "--kubeconfig",
        &kubeconfig.display().to_string(),
        "--set",
        "dns.enabled=true",
        "--set",
        &allowed,
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    for s in extra {
        args.push("--set".into());
        args.push((*s).to_owned());
    }
    crate::chart::helm_cmd(&args)
}

/// Who runs the operator in a test cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OperatorRun {
    /// The test runs it (in-process or as a process) as the chart's ServiceAccount; the
    /// chart's own operator pod is kept off the node.
    ByTheTest,
    /// The chart's Deployment runs it: the kubelet stand-in runs the operator pod (the
    /// real binary, as the chart's non-root user, with the GCP key from the chart's Secret
    /// volume and the emulator's endpoints as chart values).
    ByTheChart,
}

/// The chart values that point an operator pod at `emu`, with the key in Secret
/// `wgnet-gcp` of the operator's namespace.
pub fn chart_values_for_emulator(emu: &GcpEmulator) -> Vec<String> {
    vec![
        "gcp.credentials.existingSecret=wgnet-gcp".into(),
        format!("gcp.endpoints.compute={}", emu.compute_url()),
        format!("gcp.endpoints.iam={}", emu.iam_url()),
        format!("gcp.endpoints.secrets={}", emu.secrets_url()),
        format!("clusterID={}", crate::fixtures::CLUSTER),
        format!("gcp.allowedProjects={{{}}}", crate::fixtures::PROJECT),
        "resyncSeconds=30".into(),
    ]
}

impl Cluster {
    /// Builds the namespaces, starts the emulator and the control plane, installs the
    /// chart, registers the node and starts kube-proxy, the kubelet and the VM booter.
    /// `profile` sets the emulator's latencies; the test runs the operator.
    pub async fn start(profile: LatencyProfile) -> Self {
        Self::start_with(profile, OperatorRun::ByTheTest).await
    }

    /// As [`Cluster::start`], choosing who runs the operator.
    pub async fn start_with(profile: LatencyProfile, operator: OperatorRun) -> Self {
        Self::start_with_vms(profile, operator, VmKind::Namespace).await
    }

    /// As [`Cluster::start_with`], choosing how instances boot: their startup-script in a
    /// namespace (fast) or a Debian guest under qemu (the VM tier: kernel WireGuard).
    pub async fn start_with_vms(
        profile: LatencyProfile,
        operator: OperatorRun,
        vms: VmKind,
    ) -> Self {
        netns::require_root();
        // The link and operator binaries are built (when stale) before anything runs, so
        // the build never lands inside a pod start or a measured window.
        let _ = crate::link::binary();
        let tag = netns::unique_tag();
        let subnet = netns::Subnet::claim();
        let (root_ip, net_ip) = (subnet.host(1), subnet.host(2));
        let net = Netns::new("inet", &tag);
        let root = RootLink::new(
            &format!("wge{tag}"),
            &format!("{root_ip}/30"),
            &net,
            "svc0",
            &format!("{net_ip}/30"),
        );
        sh(
            &net,
            "ip link add br0 type bridge && ip addr add 203.0.113.1/24 dev br0 && ip link set br0 up && sysctl -qw net.ipv4.ip_forward=1",
        );
        // Whatever leaves the internet towards the servers looks like it came from the
        // internet's side of the link, so the root namespace needs no route back.
        sh(
            &net,
            "nft 'add table ip nat; add chain ip nat post { type nat hook postrouting priority 100; }; add rule ip nat post oifname \"svc0\" masquerade'",
        );

        let node = Netns::new("node", &tag);
        attach(&net.name, "br0", &node, "eth0", "203.0.113.30/24");
        sh(
            &node,
            "ip route add default via 203.0.113.1 && sysctl -qw net.ipv4.ip_forward=1",
        );
        // Pods leave the node masqueraded, as a CNI's SNAT does for traffic off the cluster.
        sh(
            &node,
            "nft 'add table ip cni; add chain ip cni post { type nat hook postrouting priority 100; }; add rule ip cni post ip saddr 10.244.0.0/16 ip daddr != 10.244.0.0/16 oifname \"eth0\" masquerade'",
        );
        let client_ns = Netns::new("cli", &tag);
        attach(&net.name, "br0", &client_ns, "eth0", "203.0.113.20/24");
        sh(&client_ns, "ip route add default via 203.0.113.1");

        let emu = Arc::new(
            GcpEmulator::start(Config {
                addr: (root_ip, 0).into(),
                profile,
                // The tests' project and the sandbox's (make demo).
                projects: vec!["wgnet-test".to_owned(), "wgnet-sandbox".to_owned()],
                ..Config::default()
            })
            .await
            .expect("GCP emulator"),
        );
        // The controllers start after the chart's CRDs exist (see `start_controllers`).
        let mut cp = ControlPlane::start(controlplane::Options {
            bind: root_ip,
            controllers: false,
        })
        .await
        .unwrap_or_else(|e| panic!("control plane: {e}"));
        let client = cp.admin_client().await.expect("admin client");
        let dir = TempDir::new();
        let key = dir.0.join("key.json");
        emu.write_key_file("wgnet-operator@wgnet-test.iam.gserviceaccount.com", &key)
            .expect("key file");
        match operator {
            OperatorRun::ByTheTest => {
                helm_install(&cp, &["nodeSelector.wgnet\\.dev/no-such-node=none"])
            }
            OperatorRun::ByTheChart => {
                create_key_secret(&client, &key).await;
                let values = chart_values_for_emulator(&emu);
                let values: Vec<&str> = values.iter().map(String::as_str).collect();
                helm_install(&cp, &values)
            }
        }
        .unwrap_or_else(|e| panic!("helm install: {e}"));
        cp.start_controllers()
            .await
            .unwrap_or_else(|e| panic!("control plane: {e}"));

        let kube_proxy = start_kube_proxy(&cp, &node, &dir.0);
        // A node's kube-proxy runs before its workloads do. A pod started inside the
        // moment before kube-proxy's first sync (its table may exist, its Service rules
        // not yet) once never reached the API server's ClusterIP in CI; real nodes do not
        // start pods in that moment, so no test should depend on what happens in it.
        wait_kube_proxy(&node, &dir.0, cp.url());
        let kubelet = Kubelet::start(
            &cp,
            kubelet::Settings {
                node: controlplane::NODES[0].to_owned(),
                node_ns: node.name.clone(),
                node_ip: "203.0.113.30".into(),
                pod_subnet: 0,
                dir: dir.0.join("pods"),
                env: vec![],
            },
        )
        .await;

        let world = Arc::new(Mutex::new(World::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let env = Env {
            emu: emu.clone(),
            net: net.name.clone(),
            vms,
            root_ip,
            hosts: AtomicU32::new(0),
        };
        let thread = {
            let (world, stop) = (world.clone(), stop.clone());
            std::thread::spawn(move || booter(env, world, stop))
        };
        Self {
            kubelet,
            emu,
            cp,
            client,
            key,
            client_ns,
            node,
            kube_proxy: Some(kube_proxy),
            dir,
            world,
            stop,
            thread: Some(thread),
            _root: root,
            net,
            _subnet: subnet,
        }
    }

    /// A client acting as the chart's operator ServiceAccount: what the operator may do
    /// in a cluster, and nothing more.
    pub async fn operator_client(&self) -> Client {
        self.cp
            .service_account_client(OPERATOR_NAMESPACE, OPERATOR_SA)
            .await
            .expect("operator client")
    }

    /// Creates namespace `name` with `labels`.
    pub async fn namespace(&self, name: &str, labels: &[(&str, &str)]) {
        use k8s_openapi::api::core::v1::Namespace;
        let labels: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let ns: Namespace =
            serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}}))
                .expect("namespace");
        Api::<Namespace>::all(self.client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .expect("create namespace");
    }

    /// A directory for the test's files.
    pub fn dir(&self) -> &std::path::Path {
        &self.dir.0
    }

    /// A backend pod labelled `app=<app>` in `namespace` (what a Service selecting
    /// `app: <app>` reaches through kube-proxy), answering on `tcp` and `udp` ports (comma
    /// lists) with `tag` in every answer; returns once the pod is Ready.
    pub async fn backend(&self, namespace: &str, app: &str, tcp: &str, udp: &str, tag: &str) {
        let name = format!("{app}-{}", netns::unique_tag());
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {"app": app}},
            "spec": {"containers": [{"name": "echo", "image": kubelet::ECHO_IMAGE, "args": [tcp, udp, tag]}]}
        }))
        .expect("pod");
        self.run_pod(namespace, &pod).await;
    }

    /// Creates `pod` in `namespace` and waits (bounded, 60 s) until it is Ready.
    pub async fn run_pod(&self, namespace: &str, pod: &Pod) {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let name = pod.metadata.name.clone().unwrap_or_default();
        pods.create(&PostParams::default(), pod)
            .await
            .expect("create backend pod");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let p = pods.get(&name).await.expect("get backend pod");
            let ready = p
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
            if ready {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "backend pod {name} never became ready\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// One request from the client namespace to `ip:port` (`tcp` or `udp`), retried until
    /// `timeout`; the answer.
    pub fn request(&self, proto: &str, ip: &str, port: u16, timeout: Duration) -> Option<String> {
        wait_for(timeout, || {
            let (ok, out, _) = self.client_ns.try_sh(&format!(
                "timeout 3 python3 '{}' {proto} {ip} {port}",
                echo_py()
            ));
            (ok && !out.trim().is_empty()).then(|| out.trim().to_owned())
        })
    }

    /// Whether one request (no retries) gets an answer.
    pub fn answers(&self, proto: &str, ip: &str, port: u16) -> bool {
        self.client_ns
            .try_sh(&format!(
                "timeout 3 python3 '{}' {proto} {ip} {port}",
                echo_py()
            ))
            .0
    }

    /// A namespace on the "internet" bridge owning `addr` (CIDR form), default route via
    /// the bridge.
    pub fn internet_host(&self, role: &str, addr: &str) -> Netns {
        let ns = Netns::new(role, &netns::unique_tag());
        attach(&self.net.name, "br0", &ns, "eth0", addr);
        sh(&ns, "ip route add default via 203.0.113.1");
        ns
    }

    /// The pod IP of the pod `name`.
    pub fn pod_ip(&self, name: &str) -> Option<String> {
        self.kubelet
            .pods()
            .into_iter()
            .find(|p| p.name == name)
            .map(|p| p.ip)
    }

    /// The link pods (those the operator manages) running now: (`namespace/deployment`,
    /// pod name, process id).
    pub fn pods(&self) -> Vec<(String, String, u32)> {
        self.kubelet
            .pods()
            .into_iter()
            .filter(|p| p.managed)
            .map(|p| (p.owner, p.name, p.pid))
            .collect()
    }

    /// Whether the pod `name` has a wg0 interface now.
    pub fn pod_has_wg0(&self, name: &str) -> bool {
        self.kubelet
            .exec(name, "ip link show wg0")
            .is_some_and(|(ok, _, _)| ok)
    }

    /// Evicts the pod `name` (SIGTERM, then the Pod is deleted); its ReplicaSet starts a
    /// replacement.
    pub fn stop_pod(&self, name: &str) {
        self.kubelet.evict(name);
    }

    /// Kills (SIGKILL, a crash) the process of pod `name`; the kubelet restarts it.
    pub fn kill_pod(&self, name: &str) {
        self.kubelet.crash(name);
    }

    /// Runs `cmd` inside the booted guest of instance `name` (see [`crate::guest::Guest::sh`]);
    /// `None` when the instance runs no guest or the guest does not answer within `timeout`.
    pub fn guest_sh(&self, name: &str, cmd: &str, timeout: Duration) -> Option<(i32, String)> {
        let w = self
            .world
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        w.vms.get(name)?.guest.as_ref()?.sh(cmd, timeout)
    }

    /// Instances booted now.
    pub fn vms(&self) -> Vec<String> {
        let w = self
            .world
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        w.vms.keys().cloned().collect()
    }

    /// The harness's logs (booter, kubelet and every pod, control plane tails), for
    /// failure messages.
    pub fn logs(&self) -> String {
        let w = self
            .world
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut out = w.log.join("\n");
        out.push_str(&format!("\n--- kubelet ---\n{}", self.kubelet.logs()));
        for (name, vm) in &w.vms {
            let boot = std::fs::read_to_string(vm.dir.0.join("boot.log")).unwrap_or_default();
            out.push_str(&format!("\n--- vm {name} ---\n{boot}"));
        }
        // A pod that cannot reach the API server's ClusterIP points at the node's
        // kube-proxy: its log and the rules it wrote (the kubernetes Service's, the
        // first a link needs).
        let proxy_log =
            std::fs::read_to_string(self.dir.0.join("kube-proxy.log")).unwrap_or_default();
        let tail: Vec<&str> = proxy_log.lines().rev().take(40).collect();
        out.push_str("\n--- kube-proxy (last 40 lines) ---\n");
        for l in tail.into_iter().rev() {
            out.push_str(l);
            out.push('\n');
        }
        let (_, rules, err) = self.node.try_sh("nft list table ip kube-proxy");
        let services: Vec<&str> = rules
            .lines()
            .filter(|l| l.contains("default/kubernetes") || l.contains("10.96.0.1 "))
            .collect();
        out.push_str(&format!(
            "--- node: kube-proxy's rules for default/kubernetes ({} lines of the table{}) ---\n{}\n",
            rules.lines().count(),
            if err.is_empty() { String::new() } else { format!("; nft: {}", err.trim()) },
            services.join("\n")
        ));
        // Whether each pod reaches the API server now, by its ClusterIP and directly: a
        // pod's own failure and the network's look alike in its log ("Connect").
        let endpoint = self.cp.url().trim_start_matches("https://").to_owned();
        out.push_str("--- pods reaching the API server now ---\n");
        for pod in self.kubelet.pods() {
            for target in [
                format!("{}:443", controlplane::KUBERNETES_SERVICE_IP),
                endpoint.clone(),
            ] {
                let probe = format!(
                    "curl -sk -m 3 -o /dev/null -w '%{{http_code}}' https://{target}/readyz; echo \" curl exit $?\""
                );
                let answer = self.kubelet.exec(&pod.name, &probe).map_or_else(
                    || "pod gone".to_owned(),
                    |(_, o, e)| format!("{}{}", o.trim(), e.trim()),
                );
                out.push_str(&format!("{} -> {target}: {answer}\n", pod.name));
            }
        }
        // The node's connection tracking towards the ClusterIP: an entry whose reply still
        // comes from the ClusterIP is one kube-proxy did not DNAT.
        let ip = controlplane::KUBERNETES_SERVICE_IP;
        let (_, tracked, _) = self.node.try_sh(&format!(
            "echo \"$(grep -c ' dst={ip} ' /proc/net/nf_conntrack) entries; not sent to the API server:\"; grep ' dst={ip} .* src={ip} ' /proc/net/nf_conntrack | head -20"
        ));
        out.push_str(&format!(
            "--- node: conntrack towards the ClusterIP ---\n{tracked}\n"
        ));
        out.push_str(&self.cp.logs(15));
        out.push_str(&format!("\n--- cluster state ---\n{}", self.cp.describe()));
        out
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if let Some(mut k) = self.kube_proxy.take() {
            let _ = k.kill();
            let _ = k.wait();
        }
        let mut w = self
            .world
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (_, vm) in std::mem::take(&mut w.vms) {
            let _ = std::fs::remove_file(format!("/run/wireguard/{}.sock", vm.iface));
            drop(vm);
        }
    }
}

/// The operator's namespace and its GCP key Secret `wgnet-gcp` (what README's install
/// steps create with kubectl).
async fn create_key_secret(client: &Client, key: &std::path::Path) {
    use k8s_openapi::api::core::v1::{Namespace, Secret};
    let ns: Namespace =
        serde_json::from_value(json!({"metadata": {"name": OPERATOR_NAMESPACE}})).expect("ns");
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .expect("operator namespace");
    let secret = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some("wgnet-gcp".into()),
            ..Default::default()
        },
        data: Some(
            [(
                "key.json".to_owned(),
                k8s_openapi::ByteString(std::fs::read(key).expect("key file")),
            )]
            .into(),
        ),
        ..Secret::default()
    };
    Api::<Secret>::namespaced(client.clone(), OPERATOR_NAMESPACE)
        .create(&PostParams::default(), &secret)
        .await
        .expect("key secret");
}

/// Real kube-proxy in nftables mode inside the node namespace, as `system:kube-proxy`.
fn start_kube_proxy(cp: &ControlPlane, node: &Netns, dir: &std::path::Path) -> Child {
    let kubeconfig = dir.join("kube-proxy.kubeconfig");
    std::fs::write(
        &kubeconfig,
        cp.kubeconfig_for_token(cp.url(), cp.token("system:kube-proxy")),
    )
    .expect("kube-proxy kubeconfig");
    let log = std::fs::File::create(dir.join("kube-proxy.log")).expect("kube-proxy log");
    let err = log.try_clone().expect("kube-proxy log");
    let bin = controlplane::binary("kube-proxy").unwrap_or_else(|e| panic!("{e}"));
    std::process::Command::new("ip")
        .args(["netns", "exec", &node.name])
        .arg(bin)
        .args([
            &format!("--kubeconfig={}", kubeconfig.display()),
            "--proxy-mode=nftables",
            &format!("--hostname-override={}", controlplane::NODES[0]),
            &format!("--cluster-cidr={}", controlplane::POD_CIDR),
            "--healthz-bind-address=127.0.0.1:10256",
            "--metrics-bind-address=127.0.0.1:10249",
            // Leave the namespace's conntrack table size alone.
            "--conntrack-max-per-core=0",
            "--v=1",
        ])
        .stdin(std::process::Stdio::null())
        .stdout(log)
        .stderr(err)
        .spawn()
        .expect("spawning kube-proxy")
}

/// Waits until kube-proxy on `node` sends the `kubernetes` Service to the API server at
/// `api_url` (its DNAT to that address is in the node's table): the rule a pod's first
/// request needs, which kube-proxy's healthz does not name.
fn wait_kube_proxy(node: &Netns, dir: &std::path::Path, api_url: &str) {
    let endpoint = api_url.trim_start_matches("https://");
    let programmed = wait_for(Duration::from_secs(60), || {
        let (_, rules, _) = node.try_sh("nft list table ip kube-proxy");
        rules
            .lines()
            .any(|l| l.contains("dnat") && l.contains(endpoint))
            .then_some(())
    });
    assert!(
        programmed.is_some(),
        "kube-proxy never wrote the kubernetes Service's rules (DNAT to {endpoint}):\n{}",
        std::fs::read_to_string(dir.join("kube-proxy.log")).unwrap_or_default()
    );
}

/// What the booter loop needs.
struct Env {
    emu: Arc<GcpEmulator>,
    net: String,
    vms: VmKind,
    /// Where the emulator listens (the root namespace's end of the internet's link).
    root_ip: Ipv4Addr,
    /// Guests booted so far: each guest's host side gets its own management link.
    hosts: AtomicU32,
}

fn booter(env: Env, world: Arc<Mutex<World>>, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::SeqCst) {
        let started = Instant::now();
        boot_tick(&env, &world);
        // A periodic scan, as a hypervisor noticing instances would be: the emulator has
        // no change feed to wait on, and 200 ms keeps "boot" well inside a test's bounds.
        std::thread::sleep(Duration::from_millis(200).saturating_sub(started.elapsed()));
    }
}

/// GCP's ingress firewall for one instance, as an nftables ruleset for its namespace: new
/// flows arriving on `ens4` are dropped unless an enabled INGRESS rule of the instance's
/// network, aimed at one of its tags (or at every instance), allows the protocol and port
/// from the source. Established flows and everything the VM sends are allowed, as in GCP.
/// Pure.
fn gcp_firewall(inst: &Value, firewalls: &[Value], not_inbound: &str) -> String {
    let last = |v: &Value| {
        v.as_str()
            .and_then(|s| s.rsplit('/').next())
            .unwrap_or_default()
            .to_owned()
    };
    let network = last(&inst["networkInterfaces"][0]["network"]);
    let tags: Vec<&str> = inst["tags"]["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|x| x.as_str().map(str::to_owned))
            .collect()
    };
    let mut rules = Vec::new();
    for fw in firewalls {
        let targets = strings(&fw["targetTags"]);
        let applies = last(&fw["network"]) == network
            && fw["disabled"] != true
            && fw["direction"].as_str().unwrap_or("INGRESS") == "INGRESS"
            && (targets.is_empty() || targets.iter().any(|t| tags.contains(&t.as_str())));
        if !applies {
            continue;
        }
        let sources = strings(&fw["sourceRanges"]).join(", ");
        if sources.is_empty() {
            continue;
        }
        for a in fw["allowed"].as_array().into_iter().flatten() {
            let proto = a["IPProtocol"].as_str().unwrap_or_default();
            let ports = strings(&a["ports"]).join(", ");
            match (proto, ports.is_empty()) {
                ("tcp" | "udp", false) => rules.push(format!(
                    "    ip saddr {{ {sources} }} {proto} dport {{ {ports} }} accept"
                )),
                (p, _) => rules.push(format!(
                    "    ip saddr {{ {sources} }} meta l4proto {p} accept"
                )),
            }
        }
    }
    format!(
        "table ip gcp_firewall\ndelete table ip gcp_firewall\ntable ip gcp_firewall {{\n  chain ingress {{\n    type filter hook prerouting priority -150; policy accept;\n    {not_inbound} accept\n    ct state established,related accept\n{}\n    drop\n  }}\n}}\n",
        rules.join("\n")
    )
}

/// Loads `rules` into the VM's namespace in one transaction.
fn load_firewall(ns: &Netns, dir: &TempDir, rules: &str) {
    let path = dir.0.join("gcp-firewall.nft");
    std::fs::write(&path, rules).expect("firewall file");
    sh(ns, &format!("nft -f '{}'", path.display()));
}

fn note(world: &Mutex<World>, line: String) {
    world
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .log
        .push(line);
}

fn boot_tick(env: &Env, world: &Mutex<World>) {
    let mut live: BTreeMap<String, (String, String, String, Value)> = BTreeMap::new();
    for item in env
        .emu
        .inventory()
        .into_iter()
        .filter(|i| i.kind == "instance")
    {
        let Some(inst) = env
            .emu
            .get("instance", &item.project, &item.scope, &item.name)
        else {
            continue;
        };
        if inst["status"] != "RUNNING" {
            continue;
        }
        let id = format!(
            "{}-{}",
            inst["id"].as_str().unwrap_or_default(),
            inst["lastStartTimestamp"].as_str().unwrap_or_default()
        );
        live.insert(
            item.name.clone(),
            (item.project.clone(), item.scope.clone(), id, inst),
        );
    }
    let gone: Vec<String> = {
        let w = world
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        w.vms
            .iter()
            .filter(|(name, vm)| live.get(*name).is_none_or(|(_, _, id, _)| *id != vm.id))
            .map(|(n, _)| n.clone())
            .collect()
    };
    for name in gone {
        let vm = world
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .vms
            .remove(&name);
        if let Some(vm) = vm {
            let _ = std::fs::remove_file(format!("/run/wireguard/{}.sock", vm.iface));
            drop(vm.guest);
            drop(vm.ns);
            note(world, format!("VM {name} shut down"));
        }
    }
    let firewalls: Vec<Value> = env
        .emu
        .inventory()
        .into_iter()
        .filter(|i| i.kind == "firewall")
        .filter_map(|i| env.emu.get("firewall", &i.project, &i.scope, &i.name))
        .collect();
    for (name, (project, zone, id, inst)) in live {
        let Some(ip) = inst["networkInterfaces"][0]["accessConfigs"][0]["natIP"]
            .as_str()
            .map(str::to_owned)
        else {
            continue;
        };
        // New inbound flows: those arriving on the VM's NIC; for a guest (its host side
        // bridges), those addressed to it.
        let not_inbound = match env.vms {
            VmKind::Namespace => "iifname != \"ens4\"".to_owned(),
            VmKind::Guest => format!("ip daddr != {ip}"),
        };
        let rules = gcp_firewall(&inst, &firewalls, &not_inbound);
        {
            let mut w = world
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(vm) = w.vms.get_mut(&name) {
                if vm.firewall != rules {
                    load_firewall(&vm.ns, &vm.dir, &rules);
                    vm.firewall = rules;
                }
                continue;
            }
        }
        let tag = netns::unique_tag();
        let ns = Netns::new("vm", &tag);
        let dir = TempDir::new();
        let iface = format!("wg{tag}");
        let md = env.emu.metadata_url(&project, &zone, &name);
        let guest = match env.vms {
            VmKind::Namespace => {
                boot_in_namespace(env, &ns, &dir, &inst, &ip, &iface, &md, &rules);
                None
            }
            VmKind::Guest => Some(boot_guest(env, &ns, &dir, &ip, md, &rules)),
        };
        note(world, format!("booted VM {name} at {ip}"));
        world
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .vms
            .insert(
                name,
                VmRun {
                    guest,
                    id,
                    iface,
                    ns,
                    dir,
                    firewall: rules,
                },
            );
    }
}

/// Boots an instance the fast way: its startup-script in `ns`, which owns the public IP,
/// with wireguard-go for WireGuard.
#[allow(clippy::too_many_arguments)]
fn boot_in_namespace(
    env: &Env,
    ns: &Netns,
    dir: &TempDir,
    inst: &Value,
    ip: &str,
    iface: &str,
    md: &str,
    rules: &str,
) {
    let script = inst["metadata"]["items"]
        .as_array()
        .and_then(|items| items.iter().find(|i| i["key"] == "startup-script"))
        .and_then(|i| i["value"].as_str())
        .unwrap_or_default()
        .to_owned();
    attach(&env.net, "br0", ns, "ens4", &format!("{ip}/24"));
    sh(ns, "ip route add default via 203.0.113.1");
    load_firewall(ns, dir, rules);
    std::fs::create_dir_all(dir.0.join("state")).expect("state dir");
    let path = dir.0.join("startup.sh");
    std::fs::write(&path, script).expect("script");
    let sm = format!("{}/v1", env.emu.url());
    let cmd = format!(
        "WGNET_METADATA_URL='{md}' WGNET_SECRETS_URL='{sm}' WGNET_USERSPACE=wireguard-go WGNET_IFACE={iface} WGNET_STATE_DIR='{}' WGNET_NO_SYSTEMD=1 WGNET_MAX_BACKOFF=1 sh '{}' boot >'{}' 2>&1",
        dir.0.join("state").display(),
        path.display(),
        dir.0.join("boot.log").display()
    );
    drop(ns.spawn(&cmd, &[]));
}

/// The `n`th guest's management link: (the internet's side, the guest host's side), a
/// /30 of 198.19.254.0/24. The internet namespace routes 198.51.100.0/24 (its link to the
/// root namespace, the emulator's ephemeral addresses), 203.0.113.0/24 and 192.0.2.0/24,
/// so the links come from the benchmarking range instead: only the scale bench's emulator
/// hands that out (static addresses counted up from 198.18.0.0), and it boots no guests.
fn management_link(n: u32) -> (Ipv4Addr, Ipv4Addr) {
    assert!(n < 64, "the management range holds 64 guests per cluster");
    let host = |i: u32| Ipv4Addr::new(198, 19, 254, u8::try_from(4 * n + i).expect("n < 64"));
    (host(1), host(2))
}

/// Boots an instance as a Debian guest under qemu (see [`crate::guest`]): `ns` is its host
/// side, bridged to the internet, with GCP's firewall applied to what the bridge forwards
/// (the kernel passes bridged IPv4 through the ip hooks) and a management link of its own
/// (see [`management_link`]) through which the metadata relay reaches the emulator.
fn boot_guest(env: &Env, ns: &Netns, dir: &TempDir, ip: &str, md: String, rules: &str) -> Guest {
    let (net_side, host_side) = management_link(env.hosts.fetch_add(1, Ordering::SeqCst));
    let tag = netns::unique_tag();
    let (a, b) = (format!("ma{tag}"), format!("mb{tag}"));
    netns::ip(&["link", "add", &a, "type", "veth", "peer", "name", &b]);
    netns::ip(&["link", "set", &a, "netns", &env.net]);
    netns::ip(&["link", "set", &b, "netns", &ns.name, "name", "mgmt0"]);
    netns::ip(&[
        "-n",
        &env.net,
        "addr",
        "add",
        &format!("{net_side}/30"),
        "dev",
        &a,
    ]);
    netns::ip(&["-n", &env.net, "link", "set", &a, "up"]);
    sh(
        ns,
        &format!(
            "ip addr add {host_side}/30 dev mgmt0 && ip link set mgmt0 up && ip route add {}/32 via {net_side} && sysctl -qw net.bridge.bridge-nf-call-iptables=1",
            env.root_ip
        ),
    );
    attach_port(&env.net, "br0", ns, "ens4");
    crate::guest::wire_host_side(ns, "ens4", "tapg", "203.0.113.0/24");
    load_firewall(ns, dir, rules);
    Guest::start(
        ns,
        GuestSpec {
            address: format!("{ip}/24"),
            gateway: "203.0.113.1".into(),
            metadata_root: md,
            api_root: env.emu.url(),
            tap: "tapg".into(),
        },
    )
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::management_link;

    /// A management link is an address of the internet namespace: one inside the root
    /// links' range (198.51.100.0/25, `netns::Subnet`) made the internet deliver what it
    /// should send to the emulator and the API server to itself, whenever the cluster's
    /// root link held the same /30.
    #[test]
    fn management_links_shadow_no_address_the_internet_routes() {
        let routed = |a: Ipv4Addr| {
            let [x, y, z, _] = a.octets();
            // Root links and the emulator's ephemeral addresses; the internet's bridge;
            // the emulator's static addresses.
            matches!((x, y, z), (198, 51, 100) | (203, 0, 113) | (192, 0, 2))
        };
        let mut seen = std::collections::HashSet::new();
        for n in 0..64 {
            let (net, host) = management_link(n);
            for a in [net, host] {
                assert!(!routed(a), "guest {n}'s management link uses {a}");
                assert!(seen.insert(a), "{a} is handed out twice");
            }
        }
    }
}
