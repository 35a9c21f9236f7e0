//! A whole "cluster and cloud" for operator end-to-end tests, in network namespaces:
//!
//! - the stand-in API server and the GCP emulator, on the root side of one veth into the
//!   "internet" namespace (a bridge on 203.0.113.0/24 that NATs towards them);
//! - a node namespace with a pod bridge (10.244.0.0/24) and a Service bridge
//!   (10.96.0.0/16, where test backends own their Service's ClusterIP);
//! - a kubelet stand-in that runs one real `wgnet-link` process per replica of every link
//!   Deployment, each in its own pod namespace, configured through the API exactly as in a
//!   cluster, and mirrors its `/readyz` into a Pod object;
//! - a VM booter that "boots" every RUNNING emulator instance by running its own
//!   startup-script (from its metadata) in a namespace owning the instance's public IP,
//!   and tears it down when the instance stops or disappears.
//!
//! Everything runs on TEST-NET and private test addresses with no route off the machine,
//! and is removed on drop. I/O boundary: `ip`/`nft`/processes, the two servers, and a
//! background thread driving the kubelet and booter loops.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

use crate::apiserver::{self, ApiServer};
use crate::fixtures::TempDir;
use crate::gateway::echo_py;
use crate::gcp::{Config, GcpEmulator, LatencyProfile};
use crate::link::Link;
use crate::netns::{self, Netns, RootLink, wait_for};

/// The selector the kubelet stand-in watches (the operator's managed-by label).
const MANAGED: &str = "app.kubernetes.io/managed-by=wgnet-operator";

static SLOTS: AtomicU8 = AtomicU8::new(0);
static POD_IPS: AtomicUsize = AtomicUsize::new(2);
static SVC_BACKENDS: AtomicUsize = AtomicUsize::new(0);

/// One running link pod.
struct PodRun {
    name: String,
    namespace: String,
    deploy: String,
    hash: String,
    ip: String,
    ready: Option<bool>,
    link: Link,
    ns: Netns,
}

/// One booted VM.
struct VmRun {
    id: String,
    iface: String,
    ns: Netns,
    dir: TempDir,
}

#[derive(Default)]
struct World {
    pods: Vec<PodRun>,
    vms: BTreeMap<String, VmRun>,
    log: Vec<String>,
}

/// The environment; drop tears it all down.
pub struct Cluster {
    /// The GCP emulator.
    pub emu: Arc<GcpEmulator>,
    /// The stand-in API server.
    pub api: ApiServer,
    /// A client of it.
    pub client: Client,
    /// Key file of the operator's GCP service account.
    pub key: PathBuf,
    /// The client namespace on the "internet".
    pub client_ns: Netns,
    /// The node namespace.
    pub node: Netns,
    dir: TempDir,
    world: Arc<Mutex<World>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    _root: RootLink,
    net: Netns,
}

fn sh(ns: &Netns, cmd: &str) {
    ns.sh(cmd);
}

/// Attaches a new veth end named `ifname` (address `addr`) in `ns` to `bridge` in the
/// namespace named `host`.
fn attach(host: &str, bridge: &str, ns: &Netns, ifname: &str, addr: &str) {
    let tag = netns::unique_tag();
    let (a, b) = (format!("ca{tag}"), format!("cb{tag}"));
    netns::ip(&["link", "add", &a, "type", "veth", "peer", "name", &b]);
    netns::ip(&["link", "set", &a, "netns", host]);
    netns::ip(&["link", "set", &b, "netns", &ns.name, "name", ifname]);
    netns::ip(&["-n", host, "link", "set", &a, "master", bridge]);
    netns::ip(&["-n", host, "link", "set", &a, "up"]);
    sh(
        ns,
        &format!("ip addr add {addr} dev {ifname} && ip link set {ifname} up"),
    );
}

impl Cluster {
    /// Builds the namespaces and starts both servers (CRDs installed) and the kubelet and
    /// VM-booter loop. `profile` sets the emulator's latencies.
    pub async fn start(profile: LatencyProfile) -> Self {
        netns::require_root();
        let tag = netns::unique_tag();
        let slot = SLOTS.fetch_add(1, Ordering::Relaxed) % 32;
        let root_ip = Ipv4Addr::new(198, 51, 100, slot * 4 + 1);
        let net_ip = Ipv4Addr::new(198, 51, 100, slot * 4 + 2);
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
        sh(
            &node,
            "ip link add cbr0 type bridge && ip addr add 10.244.0.1/24 dev cbr0 && ip link set cbr0 up",
        );
        sh(
            &node,
            "ip link add sbr0 type bridge && ip addr add 10.96.255.254/16 dev sbr0 && ip link set sbr0 up",
        );
        sh(
            &node,
            "nft 'add table ip nat; add chain ip nat post { type nat hook postrouting priority 100; }; add rule ip nat post ip saddr 10.244.0.0/24 oifname \"eth0\" masquerade'",
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
        let api = ApiServer::start(apiserver::Config {
            addr: (root_ip, 0).into(),
            ..apiserver::Config::default()
        })
        .await
        .expect("API server");
        let client =
            Client::try_from(kube::Config::new(api.url().parse().expect("url"))).expect("client");
        install_crds(&client).await;
        let dir = TempDir::new();
        let key = dir.0.join("key.json");
        emu.write_key_file("wgnet-operator@wgnet-test.iam.gserviceaccount.com", &key)
            .expect("key file");
        let kubeconfig = dir.0.join("kubeconfig");
        api.write_kubeconfig(&kubeconfig).expect("kubeconfig");

        let world = Arc::new(Mutex::new(World::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let env = Env {
            emu: emu.clone(),
            api_url: api.url(),
            kubeconfig,
            dir: dir.0.clone(),
            net: net.name.clone(),
            node: node.name.clone(),
        };
        let thread = {
            let (world, stop) = (world.clone(), stop.clone());
            std::thread::spawn(move || kubelet(env, world, stop))
        };
        Self {
            emu,
            api,
            client,
            key,
            client_ns,
            node,
            dir,
            world,
            stop,
            thread: Some(thread),
            _root: root,
            net,
        }
    }

    /// A directory for the test's files.
    pub fn dir(&self) -> &std::path::Path {
        &self.dir.0
    }

    /// A backend owning `cluster_ip` on the Service bridge, answering on `tcp` and `udp`
    /// ports (comma lists) with `tag` in every answer.
    pub fn backend(&self, cluster_ip: &str, tcp: &str, udp: &str, tag: &str) -> Netns {
        let ns = self.service_host(cluster_ip);
        drop(ns.spawn(
            &format!(
                "python3 '{}' serve {cluster_ip} {tcp} {udp} {tag}",
                echo_py()
            ),
            &[],
        ));
        ns
    }

    /// A namespace owning `cluster_ip` on the Service bridge (what kube-proxy would make of
    /// a Service with one endpoint), for the caller to run a server in.
    pub fn service_host(&self, cluster_ip: &str) -> Netns {
        let n = SVC_BACKENDS.fetch_add(1, Ordering::Relaxed);
        let ns = Netns::new("svc", &format!("{}{n}", netns::unique_tag()));
        attach(
            &self.node.name,
            "sbr0",
            &ns,
            "eth0",
            &format!("{cluster_ip}/16"),
        );
        sh(&ns, "ip route add default via 10.96.255.254");
        ns
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

    /// The pod IP of the link pod `name`.
    pub fn pod_ip(&self, name: &str) -> Option<String> {
        let w = self
            .world
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        w.pods.iter().find(|p| p.name == name).map(|p| p.ip.clone())
    }

    /// Names of the link pods running now, per `namespace/deployment`.
    pub fn pods(&self) -> Vec<(String, String, u32)> {
        let w = self
            .world
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        w.pods
            .iter()
            .map(|p| (p.deploy.clone(), p.name.clone(), p.link.pid().unwrap_or(0)))
            .collect()
    }

    /// Whether the pod `name` has a wg0 interface now.
    pub fn pod_has_wg0(&self, name: &str) -> bool {
        let w = self
            .world
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        w.pods
            .iter()
            .find(|p| p.name == name)
            .is_some_and(|p| p.ns.try_sh("ip link show wg0").0)
    }

    /// Deletes the pod `name` as an eviction would (SIGTERM, then gone); the kubelet
    /// stand-in starts a replacement.
    pub fn stop_pod(&self, name: &str) {
        let pod = {
            let mut w = self
                .world
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            w.pods
                .iter()
                .position(|p| p.name == name)
                .map(|i| w.pods.remove(i))
        };
        if let Some(mut p) = pod {
            p.link.stop();
            let note = format!("evicted pod {}", p.name);
            self.world
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .log
                .push(note);
        }
    }

    /// Kills (SIGKILL, a crash) the link pod `name`; the kubelet stand-in replaces it.
    pub fn kill_pod(&self, name: &str) {
        let mut w = self
            .world
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(p) = w.pods.iter_mut().find(|p| p.name == name) {
            p.link.kill();
        }
    }

    /// Instances booted now.
    pub fn vms(&self) -> Vec<String> {
        let w = self
            .world
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        w.vms.keys().cloned().collect()
    }

    /// The harness's log and every link's log, for failure messages.
    pub fn logs(&self) -> String {
        let w = self
            .world
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut out = w.log.join("\n");
        for p in &w.pods {
            out.push_str(&format!("\n--- link {} ---\n{}", p.name, p.link.logs()));
        }
        for (name, vm) in &w.vms {
            let boot = std::fs::read_to_string(vm.dir.0.join("boot.log")).unwrap_or_default();
            out.push_str(&format!("\n--- vm {name} ---\n{boot}"));
        }
        out
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let mut w = self
            .world
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for mut p in w.pods.drain(..) {
            p.link.kill();
        }
        for (_, vm) in std::mem::take(&mut w.vms) {
            let _ = std::fs::remove_file(format!("/run/wireguard/{}.sock", vm.iface));
            drop(vm);
        }
    }
}

async fn install_crds(client: &Client) {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let dir = crate::repo_root().join("crds");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("crds/")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    for f in files {
        let crd: CustomResourceDefinition =
            serde_yaml::from_str(&std::fs::read_to_string(&f).expect("crd file"))
                .expect("crd yaml");
        api.create(&PostParams::default(), &crd)
            .await
            .expect("install CRD");
    }
}

/// What the background loop needs.
struct Env {
    emu: Arc<GcpEmulator>,
    api_url: String,
    kubeconfig: PathBuf,
    dir: PathBuf,
    net: String,
    node: String,
}

fn kubelet(env: Env, world: Arc<Mutex<World>>, stop: Arc<AtomicBool>) {
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return;
    };
    // The client's buffer task spawns on the runtime that is current when it is built.
    let _entered = rt.enter();
    let Ok(client) = Client::try_from(kube::Config::new(env.api_url.parse().expect("url"))) else {
        return;
    };
    while !stop.load(Ordering::SeqCst) {
        let started = Instant::now();
        rt.block_on(pods_tick(&env, &client, &world));
        boot_tick(&env, &world);
        let spent = started.elapsed();
        std::thread::sleep(Duration::from_millis(200).saturating_sub(spent));
    }
}

fn note(world: &Mutex<World>, line: String) {
    world
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .log
        .push(line);
}

fn template_hash(d: &Deployment) -> String {
    let t = serde_json::to_string(&d.spec.as_ref().map(|s| &s.template)).unwrap_or_default();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in t.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    format!("{:x}", h & 0xff_ffff)
}

async fn pods_tick(env: &Env, client: &Client, world: &Mutex<World>) {
    let Ok(list) = Api::<Deployment>::all(client.clone())
        .list(&ListParams::default().labels(MANAGED))
        .await
    else {
        return;
    };
    let mut wanted: BTreeMap<String, (Deployment, String)> = BTreeMap::new();
    for d in list.items {
        let key = format!("{}/{}", d.namespace().unwrap_or_default(), d.name_any());
        let h = template_hash(&d);
        wanted.insert(key, (d, h));
    }
    // Stop pods whose Deployment is gone or whose template is outdated (Recreate: all at
    // once; RollingUpdate: one old pod per ready new pod beyond the replica count).
    let mut to_stop = Vec::new();
    {
        let w = world
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for p in &w.pods {
            match wanted.get(&p.deploy) {
                None => to_stop.push(p.name.clone()),
                Some((d, h)) if *h != p.hash => {
                    let spec = d.spec.clone().unwrap_or_default();
                    let recreate =
                        spec.strategy.and_then(|s| s.type_).as_deref() == Some("Recreate");
                    let replicas = spec.replicas.unwrap_or(1).max(0) as usize;
                    let new_ready = w
                        .pods
                        .iter()
                        .filter(|q| q.deploy == p.deploy && q.hash == *h && q.ready == Some(true))
                        .count();
                    let total = w.pods.iter().filter(|q| q.deploy == p.deploy).count();
                    if recreate || (new_ready > 0 && total > replicas) {
                        to_stop.push(p.name.clone());
                        if !recreate {
                            break;
                        }
                    }
                }
                Some((d, h)) => {
                    let replicas =
                        d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1).max(0) as usize;
                    let same: Vec<&PodRun> = w
                        .pods
                        .iter()
                        .filter(|q| q.deploy == p.deploy && q.hash == *h)
                        .collect();
                    if same.len() > replicas && same.last().is_some_and(|l| l.name == p.name) {
                        to_stop.push(p.name.clone());
                    }
                }
            }
        }
    }
    for name in to_stop {
        let pod = {
            let mut w = world
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            w.pods
                .iter()
                .position(|p| p.name == name)
                .map(|i| w.pods.remove(i))
        };
        if let Some(mut p) = pod {
            let clean = p.link.stop();
            note(
                world,
                format!("stopped pod {} (clean exit: {clean})", p.name),
            );
            let _ = Api::<Pod>::namespaced(client.clone(), &p.namespace)
                .delete(&p.name, &DeleteParams::default())
                .await;
            drop(p.ns);
        }
    }
    // Start missing pods; a crashed link is restarted in place (same pod, same name).
    for (key, (d, h)) in &wanted {
        let spec = d.spec.clone().unwrap_or_default();
        let replicas = spec.replicas.unwrap_or(1).max(0) as usize;
        let recreate = spec.strategy.as_ref().and_then(|s| s.type_.as_deref()) == Some("Recreate");
        let (current, old) = {
            let w = world
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            (
                w.pods
                    .iter()
                    .filter(|p| &p.deploy == key && &p.hash == h)
                    .count(),
                w.pods
                    .iter()
                    .filter(|p| &p.deploy == key && &p.hash != h)
                    .count(),
            )
        };
        // Recreate waits until every old pod is gone; RollingUpdate surges by one.
        let limit = if recreate && old > 0 {
            0
        } else if old > 0 {
            replicas + 1 - old.min(replicas)
        } else {
            replicas
        };
        for _ in current..limit.max(current) {
            let p = start_pod(env, d, h);
            note(
                world,
                format!("started pod {} for {key} at {}", p.name, p.ip),
            );
            let pod = Pod {
                metadata: kube::api::ObjectMeta {
                    name: Some(p.name.clone()),
                    namespace: Some(p.namespace.clone()),
                    labels: d
                        .spec
                        .as_ref()
                        .and_then(|s| s.template.metadata.as_ref())
                        .and_then(|m| m.labels.clone()),
                    ..Default::default()
                },
                spec: d.spec.as_ref().and_then(|s| s.template.spec.clone()),
                ..Pod::default()
            };
            let _ = Api::<Pod>::namespaced(client.clone(), &p.namespace)
                .create(&PostParams::default(), &pod)
                .await;
            world
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .pods
                .push(p);
        }
    }
    // Mirror readiness; restart crashed links.
    let snapshot: Vec<(String, String, String, bool, Option<bool>)> = {
        let mut w = world
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        w.pods
            .iter_mut()
            .map(|p| {
                let alive = p.link.pid().is_some();
                (
                    p.name.clone(),
                    p.namespace.clone(),
                    p.ip.clone(),
                    alive,
                    p.ready,
                )
            })
            .collect()
    };
    for (name, namespace, ip, alive, was) in snapshot {
        if !alive {
            let restarted = {
                let mut w = world
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                let Some(p) = w.pods.iter_mut().find(|p| p.name == name) else {
                    continue;
                };
                let d = wanted.get(&p.deploy).map(|(d, _)| d.clone());
                d.map(|d| {
                    p.link = run_link(env, &p.ns, &d, &p.name, &p.namespace);
                })
                .is_some()
            };
            if restarted {
                note(world, format!("restarted crashed link in pod {name}"));
            }
        }
        let ready = {
            let w = world
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            w.pods
                .iter()
                .find(|p| p.name == name)
                .map(|p| p.link.get("/readyz").0 == 200)
        };
        let Some(ready) = ready else { continue };
        if was != Some(ready) {
            let status = json!({"status": {"phase": "Running", "podIP": ip, "conditions": [
                {"type": "Ready", "status": if ready { "True" } else { "False" }}
            ]}});
            if Api::<Pod>::namespaced(client.clone(), &namespace)
                .patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
                .await
                .is_ok()
            {
                let mut w = world
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if let Some(p) = w.pods.iter_mut().find(|p| p.name == name) {
                    p.ready = Some(ready);
                }
            }
        }
    }
}

fn start_pod(env: &Env, d: &Deployment, hash: &str) -> PodRun {
    let namespace = d.namespace().unwrap_or_default();
    let n = POD_IPS.fetch_add(1, Ordering::Relaxed);
    let octet = 2 + (n % 250);
    let ip = format!("10.244.0.{octet}");
    let name = format!("{}-{hash}-{n}", d.name_any());
    let ns = Netns::new("pod", &netns::unique_tag());
    attach(&env.node, "cbr0", &ns, "eth0", &format!("{ip}/24"));
    sh(&ns, "ip route add default via 10.244.0.1");
    let link = run_link(env, &ns, d, &name, &namespace);
    PodRun {
        name,
        namespace,
        deploy: format!("{}/{}", d.namespace().unwrap_or_default(), d.name_any()),
        hash: hash.to_owned(),
        ip,
        ready: None,
        link,
        ns,
    }
}

fn run_link(env: &Env, ns: &Netns, d: &Deployment, pod: &str, namespace: &str) -> Link {
    let container = d
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .map(|p| p.containers[0].clone())
        .unwrap_or_default();
    let args = container.args.unwrap_or_default();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let dir = env.dir.join(pod);
    // The init container's job, done the way it would be: the link binary's subcommand.
    let _ = ns.try_sh(&format!(
        "'{}' enable-forwarding",
        crate::link::binary().display()
    ));
    Link::start_with_env(
        ns,
        &dir,
        &args,
        &[
            ("KUBECONFIG", env.kubeconfig.display().to_string()),
            ("POD_NAMESPACE", namespace.to_owned()),
            ("HOSTNAME", pod.to_owned()),
        ],
    )
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
            drop(vm.ns);
            note(world, format!("VM {name} shut down"));
        }
    }
    for (name, (project, zone, id, inst)) in live {
        if world
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .vms
            .contains_key(&name)
        {
            continue;
        }
        let Some(ip) = inst["networkInterfaces"][0]["accessConfigs"][0]["natIP"]
            .as_str()
            .map(str::to_owned)
        else {
            continue;
        };
        let script = inst["metadata"]["items"]
            .as_array()
            .and_then(|items| items.iter().find(|i| i["key"] == "startup-script"))
            .and_then(|i| i["value"].as_str())
            .unwrap_or_default()
            .to_owned();
        let tag = netns::unique_tag();
        let ns = Netns::new("vm", &tag);
        attach(&env.net, "br0", &ns, "ens4", &format!("{ip}/24"));
        sh(&ns, "ip route add default via 203.0.113.1");
        let dir = TempDir::new();
        std::fs::create_dir_all(dir.0.join("state")).expect("state dir");
        let path = dir.0.join("startup.sh");
        std::fs::write(&path, script).expect("script");
        let iface = format!("wg{tag}");
        let md = env.emu.metadata_url(&project, &zone, &name);
        let sm = format!("{}/v1", env.emu.url());
        let cmd = format!(
            "WGNET_METADATA_URL='{md}' WGNET_SECRETS_URL='{sm}' WGNET_USERSPACE=wireguard-go WGNET_IFACE={iface} WGNET_STATE_DIR='{}' WGNET_NO_SYSTEMD=1 WGNET_MAX_BACKOFF=1 sh '{}' boot >'{}' 2>&1",
            dir.0.join("state").display(),
            path.display(),
            dir.0.join("boot.log").display()
        );
        drop(ns.spawn(&cmd, &[]));
        note(world, format!("booted VM {name} at {ip}"));
        world
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .vms
            .insert(name, VmRun { id, iface, ns, dir });
    }
}
