//! The userspace WireGuard device: boringtun's noise state machine between the TUN device
//! and one UDP socket, with one thread per direction and one for timers. Both directions
//! move batches: TCP super-packets from the TUN and many datagrams per system call on the
//! socket (see `offload` and `udp`). I/O boundary: the TUN descriptor and the UDP socket.
//! The peer can be changed in place; dropping the [`Device`] stops the threads and closes
//! the TUN, which removes wg0.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use boringtun::noise::{Tunn, TunnResult};
use boringtun::x25519;

use crate::keys::{PublicKey, SecretKey};
use crate::net::Ipv4Net;
use crate::offload::{self, Coalescer, VNET_HDR_LEN, VnetHdr};
use crate::tun::{self, Tun};
use crate::udp;

/// Largest packet handled: TUN reads are bounded by the MTU, UDP by the datagram size.
const BUF: usize = 65_536;
/// WireGuard overhead on top of the payload (header, counter, tag).
const OVERHEAD: usize = 32;
/// Without traffic, WireGuard keeps a session only while it is used. The link forces a
/// handshake once the last one is this old, so its handshake age is an honest health
/// signal and a rebooted VM (which lost the session silently) is rejoined within this.
pub const REHANDSHAKE_AFTER: Duration = Duration::from_secs(60);
/// WireGuard's REKEY_TIMEOUT: do not start handshakes more often than this once a
/// session has existed.
const REKEY_TIMEOUT: Duration = Duration::from_secs(5);
/// Before the first session, knock every second instead: the VM's WireGuard comes up at
/// an unknown moment while the link already waits, and with REKEY_TIMEOUT the tunnel
/// followed it by 2.5 s on average, most of the operator's apply → Ready overhead (issue
/// 23). An initiation costs the peer one handshake computation; one a second is nothing.
const FIRST_HANDSHAKE_RETRY: Duration = Duration::from_secs(1);
/// How long after a peer is configured the fast knocks go on; a peer still silent after
/// that (a VPN server that is down) hears from the link at WireGuard's own pace again.
const FIRST_HANDSHAKE_PERIOD: Duration = Duration::from_secs(180);
/// Between those knocks, the same initiation is sent again this often. A fresh initiation
/// replaces the handshake state the last one began, so knocking faster with fresh ones
/// would strand every answer that takes longer than the interval (a VM 300 ms away would
/// never get through); the same bytes again cannot: the peer accepts an initiation's
/// timestamp once and drops repeats as replays, and the one it accepts is the one the
/// link waits on. The VM's WireGuard is followed by 0.2 s instead of 1 s at worst.
const FIRST_HANDSHAKE_ECHO: Duration = Duration::from_millis(200);
/// Poll granularity of the worker threads, so they notice a stop promptly.
const TICK_MS: i32 = 100;

pub use crate::plan::Peer;

/// Counters since the device started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Plaintext bytes received from the tunnel.
    pub rx_bytes: u64,
    /// Plaintext bytes sent into the tunnel.
    pub tx_bytes: u64,
    /// Packets received from the tunnel.
    pub rx_packets: u64,
    /// Packets sent into the tunnel.
    pub tx_packets: u64,
    /// Packets dropped (not allowed, no peer, no endpoint, decrypt failures).
    pub dropped: u64,
    /// TCP super-packets read from the TUN and split into several segments.
    pub tx_super_packets: u64,
    /// Super-packets of several decrypted segments written to the TUN.
    pub rx_super_packets: u64,
}

#[derive(Default)]
struct Counters {
    rx_bytes: AtomicU64,
    tx_bytes: AtomicU64,
    rx_packets: AtomicU64,
    tx_packets: AtomicU64,
    dropped: AtomicU64,
    tx_super_packets: AtomicU64,
    rx_super_packets: AtomicU64,
}

struct Route {
    /// Where packets to the peer go: the configured endpoint, or the address an
    /// authenticated packet from the peer last came from (roaming).
    endpoint: Option<SocketAddr>,
    /// The endpoint the configuration names.
    configured: Option<SocketAddr>,
    allowed: Vec<Ipv4Net>,
}

/// Where packets to the peer go after a configuration is applied. A re-applied
/// configuration (the link re-applies on every resync) keeps an endpoint learned from the
/// peer itself: the peer's real source port can differ from the configured one (a NAT that
/// remaps ports, a peer on a random port), and going back to the configured address would
/// black-hole traffic until the peer next speaks. Only a changed configured endpoint, or a
/// different peer, replaces it.
fn next_endpoint(
    current: Option<SocketAddr>,
    was_configured: Option<SocketAddr>,
    configured: Option<SocketAddr>,
    same_peer: bool,
) -> Option<SocketAddr> {
    if same_peer && configured == was_configured && current.is_some() {
        current
    } else {
        configured
    }
}

struct Identity {
    public_key: PublicKey,
    preshared_key: Option<SecretKey>,
    keepalive: Option<u16>,
    private_key: SecretKey,
}

struct Shared {
    tunn: Mutex<Option<Tunn>>,
    identity: Mutex<Option<Identity>>,
    route: RwLock<Route>,
    counters: Counters,
    stop: AtomicBool,
    last_initiation: Mutex<Option<Knock>>,
    /// When the current peer was configured: the fast first knocks last only so long.
    peer_since: Mutex<Instant>,
    started: Instant,
}

/// The last handshake initiation sent, kept to send again (see [`FIRST_HANDSHAKE_ECHO`]).
struct Knock {
    at: Instant,
    echoed: Instant,
    packet: Vec<u8>,
}

/// What the timer sends towards the peer this tick.
#[derive(Debug, PartialEq, Eq)]
enum KnockStep {
    Nothing,
    /// A fresh initiation.
    Initiate,
    /// The last initiation's bytes again.
    Echo,
}

/// Decides the tick's knock: `stale` when the session needs a handshake, `first` while no
/// session has existed with a newly configured peer, `last` the ages of the last
/// initiation and of its last echo.
fn knock_step(stale: bool, first: bool, last: Option<(Duration, Duration)>) -> KnockStep {
    if !stale {
        return KnockStep::Nothing;
    }
    let retry = if first {
        FIRST_HANDSHAKE_RETRY
    } else {
        REKEY_TIMEOUT
    };
    match last {
        None => KnockStep::Initiate,
        Some((sent, _)) if sent >= retry => KnockStep::Initiate,
        Some((_, echoed)) if first && echoed >= FIRST_HANDSHAKE_ECHO => KnockStep::Echo,
        Some(_) => KnockStep::Nothing,
    }
}

/// A running WireGuard interface.
pub struct Device {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
    tun: Arc<Tun>,
    udp: Arc<UdpSocket>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A worker that panicked cannot leave the noise state half-written in a way that
    // matters more than stopping the data plane would, so poisoning is ignored.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Device {
    /// Creates the TUN device `name` and a UDP socket on `listen_port` (0 = any).
    pub fn start(name: &str, listen_port: u16) -> std::io::Result<Self> {
        let tun = Arc::new(Tun::open(name)?);
        let udp = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, listen_port))?;
        udp.set_read_timeout(Some(Duration::from_millis(TICK_MS as u64)))?;
        grow_buffers(&udp);
        let udp = Arc::new(udp);
        let shared = Arc::new(Shared {
            tunn: Mutex::new(None),
            identity: Mutex::new(None),
            route: RwLock::new(Route {
                endpoint: None,
                configured: None,
                allowed: Vec::new(),
            }),
            counters: Counters::default(),
            stop: AtomicBool::new(false),
            last_initiation: Mutex::new(None),
            peer_since: Mutex::new(Instant::now()),
            started: Instant::now(),
        });
        let mut threads = Vec::new();
        for (label, f) in [
            ("wg-tx", tx_loop as fn(&Shared, &Tun, &UdpSocket)),
            ("wg-rx", rx_loop),
            ("wg-timers", timer_loop),
        ] {
            let (s, t, u) = (shared.clone(), tun.clone(), udp.clone());
            threads.push(
                std::thread::Builder::new()
                    .name(label.into())
                    .spawn(move || f(&s, &t, &u))?,
            );
        }
        Ok(Self {
            shared,
            threads,
            tun,
            udp,
        })
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        self.tun.name()
    }

    /// The local UDP port.
    pub fn port(&self) -> u16 {
        self.udp.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    /// Sets our key and the peer. The session survives when only the endpoint or the
    /// allowed prefixes change; a new key or peer starts a new handshake at once.
    pub fn set_peer(&self, private_key: &SecretKey, peer: Option<&Peer>) {
        let mut identity = lock(&self.shared.identity);
        let same_peer = match (identity.as_ref(), peer) {
            (Some(i), Some(p)) => i.public_key == p.public_key,
            (None, None) => true,
            _ => false,
        };
        let same = same_peer
            && match (identity.as_ref(), peer) {
                (Some(i), Some(p)) => {
                    i.preshared_key == p.preshared_key
                        && i.keepalive == p.keepalive
                        && i.private_key == *private_key
                }
                _ => true,
            };
        {
            let mut route = self
                .shared
                .route
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let configured = peer.and_then(|p| p.endpoint);
            route.endpoint = next_endpoint(route.endpoint, route.configured, configured, same_peer);
            route.configured = configured;
            route.allowed = peer.map(|p| p.allowed_ips.clone()).unwrap_or_default();
        }
        if same {
            return;
        }
        let mut tunn = lock(&self.shared.tunn);
        *tunn = peer.map(|p| {
            Tunn::new(
                x25519::StaticSecret::from(private_key.bytes()),
                x25519::PublicKey::from(p.public_key.0),
                p.preshared_key.as_ref().map(SecretKey::bytes),
                p.keepalive,
                rand_index(),
                None,
            )
        });
        *identity = peer.map(|p| Identity {
            public_key: p.public_key,
            preshared_key: p.preshared_key.clone(),
            keepalive: p.keepalive,
            private_key: private_key.clone(),
        });
        drop(tunn);
        drop(identity);
        *lock(&self.shared.last_initiation) = None;
        *lock(&self.shared.peer_since) = Instant::now();
    }

    /// Time since the current session's handshake, if there is one.
    pub fn handshake_age(&self) -> Option<Duration> {
        lock(&self.shared.tunn)
            .as_ref()
            .and_then(Tunn::time_since_last_handshake)
    }

    /// Counters.
    pub fn stats(&self) -> Stats {
        let c = &self.shared.counters;
        Stats {
            rx_bytes: c.rx_bytes.load(Ordering::Relaxed),
            tx_bytes: c.tx_bytes.load(Ordering::Relaxed),
            rx_packets: c.rx_packets.load(Ordering::Relaxed),
            tx_packets: c.tx_packets.load(Ordering::Relaxed),
            dropped: c.dropped.load(Ordering::Relaxed),
            tx_super_packets: c.tx_super_packets.load(Ordering::Relaxed),
            rx_super_packets: c.rx_super_packets.load(Ordering::Relaxed),
        }
    }

    /// How long the device has existed.
    pub fn uptime(&self) -> Duration {
        self.shared.started.elapsed()
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        // The TUN closes with the last Arc, here: the kernel removes the interface.
    }
}

/// Socket buffer size: a burst of full-MTU packets must not overflow the default
/// ~200 KiB while a worker is busy with crypto, or TCP inside the tunnel backs off.
const SOCKET_BUFFER: libc::c_int = 4 << 20;

fn grow_buffers(udp: &UdpSocket) {
    let fd = udp.as_raw_fd();
    for (force, plain) in [
        (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
        (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
    ] {
        let v = SOCKET_BUFFER;
        let len = std::mem::size_of_val(&v) as libc::socklen_t;
        // SAFETY: setsockopt reads one c_int from a valid pointer with its exact length.
        // The *FORCE variants need CAP_NET_ADMIN (which the link has); without it the
        // plain option applies, capped by net.core.[rw]mem_max.
        #[allow(unsafe_code)]
        unsafe {
            let p = (&v as *const libc::c_int).cast();
            if libc::setsockopt(fd, libc::SOL_SOCKET, force, p, len) != 0 {
                libc::setsockopt(fd, libc::SOL_SOCKET, plain, p, len);
            }
        }
    }
}

fn rand_index() -> u32 {
    let mut b = [0u8; 4];
    // getrandom(2) cannot fail for 4 bytes once the pool is initialised; a zero index
    // would still be valid, only less unique.
    #[allow(unsafe_code)]
    // SAFETY: writes at most 4 bytes into a 4-byte stack buffer.
    let _ = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    u32::from_ne_bytes(b) >> 8
}

fn endpoint(s: &Shared) -> Option<SocketAddr> {
    s.route
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .endpoint
}

fn send(udp: &UdpSocket, packet: &[u8], to: SocketAddr) {
    if let Err(e) = udp.send_to(packet, to) {
        tracing::trace!(error = %e, "udp send failed");
    }
}

/// TUN reads per wake-up before the batch goes out regardless, which bounds the delay a
/// busy TUN adds to the first packet of a batch.
const MAX_READS: usize = 64;
/// The smallest buffer boringtun accepts for a packet it may answer with a handshake.
const HANDSHAKE_ROOM: usize = 148;

/// TUN → encrypt → UDP. Each wake-up drains the TUN (up to [`MAX_READS`] packets, each
/// possibly a 64 KiB super-packet split into segments) into one batch sent with one
/// `sendmmsg`.
fn tx_loop(s: &Shared, tun: &Tun, udp: &UdpSocket) {
    let fd = udp.as_raw_fd();
    let mut rd = vec![0u8; VNET_HDR_LEN + BUF];
    let mut batch = udp::Sender::new(true);
    while !s.stop.load(Ordering::Relaxed) {
        match tun::wait_readable(tun.fd(), TICK_MS) {
            Ok(true) => {}
            Ok(false) => continue,
            Err(e) => {
                tracing::error!(error = %e, "poll on the TUN device failed; stopping transmit");
                return;
            }
        }
        let to = endpoint(s);
        for _ in 0..MAX_READS {
            let n = match tun.read(&mut rd) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    tracing::debug!(error = %e, "TUN read failed");
                    break;
                }
            };
            let (Some(hdr), Some(to)) = (VnetHdr::parse(&rd[..n]), to) else {
                s.counters.dropped.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            let mut g = lock(&s.tunn);
            let Some(t) = g.as_mut() else {
                s.counters.dropped.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            let (mut packets, mut bytes) = (0u64, 0u64);
            let split = offload::segment(&hdr, &mut rd[VNET_HDR_LEN..n], |seg| {
                let need = (seg.len() + OVERHEAD).max(HANDSHAKE_ROOM);
                if batch.room(need).is_none() {
                    flush(s, &mut batch, fd, to);
                }
                let Some(room) = batch.room(need) else {
                    return;
                };
                match t.encapsulate(seg, room) {
                    TunnResult::WriteToNetwork(p) => {
                        let len = p.len();
                        batch.commit(len);
                        packets += 1;
                        bytes += seg.len() as u64;
                    }
                    TunnResult::Err(e) => tracing::debug!(error = ?e, "encapsulate failed"),
                    _ => {}
                }
            });
            drop(g);
            if let Err(e) = split {
                tracing::trace!(error = %e, "dropped a malformed packet from the TUN");
                s.counters.dropped.fetch_add(1, Ordering::Relaxed);
            }
            if packets > 1 {
                s.counters.tx_super_packets.fetch_add(1, Ordering::Relaxed);
            }
            s.counters.tx_packets.fetch_add(packets, Ordering::Relaxed);
            s.counters.tx_bytes.fetch_add(bytes, Ordering::Relaxed);
        }
        if let Some(to) = to {
            flush(s, &mut batch, fd, to);
        }
    }
}

fn flush(s: &Shared, batch: &mut udp::Sender, fd: std::os::fd::RawFd, to: SocketAddr) {
    let pending = batch.len();
    if pending == 0 {
        return;
    }
    let sent = batch.flush(fd, to).unwrap_or_else(|e| {
        tracing::trace!(error = %e, "udp send failed");
        0
    });
    s.counters
        .dropped
        .fetch_add((pending - sent.min(pending)) as u64, Ordering::Relaxed);
}

/// UDP → decrypt → TUN. Each wake-up takes what the socket holds with one `recvmmsg`
/// (bursts coalesced by UDP GRO), decrypts datagram by datagram and writes consecutive
/// segments of a TCP flow to the TUN as one super-packet.
fn rx_loop(s: &Shared, tun: &Tun, udp: &UdpSocket) {
    let fd = udp.as_raw_fd();
    let gro = udp::enable_gro(fd);
    tracing::debug!(
        gro,
        tun_offloads = tun.offloads(),
        tun_uso = tun.uso(),
        "data-plane offloads"
    );
    let mut rx = udp::Receiver::default();
    let mut plain = vec![0u8; VNET_HDR_LEN + BUF];
    let mut coalescer = Coalescer::with_udp(tun.uso());
    while !s.stop.load(Ordering::Relaxed) {
        match tun::wait_readable(fd, TICK_MS) {
            Ok(true) => {}
            Ok(false) => continue,
            Err(e) => {
                tracing::error!(error = %e, "poll on the UDP socket failed; stopping receive");
                return;
            }
        }
        let n = match rx.recv(fd) {
            Ok(n) => n,
            Err(e) => {
                tracing::debug!(error = %e, "udp receive failed");
                continue;
            }
        };
        let allowed = s
            .route
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .allowed
            .clone();
        for i in 0..n {
            let (Some(from), datagrams) = rx.message(i) else {
                continue;
            };
            let mut authenticated = false;
            for d in datagrams {
                let mut g = lock(&s.tunn);
                let Some(t) = g.as_mut() else {
                    s.counters.dropped.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                match t.decapsulate(Some(from.ip()), d, &mut plain[VNET_HDR_LEN..]) {
                    TunnResult::WriteToNetwork(p) => {
                        send(udp, p, from);
                        // Packets queued while the handshake ran go out now.
                        while let TunnResult::WriteToNetwork(p) =
                            t.decapsulate(None, &[], &mut plain[VNET_HDR_LEN..])
                        {
                            send(udp, p, from);
                        }
                        authenticated = true;
                    }
                    TunnResult::WriteToTunnelV4(p, src) => {
                        let len = p.len();
                        drop(g);
                        authenticated = true;
                        if allowed.iter().any(|net| net.contains(src)) {
                            deliver(s, tun, &mut coalescer, &mut plain, len);
                            s.counters.rx_packets.fetch_add(1, Ordering::Relaxed);
                            s.counters.rx_bytes.fetch_add(len as u64, Ordering::Relaxed);
                        } else {
                            s.counters.dropped.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    TunnResult::WriteToTunnelV6(..) => {
                        s.counters.dropped.fetch_add(1, Ordering::Relaxed);
                    }
                    TunnResult::Done => authenticated = true,
                    TunnResult::Err(e) => {
                        tracing::trace!(error = ?e, "decapsulate failed");
                        s.counters.dropped.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            if authenticated {
                roam(s, from);
            }
        }
        write_held(s, tun, &mut coalescer);
    }
}

/// Hands a decrypted packet (at `plain[VNET_HDR_LEN..][..len]`) to the coalescer, or
/// writes it on its own after what the coalescer holds, keeping the order.
fn deliver(s: &Shared, tun: &Tun, coalescer: &mut Coalescer, plain: &mut [u8], len: usize) {
    let packet = &plain[VNET_HDR_LEN..VNET_HDR_LEN + len];
    if coalescer.push(packet) {
        return;
    }
    write_held(s, tun, coalescer);
    if coalescer.push(&plain[VNET_HDR_LEN..VNET_HDR_LEN + len]) {
        return;
    }
    plain[..VNET_HDR_LEN].fill(0);
    write_tun(tun, &plain[..VNET_HDR_LEN + len]);
}

fn write_held(s: &Shared, tun: &Tun, coalescer: &mut Coalescer) {
    if coalescer.segments() > 1 {
        s.counters.rx_super_packets.fetch_add(1, Ordering::Relaxed);
    }
    if let Some(b) = coalescer.take() {
        write_tun(tun, b);
    }
}

fn write_tun(tun: &Tun, b: &[u8]) {
    if let Err(e) = tun.write(b) {
        tracing::trace!(error = %e, "TUN write failed");
    }
}

/// WireGuard follows an authenticated peer to its latest source address.
fn roam(s: &Shared, from: SocketAddr) {
    if endpoint(s) != Some(from) {
        let mut route = s
            .route
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if route.endpoint.is_some() {
            route.endpoint = Some(from);
        }
    }
}

fn timer_loop(s: &Shared, _tun: &Tun, udp: &UdpSocket) {
    let mut out = vec![0u8; BUF];
    while !s.stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(TICK_MS as u64));
        let Some(to) = endpoint(s) else { continue };
        let mut g = lock(&s.tunn);
        let Some(t) = g.as_mut() else { continue };
        if let TunnResult::WriteToNetwork(p) = t.update_timers(&mut out) {
            send(udp, p, to);
        }
        let age = t.time_since_last_handshake();
        let stale = age.is_none_or(|age| age >= REHANDSHAKE_AFTER);
        let first = age.is_none() && lock(&s.peer_since).elapsed() < FIRST_HANDSHAKE_PERIOD;
        let mut last = lock(&s.last_initiation);
        let ages = last.as_ref().map(|k| (k.at.elapsed(), k.echoed.elapsed()));
        match knock_step(stale, first, ages) {
            KnockStep::Nothing => {}
            KnockStep::Initiate => {
                // Recorded even when nothing was written, so a refusal is not retried
                // every tick; an empty packet is never echoed.
                let packet = match t.format_handshake_initiation(&mut out, true) {
                    TunnResult::WriteToNetwork(p) => {
                        send(udp, p, to);
                        p.to_vec()
                    }
                    _ => Vec::new(),
                };
                let now = Instant::now();
                *last = Some(Knock {
                    at: now,
                    echoed: now,
                    packet,
                });
            }
            KnockStep::Echo => {
                if let Some(k) = last.as_mut().filter(|k| !k.packet.is_empty()) {
                    send(udp, &k.packet, to);
                    k.echoed = Instant::now();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{
        FIRST_HANDSHAKE_ECHO, FIRST_HANDSHAKE_RETRY, KnockStep, REKEY_TIMEOUT, knock_step,
        next_endpoint,
    };
    use std::net::SocketAddr;
    use std::time::Duration;

    /// Before the first session the link knocks with a fresh initiation every second and
    /// repeats it in between; once a session has existed, only WireGuard's own pace.
    #[test]
    fn first_knocks_repeat_the_same_initiation_between_fresh_ones() {
        let ms = Duration::from_millis;
        assert_eq!(
            knock_step(false, true, None),
            KnockStep::Nothing,
            "a live session"
        );
        assert_eq!(knock_step(true, true, None), KnockStep::Initiate);
        assert_eq!(
            knock_step(true, true, Some((ms(100), ms(100)))),
            KnockStep::Nothing
        );
        assert_eq!(
            knock_step(
                true,
                true,
                Some((FIRST_HANDSHAKE_ECHO, FIRST_HANDSHAKE_ECHO))
            ),
            KnockStep::Echo
        );
        assert_eq!(
            knock_step(true, true, Some((FIRST_HANDSHAKE_RETRY, ms(0)))),
            KnockStep::Initiate
        );
        // Later handshakes: no repeats, a fresh initiation per REKEY_TIMEOUT.
        assert_eq!(
            knock_step(
                true,
                false,
                Some((FIRST_HANDSHAKE_RETRY, FIRST_HANDSHAKE_RETRY))
            ),
            KnockStep::Nothing
        );
        assert_eq!(
            knock_step(true, false, Some((REKEY_TIMEOUT, ms(0)))),
            KnockStep::Initiate
        );
    }

    fn addr(s: &str) -> Option<SocketAddr> {
        Some(s.parse().expect("a test address"))
    }

    /// Re-applying the same configuration keeps the endpoint the peer was learned at; a
    /// changed configured endpoint or a different peer replaces it; the first
    /// configuration and a removed endpoint take effect as written.
    #[test]
    fn a_reapplied_config_keeps_the_learned_endpoint() {
        let conf = addr("203.0.113.7:51820");
        let learned = addr("203.0.113.7:40123");
        assert_eq!(
            next_endpoint(learned, conf, conf, true),
            learned,
            "the resync must not undo roaming"
        );
        let moved = addr("203.0.113.9:51820");
        assert_eq!(next_endpoint(learned, conf, moved, true), moved);
        assert_eq!(
            next_endpoint(learned, conf, conf, false),
            conf,
            "a new peer"
        );
        assert_eq!(next_endpoint(None, None, conf, true), conf, "first config");
        assert_eq!(next_endpoint(learned, conf, None, true), None);
    }
}
