//! A real, throwaway Kubernetes control plane for tests and the sandbox: etcd,
//! kube-apiserver (Node,RBAC authorization; the default admission plugins, PodSecurity and
//! NamespaceLifecycle among them, plus NodeRestriction), kube-controller-manager (garbage
//! collector, namespace, deployment, replicaset, endpointslice, service-account and token
//! controllers, among others) and kube-scheduler, built from source by
//! `scripts/k8s-bins.sh` and cached outside the work tree.
//!
//! Everything listens on the address the caller names (loopback, or a TEST-NET address of
//! a test's own veth) and lives in one temporary directory; drop stops every process and
//! removes the directory, also when a test fails.
//!
//! Identities: a static token per user (`--token-auth-file`) for the admin (system:masters),
//! the controller manager, the scheduler, kube-proxy and each node; ServiceAccount tokens
//! through the TokenRequest API for everything that runs "in" the cluster (the operator,
//! link pods), so RBAC decides what they may do.
//!
//! I/O boundary: `openssl` (certificates), the control-plane processes, and the API.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

use crate::fixtures::TempDir;

/// The Service CIDR every control plane here uses (a realistic cluster range; it is routed
/// only inside test namespaces, by kube-proxy).
pub const SERVICE_CIDR: &str = "10.96.0.0/12";
/// The `kubernetes` Service's ClusterIP in that range.
pub const KUBERNETES_SERVICE_IP: &str = "10.96.0.1";
/// The pod CIDR of the cluster (each node gets a /24 of it).
pub const POD_CIDR: &str = "10.244.0.0/16";

/// What went wrong starting or using the control plane.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The binaries could not be built or found.
    #[error("failed to build the Kubernetes binaries (scripts/k8s-bins.sh): {0}")]
    Binaries(String),
    /// A helper command failed.
    #[error("failed to run {command}: {detail}")]
    Command { command: String, detail: String },
    /// A file could not be written.
    #[error("failed to write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A process exited or never became ready.
    #[error("{component} did not become ready within {timeout:?}; its log ends:\n{log}")]
    NotReady {
        component: &'static str,
        timeout: Duration,
        log: String,
    },
    /// The client configuration was refused.
    #[error("failed to build a client for the control plane")]
    Client(#[source] kube::Error),
    /// A kubeconfig could not be read back.
    #[error("failed to load the kubeconfig")]
    Kubeconfig(#[source] kube::config::KubeconfigError),
    /// A request failed.
    #[error("failed to {what}")]
    Api {
        what: String,
        #[source]
        source: kube::Error,
    },
}

/// Result of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The directory holding the cached binaries: `$WGNET_K8S_BIN` when set, otherwise what
/// `scripts/k8s-bins.sh` prints (it builds on first use and is a no-op afterwards).
pub fn binaries() -> Result<PathBuf> {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(dir) = std::env::var_os("WGNET_K8S_BIN") {
            return Ok(PathBuf::from(dir));
        }
        let script = crate::repo_root().join("scripts/k8s-bins.sh");
        let out = Command::new("sh")
            .arg(&script)
            .stderr(Stdio::inherit())
            .output()
            .map_err(|e| format!("running {}: {e}", script.display()))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        match stdout.lines().last() {
            Some(dir) if out.status.success() => Ok(PathBuf::from(dir.trim())),
            _ => Err(format!("{} exited with {}", script.display(), out.status)),
        }
    })
    .clone()
    .map_err(Error::Binaries)
}

/// Path of one cached binary (`kubectl`, `kube-proxy`, …).
pub fn binary(name: &str) -> Result<PathBuf> {
    Ok(binaries()?.join(name))
}

/// What to start.
#[derive(Clone, Debug)]
pub struct Options {
    /// The address every component listens on; the API server advertises it, so it must be
    /// reachable from wherever pods run.
    pub bind: Ipv4Addr,
    /// Start kube-controller-manager and kube-scheduler too (tests that only need the API,
    /// such as the link's, leave them out to start faster).
    pub controllers: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            bind: Ipv4Addr::LOCALHOST,
            controllers: true,
        }
    }
}

/// One running component.
struct Proc {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

/// A running control plane; drop stops it and removes its files.
pub struct ControlPlane {
    dir: TempDir,
    procs: Vec<Proc>,
    url: String,
    ca_pem: String,
    tokens: Vec<(String, String)>,
    /// How long start-up took, until the API server and (when started) the controllers
    /// were ready.
    pub started_in: Duration,
}

/// A random token (hex of 16 bytes).
fn random_token() -> String {
    use ring::rand::SecureRandom as _;
    let mut b = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .expect("the system RNG is available");
    b.iter().fold(String::new(), |mut s, x| {
        let _ = write!(s, "{x:02x}");
        s
    })
}

/// A free TCP port on `ip` (bound then released: a small race the tests accept).
fn free_port(ip: Ipv4Addr) -> Result<u16> {
    TcpListener::bind((ip, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| Error::Command {
            command: format!("bind {ip}:0"),
            detail: e.to_string(),
        })
}

fn openssl(args: &[&str]) -> Result<()> {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .map_err(|e| Error::Command {
            command: "openssl (install the openssl package)".into(),
            detail: e.to_string(),
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(Error::Command {
            command: format!("openssl {}", args.first().copied().unwrap_or_default()),
            detail: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }
}

fn write(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).map_err(|source| Error::Write {
        path: path.to_owned(),
        source,
    })
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The users with static tokens: (user, groups).
const USERS: &[(&str, &str)] = &[
    ("wgnet-admin", "system:masters"),
    ("system:kube-controller-manager", ""),
    ("system:kube-scheduler", ""),
    ("system:kube-proxy", ""),
];

/// What the audit log records: every request at Metadata level (who, verb, resource,
/// response code; never a body, so no Secret content), except the control plane's own
/// components and the kubelet stand-in, whose chatter no test reads.
const AUDIT_POLICY: &str = "apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
- level: None
  users: [system:kube-controller-manager, system:kube-scheduler, system:kube-proxy, system:apiserver]
- level: None
  userGroups: [system:nodes, system:serviceaccounts:kube-system]
- level: Metadata
";

/// One request from the API server's audit log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Audited {
    /// The authenticated user.
    pub user: String,
    /// The request's verb (`get`, `list`, `watch`, `create`, `update`, `patch`, `delete`).
    pub verb: String,
    /// `group/resource[/subresource]` (the core group is empty: `/secrets`).
    pub resource: String,
    /// The object's namespace, if any.
    pub namespace: String,
    /// The response's status code.
    pub code: u16,
}

/// The node users (one per node name the tests register).
pub const NODES: &[&str] = &["node-1", "node-2"];

impl ControlPlane {
    /// Starts etcd and the API server (and, with `controllers`, the controller manager and
    /// the scheduler) and waits until they are ready.
    pub async fn start(opts: Options) -> Result<Self> {
        let started = Instant::now();
        let bin = binaries()?;
        let dir = TempDir::new();
        let d = dir.0.clone();
        let ip = opts.bind.to_string();

        // PKI: a CA, the API server's serving certificate, the service-account signing key.
        let p = |f: &str| d.join(f).display().to_string();
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        let mut ca = vec!["req", "-x509"];
        ca.extend(ec);
        let (ca_key, ca_crt) = (p("ca.key"), p("ca.crt"));
        ca.extend(["-keyout", &ca_key, "-out", &ca_crt, "-days", "3"]);
        ca.extend(["-subj", "/CN=wgnet-test-ca"]);
        openssl(&ca)?;
        let sans = format!(
            "subjectAltName=IP:{ip},IP:{KUBERNETES_SERVICE_IP},IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
        );
        let (srv_key, srv_crt) = (p("apiserver.key"), p("apiserver.crt"));
        let mut srv = vec!["req", "-x509", "-CA", &ca_crt, "-CAkey", &ca_key];
        srv.extend(ec);
        srv.extend(["-keyout", &srv_key, "-out", &srv_crt, "-days", "3"]);
        srv.extend(["-subj", "/CN=kube-apiserver", "-addext", &sans]);
        // `req -x509` marks certificates as CAs unless told otherwise; TLS clients refuse a
        // CA certificate as a server's own.
        srv.extend(["-addext", "basicConstraints=critical,CA:FALSE"]);
        srv.extend([
            "-addext",
            "keyUsage=critical,digitalSignature,keyEncipherment",
        ]);
        srv.extend(["-addext", "extendedKeyUsage=serverAuth"]);
        openssl(&srv)?;
        let (sa_key, sa_pub) = (p("sa.key"), p("sa.pub"));
        openssl(&[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-out",
            &sa_key,
        ])?;
        openssl(&["pkey", "-in", &sa_key, "-pubout", "-out", &sa_pub])?;
        let ca_pem = std::fs::read_to_string(&ca_crt).map_err(|source| Error::Write {
            path: ca_crt.clone().into(),
            source,
        })?;

        let mut tokens: Vec<(String, String)> = Vec::new();
        let mut token_file = String::new();
        let node_users: Vec<(String, &str)> = NODES
            .iter()
            .map(|n| (format!("system:node:{n}"), "system:nodes"))
            .collect();
        let users = USERS
            .iter()
            .map(|(u, g)| ((*u).to_owned(), *g))
            .chain(node_users);
        for (i, (user, groups)) in users.enumerate() {
            let t = random_token();
            let _ = writeln!(token_file, "{t},{user},uid-{i},\"{groups}\"");
            tokens.push((user, t));
        }
        write(&d.join("tokens.csv"), &token_file)?;
        write(&d.join("audit-policy.yaml"), AUDIT_POLICY)?;

        let mut cp = Self {
            dir,
            procs: Vec::new(),
            url: String::new(),
            ca_pem,
            tokens,
            started_in: Duration::ZERO,
        };

        // etcd, on loopback whatever the bind address: only the API server talks to it.
        let lo = Ipv4Addr::LOCALHOST;
        let (client_port, peer_port) = (free_port(lo)?, free_port(lo)?);
        let etcd_url = format!("http://127.0.0.1:{client_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        cp.spawn(
            "etcd",
            &bin.join("etcd"),
            &[
                "--name=default".into(),
                format!("--data-dir={}", p("etcd")),
                format!("--listen-client-urls={etcd_url}"),
                format!("--advertise-client-urls={etcd_url}"),
                format!("--listen-peer-urls={peer_url}"),
                format!("--initial-advertise-peer-urls={peer_url}"),
                format!("--initial-cluster=default={peer_url}"),
                // A test cluster's state is thrown away; fsync would only slow every write.
                "--unsafe-no-fsync".into(),
                "--log-level=warn".into(),
            ],
        )?;

        let port = free_port(opts.bind)?;
        cp.url = format!("https://{ip}:{port}");
        cp.spawn(
            "kube-apiserver",
            &bin.join("kube-apiserver"),
            &[
                format!("--etcd-servers={etcd_url}"),
                format!("--bind-address={ip}"),
                format!("--advertise-address={ip}"),
                // Endpoints may not be loopback addresses: a control plane on loopback (no
                // pods reach it) publishes none for the `kubernetes` Service.
                format!(
                    "--endpoint-reconciler-type={}",
                    if opts.bind.is_loopback() {
                        "none"
                    } else {
                        "lease"
                    }
                ),
                format!("--secure-port={port}"),
                format!("--cert-dir={}", p("certs")),
                format!("--tls-cert-file={srv_crt}"),
                format!("--tls-private-key-file={srv_key}"),
                format!("--client-ca-file={ca_crt}"),
                format!("--token-auth-file={}", p("tokens.csv")),
                format!("--service-account-key-file={sa_pub}"),
                format!("--service-account-signing-key-file={sa_key}"),
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
                "--authorization-mode=Node,RBAC".into(),
                // On top of the default plugins (NamespaceLifecycle, ServiceAccount,
                // PodSecurity, …), as every real cluster with Node authorization runs it.
                "--enable-admission-plugins=NodeRestriction".into(),
                format!("--service-cluster-ip-range={SERVICE_CIDR}"),
                "--allow-privileged=true".into(),
                "--profiling=false".into(),
                format!("--audit-policy-file={}", p("audit-policy.yaml")),
                format!("--audit-log-path={}", p("audit.log")),
                "--audit-log-format=json".into(),
                "--v=1".into(),
            ],
        )?;
        write(
            &d.join("admin.kubeconfig"),
            &cp.kubeconfig_for_token(&cp.url, cp.token("wgnet-admin")),
        )?;
        let client = cp.admin_client().await?;
        cp.wait_ready(
            &client,
            "kube-apiserver",
            "/readyz",
            Duration::from_secs(90),
        )
        .await?;

        if opts.controllers {
            cp.start_controllers().await?;
        }
        cp.started_in = started.elapsed();
        Ok(cp)
    }

    /// Starts kube-controller-manager and kube-scheduler (when [`Options::controllers`] was
    /// false) and waits until the controller manager works. Start them after installing
    /// CRDs whose objects own others: the garbage collector only discovers new resource
    /// kinds every 30 s, and until then misses an owner's deletion.
    pub async fn start_controllers(&mut self) -> Result<()> {
        let started = Instant::now();
        let bin = binaries()?;
        let d = self.dir.0.clone();
        let p = |f: &str| d.join(f).display().to_string();
        let (ca_crt, sa_key) = (p("ca.crt"), p("sa.key"));
        let client = self.admin_client().await?;
        let kcm = p("kcm.kubeconfig");
        write(
            kcm.as_ref(),
            &self.kubeconfig_for_token(&self.url, self.token("system:kube-controller-manager")),
        )?;
        self.spawn(
            "kube-controller-manager",
            &bin.join("kube-controller-manager"),
            &[
                format!("--kubeconfig={kcm}"),
                format!("--authentication-kubeconfig={kcm}"),
                format!("--authorization-kubeconfig={kcm}"),
                // No node IPAM: the kubelet stand-in registers its Node with a pod CIDR.
                // The node lifecycle controller judges its Lease heartbeat and lifts
                // the not-ready taint, as in any cluster.
                "--controllers=garbagecollector,namespace,deployment,replicaset,endpoint,endpointslice,endpointslicemirroring,serviceaccount,serviceaccount-token,root-ca-cert-publisher,disruption,podgc,nodelifecycle".into(),
                format!("--service-account-private-key-file={sa_key}"),
                format!("--root-ca-file={ca_crt}"),
                "--use-service-account-credentials=true".into(),
                "--leader-elect=false".into(),
                "--bind-address=127.0.0.1".into(),
                "--secure-port=0".into(),
                // Controllers see changes at once; the defaults batch for large clusters.
                "--concurrent-deployment-syncs=10".into(),
                "--v=1".into(),
            ],
        )?;
        let sched = p("scheduler.kubeconfig");
        write(
            sched.as_ref(),
            &self.kubeconfig_for_token(&self.url, self.token("system:kube-scheduler")),
        )?;
        self.spawn(
            "kube-scheduler",
            &bin.join("kube-scheduler"),
            &[
                format!("--kubeconfig={sched}"),
                format!("--authentication-kubeconfig={sched}"),
                format!("--authorization-kubeconfig={sched}"),
                "--leader-elect=false".into(),
                "--bind-address=127.0.0.1".into(),
                "--secure-port=0".into(),
                "--v=1".into(),
            ],
        )?;
        // Ready when the token controller has given `default` its ServiceAccount: the
        // controller manager is then running and authorized.
        let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), "default");
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if sas.get_opt("default").await.ok().flatten().is_some() {
                break;
            }
            if let Some(e) = self.exited() {
                return Err(e);
            }
            if Instant::now() > deadline {
                return Err(self.not_ready("kube-controller-manager", Duration::from_secs(90)));
            }
            // The poll interval of a bounded wait: the ServiceAccount appears without an
            // event this client could watch for before the controllers are up.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.started_in += started.elapsed();
        Ok(())
    }

    fn spawn(&mut self, name: &'static str, bin: &Path, args: &[String]) -> Result<()> {
        let log = self.dir.0.join(format!("{name}.log"));
        let file = std::fs::File::create(&log).map_err(|source| Error::Write {
            path: log.clone(),
            source,
        })?;
        let err = file.try_clone().map_err(|source| Error::Write {
            path: log.clone(),
            source,
        })?;
        let child = Command::new(bin)
            .args(args)
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(err)
            .spawn()
            .map_err(|e| Error::Command {
                command: bin.display().to_string(),
                detail: e.to_string(),
            })?;
        self.procs.push(Proc { name, child, log });
        Ok(())
    }

    /// The first component that has exited, as an error with its log.
    fn exited(&mut self) -> Option<Error> {
        for p in &mut self.procs {
            if let Ok(Some(status)) = p.child.try_wait() {
                return Some(Error::NotReady {
                    component: p.name,
                    timeout: Duration::ZERO,
                    log: format!("exited with {status}\n{}", tail(&p.log, 30)),
                });
            }
        }
        None
    }

    fn not_ready(&self, component: &'static str, timeout: Duration) -> Error {
        let log = self
            .procs
            .iter()
            .find(|p| p.name == component)
            .map(|p| tail(&p.log, 30))
            .unwrap_or_default();
        Error::NotReady {
            component,
            timeout,
            log,
        }
    }

    async fn wait_ready(
        &mut self,
        client: &Client,
        component: &'static str,
        path: &str,
        timeout: Duration,
    ) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let req = http::Request::get(path)
                .body(Vec::new())
                .expect("a GET with a static path is a valid request");
            let answer = client.request_text(req).await;
            if answer.as_ref().is_ok_and(|t| t.trim() == "ok") {
                return Ok(());
            }
            if let Some(e) = self.exited() {
                return Err(e);
            }
            if Instant::now() > deadline {
                let mut e = self.not_ready(component, timeout);
                if let Error::NotReady { log, .. } = &mut e {
                    let _ = write!(log, "\nlast answer to GET {path}: {answer:?}");
                }
                return Err(e);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The API server's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The cluster CA certificate (PEM).
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The directory holding the control plane's files and logs.
    pub fn dir(&self) -> &Path {
        &self.dir.0
    }

    /// The static token of `user` (one of the built-in users or a node's).
    ///
    /// Panics for a user this module never created: a test bug.
    pub fn token(&self, user: &str) -> &str {
        self.tokens
            .iter()
            .find(|(u, _)| u == user)
            .map(|(_, t)| t.as_str())
            .unwrap_or_else(|| panic!("no static token for {user}"))
    }

    /// A kubeconfig for `server` (the API server's URL, or `https://10.96.0.1:443` from a
    /// pod) authenticating with `token`.
    pub fn kubeconfig_for_token(&self, server: &str, token: &str) -> String {
        use base64::Engine as _;
        let ca = base64::engine::general_purpose::STANDARD.encode(&self.ca_pem);
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\nusers:\n- name: user\n  user:\n    token: {token}\ncontexts:\n- name: test\n  context:\n    cluster: test\n    user: user\n    namespace: default\ncurrent-context: test\n"
        )
    }

    /// Path of the admin kubeconfig (system:masters), for kubectl and helm.
    pub fn admin_kubeconfig(&self) -> PathBuf {
        self.dir.0.join("admin.kubeconfig")
    }

    /// The client configuration of `kubeconfig` (YAML text).
    pub async fn config_for(kubeconfig: &str) -> Result<Config> {
        let kc = Kubeconfig::from_yaml(kubeconfig).map_err(Error::Kubeconfig)?;
        Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
            .await
            .map_err(Error::Kubeconfig)
    }

    /// A client authenticating with `kubeconfig` (YAML text).
    pub async fn client_for(kubeconfig: &str) -> Result<Client> {
        Client::try_from(Self::config_for(kubeconfig).await?).map_err(Error::Client)
    }

    /// The admin's client configuration (system:masters).
    pub async fn admin_config(&self) -> Result<Config> {
        Self::config_for(&self.kubeconfig_for_token(&self.url, self.token("wgnet-admin"))).await
    }

    /// A client with the admin's rights.
    pub async fn admin_client(&self) -> Result<Client> {
        Client::try_from(self.admin_config().await?).map_err(Error::Client)
    }

    /// A token for ServiceAccount `namespace/name` from the TokenRequest API, bound to the
    /// pod `(name, uid)` when given (as the kubelet asks for a pod's projected token).
    pub async fn service_account_token(
        client: &Client,
        namespace: &str,
        name: &str,
        pod: Option<(&str, &str)>,
    ) -> Result<String> {
        let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
        let req = TokenRequest {
            spec: TokenRequestSpec {
                audiences: vec![],
                expiration_seconds: Some(24 * 3600),
                bound_object_ref: pod.map(|(pod, uid)| BoundObjectReference {
                    api_version: Some("v1".into()),
                    kind: Some("Pod".into()),
                    name: Some(pod.into()),
                    uid: Some(uid.into()),
                }),
            },
            ..TokenRequest::default()
        };
        let tr: TokenRequest = sas
            .create_subresource("token", name, &PostParams::default(), &req)
            .await
            .map_err(|source| Error::Api {
                what: format!("request a token for serviceaccount {namespace}/{name}"),
                source,
            })?;
        Ok(tr.status.map(|s| s.token).unwrap_or_default())
    }

    /// A client acting as ServiceAccount `namespace/name`.
    pub async fn service_account_client(&self, namespace: &str, name: &str) -> Result<Client> {
        let admin = self.admin_client().await?;
        let token = Self::service_account_token(&admin, namespace, name, None).await?;
        Self::client_for(&self.kubeconfig_for_token(&self.url, &token)).await
    }

    /// Nodes, pods, workloads and recent events as `kubectl get` prints them, for failure
    /// messages.
    pub fn describe(&self) -> String {
        let Ok(kubectl) = binary("kubectl") else {
            return String::new();
        };
        let run = |args: &[&str]| {
            Command::new(&kubectl)
                .arg("--kubeconfig")
                .arg(self.admin_kubeconfig())
                .args(args)
                .output()
                .map(|o| {
                    format!(
                        "{}{}",
                        String::from_utf8_lossy(&o.stdout),
                        String::from_utf8_lossy(&o.stderr)
                    )
                })
                .unwrap_or_default()
        };
        format!(
            "{}{}",
            run(&[
                "get",
                "nodes,deployments,replicasets,pods,services,endpointslices",
                "-A",
                "-o",
                "wide"
            ]),
            run(&["get", "events", "-A", "--sort-by=.lastTimestamp"])
        )
    }

    /// The last lines of every component's log, for failure messages.
    pub fn logs(&self, lines: usize) -> String {
        let mut out = String::new();
        for p in &self.procs {
            let _ = write!(out, "\n--- {} ---\n{}", p.name, tail(&p.log, lines));
        }
        out
    }

    /// Creates the CustomResourceDefinition in `path` (YAML) and waits until it is
    /// Established, so its resources can be used at once.
    pub async fn install_crd(&self, path: &Path) -> Result<()> {
        use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
        let text = std::fs::read_to_string(path).map_err(|source| Error::Write {
            path: path.to_owned(),
            source,
        })?;
        let crd: CustomResourceDefinition =
            serde_yaml::from_str(&text).map_err(|e| Error::Command {
                command: format!("parse {}", path.display()),
                detail: e.to_string(),
            })?;
        let name = crd.metadata.name.clone().unwrap_or_default();
        let api: Api<CustomResourceDefinition> = Api::all(self.admin_client().await?);
        api.create(&PostParams::default(), &crd)
            .await
            .map_err(|source| Error::Api {
                what: format!("create crd {name}"),
                source,
            })?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let established = api
                .get(&name)
                .await
                .ok()
                .and_then(|c| c.status)
                .and_then(|s| s.conditions)
                .is_some_and(|cs| {
                    cs.iter()
                        .any(|c| c.type_ == "Established" && c.status == "True")
                });
            if established {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(self.not_ready("kube-apiserver", Duration::from_secs(30)));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Every request the audit log holds so far: completed requests, and watches once
    /// their response has started (a watch completes only when it is closed).
    pub fn audit(&self) -> Vec<Audited> {
        let text = std::fs::read_to_string(self.dir.0.join("audit.log")).unwrap_or_default();
        text.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|e| {
                e["stage"] == "ResponseComplete"
                    || (e["stage"] == "ResponseStarted" && e["verb"] == "watch")
            })
            .map(|e| {
                let o = &e["objectRef"];
                let mut resource = format!(
                    "{}/{}",
                    o["apiGroup"].as_str().unwrap_or_default(),
                    o["resource"].as_str().unwrap_or_default()
                );
                if let Some(sub) = o["subresource"].as_str() {
                    resource.push('/');
                    resource.push_str(sub);
                }
                Audited {
                    user: e["user"]["username"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                    verb: e["verb"].as_str().unwrap_or_default().to_owned(),
                    resource,
                    namespace: o["namespace"].as_str().unwrap_or_default().to_owned(),
                    code: e["responseStatus"]["code"]
                        .as_u64()
                        .and_then(|c| u16::try_from(c).ok())
                        .unwrap_or(0),
                }
            })
            .collect()
    }

    /// The address the API server listens on.
    pub fn ip(&self) -> IpAddr {
        self.url
            .trim_start_matches("https://")
            .rsplit_once(':')
            .and_then(|(h, _)| h.parse().ok())
            .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST))
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        // Controllers first, etcd last, so nothing logs a storm of connection errors.
        for p in self.procs.iter_mut().rev() {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
    }
}
