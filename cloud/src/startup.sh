#!/bin/sh
# wgnet gateway VM: boot, apply and watch.
#
# The same file runs on every gateway VM, at every boot, as the GCE startup-script. Its
# per-gateway values come from instance metadata (wgnet-* attributes). Each one is checked
# against a strict pattern before use and always used quoted; nothing from metadata is ever
# evaluated. On a bad value the script reports the error and configures nothing.
#
#   boot   (default) install what is missing, apply, start the watcher
#   apply  fetch the metadata and make wg0 and the nftables table match it
#   watch  long-poll the metadata server and apply each change
#
# Endpoints and paths can be overridden by environment (tests run this file in network
# namespaces against the GCP emulator); the defaults are Google's.
set -u
umask 077

MD="${WGNET_METADATA_URL:-http://metadata.google.internal}/computeMetadata/v1"
SM="${WGNET_SECRETS_URL:-https://secretmanager.googleapis.com/v1}"
IFACE="${WGNET_IFACE:-wg0}"
STATE="${WGNET_STATE_DIR:-/run/wgnet}"
USERSPACE="${WGNET_USERSPACE:-}"
MAX_SLEEP="${WGNET_MAX_BACKOFF:-30}"
TRIES="${WGNET_TRIES:-60}"
TABLE=wgnet

log() { printf 'wgnet: %s\n' "$*" >&2; }

# Guest attributes: how the operator sees progress without SSH.
report() {
    curl -fsS --max-time 5 -X PUT -H 'Metadata-Flavor: Google' --data-binary "$2" \
        "$MD/instance/guest-attributes/wgnet/$1" >/dev/null 2>&1 || log "could not report $1"
}

state() { report state "$1"; log "state $1"; }

# fail REASON MESSAGE: report and stop this apply.
fail() {
    log "error: $1: $2"
    report error "$1: $2"
    state error
    return 1
}

md_get() { curl -fsS --max-time 10 -H 'Metadata-Flavor: Google' "$MD/$1"; }

attr() { md_get "instance/attributes/$1"; }

# delay N: 1, 2, 4, ... seconds for the Nth try, at most MAX_SLEEP.
delay() {
    s=1 i=1
    while [ "$i" -lt "$1" ] && [ "$s" -lt "$MAX_SLEEP" ]; do s=$((s * 2)) i=$((i + 1)); done
    [ "$s" -gt "$MAX_SLEEP" ] && s=$MAX_SLEEP
    echo "$s"
}

# backoff N: sleep for the Nth try.
backoff() { sleep "$(delay "$1")"; }

is_uint() {
    case $1 in '' | *[!0-9]*) return 1 ;; esac
    [ "${#1}" -le 5 ]
}

is_port() { is_uint "$1" && [ "$1" -ge 1 ] && [ "$1" -le 65535 ]; }

is_ipv4() {
    case $1 in '' | *[!0-9.]* | .* | *. | *..*) return 1 ;; esac
    old_ifs=$IFS
    IFS=.
    # shellcheck disable=SC2086 # splitting on dots is the point; globbing is off (set -f)
    set -- $1
    IFS=$old_ifs
    [ "$#" -eq 4 ] || return 1
    for o in "$@"; do
        [ "${#o}" -le 3 ] && [ "$o" -le 255 ] || return 1
        case $o in 0?*) return 1 ;; esac
    done
}

is_key() {
    [ "${#1}" -eq 44 ] || return 1
    case $1 in *[!A-Za-z0-9+/=]* | *=?*) return 1 ;; *=) return 0 ;; esac
    return 1
}

# read_config: fetch and check every attribute; sets LISTEN MTU GWADDR LINKADDR SUBNET
# PREFIX PEER PUBKEY KEYSV.
read_config() {
    for a in listen-port mtu gateway-address link-address subnet peer-public-key public-key key-secret-version; do
        v=$(attr "wgnet-$a") || { fail metadata "attribute wgnet-$a is missing or the metadata server is unreachable"; return 1; }
        case $a in
        listen-port) is_port "$v" || { fail metadata "wgnet-listen-port is not a port (1-65535)"; return 1; }; LISTEN=$v ;;
        mtu) { is_uint "$v" && [ "$v" -ge 1280 ] && [ "$v" -le 1500 ]; } || { fail metadata "wgnet-mtu must be 1280-1500"; return 1; }; MTU=$v ;;
        gateway-address) is_ipv4 "$v" || { fail metadata "wgnet-gateway-address is not an IPv4 address"; return 1; }; GWADDR=$v ;;
        link-address) is_ipv4 "$v" || { fail metadata "wgnet-link-address is not an IPv4 address"; return 1; }; LINKADDR=$v ;;
        subnet)
            net=${v%/*} PREFIX=${v#*/}
            { [ "$net" != "$v" ] && is_ipv4 "$net" && is_uint "$PREFIX" && [ "$PREFIX" -ge 8 ] && [ "$PREFIX" -le 30 ]; } ||
                { fail metadata "wgnet-subnet is not an IPv4 CIDR (/8 to /30)"; return 1; }
            SUBNET=$v ;;
        peer-public-key) is_key "$v" || { fail metadata "wgnet-peer-public-key is not a WireGuard public key"; return 1; }; PEER=$v ;;
        public-key) is_key "$v" || { fail metadata "wgnet-public-key is not a WireGuard public key"; return 1; }; PUBKEY=$v ;;
        key-secret-version)
            case $v in projects/*/secrets/*/versions/*) ;; *) fail metadata "wgnet-key-secret-version must be projects/P/secrets/S/versions/N"; return 1 ;; esac
            case $v in *[!A-Za-z0-9_/-]* | */*/*/*/*/*/*) fail metadata "wgnet-key-secret-version has characters outside [A-Za-z0-9_-/]"; return 1 ;; esac
            KEYSV=$v ;;
        esac
    done
    [ "$GWADDR" != "$LINKADDR" ] || { fail metadata "gateway and link addresses are equal"; return 1; }
}

install_missing() {
    missing=
    command -v wg >/dev/null 2>&1 || missing="$missing wireguard-tools"
    command -v nft >/dev/null 2>&1 || missing="$missing nftables"
    command -v curl >/dev/null 2>&1 || missing="$missing curl"
    [ -z "$missing" ] && return 0
    state installing
    n=1
    while [ "$n" -le 5 ]; do
        # shellcheck disable=SC2086 # the package list is meant to split
        if apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing; then
            return 0
        fi
        backoff "$n"
        n=$((n + 1))
    done
    fail install "could not install$missing"
}

# fetch_key: the private key from the exact Secret Manager version the metadata names, with
# the VM's own token, into the state directory (tmpfs), once it matches the public key the
# operator published. Waits with backoff while the secret or its IAM binding is not there.
fetch_key() {
    state fetching-key
    n=1
    while [ "$n" -le "$TRIES" ]; do
        tok=$(md_get instance/service-accounts/default/token | tr -d ' \n' |
            sed -n 's/.*"access_token":"\([^"]*\)".*/\1/p')
        if [ -n "$tok" ]; then
            # The token goes through a 0600 file, not argv, so other users cannot read it.
            printf 'Authorization: Bearer %s\n' "$tok" >"$STATE/auth"
            body=$(curl -fsS --max-time 15 -H @"$STATE/auth" "$SM/$KEYSV:access" 2>"$STATE/curl.err")
            rc=$?
            rm -f "$STATE/auth"
            if [ "$rc" -eq 0 ]; then
                data=$(printf '%s' "$body" | tr -d ' \n' | sed -n 's/.*"data":"\([A-Za-z0-9+/=]*\)".*/\1/p')
                key=$(printf '%s' "$data" | base64 -d 2>/dev/null | tr -d '\n')
                if ! is_key "$key"; then
                    fail key "$KEYSV is not a WireGuard private key"
                    return 1
                fi
                if [ "$(printf '%s\n' "$key" | wg pubkey)" != "$PUBKEY" ]; then
                    fail key "the key in $KEYSV does not match wgnet-public-key"
                    return 1
                fi
                printf '%s\n' "$key" >"$STATE/private.key.new" && mv "$STATE/private.key.new" "$STATE/private.key"
                printf '%s\n' "$KEYSV" >"$STATE/key-version"
                return 0
            fi
            report error "key: waiting for $KEYSV ($(tr -d '\n' <"$STATE/curl.err" | cut -c1-120))"
        else
            report error "key: waiting for the instance token"
        fi
        backoff "$n"
        n=$((n + 1))
    done
    fail key "gave up waiting for $KEYSV"
}

public_iface() {
    ip -4 route show default | awk '{for (i = 1; i < NF; i++) if ($i == "dev") { print $(i + 1); exit }}'
}

# No masquerade into the tunnel: clients keep their own addresses through wg0 (the link
# routes the replies back by connection mark), so the link can name them to PROXY-protocol
# backends. Replies come back from the link's tunnel address, which conntrack maps back.
render_nft() {
    clamp=$((MTU - 40))
    cat <<EOF
table ip $TABLE
delete table ip $TABLE
table ip $TABLE {
    chain prerouting {
        type nat hook prerouting priority dstnat; policy accept;
        iifname "$PUB" meta l4proto tcp dnat to $LINKADDR
        iifname "$PUB" udp dport != $LISTEN dnat to $LINKADDR
    }
    chain forward {
        type filter hook forward priority filter; policy drop;
        oifname "$IFACE" tcp flags syn tcp option maxseg size > $clamp tcp option maxseg size set $clamp
        iifname "$IFACE" tcp flags syn tcp option maxseg size > $clamp tcp option maxseg size set $clamp
        ct state established,related accept
        iifname "$PUB" oifname "$IFACE" ct status dnat accept
    }
    chain input {
        type filter hook input priority filter; policy drop;
        iifname "lo" accept
        ct state established,related accept
        ct state invalid drop
        iifname "$PUB" udp dport $LISTEN accept
        iifname "$PUB" udp sport 67 udp dport 68 accept
        icmp type { destination-unreachable, time-exceeded, parameter-problem } accept
        iifname "$PUB" icmp type echo-request limit rate 5/second accept
    }
}
EOF
}

configure_wg() {
    if ! ip link show "$IFACE" >/dev/null 2>&1; then
        if [ -n "$USERSPACE" ]; then
            "$USERSPACE" "$IFACE" >/dev/null 2>&1 || { fail wireguard "$USERSPACE could not create $IFACE"; return 1; }
        else
            ip link add "$IFACE" type wireguard || { fail wireguard "the kernel could not create $IFACE"; return 1; }
        fi
    fi
    wg set "$IFACE" private-key "$STATE/private.key" listen-port "$LISTEN" || { fail wireguard "wg set failed"; return 1; }
    for p in $(wg show "$IFACE" peers); do
        [ "$p" = "$PEER" ] || wg set "$IFACE" peer "$p" remove
    done
    wg set "$IFACE" peer "$PEER" allowed-ips "$LINKADDR/32" || { fail wireguard "wg set peer failed"; return 1; }
    want="$GWADDR/$PREFIX"
    have=$(ip -4 -o addr show dev "$IFACE" | awk '{print $4}')
    if [ "$have" != "$want" ]; then
        ip addr flush dev "$IFACE"
        ip addr add "$want" dev "$IFACE" || { fail wireguard "could not address $IFACE"; return 1; }
    fi
    ip link set "$IFACE" mtu "$MTU" up || { fail wireguard "could not set MTU $MTU"; return 1; }
}

apply() {
    set -f
    mkdir -p "$STATE" && chmod 700 "$STATE"
    read_config || return 1
    install_missing || return 1
    sysctl -qw net.ipv4.ip_forward=1 || { fail sysctl "cannot enable IPv4 forwarding"; return 1; }
    PUB=$(public_iface)
    [ -n "$PUB" ] || { fail network "no default route, cannot find the public interface"; return 1; }
    desired="$LISTEN $MTU $GWADDR $LINKADDR $SUBNET $PEER $PUBKEY $KEYSV $PUB"
    if [ -f "$STATE/applied" ] && [ "$(cat "$STATE/applied")" = "$desired" ] &&
        ip link show "$IFACE" >/dev/null 2>&1 && nft list table ip "$TABLE" >/dev/null 2>&1; then
        return 0
    fi
    # The held key is used only while it is the published one: a new public key under the
    # same secret version fetches again (and is refused when the secret does not hold it),
    # instead of reporting ready with a key the link does not expect.
    if [ ! -s "$STATE/private.key" ] || [ "$(cat "$STATE/key-version" 2>/dev/null)" != "$KEYSV" ] ||
        [ "$(wg pubkey <"$STATE/private.key")" != "$PUBKEY" ]; then
        fetch_key || return 1
    fi
    configure_wg || return 1
    render_nft >"$STATE/ruleset.nft"
    nft -f "$STATE/ruleset.nft" || { fail nftables "the ruleset did not load"; return 1; }
    printf '%s' "$desired" >"$STATE/applied"
    report public-key "$(wg show "$IFACE" public-key)"
    report error ""
    state ready
}

# locked_apply: apply while holding the state directory's lock, so the boot-time apply and
# the watcher (systemd starts both at every boot) never configure wg0 and the ruleset at
# the same time. Bounded: a holder that hangs for 10 minutes is not waited for longer.
locked_apply() {
    mkdir -p "$STATE" && chmod 700 "$STATE"
    exec 9>"$STATE/apply.lock"
    flock -w 600 9 || log "the apply lock was held for 10 minutes; applying anyway"
    apply
    rc=$?
    flock -u 9
    return "$rc"
}

watch() {
    etag=
    n=0
    # After a failed apply (an apt lock, a mirror outage, a secret not readable yet) the
    # watcher retries with backoff instead of waiting up to 5 minutes for a metadata change
    # that may never come: the long-poll's timeout is the next delay, and a poll that ends
    # without a change retries the apply.
    failed=0
    while :; do
        wait=300
        [ "$failed" -gt 0 ] && wait=$(delay "$failed")
        if curl -fsS --max-time $((wait + 30)) -D "$STATE/watch.hdr" -o /dev/null -H 'Metadata-Flavor: Google' \
            "$MD/instance/attributes/?recursive=true&wait_for_change=true&timeout_sec=$wait&last_etag=$etag"; then
            n=0
            new=$(tr -d '\r' <"$STATE/watch.hdr" | sed -n 's/^[Ee][Tt][Aa][Gg]: *\([0-9A-Za-z]*\)$/\1/p')
            if [ "$new" != "$etag" ] || [ "$failed" -gt 0 ]; then
                etag=$new
                if locked_apply; then
                    failed=0
                else
                    failed=$((failed + 1))
                    log "apply failed; retrying in $(delay "$failed") s or at the next metadata change"
                fi
            fi
        else
            n=$((n + 1))
            backoff "$n"
        fi
    done
}

start_watcher() {
    if [ -z "${WGNET_NO_SYSTEMD:-}" ] && command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
        install -m 0755 "$0" /usr/local/sbin/wgnet-gateway
        cat >/etc/systemd/system/wgnet-watcher.service <<EOF
[Unit]
Description=wgnet gateway: apply instance metadata changes live
After=network-online.target
Wants=network-online.target

[Service]
ExecStart=/usr/local/sbin/wgnet-gateway watch
Restart=always
RestartSec=2

[Install]
WantedBy=multi-user.target
EOF
        systemctl daemon-reload
        systemctl enable --now wgnet-watcher.service
    else
        nohup sh "$0" watch >>"$STATE/watch.log" 2>&1 &
        printf '%s\n' "$!" >"$STATE/watch.pid"
    fi
}

case ${1:-boot} in
boot)
    mkdir -p "$STATE" && chmod 700 "$STATE"
    state booting
    # The watcher starts even when this apply fails, so fixed metadata applies without a reboot.
    locked_apply || log "apply failed; the watcher applies the next metadata change"
    start_watcher
    ;;
apply) locked_apply ;;
watch) watch ;;
*)
    log "usage: $0 [boot|apply|watch]"
    exit 2
    ;;
esac
