//! The kubelet stand-in: no container runtime exists on these machines, so this plays the
//! kubelet's part towards the real API server for one Node, with real processes in network
//! namespaces instead of containers.
//!
//! - It registers its Node (Ready, with a pod CIDR) as `system:node:<name>`, so the Node
//!   authorizer and NodeRestriction judge everything it does, as they would a kubelet.
//! - For each Pod the scheduler binds to the Node it creates a pod network namespace with a
//!   routed veth from the node namespace (10.244.x.y/32, as routed CNIs do), runs the init
//!   containers and then the main container as a process (the image decides which binary:
//!   see [`Image`]), with the container's args and env (literal values and the downward
//!   API's `metadata.name`, `metadata.namespace`, `status.podIP`), and a kubeconfig holding
//!   the pod's ServiceAccount token from the TokenRequest API (bound to the pod), pointed
//!   at the `kubernetes` Service's ClusterIP, so the pod's own RBAC authorizes it.
//! - It reports phase, Pod IP, conditions and container statuses, runs HTTP readiness
//!   probes, restarts a crashed process in place (counting restarts), and when a Pod is
//!   deleted stops its process (SIGTERM, bounded) and removes the Pod (grace period 0).
//!
//! I/O boundary: the API server, `ip`, and the processes it starts. Its loop runs on its
//! own thread with its own runtime until the owner stops it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Container, Node, Pod};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, Preconditions};
use kube::{Client, ResourceExt};
use serde_json::json;

use crate::controlplane::{ControlPlane, KUBERNETES_SERVICE_IP};
use crate::netns::{self, Netns};

/// The image tests use for a backend pod: `args` are `TCP_PORTS UDP_PORTS TAG` for
/// `echo.py serve` on the pod's address.
pub const ECHO_IMAGE: &str = "wgnet.dev/test-echo:1";

/// What a container image runs here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Image {
    /// `wgnet-link` from the workspace build.
    Link,
    /// `wgnet-operator` from the workspace build.
    Operator,
    /// `echo.py serve` (test backends).
    Echo,
    /// A Python image (`python:*`): the container's `command` and `args` run with the
    /// machine's python3 (the sandbox's demo backend).
    Python,
    /// `haproxy:*` or `nginx:*`: the container's `command` and `args` run the machine's
    /// binary of that name (Debian's packages), which must be the command's first word.
    Server(&'static str),
}

impl Image {
    /// The image an image reference names, if this kubelet can run it.
    pub fn of(reference: &str) -> Option<Self> {
        let repo = reference.split(':').next().unwrap_or_default();
        let name = repo.rsplit('/').next().unwrap_or_default();
        if name == "wgnet-link" {
            Some(Self::Link)
        } else if name == "wgnet-operator" {
            Some(Self::Operator)
        } else if reference == ECHO_IMAGE {
            Some(Self::Echo)
        } else if name == "python" {
            Some(Self::Python)
        } else if name == "haproxy" {
            Some(Self::Server("haproxy"))
        } else if name == "nginx" {
            Some(Self::Server("nginx"))
        } else {
            None
        }
    }
}

/// One process standing in for a container.
struct Process {
    child: Option<Child>,
    log: PathBuf,
}

impl Process {
    fn alive(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// SIGTERM, then SIGKILL after `grace`; whether it exited by itself.
    fn stop(&mut self, grace: Duration) -> bool {
        let Some(mut c) = self.child.take() else {
            return true;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        let exited = netns::wait_for(grace, || c.try_wait().ok().flatten().map(|_| ())).is_some();
        if !exited {
            let _ = c.kill();
            let _ = c.wait();
        }
        exited
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A running pod.
struct PodRun {
    uid: String,
    name: String,
    namespace: String,
    /// `namespace/deployment` for pods of a ReplicaSet, else `namespace/pod`.
    owner: String,
    managed: bool,
    ip: String,
    pod: Pod,
    process: Process,
    restarts: i32,
    ready: Option<bool>,
    /// When the readiness probe last ran: a kubelet probes every `periodSeconds`, not on
    /// every turn of its loop, and benches must see that delay as a cluster has it.
    probed_at: Option<Instant>,
    reported: Option<(bool, i32)>,
    evict: bool,
    dir: PathBuf,
    kubeconfig: PathBuf,
    /// Secret and ConfigMap volumes: (volume name, host directory holding its files).
    volumes: Vec<(String, PathBuf)>,
    ns: Netns,
    node_if: String,
}

/// State shared with the owner.
#[derive(Default)]
struct State {
    pods: Vec<PodRun>,
    used_ips: Vec<u8>,
    log: Vec<String>,
}

/// A pod as the owner sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodInfo {
    /// `namespace/deployment` (or `namespace/pod` for a bare pod).
    pub owner: String,
    /// The pod's name.
    pub name: String,
    /// The main process's id.
    pub pid: u32,
    /// Whether the operator manages it (the link pods).
    pub managed: bool,
    /// The pod's IP.
    pub ip: String,
}

/// What the loop needs to know.
#[derive(Clone)]
pub struct Settings {
    /// The Node's name (one of [`crate::controlplane::NODES`]).
    pub node: String,
    /// The node network namespace's name.
    pub node_ns: String,
    /// The node's address on the "internet" (its InternalIP).
    pub node_ip: String,
    /// The third octet of this node's /24 in 10.244.0.0/16.
    pub pod_subnet: u8,
    /// Where pod files and logs go.
    pub dir: PathBuf,
    /// Extra environment for every process (for example the GCP emulator's URLs for the
    /// operator).
    pub env: Vec<(String, String)>,
}

/// The running stand-in; drop stops it and every pod it runs.
pub struct Kubelet {
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    settings: Settings,
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Kubelet {
    /// Registers the Node and starts the loop.
    pub async fn start(cp: &ControlPlane, settings: Settings) -> Self {
        let kubeconfig = cp.kubeconfig_for_token(
            cp.url(),
            cp.token(&format!("system:node:{}", settings.node)),
        );
        let client = ControlPlane::client_for(&kubeconfig)
            .await
            .expect("node client");
        register(&client, &settings).await;
        let ca = cp.ca_pem().to_owned();
        let state = Arc::new(Mutex::new(State::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (state, stop, settings) = (state.clone(), stop.clone(), settings.clone());
            std::thread::spawn(move || run(kubeconfig, ca, settings, state, stop))
        };
        Self {
            state,
            stop,
            thread: Some(thread),
            settings,
        }
    }

    /// The pods running now.
    pub fn pods(&self) -> Vec<PodInfo> {
        lock(&self.state)
            .pods
            .iter()
            .map(|p| PodInfo {
                owner: p.owner.clone(),
                name: p.name.clone(),
                pid: p.process.child.as_ref().map_or(0, Child::id),
                managed: p.managed,
                ip: p.ip.clone(),
            })
            .collect()
    }

    /// Runs `cmd` in the network namespace of pod `name`: (success, stdout, stderr).
    pub fn exec(&self, name: &str, cmd: &str) -> Option<(bool, String, String)> {
        let st = lock(&self.state);
        st.pods
            .iter()
            .find(|p| p.name == name)
            .map(|p| p.ns.try_sh(cmd))
    }

    /// Evicts pod `name`: its process gets SIGTERM and the Pod is deleted, so its
    /// ReplicaSet starts a replacement.
    pub fn evict(&self, name: &str) {
        let mut st = lock(&self.state);
        if let Some(p) = st.pods.iter_mut().find(|p| p.name == name) {
            p.process.stop(Duration::from_secs(10));
            p.evict = true;
        }
        st.log.push(format!("evicted pod {name}"));
    }

    /// Kills pod `name`'s process (a crash); the loop restarts it in place.
    pub fn crash(&self, name: &str) {
        let mut st = lock(&self.state);
        if let Some(p) = st.pods.iter_mut().find(|p| p.name == name) {
            p.process.kill();
        }
    }

    /// The stand-in's log and every pod's log, for failure messages.
    pub fn logs(&self) -> String {
        let st = lock(&self.state);
        let mut out = st.log.join("\n");
        for p in &st.pods {
            let log = std::fs::read_to_string(&p.process.log).unwrap_or_default();
            out.push_str(&format!("\n--- pod {}/{} ---\n{log}", p.namespace, p.name));
        }
        out
    }

    /// The node's name.
    pub fn node(&self) -> &str {
        &self.settings.node
    }
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let mut st = lock(&self.state);
        for mut p in st.pods.drain(..) {
            p.process.kill();
        }
    }
}

/// Creates the Node object (as the node itself) and marks it Ready.
async fn register(client: &Client, s: &Settings) {
    let nodes: Api<Node> = Api::all(client.clone());
    let node: Node = serde_json::from_value(json!({
        "metadata": {"name": s.node, "labels": {
            "kubernetes.io/hostname": s.node, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64"
        }},
        "spec": {"podCIDR": format!("10.244.{}.0/24", s.pod_subnet),
                 "podCIDRs": [format!("10.244.{}.0/24", s.pod_subnet)]}
    }))
    .expect("node");
    nodes
        .create(&PostParams::default(), &node)
        .await
        .expect("register node");
    let now = crate::clock::now_rfc3339();
    let status = json!({"status": {
        "capacity": {"cpu": "8", "memory": "16Gi", "pods": "110"},
        "allocatable": {"cpu": "8", "memory": "16Gi", "pods": "110"},
        "addresses": [{"type": "InternalIP", "address": s.node_ip}, {"type": "Hostname", "address": s.node}],
        "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                        "message": "kubelet stand-in is posting ready status",
                        "lastHeartbeatTime": now, "lastTransitionTime": now}],
        "nodeInfo": {"kubeletVersion": "v1.34.0", "kubeProxyVersion": "", "operatingSystem": "linux",
                     "architecture": "amd64", "containerRuntimeVersion": "wgnet://stand-in",
                     "kernelVersion": "", "osImage": "", "machineID": "", "systemUUID": "", "bootID": ""}
    }});
    nodes
        .patch_status(&s.node, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .expect("node status");
}

fn run(
    kubeconfig: String,
    ca: String,
    s: Settings,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
) {
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return;
    };
    let Ok(client) = rt.block_on(ControlPlane::client_for(&kubeconfig)) else {
        return;
    };
    let ctx = Ctx { client, ca, s };
    let mut renewed: Option<Instant> = None;
    while !stop.load(Ordering::SeqCst) {
        let started = Instant::now();
        // The node's heartbeat: its Lease in kube-node-lease, renewed as a kubelet does
        // (every 10 s for a 40 s lease; more often here, it costs nothing).
        if renewed.is_none_or(|t| t.elapsed() > Duration::from_secs(5))
            && rt.block_on(renew_lease(&ctx))
        {
            renewed = Some(Instant::now());
        }
        rt.block_on(tick(&ctx, &state));
        // The loop polls: a kubelet's sync loop is periodic too, and 200 ms keeps pod
        // start-up well under the link's own readiness period.
        std::thread::sleep(Duration::from_millis(200).saturating_sub(started.elapsed()));
    }
}

/// Creates or renews the node's Lease; whether it worked.
async fn renew_lease(ctx: &Ctx) -> bool {
    use k8s_openapi::api::coordination::v1::Lease;
    let leases: Api<Lease> = Api::namespaced(ctx.client.clone(), "kube-node-lease");
    let now = now_micro();
    let body = json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": ctx.s.node, "namespace": "kube-node-lease"},
        "spec": {"holderIdentity": ctx.s.node, "leaseDurationSeconds": 40, "renewTime": now}
    });
    leases
        .patch(
            &ctx.s.node,
            &PatchParams::apply("kubelet-stand-in").force(),
            &Patch::Apply(&body),
        )
        .await
        .is_ok()
}

/// Now as a Kubernetes MicroTime (`2006-01-02T15:04:05.000000Z`).
fn now_micro() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = crate::clock::rfc3339(now.as_secs());
    format!("{}.{:06}Z", secs.trim_end_matches('Z'), now.subsec_micros())
}

struct Ctx {
    client: Client,
    ca: String,
    s: Settings,
}

fn note(state: &Mutex<State>, line: String) {
    lock(state).log.push(line);
}

async fn tick(ctx: &Ctx, state: &Mutex<State>) {
    let all: Api<Pod> = Api::all(ctx.client.clone());
    let Ok(list) = all
        .list(&ListParams::default().fields(&format!("spec.nodeName={}", ctx.s.node)))
        .await
    else {
        return;
    };
    let live: BTreeMap<String, Pod> = list
        .items
        .into_iter()
        .map(|p| (p.uid().unwrap_or_default(), p))
        .collect();

    // Pods that are gone, deleting or evicted: stop them, then let the API forget them.
    let ending: Vec<PodRun> = {
        let mut st = lock(state);
        let (ending, keep): (Vec<PodRun>, Vec<PodRun>) =
            std::mem::take(&mut st.pods).into_iter().partition(|p| {
                p.evict
                    || live
                        .get(&p.uid)
                        .is_none_or(|l| l.metadata.deletion_timestamp.is_some())
            });
        st.pods = keep;
        ending
    };
    for mut p in ending {
        let clean = p.process.stop(Duration::from_secs(10));
        note(
            state,
            format!("stopped pod {} (clean exit: {clean})", p.name),
        );
        let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &p.namespace);
        let dp = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: Some(p.uid.clone()),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        let _ = pods.delete(&p.name, &dp).await;
        let _ = Command::new("ip")
            .args(["-n", &ctx.s.node_ns, "link", "del", &p.node_if])
            .status();
        lock(state)
            .used_ips
            .retain(|o| p.ip != format!("10.244.{}.{o}", ctx.s.pod_subnet));
        drop(p.ns);
    }

    // New pods: start them.
    for (uid, pod) in &live {
        if pod.metadata.deletion_timestamp.is_some()
            || lock(state).pods.iter().any(|p| &p.uid == uid)
        {
            continue;
        }
        match start(ctx, state, pod).await {
            Ok(run) => {
                note(
                    state,
                    format!("started pod {}/{} at {}", run.namespace, run.name, run.ip),
                );
                lock(state).pods.push(run);
            }
            Err(why) => {
                // Report it once, as a kubelet reports an image it cannot pull.
                let pods: Api<Pod> =
                    Api::namespaced(ctx.client.clone(), &pod.namespace().unwrap_or_default());
                let already = pod.status.as_ref().and_then(|s| s.reason.as_deref())
                    == Some("StandInCannotRun");
                if !already {
                    note(state, format!("cannot run pod {}: {why}", pod.name_any()));
                    let body = json!({"status": {"phase": "Pending", "reason": "StandInCannotRun", "message": why}});
                    let _ = pods
                        .patch_status(
                            &pod.name_any(),
                            &PatchParams::default(),
                            &Patch::Merge(&body),
                        )
                        .await;
                }
            }
        }
    }

    // Restart crashed processes in place; probe readiness; report what changed.
    let names: Vec<String> = lock(state).pods.iter().map(|p| p.uid.clone()).collect();
    for uid in names {
        let report = {
            let mut st = lock(state);
            let Some(p) = st.pods.iter_mut().find(|p| p.uid == uid) else {
                continue;
            };
            if !p.process.alive() {
                p.process.kill();
                p.restarts += 1;
                p.ready = Some(false);
                p.probed_at = None;
                match spawn_main(ctx, p) {
                    Ok(proc_) => p.process = proc_,
                    Err(e) => {
                        let line = format!("restarting pod {} failed: {e}", p.name);
                        st.log.push(line);
                        continue;
                    }
                }
                let line = format!("restarted crashed container in pod {}", p.name);
                st.log.push(line);
                continue;
            }
            if p.probed_at.is_some_and(|at| at.elapsed() < probe_period(p)) {
                continue;
            }
            p.probed_at = Some(Instant::now());
            let ready = probe(p);
            p.ready = Some(ready);
            (p.reported != Some((ready, p.restarts))).then(|| {
                (
                    p.namespace.clone(),
                    p.name.clone(),
                    status_body(p, &ctx.s.node_ip, ready),
                    (ready, p.restarts),
                )
            })
        };
        let Some((namespace, name, body, reported)) = report else {
            continue;
        };
        let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &namespace);
        if pods
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&body))
            .await
            .is_ok()
        {
            let mut st = lock(state);
            if let Some(p) = st.pods.iter_mut().find(|p| p.uid == uid) {
                p.reported = Some(reported);
            }
        }
    }
}

fn status_body(p: &PodRun, host_ip: &str, ready: bool) -> serde_json::Value {
    let now = crate::clock::now_rfc3339();
    let flag = if ready { "True" } else { "False" };
    let containers = p
        .pod
        .spec
        .as_ref()
        .map(|s| s.containers.clone())
        .unwrap_or_default();
    let statuses: Vec<_> = containers
        .iter()
        .map(|c| {
            json!({"name": c.name, "image": c.image, "imageID": "", "ready": ready, "started": true,
                   "restartCount": p.restarts, "state": {"running": {"startedAt": now}}})
        })
        .collect();
    json!({"status": {
        "phase": "Running",
        "hostIP": host_ip, "hostIPs": [{"ip": host_ip}],
        "podIP": p.ip, "podIPs": [{"ip": p.ip}],
        "startTime": now,
        "conditions": [
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
            {"type": "Initialized", "status": "True", "lastTransitionTime": now},
            {"type": "ContainersReady", "status": flag, "lastTransitionTime": now},
            {"type": "Ready", "status": flag, "lastTransitionTime": now},
        ],
        "containerStatuses": statuses,
    }})
}

/// The main container's readiness probe period (Kubernetes' default: 10 s).
fn probe_period(p: &PodRun) -> Duration {
    let secs = p
        .pod
        .spec
        .as_ref()
        .and_then(|s| s.containers.first())
        .and_then(|c| c.readiness_probe.as_ref())
        .and_then(|r| r.period_seconds)
        .unwrap_or(10);
    Duration::from_secs(u64::try_from(secs.max(1)).unwrap_or(10))
}

/// The main container's readiness probe (HTTP GET inside the pod), or "running" when it
/// has none.
fn probe(p: &PodRun) -> bool {
    let Some(c) = p.pod.spec.as_ref().and_then(|s| s.containers.first()) else {
        return false;
    };
    let Some(get) = c.readiness_probe.as_ref().and_then(|r| r.http_get.as_ref()) else {
        return true;
    };
    let port = match &get.port {
        k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(n) => *n,
        k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(name) => c
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name))
            .map_or(0, |p| p.container_port),
    };
    let path = get.path.clone().unwrap_or_else(|| "/".into());
    p.ns.try_sh(&format!(
        "curl -s -o /dev/null -m 2 -w '%{{http_code}}' http://127.0.0.1:{port}{path}"
    ))
    .1
    .trim()
    .parse::<u16>()
    .is_ok_and(|code| (200..400).contains(&code))
}

/// `namespace/deployment` from a pod's ReplicaSet owner (`deployment-<hash>`).
fn owner_of(pod: &Pod) -> String {
    let ns = pod.namespace().unwrap_or_default();
    let rs = pod
        .owner_references()
        .iter()
        .find(|o| o.kind == "ReplicaSet")
        .map(|o| o.name.clone());
    match rs {
        Some(rs) => format!(
            "{ns}/{}",
            rs.rsplit_once('-').map_or(rs.as_str(), |(d, _)| d)
        ),
        None => format!("{ns}/{}", pod.name_any()),
    }
}

async fn start(ctx: &Ctx, state: &Mutex<State>, pod: &Pod) -> Result<PodRun, String> {
    let spec = pod.spec.clone().unwrap_or_default();
    let main = spec.containers.first().cloned().ok_or("no containers")?;
    for c in spec.init_containers.iter().flatten().chain([&main]) {
        let image = c.image.clone().unwrap_or_default();
        if Image::of(&image).is_none() {
            return Err(format!("image {image} is not one this stand-in can run"));
        }
    }
    let namespace = pod.namespace().unwrap_or_default();
    let name = pod.name_any();
    let uid = pod.uid().unwrap_or_default();

    // A token for the pod's ServiceAccount, bound to the pod, as the kubelet's projected
    // volume would hold.
    let sa = spec
        .service_account_name
        .clone()
        .unwrap_or_else(|| "default".into());
    let token = if spec.automount_service_account_token == Some(false) {
        String::new()
    } else {
        ControlPlane::service_account_token(&ctx.client, &namespace, &sa, Some((&name, &uid)))
            .await
            .map_err(|e| e.to_string())?
    };

    // Volumes first: a missing Secret fails the start before anything is allocated, and
    // the next pass tries again, as a kubelet waits for a volume.
    let dir = ctx.s.dir.join(format!("{namespace}-{name}"));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let volumes = write_volumes(ctx, pod, &dir).await?;
    let (uid_run, gid_run) = identity(&spec, &main);

    let octet = {
        let mut st = lock(state);
        let o = (2..=254u8)
            .find(|o| !st.used_ips.contains(o))
            .ok_or("the node's pod CIDR is full")?;
        st.used_ips.push(o);
        o
    };
    let ip = format!("10.244.{}.{octet}", ctx.s.pod_subnet);
    let gw = format!("10.244.{}.1", ctx.s.pod_subnet);
    let tag = netns::unique_tag();
    let ns = Netns::new("pod", &tag);
    let node_if = format!("vp{tag}");
    // A routed veth: the pod's /32 behind the node, as routed CNIs (Calico, Cilium) do, so
    // every packet between pods crosses the node's conntrack and kube-proxy's rules.
    netns::ip(&[
        "-n",
        &ctx.s.node_ns,
        "link",
        "add",
        &node_if,
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        &ns.name,
    ]);
    netns::ip(&[
        "-n",
        &ctx.s.node_ns,
        "addr",
        "add",
        &format!("{gw}/32"),
        "dev",
        &node_if,
    ]);
    netns::ip(&["-n", &ctx.s.node_ns, "link", "set", &node_if, "up"]);
    netns::ip(&[
        "-n",
        &ctx.s.node_ns,
        "route",
        "add",
        &format!("{ip}/32"),
        "dev",
        &node_if,
    ]);
    ns.sh(&format!(
        "ip addr add {ip}/32 dev eth0 && ip link set eth0 up && ip route add {gw} dev eth0 scope link && ip route add default via {gw} dev eth0"
    ));

    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        kubeconfig_text(
            &ctx.ca,
            &format!("https://{KUBERNETES_SERVICE_IP}:443"),
            &token,
        ),
    )
    .map_err(|e| e.to_string())?;
    // The token is the process's own: readable by the user it runs as, by nobody else.
    std::os::unix::fs::chown(&kubeconfig, Some(uid_run), Some(gid_run))
        .map_err(|e| e.to_string())?;
    std::fs::set_permissions(
        &kubeconfig,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .map_err(|e| e.to_string())?;

    let mut run = PodRun {
        uid,
        name,
        namespace,
        owner: owner_of(pod),
        managed: pod
            .labels()
            .get("app.kubernetes.io/managed-by")
            .is_some_and(|v| v == "wgnet-operator"),
        ip,
        pod: pod.clone(),
        process: Process {
            child: None,
            log: dir.join("main.log"),
        },
        restarts: 0,
        ready: None,
        probed_at: None,
        reported: None,
        evict: false,
        dir,
        kubeconfig,
        volumes,
        ns,
        node_if,
    };
    for init in spec.init_containers.iter().flatten() {
        let mut p = spawn(
            ctx,
            &run,
            init,
            &run.dir.join(format!("init-{}.log", init.name)),
        )?;
        let ok = netns::wait_for(Duration::from_secs(30), || {
            p.child.as_mut().and_then(|c| c.try_wait().ok().flatten())
        })
        .is_some_and(|s| s.success());
        if !ok {
            p.kill();
            return Err(format!("init container {} failed", init.name));
        }
    }
    run.process = spawn_main(ctx, &run)?;
    Ok(run)
}

/// The user and group a container runs as (its securityContext, else the pod's; root
/// when neither says).
fn identity(spec: &k8s_openapi::api::core::v1::PodSpec, c: &Container) -> (u32, u32) {
    let pod = spec.security_context.as_ref();
    let ctr = c.security_context.as_ref();
    let uid = ctr
        .and_then(|s| s.run_as_user)
        .or_else(|| pod.and_then(|s| s.run_as_user))
        .unwrap_or(0);
    let gid = ctr
        .and_then(|s| s.run_as_group)
        .or_else(|| pod.and_then(|s| s.run_as_group))
        .unwrap_or(uid);
    (
        u32::try_from(uid).unwrap_or(0),
        u32::try_from(gid).unwrap_or(0),
    )
}

/// Writes the pod's Secret and ConfigMap volumes (the keys its `items` name, else every
/// key) under `dir/volumes/<name>`, group-owned by the pod's fsGroup and group-readable as
/// the kubelet makes them; the node may read exactly the objects its pods reference.
async fn write_volumes(ctx: &Ctx, pod: &Pod, dir: &Path) -> Result<Vec<(String, PathBuf)>, String> {
    use k8s_openapi::api::core::v1::{ConfigMap, Secret};
    use std::os::unix::fs::PermissionsExt as _;
    let ns = pod.namespace().unwrap_or_default();
    let spec = pod.spec.clone().unwrap_or_default();
    let fs_group = spec
        .security_context
        .as_ref()
        .and_then(|s| s.fs_group)
        .and_then(|g| u32::try_from(g).ok());
    let mut out = Vec::new();
    for v in spec.volumes.iter().flatten() {
        let (data, items, mode): (BTreeMap<String, Vec<u8>>, _, _) = if let Some(sv) = &v.secret {
            let name = sv.secret_name.clone().unwrap_or_default();
            let secret = Api::<Secret>::namespaced(ctx.client.clone(), &ns)
                .get(&name)
                .await
                .map_err(|e| format!("secret volume {}: secret {name}: {e}", v.name))?;
            let data = secret
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, b)| (k, b.0))
                .collect();
            (data, sv.items.clone(), sv.default_mode)
        } else if let Some(cv) = &v.config_map {
            let name = cv.name.clone();
            let cm = Api::<ConfigMap>::namespaced(ctx.client.clone(), &ns)
                .get(&name)
                .await
                .map_err(|e| format!("configMap volume {}: configmap {name}: {e}", v.name))?;
            let data = cm
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, s)| (k, s.into_bytes()))
                .collect();
            (data, cv.items.clone(), cv.default_mode)
        } else {
            continue;
        };
        let host = dir.join("volumes").join(&v.name);
        std::fs::create_dir_all(&host).map_err(|e| e.to_string())?;
        let files: Vec<(String, String)> = match items {
            Some(items) => items.into_iter().map(|i| (i.key, i.path)).collect(),
            None => data.keys().map(|k| (k.clone(), k.clone())).collect(),
        };
        for (key, path) in files {
            let bytes = data
                .get(&key)
                .ok_or_else(|| format!("volume {}: no key {key}", v.name))?;
            let file = host.join(&path);
            std::fs::write(&file, bytes).map_err(|e| e.to_string())?;
            let mut mode = u32::try_from(mode.unwrap_or(0o644)).unwrap_or(0o644);
            if let Some(g) = fs_group {
                std::os::unix::fs::chown(&file, None, Some(g)).map_err(|e| e.to_string())?;
                mode |= 0o040;
            }
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode))
                .map_err(|e| e.to_string())?;
        }
        out.push((v.name.clone(), host));
    }
    Ok(out)
}

fn kubeconfig_text(ca: &str, server: &str, token: &str) -> String {
    use base64::Engine as _;
    let ca = base64::engine::general_purpose::STANDARD.encode(ca);
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\nusers:\n- name: u\n  user:\n    token: {token}\ncontexts:\n- name: c\n  context:\n    cluster: c\n    user: u\ncurrent-context: c\n"
    )
}

fn spawn_main(ctx: &Ctx, p: &PodRun) -> Result<Process, String> {
    let main = p
        .pod
        .spec
        .as_ref()
        .and_then(|s| s.containers.first())
        .cloned()
        .ok_or("no containers")?;
    spawn(ctx, p, &main, &p.process.log)
}

fn spawn(ctx: &Ctx, p: &PodRun, c: &Container, log: &Path) -> Result<Process, String> {
    let image = c.image.clone().unwrap_or_default();
    // No mount namespace per container here: a path under a volume's mountPath in the
    // args or env is rewritten to where the stand-in wrote that volume's files.
    let mounts: Vec<(String, String)> = c
        .volume_mounts
        .iter()
        .flatten()
        .filter_map(|m| {
            let host = p.volumes.iter().find(|(n, _)| *n == m.name)?;
            Some((m.mount_path.clone(), host.1.display().to_string()))
        })
        .collect();
    let translate = |v: &str| {
        mounts
            .iter()
            .fold(v.to_owned(), |v, (from, to)| v.replace(from.as_str(), to))
    };
    let args: Vec<String> = c.args.iter().flatten().map(|a| translate(a)).collect();
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &p.ns.name]);
    let spec = p.pod.spec.clone().unwrap_or_default();
    let (uid, gid) = identity(&spec, c);
    if uid != 0 {
        // runAsUser/runAsGroup, as the container runtime would apply them.
        cmd.args([
            "setpriv",
            &format!("--reuid={uid}"),
            &format!("--regid={gid}"),
            "--clear-groups",
            "--",
        ]);
    }
    match Image::of(&image) {
        Some(Image::Link) => {
            cmd.arg(crate::link::binary()).args(&args);
        }
        Some(Image::Operator) => {
            cmd.arg(crate::link::workspace_binary("wgnet-operator"))
                .args(&args);
        }
        Some(Image::Echo) => {
            cmd.arg("python3")
                .arg(crate::gateway::echo_py())
                .args(["serve", "0.0.0.0"])
                .args(&args);
        }
        Some(Image::Python) => {
            let argv: Vec<String> = c
                .command
                .clone()
                .unwrap_or_default()
                .into_iter()
                .chain(args)
                .collect();
            let Some((bin, rest)) = argv.split_first() else {
                return Err("a python container needs a command".into());
            };
            if bin != "python3" && bin != "python" {
                return Err(format!("the python image runs python3, not {bin}"));
            }
            cmd.arg("python3").args(rest);
        }
        Some(Image::Server(server)) => {
            let argv: Vec<String> = c
                .command
                .iter()
                .flatten()
                .map(|a| translate(a))
                .chain(args)
                .collect();
            let Some((bin, rest)) = argv.split_first() else {
                return Err(format!("a {server} container needs a command"));
            };
            if bin != server {
                return Err(format!("the {server} image runs {server}, not {bin}"));
            }
            cmd.arg(server).args(rest);
        }
        None => return Err(format!("image {image} is not one this stand-in can run")),
    }
    cmd.env_clear()
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .env("KUBECONFIG", &p.kubeconfig)
        .env("KUBERNETES_SERVICE_HOST", KUBERNETES_SERVICE_IP)
        .env("KUBERNETES_SERVICE_PORT", "443")
        .env("RUST_LOG", "info");
    for (k, v) in &ctx.s.env {
        cmd.env(k, v);
    }
    for e in c.env.iter().flatten() {
        let value = match (
            &e.value,
            e.value_from.as_ref().and_then(|f| f.field_ref.as_ref()),
        ) {
            (Some(v), _) => v.clone(),
            (None, Some(f)) => match f.field_path.as_str() {
                "metadata.name" => p.name.clone(),
                "metadata.namespace" => p.namespace.clone(),
                "status.podIP" => p.ip.clone(),
                "spec.nodeName" => ctx.s.node.clone(),
                _ => String::new(),
            },
            _ => String::new(),
        };
        cmd.env(&e.name, translate(&value));
    }
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| e.to_string())?;
    let err = out.try_clone().map_err(|e| e.to_string())?;
    let child = cmd
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(|e| e.to_string())?;
    Ok(Process {
        child: Some(child),
        log: log.to_owned(),
    })
}
