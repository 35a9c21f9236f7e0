//! Network-namespace harness: namespaces, veth links and processes for data-plane tests,
//! all removed on drop (also when a test fails). Needs root, `ip` (iproute2) and `nft`.
//!
//! Only TEST-NET and 10.99.x addresses are used, and no namespace gets a route off the
//! machine. I/O boundary: the `ip` binary and processes started inside namespaces.

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A short unique tag for names (interfaces allow 15 characters).
pub fn unique_tag() -> String {
    format!(
        "{}{}",
        std::process::id() % 10_000,
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// A /29 of 198.51.100.0/25 (TEST-NET-2) for the links between the root namespace and a
/// test's namespaces: the one allocator every topology uses, so no two topologies (in this
/// process or in another test binary running at the same time) share an address. Held
/// until dropped, through a lock file per slot that the kernel releases even when the
/// process dies. The emulator's ephemeral addresses (198.51.100.130-249) stay outside it.
#[derive(Debug)]
pub struct Subnet {
    slot: u8,
    _lock: std::fs::File,
}

impl Subnet {
    /// Slots of the range.
    const SLOTS: u8 = 16;

    /// Claims a free /29, waiting (bounded) while all are held.
    pub fn claim() -> Self {
        let deadline = Instant::now() + Duration::from_secs(120);
        // Start at a per-process offset so concurrent binaries rarely contend.
        let offset = (std::process::id() % u32::from(Self::SLOTS)) as u8;
        loop {
            for i in 0..Self::SLOTS {
                let slot = (offset + i) % Self::SLOTS;
                let path = std::env::temp_dir().join(format!("wgnet-tests-subnet-{slot}.lock"));
                let Ok(file) = std::fs::OpenOptions::new()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .open(&path)
                else {
                    continue;
                };
                let s = Self { slot, _lock: file };
                // An address left by a run killed before its cleanup also makes a slot busy.
                if s._lock.try_lock().is_ok() && !root_has_address(&s.host(1).to_string()) {
                    return s;
                }
            }
            assert!(
                Instant::now() < deadline,
                "every /29 of 198.51.100.0/25 is held by another test topology"
            );
            // Every slot is held by another topology (maybe in another process, which
            // cannot signal us): poll, bounded by the deadline above.
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Host `n` (1 to 6) of the /29.
    pub fn host(&self, n: u8) -> std::net::Ipv4Addr {
        assert!((1..=6).contains(&n), "a /29 has hosts 1 to 6");
        std::net::Ipv4Addr::new(198, 51, 100, self.slot * 8 + n)
    }
}

/// Fails with a sentence when not root.
pub fn require_root() {
    let uid = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    assert_eq!(
        uid, "0",
        "network-namespace tests need root (run make test as root)"
    );
}

/// Runs `ip ARGS` in the root namespace; panics with its stderr on failure.
pub fn ip(args: &[&str]) {
    run("ip", args);
}

fn run(bin: &str, args: &[&str]) -> String {
    let out = Command::new(bin)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {bin}: {e}"));
    assert!(
        out.status.success(),
        "{bin} {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A network namespace, deleted (with every process inside killed) on drop.
#[derive(Debug)]
pub struct Netns {
    /// Its name.
    pub name: String,
}

impl Netns {
    /// Creates `wgt-<role>-<tag>` with loopback up.
    pub fn new(role: &str, tag: &str) -> Self {
        let name = format!("wgt-{role}-{tag}");
        ip(&["netns", "add", &name]);
        let ns = Self { name };
        ns.sh("ip link set lo up");
        ns
    }

    /// Runs a shell command inside; returns stdout, panics on failure.
    pub fn sh(&self, cmd: &str) -> String {
        run("ip", &["netns", "exec", &self.name, "sh", "-c", cmd])
    }

    /// Runs a shell command inside; returns (success, stdout, stderr).
    pub fn try_sh(&self, cmd: &str) -> (bool, String, String) {
        match Command::new("ip")
            .args(["netns", "exec", &self.name, "sh", "-c", cmd])
            .output()
        {
            Ok(o) => (
                o.status.success(),
                String::from_utf8_lossy(&o.stdout).into_owned(),
                String::from_utf8_lossy(&o.stderr).into_owned(),
            ),
            Err(e) => (false, String::new(), e.to_string()),
        }
    }

    /// Starts a long-running command inside with extra environment.
    pub fn spawn(&self, cmd: &str, env: &[(&str, String)]) -> Child {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, "sh", "-c", cmd])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        for (k, v) in env {
            c.env(k, v);
        }
        c.spawn()
            .unwrap_or_else(|e| panic!("spawning in {}: {e}", self.name))
    }

    /// PIDs of every process inside.
    pub fn pids(&self) -> Vec<i32> {
        Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .split_whitespace()
                    .filter_map(|p| p.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Kills every process inside (a simulated power cut), waiting until they are gone.
    pub fn kill_all(&self) {
        for _ in 0..50 {
            let pids = self.pids();
            if pids.is_empty() {
                return;
            }
            for p in pids {
                let _ = Command::new("kill").args(["-9", &p.to_string()]).status();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        self.kill_all();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Connects `a` and `b` with a veth pair named `a_if` / `b_if`, addressed and up.
pub fn veth(a: &Netns, a_if: &str, a_addr: &str, b: &Netns, b_if: &str, b_addr: &str) {
    let tmp_a = format!("va{}", unique_tag());
    let tmp_b = format!("vb{}", unique_tag());
    ip(&[
        "link", "add", &tmp_a, "type", "veth", "peer", "name", &tmp_b,
    ]);
    ip(&["link", "set", &tmp_a, "netns", &a.name, "name", a_if]);
    ip(&["link", "set", &tmp_b, "netns", &b.name, "name", b_if]);
    a.sh(&format!(
        "ip addr add {a_addr} dev {a_if} && ip link set {a_if} up"
    ));
    b.sh(&format!(
        "ip addr add {b_addr} dev {b_if} && ip link set {b_if} up"
    ));
}

/// Whether `ip` is already an address of an interface in the root namespace.
pub fn root_has_address(ip: &str) -> bool {
    run("ip", &["-4", "-o", "addr", "show"])
        .split_whitespace()
        .any(|w| w.split('/').next() == Some(ip))
}

/// A veth between the root namespace (`root_if`, deleted on drop) and `ns`.
#[derive(Debug)]
pub struct RootLink {
    /// Root-side interface name.
    pub root_if: String,
}

impl RootLink {
    /// Creates it with the given addresses (CIDR form).
    pub fn new(root_if: &str, root_addr: &str, ns: &Netns, ns_if: &str, ns_addr: &str) -> Self {
        // Never shadow an address the machine already uses (its gateway could be one).
        let ip_only = root_addr.split('/').next().unwrap_or(root_addr);
        assert!(
            !root_has_address(ip_only),
            "{ip_only} is already an address of this machine; refusing to add it again"
        );
        let peer = format!("vp{}", unique_tag());
        ip(&[
            "link", "add", root_if, "type", "veth", "peer", "name", &peer,
        ]);
        let link = Self {
            root_if: root_if.to_owned(),
        };
        ip(&["link", "set", &peer, "netns", &ns.name, "name", ns_if]);
        ip(&["addr", "add", root_addr, "dev", root_if]);
        ip(&["link", "set", root_if, "up"]);
        ns.sh(&format!(
            "ip addr add {ns_addr} dev {ns_if} && ip link set {ns_if} up"
        ));
        link
    }
}

impl Drop for RootLink {
    fn drop(&mut self) {
        // Already gone when the namespace holding its peer was deleted first.
        let _ = Command::new("ip")
            .args(["link", "del", &self.root_if])
            .stderr(Stdio::null())
            .status();
    }
}

/// Polls `f` every 50 ms until it returns `Some` or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(t) = f() {
            return Some(t);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A WireGuard key pair from `wg genkey`/`wg pubkey`: (private, public).
pub fn wg_keypair() -> (String, String) {
    let private = run("wg", &["genkey"]).trim().to_owned();
    let mut child = Command::new("wg")
        .arg("pubkey")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("wg pubkey");
    {
        use std::io::Write as _;
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(private.as_bytes())
            .expect("write key");
    }
    let out = child.wait_with_output().expect("wg pubkey output");
    (
        private,
        String::from_utf8_lossy(&out.stdout).trim().to_owned(),
    )
}
