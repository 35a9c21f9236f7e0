//! The VM tier (`make test-vm`): the gateway VM as GCP runs it, a Debian 12 guest with its
//! own kernel booted under qemu (software emulation), running the instance's startup-script
//! from metadata as the guest agent does, with kernel WireGuard and nftables installed by
//! the script from the guest's apt repository. The link (boringtun) in the cluster
//! namespace handshakes with it; a client on the emulated internet reaches Services
//! through it. Needs root, qemu-system-x86, qemu-utils and debootstrap (`make deps`).
//!
//! The last test runs the whole product on it: the operator (in-process, as the chart's
//! ServiceAccount) against the real control plane provisions a Gateway whose instance the
//! cluster's booter starts as a guest.
//!
//! Ignored by `make test` (a guest boots in tens of seconds under emulation, each scenario
//! takes minutes); `make test-vm` runs them, one at a time.

use std::path::{Path, PathBuf};
use std::time::Duration;

use kube::Api;
use kube::api::{DeleteParams, PostParams};
use serde_json::json;
use wgnet_cloud::SecretBytes;
use wgnet_operator::api::{Gateway, conditions};
use wgnet_tests::cluster::{Cluster, OperatorRun};
use wgnet_tests::gcp::LatencyProfile;

mod common;
use common::{assert_gcp_holds_nothing, assert_serves_web, gateway, operator_with, service};
use wgnet_tests::fixtures::PROJECT;
use wgnet_tests::gateway::{Gw, VmKind, ZONE, echo_py, gateway_with};
use wgnet_tests::guest::Guest;
use wgnet_tests::link::Link;
use wgnet_tests::netns::{Netns, wait_for};

/// Boot, install (apt under emulation) and key fetch: generous, the guest tier's slowest step.
const BOOTED: Duration = Duration::from_secs(600);

struct Vm {
    guest: Guest,
    _backend: Netns,
    gw: Gw,
}

/// A gateway whose VM is a booted guest reporting ready, and a backend (10.96.0.10 answering
/// TCP 80 and UDP 53) behind the cluster side.
async fn booted() -> Vm {
    let gw = gateway_with(VmKind::Guest).await;
    let guest = gw.boot_guest();
    wait_ready(&gw, &guest, "the first boot");
    let backend = gw.backend();
    drop(backend.spawn(
        &format!("python3 '{}' serve 10.96.0.10 80 53", echo_py()),
        &[],
    ));
    Vm {
        guest,
        _backend: backend,
        gw,
    }
}

fn wait_ready(gw: &Gw, guest: &Guest, what: &str) {
    let got = wait_for(BOOTED, || {
        (gw.guest("state").as_deref() == Some("ready")).then_some(())
    });
    assert!(
        got.is_some(),
        "{what}: the guest never reported ready: state {:?}, error {:?}\n{}",
        gw.guest("state"),
        gw.guest("error"),
        guest.console_tail(80)
    );
}

const FORWARDS: &[(u16, &str, &str, u16)] = &[
    (8080, "TCP", "10.96.0.10", 80),
    (5353, "UDP", "10.96.0.10", 53),
];

fn start_link(vm: &Vm) -> (Link, PathBuf) {
    vm.gw.start_link(FORWARDS)
}

/// Rewrites the link's config for the VM's current port and key (write then rename, as a
/// ConfigMap volume update would).
fn reconfigure_link(vm: &Vm, dir: &Path) {
    let tmp = dir.join(".config.json.tmp");
    std::fs::write(&tmp, vm.gw.link_config(FORWARDS)).expect("config");
    std::fs::rename(&tmp, dir.join("config.json")).expect("config");
}

/// The guest's boot id (a new one after every boot).
fn boot_id(guest: &Guest) -> String {
    guest
        .run("cat /proc/sys/kernel/random/boot_id")
        .1
        .trim()
        .to_owned()
}

/// Marks the reported state stale, so the next "ready" is the guest's report after what
/// the test does next (the emulator keeps guest attributes across boots, as GCE does).
fn forget_state(gw: &Gw) {
    gw.emu
        .put_guest_attribute_for_test(PROJECT, ZONE, &gw.name(), "wgnet/state", "stale");
}

/// TCP and UDP from the client reach the backend through the guest and the link.
fn assert_served(vm: &Vm, link: &Link, what: &str) {
    assert_eq!(
        vm.gw
            .request_within("tcp", 8080, Duration::from_secs(60))
            .as_deref(),
        Some("tcp 80 from 10.96.0.1"),
        "{what}: TCP through the guest\n{}\n{}",
        link.logs(),
        vm.guest.console_tail(40)
    );
    assert_eq!(
        vm.gw
            .request_within("udp", 5353, Duration::from_secs(30))
            .as_deref(),
        Some("udp 53 from 10.96.0.1"),
        "{what}: UDP through the guest"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "VM tier: run by make test-vm"]
async fn the_guest_installs_its_tools_and_serves_through_kernel_wireguard() {
    let vm = booted().await;
    let g = &vm.guest;

    // The script's install path ran for real: the image has neither tool, apt installed both
    // from the guest's repository during this boot.
    let (_, history) = g.run("cat /var/log/apt/history.log");
    assert!(
        history.contains("wireguard-tools") && history.contains("nftables"),
        "apt did not install the tools in the guest:\n{history}"
    );
    // wg0 is the kernel's WireGuard, not a userspace TUN.
    let (rc, link) = g.run("ip -d link show wg0");
    assert_eq!(rc, 0, "{link}");
    assert!(
        link.contains("wireguard"),
        "wg0 is not a kernel WireGuard interface:\n{link}"
    );
    let (rc, _) = g.run("test -d /sys/module/wireguard");
    assert_eq!(rc, 0, "the wireguard module is not loaded");
    let (rc, _) = g.run("command -v wireguard-go");
    assert_ne!(rc, 0, "the guest has a userspace WireGuard");

    let (link, _dir) = start_link(&vm);
    assert_served(&vm, &link, "first boot");
    let (_, peers) = g.run("wg show wg0 latest-handshakes");
    assert!(
        peers
            .split_whitespace()
            .nth(1)
            .and_then(|t| t.parse::<u64>().ok())
            .is_some_and(|t| t > 0),
        "the kernel peer never handshook with the link: {peers}"
    );

    // The guest's sshd runs, but nothing from outside reaches it: the script's ruleset sends
    // every public TCP port to the link (which forwards only 8080 here).
    let (_, listening) = g.run("ss -Htln 'sport = :22'");
    assert!(
        !listening.trim().is_empty(),
        "the guest's sshd is not listening"
    );
    let (_, banner, _) = vm.gw.client.try_sh(&format!(
        "timeout 10 python3 -c \"import socket; s = socket.create_connection(('{}', 22), timeout=5); s.settimeout(5); print(s.recv(64))\"",
        vm.gw.ip
    ));
    assert!(
        !banner.contains("SSH-"),
        "the guest's sshd answered from outside: {banner}"
    );
    // The guest reaches its metadata server by GCE's name; nobody outside reaches it, neither
    // through the guest as a router nor as a neighbour on the guest's network (any HTTP
    // status at all would count as reaching it).
    let (rc, port) = g.run(
        "curl -fsS -H 'Metadata-Flavor: Google' http://metadata.google.internal/computeMetadata/v1/instance/attributes/wgnet-listen-port",
    );
    assert_eq!((rc, port.trim()), (0, "51820"), "the guest's own metadata");
    let probe = "curl -s -m 5 -o /dev/null -w '%{http_code}' -H 'Metadata-Flavor: Google' http://169.254.169.254/computeMetadata/v1/instance/attributes/wgnet-listen-port";
    for (route, what) in [
        (format!("via {}", vm.gw.ip), "through the guest"),
        ("dev eth0".to_owned(), "as the guest's neighbour"),
    ] {
        vm.gw
            .client
            .sh(&format!("ip route replace 169.254.169.254/32 {route}"));
        let (_, code, _) = vm.gw.client.try_sh(probe);
        assert_eq!(
            code.trim(),
            "000",
            "a client {what} got an answer from the metadata server"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "VM tier: run by make test-vm"]
async fn the_guest_applies_a_new_mtu_port_and_key_live_without_a_reboot() {
    let mut vm = booted().await;
    let (link, dir) = start_link(&vm);
    assert_served(&vm, &link, "before the change");
    let before = boot_id(&vm.guest);

    // What a spec change and a key rotation make the operator write: new metadata and a new
    // secret version, which the watcher inside the guest applies.
    let (vm_priv, vm_pub) = wgnet_tests::netns::wg_keypair();
    vm.gw.cfg.mtu = 1360;
    vm.gw.cfg.listen_port = 51821;
    vm.gw.cfg.vm_public_key = vm_pub.clone();
    vm.gw.d.vm_key = SecretBytes::new(vm_priv.into_bytes());
    vm.gw.d.key_version += 1;
    vm.gw.vm_pub = vm_pub.clone();
    vm.gw.update().await;

    let applied = vm.guest.sh_until(
        "ip -o link show wg0 | grep -q 'mtu 1360' && wg show wg0 listen-port && wg show wg0 public-key",
        |rc, out| rc == 0 && out.contains("51821") && out.contains(&vm_pub),
        Duration::from_secs(300),
    );
    assert!(
        applied.is_some(),
        "the guest never applied the new MTU, port and key: {:?}\n{}",
        vm.guest
            .sh("ip -o link show wg0; wg show wg0", Duration::from_secs(30)),
        vm.guest.console_tail(40)
    );
    assert_eq!(
        boot_id(&vm.guest),
        before,
        "the guest rebooted to apply metadata"
    );
    assert_eq!(vm.guest.boots(), 1);

    reconfigure_link(&vm, &dir);
    assert_served(&vm, &link, "after the change");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "VM tier: run by make test-vm"]
async fn a_reset_and_a_stop_start_restore_the_gateway_from_metadata_alone() {
    let mut vm = booted().await;
    let (link, _dir) = start_link(&vm);
    assert_served(&vm, &link, "before the reset");
    let first = boot_id(&vm.guest);

    // A reset: no clean shutdown, /run (the key, the applied state) gone.
    forget_state(&vm.gw);
    vm.guest.reset();
    let second = wait_for(BOOTED, || {
        vm.guest
            .sh(
                "cat /proc/sys/kernel/random/boot_id",
                Duration::from_secs(20),
            )
            .map(|(_, id)| id.trim().to_owned())
            .filter(|id| !id.is_empty() && *id != first)
    })
    .expect("the guest never came back from the reset");
    wait_ready(&vm.gw, &vm.guest, "after the reset");
    let (_, kind) = vm.guest.run("ip -d link show wg0");
    assert!(kind.contains("wireguard"), "after the reset: {kind}");
    assert_served(&vm, &link, "after the reset");

    // A stop through the Compute API powers the guest off; the operator's converge starts
    // the instance again (it repairs a stopped VM), and the guest boots from its disk.
    forget_state(&vm.gw);
    let token = vm
        .gw
        .emu
        .issue_token("op@wgnet-test.iam.gserviceaccount.com", true);
    let stop = reqwest::Client::new()
        .post(format!(
            "{}projects/{PROJECT}/zones/{ZONE}/instances/{}/stop",
            vm.gw.emu.compute_url(),
            vm.gw.name()
        ))
        .bearer_auth(token)
        .send()
        .await
        .expect("instances.stop");
    assert!(
        stop.status().is_success(),
        "instances.stop: {}",
        stop.status()
    );
    assert!(
        wait_for(Duration::from_secs(60), || (!vm.guest.is_on())
            .then_some(()))
        .is_some(),
        "the guest kept running after instances.stop"
    );
    assert!(
        vm.gw
            .request_within("tcp", 8080, Duration::from_secs(3))
            .is_none(),
        "served while the instance was stopped"
    );
    vm.gw.update().await;
    assert!(
        wait_for(Duration::from_secs(60), || vm.guest.is_on().then_some(())).is_some(),
        "the guest did not power on after the instance started"
    );
    assert_eq!(vm.guest.boots(), 2);
    wait_ready(&vm.gw, &vm.guest, "after the stop and start");
    let third = boot_id(&vm.guest);
    assert!(
        third != second && third != first,
        "no new boot after the start"
    );
    assert_served(&vm, &link, "after the stop and start");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "VM tier: run by make test-vm"]
async fn a_gateway_the_operator_provisions_serves_through_a_guest_with_kernel_wireguard() {
    let c = Cluster::start_with_vms(
        LatencyProfile::instant(),
        OperatorRun::ByTheTest,
        VmKind::Guest,
    )
    .await;
    let _op = operator_with(&c, Duration::from_secs(20)).await;
    c.namespace("apps", &[]).await;
    service(&c.client, "apps", "web", &[(80, "TCP"), (53, "UDP")]).await;
    c.backend("apps", "web", "80", "53", "web").await;
    let gw = gateway(
        "edge",
        json!([
            {"port": 8080, "service": "web", "targetPort": 80},
            {"port": 5353, "protocol": "UDP", "service": "web", "targetPort": 53}
        ]),
    );
    let gws: Api<Gateway> = Api::namespaced(c.client.clone(), "apps");
    gws.create(&PostParams::default(), &gw)
        .await
        .expect("create gateway");

    let ready = |g: &Gateway| {
        g.status.as_ref().is_some_and(|s| {
            s.conditions
                .iter()
                .any(|c| c.type_ == conditions::READY && c.status == "True")
        })
    };
    let got = wgnet_tests::until(BOOTED, || async {
        gws.get("edge").await.ok().filter(|g| ready(g))
    })
    .await;
    let gw = got.unwrap_or_else(|| panic!("the Gateway never became Ready\n{}", c.logs()));
    let addr = gw
        .status
        .as_ref()
        .and_then(|s| s.address.clone())
        .expect("address");

    // GCP's firewall, applied at the guest's host side, lets only the forwarded ports and
    // WireGuard in (the guest's own ruleset would send an unlisted TCP port to the link).
    assert_serves_web(&c, &addr, Duration::from_secs(60));

    let vms = c.vms();
    assert_eq!(vms.len(), 1, "{vms:?}");
    let (rc, kind) = c
        .guest_sh(&vms[0], "ip -d link show wg0", Duration::from_secs(60))
        .expect("the guest answers");
    assert_eq!(rc, 0, "{kind}");
    assert!(
        kind.contains("wireguard"),
        "wg0 is not kernel WireGuard: {kind}"
    );

    // Delete: the operator removes the instance, and the guest powers off with it.
    gws.delete("edge", &DeleteParams::default())
        .await
        .expect("delete gateway");
    let gone = wgnet_tests::until(Duration::from_secs(120), || async {
        (gws.get_opt("edge").await.ok().flatten().is_none() && c.vms().is_empty()).then_some(())
    })
    .await;
    assert!(
        gone.is_some(),
        "the Gateway or its guest outlived the delete\n{}",
        c.logs()
    );
    assert_gcp_holds_nothing(&c);
}
