//! The gateway VM as a real guest: a Debian 12 image with its own kernel (Debian's cloud
//! kernel, so `wg0` is kernel WireGuard) booted under qemu inside the instance's network
//! namespace, for the VM tier (`make test-vm`).
//!
//! It owns the image (built once per machine by `scripts/guest-image.sh` into a cache outside
//! the work tree), the qemu process and its copy-on-write disk, and the host side of the
//! instance: `tests/netns/guest_host.py` on 169.254.169.254 (metadata and Secret Manager
//! relayed to the GCP emulator, and the guest's apt repository). The guest plays the rest:
//! its own units take the address from the kernel command line and run the startup-script
//! from metadata at every boot, as GCE's guest agent does.
//!
//! I/O: child processes (`qemu-system-x86_64`, `qemu-img`, python3) in the namespace, qemu's
//! QMP socket and a virtio-serial command port over Unix sockets in the guest's directory, and a
//! thread that follows the instance's status in the emulator to power the guest off and on.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::fixtures::TempDir;
use crate::netns::{Netns, wait_for};

/// The metadata server's address, where the host side listens.
pub const METADATA_ADDR: &str = "169.254.169.254";

/// Wires the host side of a guest in `vm`, the instance's namespace: a bridge joins the
/// uplink (the namespace's port on the emulated internet, `internet` its prefix) and the tap
/// qemu attaches the guest's NIC to, so the guest owns its public address on that network
/// itself; the bridge holds [`METADATA_ADDR`], which the guest reaches on its link as on GCE.
/// Nothing arriving from the uplink reaches the host side itself (ARP included): on GCE the
/// metadata server answers the instance only.
pub fn wire_host_side(vm: &Netns, uplink: &str, tap: &str, internet: &str) {
    vm.sh(&format!(
        "ip link add brg type bridge && ip link set {uplink} master brg && ip link set {uplink} up && \
         ip tuntap add dev {tap} mode tap && ip link set {tap} master brg && ip link set {tap} up && \
         ip addr add {METADATA_ADDR}/32 dev brg && ip link set brg up && ip route add {internet} dev brg && \
         nft 'add table bridge wgnet_host; add chain bridge wgnet_host in {{ type filter hook input priority 0; policy accept; }}; add rule bridge wgnet_host in iifname \"{uplink}\" drop'"
    ));
}

/// The cached image: kernel, initrd, root filesystem and the guest's apt repository.
#[derive(Debug, Clone)]
pub struct Image {
    pub dir: PathBuf,
}

impl Image {
    /// Builds the image once per machine (or finds it cached) and returns it. Panics with
    /// the script's own message when it cannot be built.
    pub fn get() -> &'static Image {
        static IMAGE: OnceLock<Image> = OnceLock::new();
        IMAGE.get_or_init(|| {
            let script = crate::repo_root().join("scripts/guest-image.sh");
            let out = Command::new(&script)
                .stderr(std::process::Stdio::inherit())
                .output()
                .unwrap_or_else(|e| panic!("running {}: {e}", script.display()));
            assert!(
                out.status.success(),
                "{} failed (its message is above)",
                script.display()
            );
            let dir = String::from_utf8_lossy(&out.stdout)
                .lines()
                .last()
                .map(str::trim)
                .map(PathBuf::from)
                .expect("guest-image.sh prints the image directory last");
            Image { dir }
        })
    }

    fn file(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }
}

/// How the guest is wired: its address on the emulated internet and the instance it is.
#[derive(Debug, Clone)]
pub struct GuestSpec {
    /// `A.B.C.D/N` on the guest's ens4.
    pub address: String,
    /// The default gateway on that network.
    pub gateway: String,
    /// The emulator's metadata root of this instance ([`crate::gcp::GcpEmulator::metadata_url`]).
    pub metadata_root: String,
    /// The emulator's API root (for Secret Manager).
    pub api_root: String,
    /// The tap device in the namespace that qemu attaches the guest's NIC to.
    pub tap: String,
}

struct Power {
    qemu: Mutex<Option<Child>>,
    boots: AtomicU64,
}

/// One running guest. Dropping it powers the guest off and removes its disk.
pub struct Guest {
    ns: String,
    dir: TempDir,
    spec: GuestSpec,
    power: Arc<Power>,
    stop: Arc<AtomicBool>,
    follower: Option<std::thread::JoinHandle<()>>,
    shell: Mutex<Shell>,
    _host: Child,
}

/// The test side of the guest's command port: one connection, kept open until it breaks
/// (the guest powered off). The guest's kernel discards what reached a port its reader had
/// closed, and the reader sees each disconnect, so a connection per command lost commands.
/// The command port's connection broke (or never opened).
struct Broken;

#[derive(Default)]
struct Shell {
    stream: Option<UnixStream>,
    /// Bytes read but not yet split into lines.
    buf: Vec<u8>,
}

impl Shell {
    /// Sends one command and reads until its marker, for at most 10 s. A broken
    /// connection is dropped (the next call connects again); a slow answer is not.
    fn run(&mut self, sock: &Path, nonce: &str, cmd: &str) -> Option<(i32, String)> {
        let got = self.exchange(sock, nonce, cmd);
        if matches!(got, Err(Broken)) {
            self.stream = None;
        }
        got.ok().flatten()
    }

    fn exchange(
        &mut self,
        sock: &Path,
        nonce: &str,
        cmd: &str,
    ) -> Result<Option<(i32, String)>, Broken> {
        if self.stream.is_none() {
            let s = UnixStream::connect(sock).map_err(|_| Broken)?;
            s.set_read_timeout(Some(Duration::from_millis(500)))
                .map_err(|_| Broken)?;
            s.set_write_timeout(Some(Duration::from_secs(5)))
                .map_err(|_| Broken)?;
            self.stream = Some(s);
            self.buf.clear();
        }
        let s = self.stream.as_mut().ok_or(Broken)?;
        s.write_all(format!("{nonce} {cmd}\n").as_bytes())
            .map_err(|_| Broken)?;
        let marker = format!("@@wgnet-done {nonce} ");
        let mut out = String::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut chunk = [0u8; 4096];
        while Instant::now() < deadline {
            match std::io::Read::read(s, &mut chunk) {
                Ok(0) => return Err(Broken),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => return Err(Broken),
            }
            while let Some(end) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=end).collect();
                let line = String::from_utf8_lossy(&line);
                let line = line.trim_end_matches(['\r', '\n']);
                if let Some(rest) = line.strip_prefix(&marker) {
                    let rc = rest.trim_end_matches("@@").parse().ok();
                    return Ok(rc.map(|rc| (rc, out)));
                }
                if line.starts_with("@@wgnet-done ") {
                    // An earlier command's end (one that timed out): what came before it
                    // was its output, not this one's.
                    out.clear();
                } else {
                    out.push_str(line);
                    out.push('\n');
                }
            }
        }
        Ok(None)
    }
}

impl Guest {
    /// Starts the host side in `vm` (which must hold [`METADATA_ADDR`] and the tap), makes
    /// the guest's disk from the image and powers the guest on.
    pub fn start(vm: &Netns, spec: GuestSpec) -> Guest {
        let image = Image::get();
        let dir = TempDir::new();
        let host = vm.spawn(
            &format!(
                "exec python3 '{}' {METADATA_ADDR} '{}' '{}' '{}'",
                crate::repo_root()
                    .join("tests/netns/guest_host.py")
                    .display(),
                spec.metadata_root,
                spec.api_root,
                image.file("repo")
            ),
            &[],
        );
        let served = wait_for(Duration::from_secs(20), || {
            vm.try_sh(&format!(
                "curl -fsS -o /dev/null http://{METADATA_ADDR}:8081/Release"
            ))
            .0
            .then_some(())
        });
        assert!(served.is_some(), "the guest's host side never served");
        let disk = dir.0.join("disk.qcow2");
        let made = Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
            .arg(image.file("rootfs.raw"))
            .arg(&disk)
            .status()
            .expect("qemu-img (package qemu-utils)");
        assert!(made.success(), "qemu-img could not make the guest's disk");
        let guest = Guest {
            ns: vm.name.clone(),
            dir,
            spec,
            power: Arc::new(Power {
                qemu: Mutex::new(None),
                boots: AtomicU64::new(0),
            }),
            stop: Arc::new(AtomicBool::new(false)),
            follower: None,
            shell: Mutex::new(Shell::default()),
            _host: host,
        };
        guest.power_on();
        guest
    }

    /// Powers the guest on (a no-op when it runs).
    pub fn power_on(&self) {
        power_on(&self.power, || {
            qemu_command(&self.ns, &self.dir.0, &self.spec)
        });
    }

    /// Cuts the guest's power (qemu killed), as a hard stop does; the disk stays.
    pub fn power_off(&self) {
        power_off(&self.power);
    }

    /// Whether qemu runs.
    pub fn is_on(&self) -> bool {
        is_on(&self.power)
    }

    /// How many times the guest has been powered on.
    pub fn boots(&self) -> u64 {
        self.power.boots.load(Ordering::SeqCst)
    }

    /// Resets the machine (QMP `system_reset`): a reboot without a clean shutdown. Panics
    /// when qemu does not confirm it.
    pub fn reset(&self) {
        qmp(&self.dir.0.join("qmp.sock"), "system_reset")
            .unwrap_or_else(|e| panic!("qemu did not reset the guest: {e}"));
    }

    /// Follows the instance's status in the emulator from a thread, as the hypervisor does:
    /// powered off once the instance is stopping or terminated, on once it runs again.
    pub fn follow(&mut self, status: impl Fn() -> Option<String> + Send + 'static) {
        let power = Arc::clone(&self.power);
        let stop = Arc::clone(&self.stop);
        let make = {
            let ns = self.ns.clone();
            let dir = self.dir.0.clone();
            let spec = self.spec.clone();
            move || qemu_command(&ns, &dir, &spec)
        };
        self.follower = Some(std::thread::spawn(move || {
            // Bounded by the guest's life and, at the outside, an hour.
            let deadline = Instant::now() + Duration::from_secs(3600);
            while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                match status().as_deref() {
                    Some("RUNNING") => power_on(&power, &make),
                    Some("STOPPING" | "TERMINATED" | "SUSPENDED") | None => power_off(&power),
                    _ => {}
                }
                // A poll, as the cluster's booter does: the emulator has no change feed to
                // wait on, and 200 ms keeps a power change well inside the tests' bounds.
                std::thread::sleep(Duration::from_millis(200));
            }
        }));
    }

    /// The guest's serial console so far (kernel and systemd messages, the script's log).
    pub fn console(&self) -> String {
        std::fs::read_to_string(self.dir.0.join("console.log")).unwrap_or_default()
    }

    /// Runs `cmd` (one line of sh) inside the guest over the virtio-serial port, retrying
    /// while the guest's command service is not up, for at most `timeout`. Returns the exit
    /// code and the output.
    pub fn sh(&self, cmd: &str, timeout: Duration) -> Option<(i32, String)> {
        assert!(!cmd.contains('\n'), "guest commands are one line");
        static NONCE: AtomicU64 = AtomicU64::new(1);
        let mut shell = self.shell.lock().unwrap_or_else(|p| p.into_inner());
        wait_for(timeout, || {
            let nonce = format!(
                "n{}x{}",
                std::process::id(),
                NONCE.fetch_add(1, Ordering::SeqCst)
            );
            shell.run(&self.dir.0.join("shell.sock"), &nonce, cmd)
        })
    }

    /// Runs `cmd` until `done(exit code, output)` holds, for at most `timeout`.
    pub fn sh_until(
        &self,
        cmd: &str,
        done: impl Fn(i32, &str) -> bool,
        timeout: Duration,
    ) -> Option<(i32, String)> {
        wait_for(timeout, || {
            self.sh(cmd, Duration::from_secs(20))
                .filter(|(rc, out)| done(*rc, out))
        })
    }

    /// As [`Guest::sh`] with 60 s, panicking with the console's tail when it never answers.
    pub fn run(&self, cmd: &str) -> (i32, String) {
        self.sh(cmd, Duration::from_secs(60))
            .unwrap_or_else(|| panic!("the guest never ran `{cmd}`\n{}", self.console_tail(60)))
    }

    /// The last `n` lines of the console.
    pub fn console_tail(&self, n: usize) -> String {
        let c = self.console();
        let lines: Vec<&str> = c.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// The guest's directory (disk, console, sockets).
    pub fn dir(&self) -> &Path {
        &self.dir.0
    }
}

fn qemu_command(ns: &str, d: &Path, spec: &GuestSpec) -> Command {
    let image = Image::get();
    let mut c = Command::new("ip");
    // A test killed outright never runs Guest's Drop: setpriv makes the guest die with the
    // thread that powered it on (the test's own or the follower, each outliving its guest).
    c.args([
        "netns",
        "exec",
        ns,
        "setpriv",
        "--pdeathsig",
        "KILL",
        "qemu-system-x86_64",
    ]);
    // Software emulation: these machines have no usable KVM. One vCPU: with two, qemu
    // 7.2's multi-threaded TCG once left a vCPU stuck at one instruction of the guest
    // kernel's receive path for minutes (soft lockups, the boot never finished).
    c.args(["-accel", "tcg", "-m", "512", "-smp", "1"]);
    c.args(["-display", "none", "-nodefaults", "-no-user-config"]);
    c.args(["-kernel", &image.file("vmlinuz")]);
    c.args(["-initrd", &image.file("initrd.img")]);
    c.args([
        "-append",
        &format!(
            "root=/dev/vda rw console=ttyS0 wgnet.addr={} wgnet.gw={}",
            spec.address, spec.gateway
        ),
    ]);
    c.args([
        "-drive",
        &format!(
            "file={},if=virtio,format=qcow2",
            d.join("disk.qcow2").display()
        ),
    ]);
    // PCI slot 4: Debian names the NIC ens4, as on GCE.
    c.args([
        "-netdev",
        &format!("tap,id=n0,ifname={},script=no,downscript=no", spec.tap),
        "-device",
        "virtio-net-pci,netdev=n0,addr=4",
    ]);
    c.args([
        "-serial",
        &format!("file:{}", d.join("console.log").display()),
    ]);
    c.args([
        "-qmp",
        &format!("unix:{},server=on,wait=off", d.join("qmp.sock").display()),
    ]);
    c.args([
        "-device",
        "virtio-serial-pci",
        "-chardev",
        &format!(
            "socket,id=sh0,path={},server=on,wait=off",
            d.join("shell.sock").display()
        ),
        "-device",
        "virtserialport,chardev=sh0,name=wgnet.shell",
    ]);
    c.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(d.join("qemu.err")).expect("qemu.err"));
    c
}

/// Runs one QMP command without arguments and waits for its `return` (bounded: 10 s per
/// read, 50 messages at most). QMP, not the human monitor: a `system_reset` written to the
/// human monitor right after connecting was once never run, and it answers nothing a test
/// can check.
fn qmp(sock: &Path, command: &str) -> Result<(), String> {
    let s =
        UnixStream::connect(sock).map_err(|e| format!("connecting to {}: {e}", sock.display()))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let mut w = s.try_clone().map_err(|e| e.to_string())?;
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(s));
    let mut next = |what: &str| -> Result<serde_json::Value, String> {
        // Events (a reset emits RESET) may come before the answer.
        for _ in 0..50 {
            let line = lines
                .next()
                .ok_or_else(|| format!("qemu closed QMP waiting for {what}"))?
                .map_err(|e| format!("reading QMP waiting for {what}: {e}"))?;
            let v: serde_json::Value =
                serde_json::from_str(&line).map_err(|e| format!("QMP sent {line:?}: {e}"))?;
            if v.get("event").is_none() {
                return Ok(v);
            }
        }
        Err(format!("no answer to {what} among 50 QMP messages"))
    };
    next("the greeting")?;
    for cmd in ["qmp_capabilities", command] {
        w.write_all(format!("{{\"execute\":\"{cmd}\"}}\n").as_bytes())
            .map_err(|e| e.to_string())?;
        let answer = next(cmd)?;
        if answer.get("return").is_none() {
            return Err(format!("{cmd}: {answer}"));
        }
    }
    Ok(())
}

fn power_on(power: &Power, make: impl FnOnce() -> Command) {
    let mut q = power.qemu.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(c) = q.as_mut()
        && c.try_wait().ok().flatten().is_none()
    {
        return;
    }
    let child = make()
        .spawn()
        .expect("qemu-system-x86_64 (package qemu-system-x86)");
    power.boots.fetch_add(1, Ordering::SeqCst);
    *q = Some(child);
}

fn power_off(power: &Power) {
    let mut q = power.qemu.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(mut c) = q.take() {
        let _ = c.kill();
        let _ = c.wait();
    }
}

fn is_on(power: &Power) -> bool {
    let mut q = power.qemu.lock().unwrap_or_else(|p| p.into_inner());
    q.as_mut()
        .is_some_and(|c| c.try_wait().ok().flatten().is_none())
}

impl Drop for Guest {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.follower.take() {
            let _ = t.join();
        }
        power_off(&self.power);
        let _ = self._host.kill();
        let _ = self._host.wait();
    }
}
