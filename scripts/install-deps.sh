#!/bin/sh
# Installs the Debian/Ubuntu packages the build and tests need, only those missing.
# Idempotent and quiet when everything is present; needs root (or sudo) otherwise.
set -eu

# Packages by purpose: a C toolchain for ring, CA roots for TLS, python3 for the kube tools
# installer and test peers, openssl for the GCP emulator's service-account keys, and for the
# network-namespace tests of the VM script: iproute2, nftables, wireguard-tools, wireguard-go
# (userspace WireGuard: these kernels have no module), curl and shellcheck.
# libnftnl-dev and libmnl-dev: the link links libnftnl/libmnl (nftnl, mnl crates).
# ethtool: a link test turns off a veth's checksum offload so the kernel computes the
# checksums of the link's coalesced packets as a real NIC path would.
# iperf3: `make bench` only, but small enough to install with the rest.
# haproxy and nginx: PROXY-protocol-aware backends in the tests (never started as services).
PACKAGES="gcc libc6-dev pkg-config ca-certificates python3 openssl iproute2 nftables wireguard-tools wireguard-go curl shellcheck libnftnl-dev libmnl-dev ethtool iperf3 haproxy nginx"
python3 -m pip --version >/dev/null 2>&1 || PACKAGES="$PACKAGES python3-pip"
# --vm: the VM tier (make test-vm) also boots a Debian guest under qemu from an image built
# by debootstrap (scripts/guest-image.sh): qemu, qemu-img, debootstrap, dpkg-scanpackages
# for the guest's apt repository, mkfs.ext4 -d for its root filesystem.
if [ "${1:-}" = --vm ]; then
    PACKAGES="$PACKAGES qemu-system-x86 qemu-utils debootstrap dpkg-dev e2fsprogs"
fi

missing=""
for p in $PACKAGES; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
here=$(dirname "$0")
if [ -z "$missing" ]; then
    exec "$here/install-kube-tools.sh"
fi

if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO=sudo; else
        echo "install-deps: missing packages:$missing; run as root or install them first" >&2
        exit 1
    fi
else
    SUDO=
fi
echo "install-deps: installing$missing"
$SUDO apt-get update -qq
# Debian starts the services a package ships as it installs it (nginx on port 80, haproxy).
# The tests run their own instances in network namespaces, so during this install a
# policy-rc.d answers 101 ("action forbidden") to every start, unless the machine already
# has a policy of its own, which is then left to decide.
policy=/usr/sbin/policy-rc.d
own_policy=
if [ ! -e "$policy" ]; then
    $SUDO sh -c "printf '#!/bin/sh\nexit 101\n' >'$policy' && chmod 755 '$policy'"
    own_policy=1
fi
drop_policy() {
    if [ -n "$own_policy" ]; then $SUDO rm -f "$policy"; fi
    own_policy=
}
trap drop_policy EXIT
# shellcheck disable=SC2086 # word splitting of the package list is intended
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing
drop_policy
exec "$here/install-kube-tools.sh"
