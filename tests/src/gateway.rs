//! One gateway VM for end-to-end tests: provisioned through the cloud crate in the GCP
//! emulator, then "booted" the way GCP boots it: the instance's own startup-script, read
//! back from its metadata, runs in a network namespace that owns the reserved IP, with the
//! emulator's metadata server reachable from it. Around it: an "internet" bridge, a client
//! namespace and a cluster-side namespace. Needs root, iproute2, nftables, wireguard-tools,
//! wireguard-go and python3. Everything is removed on drop.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use wgnet_cloud::gcp::GcpCloud;
use wgnet_cloud::vm::{self, VmConfig};
use wgnet_cloud::{Desired, Protocol, Recorded, SecretBytes};

use crate::fixtures::*;
use crate::gcp::{Config, GcpEmulator, LatencyProfile};
use crate::link::Link;
use crate::netns::{self, Netns, RootLink, wait_for};

/// The zone every test gateway lives in.
pub const ZONE: &str = "us-central1-a";

/// Path of the echo helper (`tests/netns/echo.py`).
pub fn echo_py() -> String {
    crate::repo_root()
        .join("tests/netns/echo.py")
        .display()
        .to_string()
}

/// One gateway: emulator, namespaces, the VM booted from its own metadata, a peer.
pub struct Gw {
    pub emu: GcpEmulator,
    pub cloud: GcpCloud,
    pub d: Desired,
    pub rec: Recorded,
    pub cfg: VmConfig,
    pub ip: String,
    pub wg_if: String,
    pub peer_if: String,
    pub vm_pub: String,
    pub dir: TempDir,
    pub md_url: String,
    pub sm_url: String,
    // Dropped last: processes inside die with their namespaces.
    pub client: Netns,
    pub cluster: Netns,
    pub vm: Netns,
    pub _md_link: RootLink,
    pub _net: Netns,
    /// Last: the addresses are free for others only once the metadata link is gone.
    pub _subnet: netns::Subnet,
}

fn private_dir() -> TempDir {
    let d = TempDir::new();
    std::fs::create_dir_all(d.0.join("state")).expect("state dir");
    d
}

/// Where the gateway VM runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmKind {
    /// The startup script in the VM namespace, with userspace WireGuard (the fast tier).
    Namespace,
    /// A Debian 12 guest under qemu attached to the VM namespace by a tap device, owning
    /// the public address itself (the VM tier, [`Gw::boot_guest`]).
    Guest,
}

/// The tap device a guest's NIC is attached to, in the VM namespace.
const GUEST_TAP: &str = "tapg";

/// Provisions a gateway in the emulator (VM not yet booted) and wires the namespaces:
/// the "internet" bridge with the VM, a client and the cluster side.
pub async fn gateway() -> Gw {
    gateway_with(VmKind::Namespace).await
}

/// As [`gateway`], for a VM of `kind`. For a guest, the VM namespace is the host side: a
/// bridge joins the guest's tap to the internet, and holds the metadata address the
/// guest reaches on its link, as on GCE.
pub async fn gateway_with(kind: VmKind) -> Gw {
    netns::require_root();
    let tag = netns::unique_tag();
    // The metadata link lives in the root namespace: its addresses come from the one
    // allocator, never the machine's own networks.
    let subnet = netns::Subnet::claim();
    let (root_md, vm_md) = (subnet.host(1), subnet.host(2));

    let net = Netns::new("net", &tag);
    let vm = Netns::new("vm", &tag);
    let client = Netns::new("cli", &tag);
    let cluster = Netns::new("clu", &tag);
    let md_link = RootLink::new(
        &format!("wgm{tag}"),
        &format!("{root_md}/30"),
        &vm,
        "md0",
        &format!("{vm_md}/30"),
    );

    let emu = GcpEmulator::start(Config {
        addr: (root_md, 0).into(),
        profile: LatencyProfile::instant(),
        ..Config::default()
    })
    .await
    .expect("emulator on the metadata link");
    let dir = private_dir();
    let key = dir.0.join("key.json");
    emu.write_key_file("op@wgnet-test.iam.gserviceaccount.com", &key)
        .expect("key");
    let cloud = cloud_for(&emu, key, INSTALL, "wgnet").await;

    let (vm_priv, vm_pub) = netns::wg_keypair();
    let (link_priv, link_pub) = netns::wg_keypair();
    let mut d = desired(
        &format!("vm{tag}"),
        &format!("uid-{tag}"),
        &[(8080, Protocol::Tcp), (5353, Protocol::Udp)],
    );
    let cfg = VmConfig {
        listen_port: 51820,
        mtu: 1380,
        gateway_address: Ipv4Addr::new(10, 99, 0, 1),
        link_address: Ipv4Addr::new(10, 99, 0, 2),
        subnet: "10.99.0.0/29".into(),
        link_public_key: link_pub,
        vm_public_key: vm_pub.clone(),
    };
    d.metadata = vm::metadata(&cfg);
    d.vm_key = SecretBytes::new(vm_priv.into_bytes());
    let (rec, p, _) = converge(&cloud, &d, Recorded::default(), 20).await;
    let ip = p.address.expect("reserved address");

    // The "internet": a bridge; the VM owns its public IP on ens4, like GCP's Debian names it.
    net.sh(
        "ip link add br0 type bridge && ip addr add 203.0.113.1/24 dev br0 && ip link set br0 up",
    );
    for (ns, port, addr) in [
        (&vm, "pvm", format!("{ip}/24")),
        (&client, "pcl", "203.0.113.20/24".into()),
        (&cluster, "pcs", "203.0.113.30/24".into()),
    ] {
        let ifname = if port == "pvm" { "ens4" } else { "eth0" };
        let tmp = format!("vt{}", netns::unique_tag());
        netns::ip(&[
            "link",
            "add",
            &tmp,
            "type",
            "veth",
            "peer",
            "name",
            &format!("{port}{tag}"),
        ]);
        netns::ip(&["link", "set", &tmp, "netns", &ns.name, "name", ifname]);
        netns::ip(&[
            "link",
            "set",
            &format!("{port}{tag}"),
            "netns",
            &net.name,
            "name",
            port,
        ]);
        net.sh(&format!(
            "ip link set {port} master br0 && ip link set {port} up"
        ));
        // A guest owns its address itself; its namespace only bridges (wire_host_side).
        if !(port == "pvm" && kind == VmKind::Guest) {
            ns.sh(&format!(
                "ip addr add {addr} dev {ifname} && ip link set {ifname} up"
            ));
        }
    }
    match kind {
        VmKind::Namespace => {
            vm.sh("ip route add default via 203.0.113.1");
        }
        VmKind::Guest => {
            crate::guest::wire_host_side(&vm, "ens4", GUEST_TAP, "203.0.113.0/24");
        }
    }

    let base = emu.url();
    let gw = Gw {
        md_url: emu.metadata_url(PROJECT, ZONE, &d.target.id.resource_name()),
        sm_url: format!("{base}/v1"),
        emu,
        cloud,
        d,
        rec,
        cfg,
        ip,
        wg_if: format!("wg{tag}"),
        peer_if: format!("wgc{tag}"),
        vm_pub,
        dir,
        client,
        cluster,
        vm,
        _md_link: md_link,
        _net: net,
        _subnet: subnet,
    };
    std::fs::write(gw.dir.0.join("link.key"), format!("{link_priv}\n")).expect("link key");
    gw
}

impl Drop for Gw {
    fn drop(&mut self) {
        // wireguard-go leaves its control socket behind when killed.
        for i in [&self.wg_if, &self.peer_if] {
            let _ = std::fs::remove_file(format!("/run/wireguard/{i}.sock"));
        }
    }
}

impl Gw {
    /// The instance name.
    pub fn name(&self) -> String {
        self.d.target.id.resource_name()
    }

    /// Environment that points the startup script at the emulator and userspace WireGuard.
    pub fn script_env(&self) -> String {
        self.script_env_with("wireguard-go")
    }

    /// As [`Gw::script_env`] with another userspace WireGuard binary for the VM.
    pub fn script_env_with(&self, userspace: &str) -> String {
        format!(
            "WGNET_METADATA_URL='{}' WGNET_SECRETS_URL='{}' WGNET_USERSPACE='{userspace}' WGNET_IFACE={} WGNET_STATE_DIR='{}' WGNET_NO_SYSTEMD=1 WGNET_MAX_BACKOFF=1",
            self.md_url,
            self.sm_url,
            self.wg_if,
            self.dir.0.join("state").display()
        )
    }

    /// What the emulator's "boot" does: fetch the instance's own startup-script from its
    /// metadata and run it inside the VM namespace.
    pub fn boot(&self) {
        self.boot_with(&[]);
    }

    /// As [`Gw::boot`], with extra environment for the script (for example a PATH).
    pub fn boot_with(&self, env: &[(&str, String)]) {
        self.boot_userspace("wireguard-go", env);
    }

    /// As [`Gw::boot_with`], the VM running `userspace` as its WireGuard.
    pub fn boot_userspace(&self, userspace: &str, env: &[(&str, String)]) {
        let inst = self
            .emu
            .get("instance", PROJECT, ZONE, &self.name())
            .expect("instance");
        let script = inst["metadata"]["items"]
            .as_array()
            .and_then(|items| items.iter().find(|i| i["key"] == "startup-script"))
            .and_then(|i| i["value"].as_str())
            .expect("startup-script in metadata")
            .to_owned();
        let path = self.dir.0.join("startup.sh");
        std::fs::write(&path, script).expect("script");
        let log = self.dir.0.join("boot.log");
        drop(self.vm.spawn(
            &format!(
                "{} sh '{}' boot >'{}' 2>&1",
                self.script_env_with(userspace),
                path.display(),
                log.display()
            ),
            env,
        ));
    }

    /// Boots the instance as a qemu guest (the gateway must come from
    /// `gateway_with(VmKind::Guest)`): it reads its startup-script from metadata itself, and
    /// follows the instance's status (stopped through the Compute API, it powers off;
    /// started, it boots again).
    pub fn boot_guest(&self) -> crate::guest::Guest {
        let mut guest = crate::guest::Guest::start(
            &self.vm,
            crate::guest::GuestSpec {
                address: format!("{}/24", self.ip),
                gateway: "203.0.113.1".into(),
                metadata_root: self.md_url.clone(),
                api_root: self.emu.url(),
                tap: GUEST_TAP.into(),
            },
        );
        guest.follow(self.emu.instance_status_reader(PROJECT, ZONE, &self.name()));
        guest
    }

    /// A guest attribute under `wgnet/`.
    pub fn guest(&self, key: &str) -> Option<String> {
        self.emu
            .guest_attribute(PROJECT, ZONE, &self.name(), &format!("wgnet/{key}"))
    }

    /// Waits for the VM's reported state, failing with its boot log.
    pub fn wait_state(&self, want: &str, timeout: Duration) {
        let got = wait_for(timeout, || {
            (self.guest("state").as_deref() == Some(want)).then_some(())
        });
        let log = std::fs::read_to_string(self.dir.0.join("boot.log")).unwrap_or_default();
        assert!(
            got.is_some(),
            "VM never reached {want}: state {:?}, error {:?}\n{log}",
            self.guest("state"),
            self.guest("error")
        );
    }

    /// A wg-quick peer in the cluster namespace standing in for the link, with an echo server.
    /// As the link does, it accepts clients' own addresses from the VM (AllowedIPs any) and
    /// routes its replies back into the tunnel (a rule for its tunnel address; `Table = off`
    /// keeps wg-quick from routing everything else there).
    pub fn peer_up(&self, endpoint_port: u16) {
        let conf = format!(
            "[Interface]\nPrivateKey = {}\nAddress = 10.99.0.2/29\nMTU = {}\nTable = off\n\n[Peer]\nPublicKey = {}\nEndpoint = {}:{endpoint_port}\nAllowedIPs = 0.0.0.0/0\nPersistentKeepalive = 1\n",
            std::fs::read_to_string(self.dir.0.join("link.key"))
                .expect("link key")
                .trim(),
            self.cfg.mtu,
            self.vm_pub,
            self.ip
        );
        let path = self.dir.0.join(format!("{}.conf", self.peer_if));
        std::fs::write(&path, conf).expect("peer conf");
        self.cluster.sh(&format!(
            "WG_QUICK_USERSPACE_IMPLEMENTATION=wireguard-go wg-quick up '{}' 2>&1",
            path.display()
        ));
        self.cluster.sh(&format!(
            "ip route replace default dev {} table 51820 && (ip rule show | grep -q 'from 10.99.0.2 lookup 51820' || ip rule add from 10.99.0.2 lookup 51820 pref 1000)",
            self.peer_if
        ));
        drop(self.cluster.spawn(
            &format!(
                "python3 '{}' serve 10.99.0.2 8080,51820,2222 5353",
                echo_py()
            ),
            &[],
        ));
    }

    /// One request from the client, retried briefly while the tunnel comes up.
    pub fn request(&self, proto: &str, port: u16) -> Option<String> {
        self.request_within(proto, port, Duration::from_secs(10))
    }

    /// As [`Gw::request`] with a deadline.
    pub fn request_within(&self, proto: &str, port: u16, timeout: Duration) -> Option<String> {
        wait_for(timeout, || {
            let (ok, out, _) = self.client.try_sh(&format!(
                "python3 '{}' {proto} {} {port}",
                echo_py(),
                self.ip
            ));
            ok.then(|| out.trim().to_owned())
        })
    }

    /// A backend namespace behind the cluster namespace standing in for a ClusterIP:
    /// 10.96.0.10, reached through the cluster side's `svc0` (10.96.0.1).
    pub fn backend(&self) -> Netns {
        let backend = Netns::new("be", &netns::unique_tag());
        netns::veth(
            &self.cluster,
            "svc0",
            "10.96.0.1/24",
            &backend,
            "eth0",
            "10.96.0.10/24",
        );
        backend.sh("ip route add default via 10.96.0.1");
        backend
    }

    /// The link's ingress `config.json` for this VM, with forwards as
    /// (port, protocol, clusterIP, targetPort).
    pub fn link_config(&self, forwards: &[(u16, &str, &str, u16)]) -> String {
        self.link_config_with(
            forwards
                .iter()
                .copied()
                .map(crate::link::ingress_forward)
                .collect(),
        )
    }

    /// As [`Gw::link_config`] with forwards as the link reads them.
    pub fn link_config_with(&self, forwards: Vec<wgnet_link::config::IngressForward>) -> String {
        self.link_config_via(&format!("{}:{}", self.ip, self.cfg.listen_port), forwards)
    }

    /// As [`Gw::link_config_with`] with the VM reached at `endpoint` (a relay, say).
    pub fn link_config_via(
        &self,
        endpoint: &str,
        forwards: Vec<wgnet_link::config::IngressForward>,
    ) -> String {
        crate::link::ingress_config_with(
            &format!("{}/29", self.cfg.link_address),
            self.cfg.mtu,
            endpoint,
            &self.vm_pub,
            5,
            forwards,
        )
    }

    /// Writes the link's directory (its key and [`Gw::link_config`]) and starts a link in
    /// the cluster namespace, waiting until it is ready. Returns the link and the directory.
    pub fn start_link(&self, forwards: &[(u16, &str, &str, u16)]) -> (Link, PathBuf) {
        self.start_link_with(
            forwards
                .iter()
                .copied()
                .map(crate::link::ingress_forward)
                .collect(),
        )
    }

    /// As [`Gw::start_link`] with forwards as the link reads them.
    pub fn start_link_with(
        &self,
        forwards: Vec<wgnet_link::config::IngressForward>,
    ) -> (Link, PathBuf) {
        self.start_link_config(&self.link_config_with(forwards))
    }

    /// As [`Gw::start_link`] with the link's whole config document.
    pub fn start_link_config(&self, config: &str) -> (Link, PathBuf) {
        let dir = self.dir.0.join("link");
        std::fs::create_dir_all(&dir).expect("link dir");
        std::fs::copy(self.dir.0.join("link.key"), dir.join("private-key")).expect("link key");
        std::fs::write(dir.join("config.json"), config).expect("link config");
        let link = Link::start(&self.cluster, &dir, &[]);
        link.wait_ready(Duration::from_secs(20));
        (link, dir)
    }

    /// Re-renders the metadata from `cfg` and converges the cloud resources.
    pub async fn update(&mut self) {
        self.d.metadata = vm::metadata(&self.cfg);
        let (rec, _, _) = converge(&self.cloud, &self.d, self.rec.clone(), 20).await;
        self.rec = rec;
    }
}
