#!/bin/sh
# Builds the Debian 12 guest the VM tier (`make test-vm`) boots under qemu: the gateway VM as
# GCP runs it, with its own kernel (Debian's cloud kernel, the family GCE images use, whose
# modules include wireguard.ko), systemd, iproute2, curl, ca-certificates and sshd, and
# deliberately without wireguard-tools and nftables, so the startup script's install path runs
# for real. Those two, with what they need, are fetched here into a small apt repository that
# the test serves to the guest from the host side of the instance's namespace; the guest's
# apt points only at it (the guest never has a route off the machine).
#
# Output, in a cache outside the work tree keyed by a hash of this file (the recipe):
#
#   ${WGNET_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/wgnet}/guest/<hash>/
#       vmlinuz initrd.img   the kernel qemu boots directly (no bootloader)
#       rootfs.raw           ext4 root filesystem (tests boot a copy-on-write overlay)
#       repo/                flat apt repository: *.deb, Packages, Release
#
# Prints that directory on stdout as its last line (progress goes to stderr). A machine
# builds once per recipe (about 75 s here, 0.42 GB on disk: a 2 GB sparse root filesystem);
# later calls only print the directory. Needs root (debootstrap, chroot),
# debootstrap, dpkg-dev (dpkg-scanpackages), e2fsprogs, and Debian's package mirror.
set -eu

MIRROR="${WGNET_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
here=$(cd "$(dirname "$0")" && pwd)
hash=$(sha256sum "$here/guest-image.sh" | cut -c1-16)
cache="${WGNET_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/wgnet}/guest"
out="$cache/$hash"

if [ -f "$out/.built" ]; then
    echo "$out"
    exit 0
fi
[ "$(id -u)" -eq 0 ] || { echo "guest-image: needs root (debootstrap and chroot)" >&2; exit 1; }
for c in debootstrap dpkg-scanpackages mkfs.ext4; do
    command -v "$c" >/dev/null 2>&1 || { echo "guest-image: $c is missing (make deps installs it)" >&2; exit 1; }
done

mkdir -p "$cache"
work=$(mktemp -d "$cache/build.XXXXXX")
root="$work/root"
cleanup() {
    for m in proc sys dev; do umount "$root/$m" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT
start=$(date +%s)

echo "guest-image: debootstrap bookworm (minbase, cloud kernel) from $MIRROR" >&2
debootstrap --variant=minbase \
    --include=systemd-sysv,udev,kmod,iproute2,curl,ca-certificates,openssh-server,procps,netbase,initramfs-tools,linux-image-cloud-amd64 \
    bookworm "$root" "$MIRROR" >"$work/debootstrap.log" 2>&1 || {
    tail -20 "$work/debootstrap.log" >&2
    echo "guest-image: debootstrap failed (log above)" >&2
    exit 1
}

# The packages the startup script installs, with everything they pull in (recommends
# included, as apt-get on a GCE image installs them), downloaded from the mirror through the
# guest's own apt so the versions are the ones its dpkg state resolves.
echo "guest-image: fetching wireguard-tools and nftables for the guest's repository" >&2
mount -t proc proc "$root/proc"
mount -t sysfs sys "$root/sys"
mount --bind /dev "$root/dev"
chroot "$root" sh -c 'apt-get clean && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --download-only wireguard-tools nftables' >"$work/download.log" 2>&1 || {
    tail -20 "$work/download.log" >&2
    echo "guest-image: downloading the guest's packages failed (log above)" >&2
    exit 1
}
mkdir -p "$work/repo"
mv "$root"/var/cache/apt/archives/*.deb "$work/repo/"
chroot "$root" sh -c 'apt-get clean && rm -rf /var/lib/apt/lists/*'
for m in proc sys dev; do umount "$root/$m"; done
(cd "$work/repo" && dpkg-scanpackages -m . /dev/null >Packages 2>/dev/null)
{
    echo "Origin: wgnet-guest"
    echo "Label: wgnet-guest"
    echo "Date: $(date -Ru)"
    echo "SHA256:"
    printf ' %s %s Packages\n' "$(sha256sum "$work/repo/Packages" | cut -d' ' -f1)" "$(stat -c %s "$work/repo/Packages")"
} >"$work/repo/Release"

echo "guest-image: configuring the guest" >&2
echo wgnet-gateway >"$root/etc/hostname"
cat >"$root/etc/hosts" <<'EOF'
127.0.0.1 localhost
# As on GCE: the metadata server by name.
169.254.169.254 metadata.google.internal metadata
EOF
printf '/dev/vda / ext4 defaults 0 1\n' >"$root/etc/fstab"
# The guest's only package source: the repository above, served by the test on the
# metadata address (unsigned, hence trusted=yes; it never leaves the machine).
printf 'deb [trusted=yes] http://169.254.169.254:8081/ ./\n' >"$root/etc/apt/sources.list"
rm -f "$root"/etc/apt/sources.list.d/*
printf 'Acquire::Languages "none";\n' >"$root/etc/apt/apt.conf.d/99wgnet-guest"

# Secret Manager is reached through the same host-side proxy (no DNS or TLS to Google here);
# every unit, the startup script's watcher included, gets the endpoint from systemd.
mkdir -p "$root/etc/systemd/system.conf.d"
cat >"$root/etc/systemd/system.conf.d/wgnet-guest.conf" <<'EOF'
[Manager]
DefaultEnvironment=WGNET_SECRETS_URL=http://169.254.169.254/v1
EOF

# GCE hands the instance its address by DHCP; here the test passes it on the kernel
# command line (wgnet.addr=A/N wgnet.gw=G) and this unit applies it to ens4, the name GCE's
# Debian gives its NIC (qemu puts the NIC in PCI slot 4 for the same name).
cat >"$root/usr/local/sbin/wgnet-guest-net" <<'EOF'
#!/bin/sh
set -eu
addr= gw=
for w in $(cat /proc/cmdline); do
    case $w in wgnet.addr=*) addr=${w#wgnet.addr=} ;; wgnet.gw=*) gw=${w#wgnet.gw=} ;; esac
done
[ -n "$addr" ] && [ -n "$gw" ] || { echo "wgnet-guest-net: no wgnet.addr/wgnet.gw on the kernel command line" >&2; exit 1; }
n=0
until ip link show ens4 >/dev/null 2>&1; do
    n=$((n + 1)); [ "$n" -le 300 ] || { echo "wgnet-guest-net: no ens4" >&2; exit 1; }; sleep 0.2
done
ip link set ens4 up
ip addr replace "$addr" dev ens4
ip route replace 169.254.169.254 dev ens4 scope link
ip route replace default via "$gw" dev ens4
EOF
cat >"$root/etc/systemd/system/wgnet-guest-net.service" <<'EOF'
[Unit]
Description=The instance's address and routes (test stand-in for GCE's DHCP)
After=systemd-udevd.service systemd-udev-trigger.service
Before=network-online.target
Wants=network-online.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/local/sbin/wgnet-guest-net

[Install]
WantedBy=multi-user.target network-online.target
EOF

# The guest agent's part: at every boot, fetch the instance's startup-script from metadata
# and run it, as google-startup-scripts.service does on GCE.
cat >"$root/usr/local/sbin/wgnet-startup" <<'EOF'
#!/bin/sh
set -u
md=http://metadata.google.internal/computeMetadata/v1/instance/attributes/startup-script
n=0
until curl -fsS --max-time 10 -H 'Metadata-Flavor: Google' -o /run/startup-script "$md"; do
    n=$((n + 1)); [ "$n" -le 60 ] || { echo "wgnet-startup: no startup-script in metadata" >&2; exit 1; }; sleep 1
done
echo "wgnet-startup: running the startup-script" >&2
exec sh /run/startup-script
EOF
cat >"$root/etc/systemd/system/wgnet-startup.service" <<'EOF'
[Unit]
Description=Run the instance's startup-script from metadata (the guest agent's part)
After=network-online.target wgnet-guest-net.service
Wants=network-online.target
Requires=wgnet-guest-net.service

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/wgnet-startup
StandardOutput=journal+console
StandardError=journal+console
TimeoutStartSec=30min

[Install]
WantedBy=multi-user.target
EOF
# Test image only: the harness asks the guest what it cannot see from outside (the kind of
# wg0, the ruleset) over a virtio-serial port, never a network, so the guest's firewall is
# the one the script sets. Each line is "NONCE COMMAND"; the answer is the command's output,
# then "@@wgnet-done NONCE RC@@".
cat >"$root/usr/local/sbin/wgnet-guest-shell" <<'EOF'
#!/bin/sh
port=/dev/virtio-ports/wgnet.shell
[ -e "$port" ] || exit 1
# The port stays open: closing it discards what the host sent meanwhile. While no host is
# connected a read ends at once (end of file), so it is retried after a pause.
exec 3<>"$port"
while :; do
    if ! IFS= read -r line <&3; then
        sleep 0.2
        continue
    fi
    nonce=${line%% *}
    out=$(sh -c "${line#* }" 2>&1 </dev/null)
    rc=$?
    printf '%s\n@@wgnet-done %s %s@@\n' "$out" "$nonce" "$rc" >&3
done
EOF
cat >"$root/etc/systemd/system/wgnet-guest-shell.service" <<'EOF'
[Unit]
Description=Test harness commands over virtio-serial (test image only)
StartLimitIntervalSec=0

[Service]
ExecStart=/usr/local/sbin/wgnet-guest-shell
Restart=always
RestartSec=1

[Install]
WantedBy=multi-user.target
EOF
ln -sf /etc/systemd/system/wgnet-guest-shell.service "$root/etc/systemd/system/multi-user.target.wants/"
chmod 755 "$root/usr/local/sbin/wgnet-guest-net" "$root/usr/local/sbin/wgnet-startup" "$root/usr/local/sbin/wgnet-guest-shell"
mkdir -p "$root/etc/systemd/system/multi-user.target.wants" "$root/etc/systemd/system/network-online.target.wants"
ln -sf /etc/systemd/system/wgnet-guest-net.service "$root/etc/systemd/system/multi-user.target.wants/"
ln -sf /etc/systemd/system/wgnet-guest-net.service "$root/etc/systemd/system/network-online.target.wants/"
ln -sf /etc/systemd/system/wgnet-startup.service "$root/etc/systemd/system/multi-user.target.wants/"
# Nothing here waits on the network the way a DHCP client would.
ln -sf /dev/null "$root/etc/systemd/system/systemd-networkd-wait-online.service"

cp -L "$root/vmlinuz" "$work/vmlinuz"
cp -L "$root/initrd.img" "$work/initrd.img"
echo "guest-image: making the ext4 root filesystem" >&2
mkfs.ext4 -q -F -L root -d "$root" "$work/rootfs.raw" 2G
rm -rf "$root"

took=$(($(date +%s) - start))
size=$(du -sh "$work" | cut -f1)
echo "guest-image: built in ${took}s, $size on disk" >&2
printf 'built in %s s, %s on disk\n' "$took" "$size" >"$work/.built"
rm -rf "$out"
mv "$work" "$out"
trap - EXIT
# Images of other recipes (older checkouts) take 0.4 GB each; the next build of one of them
# takes about a minute, so they are not kept.
for old in "$cache"/*/.built; do
    d=$(dirname "$old")
    [ "$d" = "$out" ] || rm -rf "$d"
done
echo "$out"
