//! TUN offloads done in userspace. The kernel hands the link TCP super-packets of up to
//! 64 KiB (TSO), and UDP ones where it has UDP segmentation offload (USO), behind a
//! virtio-net header, and accepts them back the same way (GRO), so the forwarding,
//! conntrack and NAT work of the pod's network stack runs once per 64 KiB instead of once
//! per MTU-sized packet. WireGuard encrypts MTU-sized packets, so this module splits
//! super-packets into segments with complete checksums before encryption ([`segment`]) and
//! merges decrypted segments of one TCP flow, or datagrams of one UDP flow, after it
//! ([`Coalescer`]). Pure byte manipulation; the TUN and socket I/O live in `tun` and `wg`.

/// Size of the virtio-net header in front of every packet on a TUN opened with
/// `IFF_VNET_HDR` (the legacy header, without `num_buffers`).
pub const VNET_HDR_LEN: usize = 10;

/// The checksum from `csum_start` to the end is to be completed (CHECKSUM_PARTIAL).
const F_NEEDS_CSUM: u8 = 1;
const GSO_NONE: u8 = 0;
const GSO_TCPV4: u8 = 1;
/// UDP segmentation offload (`VIRTIO_NET_HDR_GSO_UDP_L4`): datagrams of `gso_size`.
const GSO_UDP_L4: u8 = 5;
/// Flag on `gso_type`: the flow uses ECN (segments keep CWR only on the first).
const GSO_ECN: u8 = 0x80;

const PROTO_TCP: u8 = 6;
const PROTO_UDP: u8 = 17;
/// The kernel's UDP_MAX_SEGMENTS: datagrams one UDP super-packet may carry.
const MAX_UDP_SEGMENTS: usize = 64;
const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_PSH: u8 = 0x08;
const TCP_ACK: u8 = 0x10;
const TCP_URG: u8 = 0x20;
const TCP_CWR: u8 = 0x80;
/// Largest IPv4 packet: the total-length field is 16 bits.
const MAX_IP_PACKET: usize = 65_535;

/// The virtio-net header (legacy layout, native byte order as TUN uses it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VnetHdr {
    /// `F_NEEDS_CSUM` and friends.
    pub flags: u8,
    /// Segmentation type, `GSO_NONE` for a plain packet.
    pub gso_type: u8,
    /// Length of the headers the segments repeat (advisory; recomputed here).
    pub hdr_len: u16,
    /// Payload bytes per segment.
    pub gso_size: u16,
    /// Where the checksummed range starts.
    pub csum_start: u16,
    /// Where, from `csum_start`, the checksum field is.
    pub csum_offset: u16,
}

impl VnetHdr {
    /// Reads the header at the front of `b`.
    pub fn parse(b: &[u8]) -> Option<Self> {
        let b: &[u8; VNET_HDR_LEN] = b.get(..VNET_HDR_LEN)?.try_into().ok()?;
        let u = |i: usize| u16::from_ne_bytes([b[i], b[i + 1]]);
        Some(Self {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u(2),
            gso_size: u(4),
            csum_start: u(6),
            csum_offset: u(8),
        })
    }

    /// Writes the header into the first [`VNET_HDR_LEN`] bytes of `b`.
    pub fn write(&self, b: &mut [u8]) {
        b[0] = self.flags;
        b[1] = self.gso_type;
        for (i, v) in [
            (2, self.hdr_len),
            (4, self.gso_size),
            (6, self.csum_start),
            (8, self.csum_offset),
        ] {
            b[i..i + 2].copy_from_slice(&v.to_ne_bytes());
        }
    }
}

/// Why a packet from the TUN could not be turned into segments; the packet is dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    /// The virtio header asks for an offload the link never enabled.
    #[error("unsupported segmentation type {0:#x}")]
    GsoType(u8),
    /// Headers or checksum positions lie outside the packet.
    #[error("headers outside the packet")]
    Bounds,
}

/// Adds `data` to a ones'-complement running sum of big-endian 16-bit words. `data`
/// must start at an even offset of the checksummed range, except for the last call.
///
/// Eight bytes at a time in native order with an end-around carry: a ones'-complement
/// sum commutes with swapping the bytes of every word (RFC 1071, 2.B), so the native sum
/// folded to 16 bits and swapped once is the big-endian sum. The checksum of every
/// segment the link sends passes through here.
pub fn sum(data: &[u8], acc: u64) -> u64 {
    let mut words = data.chunks_exact(8);
    let (mut s, mut carries) = (0u64, 0u64);
    for w in &mut words {
        let (v, over) = s.overflowing_add(u64::from_ne_bytes(
            w.try_into().expect("chunks_exact yields 8 bytes"),
        ));
        s = v;
        carries += u64::from(over);
    }
    // 2^64 is 1 modulo 2^16 - 1: each carry out of the top adds one.
    let lanes = (s & 0xffff) + ((s >> 16) & 0xffff) + ((s >> 32) & 0xffff) + (s >> 48);
    let native = fold(lanes + carries);
    let mut acc = acc + u64::from(u16::from_be(native));
    let rest = words.remainder();
    let mut pairs = rest.chunks_exact(2);
    for p in &mut pairs {
        acc += u64::from(u16::from_be_bytes([p[0], p[1]]));
    }
    if let [last] = pairs.remainder() {
        acc += u64::from(u16::from_be_bytes([*last, 0]));
    }
    acc
}

/// Folds a running sum into 16 bits (not complemented).
pub fn fold(mut acc: u64) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

/// The IPv4 pseudo-header sum for a transport segment of `len` bytes.
fn pseudo(ip: &[u8], proto: u8, len: usize) -> u64 {
    sum(&ip[12..20], u64::from(proto) + len as u64)
}

fn ipv4_checksum(ip: &mut [u8], ihl: usize) {
    put16(ip, 10, 0);
    let c = !fold(sum(&ip[..ihl], 0));
    put16(ip, 10, c);
}

/// Completes a CHECKSUM_PARTIAL checksum: the field already holds the pseudo-header sum.
fn complete_checksum(pkt: &mut [u8], start: usize, offset: usize) -> Result<(), Malformed> {
    let field = start + offset;
    if start >= pkt.len() || field + 2 > pkt.len() {
        return Err(Malformed::Bounds);
    }
    // A zero result is sent as 0xffff, as the kernel does (the same value in ones'
    // complement, and the one UDP requires).
    let c = match !fold(sum(&pkt[start..], 0)) {
        0 => 0xffff,
        c => c,
    };
    put16(pkt, field, c);
    Ok(())
}

/// Turns one packet read from the TUN (its virtio header already parsed, `pkt` the bytes
/// after it) into packets ready for encryption: checksums completed and TCP or UDP
/// super-packets split into `gso_size` segments, each passed to `emit` in order.
///
/// The split happens in place: segment `i` is the headers written over the last bytes of
/// segment `i - 1`'s payload (already emitted) followed by its own payload where it lies,
/// so a 64 KiB super-packet costs one header copy per segment instead of a payload copy.
/// `pkt` is left scrambled.
pub fn segment(
    hdr: &VnetHdr,
    pkt: &mut [u8],
    mut emit: impl FnMut(&[u8]),
) -> Result<(), Malformed> {
    let l4 = match hdr.gso_type & !GSO_ECN {
        _ if hdr.gso_size == 0 => None,
        GSO_NONE => None,
        GSO_TCPV4 => Some(PROTO_TCP),
        // ECN marking is a TCP matter: a UDP type with the flag is not one the link took.
        GSO_UDP_L4 if hdr.gso_type == GSO_UDP_L4 => Some(PROTO_UDP),
        _ => return Err(Malformed::GsoType(hdr.gso_type)),
    };
    match l4 {
        None => {
            if hdr.flags & F_NEEDS_CSUM != 0 {
                complete_checksum(pkt, hdr.csum_start.into(), hdr.csum_offset.into())?;
            }
            emit(pkt);
            Ok(())
        }
        Some(proto) => split(pkt, proto, usize::from(hdr.gso_size), hdr.flags, emit),
    }
}

/// Longest IPv4 + TCP header (each at most 60 bytes).
const MAX_HEADERS: usize = 120;

/// Splits a TCP/IPv4 or UDP/IPv4 super-packet in place (see [`segment`]).
fn split(
    pkt: &mut [u8],
    proto: u8,
    mss: usize,
    flags: u8,
    mut emit: impl FnMut(&[u8]),
) -> Result<(), Malformed> {
    let ihl = usize::from(pkt.first().ok_or(Malformed::Bounds)? & 0x0f) * 4;
    if pkt[0] >> 4 != 4 || ihl < 20 || pkt.len() < ihl + 20 || pkt[9] != proto {
        return Err(Malformed::Bounds);
    }
    let (l4len, csum_at) = if proto == PROTO_TCP {
        (usize::from(pkt[ihl + 12] >> 4) * 4, 16)
    } else {
        (8, 6)
    };
    let hlen = ihl + l4len;
    if (proto == PROTO_TCP && l4len < 20) || pkt.len() < hlen {
        return Err(Malformed::Bounds);
    }
    let payload = pkt.len() - hlen;
    if payload <= mss {
        if flags & F_NEEDS_CSUM != 0 {
            complete_checksum(pkt, ihl, csum_at)?;
        }
        emit(pkt);
        return Ok(());
    }
    let mut head = [0u8; MAX_HEADERS];
    head[..hlen].copy_from_slice(&pkt[..hlen]);
    let head = &head[..hlen];
    let id = be16(head, 4);
    // The TCP sequence number and flags (unused for UDP, whose header is shorter).
    let (seq, tcp_flags) = if proto == PROTO_TCP {
        let t = &head[ihl..];
        (u32::from_be_bytes([t[4], t[5], t[6], t[7]]), t[13])
    } else {
        (0, 0)
    };
    let count = payload.div_ceil(mss);
    for i in 0..count {
        let from = hlen + i * mss;
        let len = mss.min(pkt.len() - from);
        let start = from - hlen;
        if i > 0 {
            pkt[start..from].copy_from_slice(head);
        }
        let seg = &mut pkt[start..from + len];
        put16(seg, 2, (hlen + len) as u16);
        put16(seg, 4, id.wrapping_add(i as u16));
        ipv4_checksum(seg, ihl);
        let l4 = &mut seg[ihl..];
        if proto == PROTO_TCP {
            l4[4..8].copy_from_slice(&seq.wrapping_add((i * mss) as u32).to_be_bytes());
            let mut f = tcp_flags;
            if i + 1 < count {
                f &= !(TCP_FIN | TCP_PSH);
            }
            if i > 0 {
                f &= !TCP_CWR;
            }
            l4[13] = f;
        } else {
            put16(l4, 4, (l4len + len) as u16);
        }
        put16(l4, csum_at, 0);
        let c = match !fold(sum(l4, pseudo(head, proto, l4len + len))) {
            // UDP sends a zero checksum as 0xffff (zero means "none"); TCP may too.
            0 => 0xffff,
            c => c,
        };
        put16(l4, csum_at, c);
        emit(seg);
    }
    Ok(())
}

/// Merges consecutive decrypted segments of one TCP flow into one super-packet with a
/// virtio header, the reverse of [`segment`], so the pod's stack forwards one packet per
/// burst; with [`Coalescer::with_udp`], consecutive equal-sized datagrams of one UDP flow
/// too (the kernel splits them again where they are delivered, or hands them on whole to
/// a socket with UDP_GRO). Segments that do not continue the held packet are refused; the
/// caller then writes out what is held ([`Coalescer::take`]) and offers the segment again.
pub struct Coalescer {
    /// Virtio header, then the packet being built.
    buf: Vec<u8>,
    /// Bytes of packet held after the header; 0 when empty.
    len: usize,
    /// IP + transport header length of the held packet.
    hlen: usize,
    /// Payload size of its first segment: later ones may not be larger.
    gso_size: usize,
    segments: usize,
    /// A short or PSH segment ended the burst: nothing more may follow.
    closed: bool,
    /// Protocol of the held packet.
    proto: u8,
    /// Whether UDP datagrams are merged (the TUN took UDP segmentation offload).
    udp: bool,
}

impl Default for Coalescer {
    fn default() -> Self {
        Self {
            buf: vec![0; VNET_HDR_LEN + MAX_IP_PACKET],
            len: 0,
            hlen: 0,
            gso_size: 0,
            segments: 0,
            closed: false,
            proto: 0,
            udp: false,
        }
    }
}

/// The header length and payload length of a TCP/IPv4 segment that may be coalesced:
/// no IP options or fragments, only ACK (and PSH) set, some payload.
fn mergeable_tcp(p: &[u8]) -> Option<(usize, usize)> {
    let thl = usize::from(p[32] >> 4) * 4;
    let flags = p[33];
    if thl < 20
        || p.len() <= 20 + thl
        || flags & TCP_ACK == 0
        || flags & (TCP_FIN | TCP_SYN | TCP_RST | TCP_URG | TCP_CWR) != 0
    {
        return None;
    }
    Some((20 + thl, p.len() - 20 - thl))
}

/// The same for a UDP/IPv4 datagram: its length field agrees, some payload.
fn mergeable_udp(p: &[u8]) -> Option<(usize, usize)> {
    (usize::from(be16(p, 24)) == p.len() - 20 && p.len() > 28).then(|| (28, p.len() - 28))
}

/// Protocol, header length and payload length of a packet that may be coalesced: IPv4
/// without options or fragments, then TCP, or UDP when `udp`.
fn mergeable(p: &[u8], udp: bool) -> Option<(u8, usize, usize)> {
    if p.len() < 40 || p[0] != 0x45 || usize::from(be16(p, 2)) != p.len() {
        return None;
    }
    if be16(p, 6) & 0x3fff != 0 {
        return None;
    }
    match p[9] {
        PROTO_TCP => mergeable_tcp(p).map(|(h, n)| (PROTO_TCP, h, n)),
        PROTO_UDP if udp => mergeable_udp(p).map(|(h, n)| (PROTO_UDP, h, n)),
        _ => None,
    }
}

impl Coalescer {
    /// A coalescer that also merges UDP datagrams when `udp` (the TUN must have taken
    /// `TUN_F_USO4`, or it refuses the writes).
    pub fn with_udp(udp: bool) -> Self {
        Self {
            udp,
            ..Self::default()
        }
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Segments held (0 when empty).
    pub fn segments(&self) -> usize {
        if self.len == 0 { 0 } else { self.segments }
    }

    /// Offers a decrypted packet; `true` if it was taken (started or extended the held
    /// packet), `false` if it must be written on its own or after [`Coalescer::take`].
    pub fn push(&mut self, p: &[u8]) -> bool {
        let Some((proto, hlen, payload)) = mergeable(p, self.udp) else {
            return false;
        };
        if self.len == 0 {
            self.buf[VNET_HDR_LEN..VNET_HDR_LEN + p.len()].copy_from_slice(p);
            self.len = p.len();
            self.hlen = hlen;
            self.gso_size = payload;
            self.segments = 1;
            self.proto = proto;
            self.closed = proto == PROTO_TCP && p[33] & TCP_PSH != 0;
            return true;
        }
        let held = &self.buf[VNET_HDR_LEN..VNET_HDR_LEN + self.len];
        let common = !self.closed
            && proto == self.proto
            && hlen == self.hlen
            && payload <= self.gso_size
            && self.len + payload <= MAX_IP_PACKET
            // TOS, DF, TTL, protocol, addresses, ports
            && held[1] == p[1]
            && held[6..10] == p[6..10]
            && held[12..24] == p[12..24];
        let continues = common
            && if proto == PROTO_TCP {
                let held_seq = u32::from_be_bytes([held[24], held[25], held[26], held[27]]);
                let seq = u32::from_be_bytes([p[24], p[25], p[26], p[27]]);
                // acknowledgement; offset; window; urgent pointer and options
                held[28..33] == p[28..33]
                    && held[34..36] == p[34..36]
                    && held[38..hlen] == p[38..hlen]
                    && (held[33] & !TCP_PSH) == (p[33] & !TCP_PSH)
                    && seq == held_seq.wrapping_add((self.len - hlen) as u32)
            } else {
                self.segments < MAX_UDP_SEGMENTS
            };
        if !continues {
            return false;
        }
        let at = VNET_HDR_LEN + self.len;
        self.buf[at..at + payload].copy_from_slice(&p[hlen..]);
        self.len += payload;
        self.segments += 1;
        if proto == PROTO_TCP && p[33] & TCP_PSH != 0 {
            self.buf[VNET_HDR_LEN + 33] |= TCP_PSH;
            self.closed = true;
        }
        if payload < self.gso_size {
            self.closed = true;
        }
        true
    }

    /// The held packet with its virtio header, ready for one TUN write; empties the
    /// coalescer. A single segment goes out unchanged with an empty header.
    pub fn take(&mut self) -> Option<&[u8]> {
        if self.len == 0 {
            return None;
        }
        let len = std::mem::take(&mut self.len);
        let (hdr, pkt) = self.buf.split_at_mut(VNET_HDR_LEN);
        let pkt = &mut pkt[..len];
        let vnet = if self.segments == 1 {
            VnetHdr::default()
        } else {
            put16(pkt, 2, len as u16);
            ipv4_checksum(pkt, 20);
            let (gso_type, csum_offset) = if self.proto == PROTO_TCP {
                (GSO_TCPV4, 16)
            } else {
                // The length of the whole, as a UDP GSO packet from a socket carries; the
                // kernel rewrites it and the checksum per datagram.
                put16(pkt, 24, (len - 20) as u16);
                (GSO_UDP_L4, 6)
            };
            // CHECKSUM_PARTIAL: the field carries the pseudo-header sum and the kernel
            // completes it. The payload was authenticated by WireGuard, so recomputing
            // loses nothing a verification would have caught.
            let p = fold(pseudo(pkt, self.proto, len - 20));
            put16(pkt, 20 + csum_offset, p);
            VnetHdr {
                flags: F_NEEDS_CSUM,
                gso_type,
                hdr_len: self.hlen as u16,
                gso_size: self.gso_size as u16,
                csum_start: 20,
                csum_offset: csum_offset as u16,
            }
        };
        vnet.write(hdr);
        Some(&self.buf[..VNET_HDR_LEN + len])
    }
}

/// A property of the splitter and the coalescer that [`exercise`] found broken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Broken {
    /// A segment's IPv4 total length differs from its size.
    #[error("a segment's IP length differs from its size")]
    SegmentLength,
    /// A segment is longer than the packet it was cut from.
    #[error("a segment is longer than its super-packet")]
    SegmentSize,
    /// A merged packet did not split back into the payloads that went in.
    #[error("a merged packet does not split back into what was merged")]
    RoundTrip,
    /// A lone packet did not come out as it went in.
    #[error("a lone packet came out changed")]
    Lone,
}

/// Runs arbitrary bytes through [`segment`] and [`Coalescer`] and checks what comes out;
/// the fuzz target and its seed replay in `make test` share it (the coalescer's input is
/// whatever the peer sent, authenticated but not trusted: a third-party VPN server for
/// EgressGateways). The bytes: one flag byte (bit 0: UDP merging on), a virtio header,
/// then packets, each behind a 2-byte big-endian length. The first packet is also split
/// with the header. Never panics on any input; returns the first broken property.
pub fn exercise(data: &[u8]) -> Result<(), Broken> {
    let (Some(&flags), Some(hdr)) = (data.first(), data.get(1..).and_then(VnetHdr::parse)) else {
        return Ok(());
    };
    let mut rest = &data[(1 + VNET_HDR_LEN).min(data.len())..];
    let mut packets = Vec::new();
    while let [a, b, tail @ ..] = rest {
        let n = usize::from(u16::from_be_bytes([*a, *b])).min(tail.len());
        packets.push(&tail[..n]);
        rest = &tail[n..];
    }
    if let Some(first) = packets.first() {
        let mut pkt = first.to_vec();
        // (size, IP total length) of each segment.
        let mut segs = Vec::new();
        let _ = segment(&hdr, &mut pkt, |seg| {
            segs.push((seg.len(), seg.get(2..4).map(|l| usize::from(be16(l, 0)))));
        });
        if segs.iter().any(|(n, _)| *n > first.len()) {
            return Err(Broken::SegmentSize);
        }
        // A packet passed on whole keeps the length it came with; cut ones carry their own.
        if segs.len() > 1 && segs.iter().any(|(n, ip)| *ip != Some(*n)) {
            return Err(Broken::SegmentLength);
        }
    }
    let mut c = Coalescer::with_udp(flags & 1 != 0);
    let mut held: Vec<&[u8]> = Vec::new();
    for p in packets {
        if c.push(p) {
            held.push(p);
            continue;
        }
        check_merged(&mut c, &held)?;
        held.clear();
        if c.push(p) {
            held.push(p);
        }
    }
    check_merged(&mut c, &held)
}

/// Takes what `c` holds and checks it against the packets that went in: a lone one
/// unchanged, several split back into their payloads.
fn check_merged(c: &mut Coalescer, went_in: &[&[u8]]) -> Result<(), Broken> {
    let hlen = c.hlen;
    let Some(out) = c.take() else {
        return Ok(());
    };
    let hdr = VnetHdr::parse(out).ok_or(Broken::RoundTrip)?;
    let mut pkt = out[VNET_HDR_LEN..].to_vec();
    if let [one] = went_in {
        return (hdr == VnetHdr::default() && pkt == *one)
            .then_some(())
            .ok_or(Broken::Lone);
    }
    let mut payloads = Vec::new();
    let mut count = 0;
    segment(&hdr, &mut pkt, |seg| {
        payloads.extend_from_slice(seg.get(hlen..).unwrap_or_default());
        count += 1;
    })
    .map_err(|_| Broken::RoundTrip)?;
    let expected: Vec<u8> = went_in
        .iter()
        .flat_map(|p| p[hlen..].iter().copied())
        .collect();
    (count == went_in.len() && payloads == expected)
        .then_some(())
        .ok_or(Broken::RoundTrip)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A TCP/IPv4 packet with valid checksums and the given payload.
    fn tcp(seq: u32, flags: u8, payload: &[u8], opts: &[u8]) -> Vec<u8> {
        let thl = 20 + opts.len();
        let mut p = vec![0u8; 20 + thl];
        p[0] = 0x45;
        put16(&mut p, 2, (20 + thl + payload.len()) as u16);
        put16(&mut p, 4, 0x1234);
        p[6] = 0x40;
        p[8] = 64;
        p[9] = PROTO_TCP;
        p[12..16].copy_from_slice(&[10, 99, 0, 1]);
        p[16..20].copy_from_slice(&[10, 99, 0, 2]);
        put16(&mut p, 20, 40000);
        put16(&mut p, 22, 5201);
        p[24..28].copy_from_slice(&seq.to_be_bytes());
        p[28..32].copy_from_slice(&7u32.to_be_bytes());
        p[32] = ((thl / 4) as u8) << 4;
        p[33] = flags;
        put16(&mut p, 34, 512);
        p[40..40 + opts.len()].copy_from_slice(opts);
        p.extend_from_slice(payload);
        ipv4_checksum(&mut p, 20);
        let len = p.len() - 20;
        let c = !fold(sum(&p[20..], pseudo(&p, PROTO_TCP, len)));
        put16(&mut p, 36, c);
        p
    }

    fn valid(p: &[u8]) -> bool {
        fold(sum(&p[..20], 0)) == 0xffff
            && fold(sum(&p[20..], pseudo(p, PROTO_TCP, p.len() - 20))) == 0xffff
    }

    fn payload(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    /// A UDP/IPv4 datagram with valid checksums.
    fn udp(id: u16, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0u8; 28];
        p[0] = 0x45;
        put16(&mut p, 2, (28 + payload.len()) as u16);
        put16(&mut p, 4, id);
        p[6] = 0x40;
        p[8] = 64;
        p[9] = PROTO_UDP;
        p[12..16].copy_from_slice(&[10, 244, 1, 7]);
        p[16..20].copy_from_slice(&[10, 0, 0, 5]);
        put16(&mut p, 20, 40000);
        put16(&mut p, 22, 5000);
        put16(&mut p, 24, (8 + payload.len()) as u16);
        p.extend_from_slice(payload);
        ipv4_checksum(&mut p, 20);
        let c = !fold(sum(&p[20..], pseudo(&p, PROTO_UDP, p.len() - 20)));
        put16(&mut p, 26, if c == 0 { 0xffff } else { c });
        p
    }

    fn valid_udp(p: &[u8]) -> bool {
        fold(sum(&p[..20], 0)) == 0xffff
            && usize::from(be16(p, 2)) == p.len()
            && usize::from(be16(p, 24)) == p.len() - 20
            && fold(sum(&p[20..], pseudo(p, PROTO_UDP, p.len() - 20))) == 0xffff
    }

    /// The checksum as RFC 1071 writes it: big-endian words, one at a time.
    fn reference_sum(data: &[u8]) -> u16 {
        let mut acc = 0u64;
        for w in data.chunks(2) {
            acc += u64::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)]));
        }
        fold(acc)
    }

    #[test]
    fn the_wide_sum_equals_the_word_by_word_sum() {
        // Every length up to a few words past a full segment, bytes chosen to carry often.
        let data: Vec<u8> = (0..1600u32).map(|i| (0xff - (i * 13) % 7) as u8).collect();
        for len in (0..80).chain(1370..1400).chain([1600]) {
            assert_eq!(
                fold(sum(&data[..len], 0)),
                reference_sum(&data[..len]),
                "{len} bytes"
            );
        }
        assert_eq!(fold(sum(&[0xff; 4096], 0)), reference_sum(&[0xff; 4096]));
        // A running sum continues across calls that split at an even offset.
        assert_eq!(
            fold(sum(&data[800..1401], sum(&data[..800], 0))),
            reference_sum(&data[..1401])
        );
    }

    /// What the kernel hands over for a UDP GSO send: the datagrams' payload back to back
    /// behind one IP and UDP header whose length is the whole, the checksum field holding
    /// the pseudo-header sum.
    fn uso_packet(data: &[u8]) -> Vec<u8> {
        let mut p = udp(0x4321, data);
        let ps = fold(pseudo(&p, PROTO_UDP, p.len() - 20));
        put16(&mut p, 26, ps);
        p
    }

    #[test]
    fn a_udp_super_packet_splits_into_valid_datagrams() {
        let data = payload(3 * 1200 + 500);
        let hdr = VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: GSO_UDP_L4,
            hdr_len: 28,
            gso_size: 1200,
            csum_start: 20,
            csum_offset: 6,
        };
        let mut dgrams = Vec::new();
        segment(&hdr, &mut uso_packet(&data), |s| dgrams.push(s.to_vec())).expect("ok");
        assert_eq!(dgrams.len(), 4);
        let mut got = Vec::new();
        for (i, d) in dgrams.iter().enumerate() {
            assert!(valid_udp(d), "datagram {i} is not valid");
            assert_eq!(be16(d, 4), 0x4321 + i as u16);
            assert_eq!(&d[20..24], &[0x9c, 0x40, 0x13, 0x88], "ports");
            got.extend_from_slice(&d[28..]);
        }
        assert_eq!(dgrams[3].len(), 28 + 500);
        assert_eq!(got, data);
        // One that fits a datagram gets its checksum completed and passes whole.
        let mut one = Vec::new();
        segment(&hdr, &mut uso_packet(&data[..900]), |s| {
            one.push(s.to_vec())
        })
        .expect("ok");
        assert_eq!(one.len(), 1);
        assert!(valid_udp(&one[0]));
    }

    #[test]
    fn datagrams_of_one_flow_coalesce_only_when_udp_is_enabled() {
        let data = payload(70 * 1000);
        let dgrams: Vec<Vec<u8>> = data
            .chunks(1000)
            .enumerate()
            .map(|(i, c)| udp(i as u16, c))
            .collect();
        // Without UDP segmentation offload on the TUN, every datagram goes out alone.
        let mut off = Coalescer::default();
        assert!(!off.push(&dgrams[0]));

        let mut c = Coalescer::with_udp(true);
        let mut out = Vec::new();
        for d in &dgrams {
            if !c.push(d) {
                out.push(c.take().expect("held").to_vec());
                assert!(c.push(d), "an empty coalescer takes any datagram");
            }
        }
        out.push(c.take().expect("held").to_vec());
        // The kernel takes at most 64 datagrams per super-packet.
        assert_eq!(out.len(), 2);
        let mut again = Vec::new();
        for o in &out {
            let hdr = VnetHdr::parse(o).expect("header");
            assert_eq!(
                (hdr.gso_type, hdr.gso_size, hdr.csum_offset),
                (GSO_UDP_L4, 1000, 6)
            );
            let mut pkt = o[VNET_HDR_LEN..].to_vec();
            assert_eq!(usize::from(be16(&pkt, 24)), pkt.len() - 20);
            // Split as the kernel would: the very datagrams, checksums valid.
            segment(&hdr, &mut pkt, |s| again.push(s.to_vec())).expect("ok");
        }
        assert_eq!(again.len(), 70);
        for (a, d) in again.iter().zip(&dgrams) {
            assert!(valid_udp(a));
            assert_eq!(a[20..], d[20..]);
        }

        // Another flow, a larger datagram, or anything after a shorter one: refused.
        let mut c = Coalescer::with_udp(true);
        assert!(c.push(&udp(1, &payload(500))));
        let mut other = udp(2, &payload(500));
        put16(&mut other, 20, 40001);
        assert!(!c.push(&other));
        assert!(!c.push(&udp(2, &payload(501))));
        assert!(c.push(&udp(2, &payload(100))));
        assert!(!c.push(&udp(3, &payload(100))));
        // A TCP segment never joins a UDP burst.
        assert!(!c.push(&tcp(0, TCP_ACK, &payload(100), &[])));
        // A lone datagram goes out unchanged, behind an empty header.
        let mut one = Coalescer::with_udp(true);
        let d = udp(9, b"a datagram of its own");
        assert!(one.push(&d));
        let out = one.take().expect("held");
        assert_eq!(VnetHdr::parse(out), Some(VnetHdr::default()));
        assert_eq!(&out[VNET_HDR_LEN..], &d[..]);
    }

    #[test]
    fn checksum_matches_a_known_ipv4_header() {
        // The example header from RFC 1071-style worked examples: 0xb861 is its checksum.
        let mut h = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        ipv4_checksum(&mut h, 20);
        assert_eq!(be16(&h, 10), 0xb861);
        // Odd lengths pad with a zero byte.
        assert_eq!(fold(sum(&[0x01], 0)), 0x0100);
    }

    #[test]
    fn vnet_header_round_trips() {
        let h = VnetHdr {
            flags: 1,
            gso_type: 0x81,
            hdr_len: 52,
            gso_size: 1368,
            csum_start: 20,
            csum_offset: 16,
        };
        let mut b = [0u8; VNET_HDR_LEN];
        h.write(&mut b);
        assert_eq!(VnetHdr::parse(&b), Some(h));
        assert_eq!(VnetHdr::parse(&b[..9]), None);
    }

    #[test]
    fn a_super_packet_splits_into_valid_segments_with_running_sequence_numbers() {
        let data = payload(5000);
        let opts = [1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2];
        let mut p = tcp(1000, TCP_ACK | TCP_PSH | TCP_FIN, &data, &opts);
        // As the kernel hands it over: the checksum field holds the pseudo-header sum.
        let ps = fold(pseudo(&p, PROTO_TCP, p.len() - 20));
        put16(&mut p, 36, ps);
        let hdr = VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: GSO_TCPV4,
            hdr_len: 52,
            gso_size: 1400,
            csum_start: 20,
            csum_offset: 16,
        };
        let mut segs = Vec::new();
        segment(&hdr, &mut p.clone(), |s| segs.push(s.to_vec())).expect("ok");
        assert_eq!(segs.len(), 4);
        let mut got = Vec::new();
        for (i, s) in segs.iter().enumerate() {
            assert!(valid(s), "segment {i} has a bad checksum");
            assert_eq!(usize::from(be16(s, 2)), s.len());
            assert_eq!(be16(s, 4), 0x1234 + i as u16);
            let seq = u32::from_be_bytes([s[24], s[25], s[26], s[27]]);
            assert_eq!(seq, 1000 + 1400 * i as u32);
            let last = i == 3;
            assert_eq!(
                s[33] & (TCP_PSH | TCP_FIN) != 0,
                last,
                "flags of segment {i}"
            );
            assert_eq!(&s[40..52], &opts);
            got.extend_from_slice(&s[52..]);
        }
        assert_eq!(got, data);
        assert_eq!(segs[3].len(), 52 + 5000 - 3 * 1400);
    }

    #[test]
    fn a_plain_packet_gets_its_partial_checksum_completed() {
        let mut p = tcp(1, TCP_ACK, b"hello", &[]);
        let ps = fold(pseudo(&p, PROTO_TCP, p.len() - 20));
        put16(&mut p, 36, ps);
        let hdr = VnetHdr {
            flags: F_NEEDS_CSUM,
            csum_start: 20,
            csum_offset: 16,
            ..VnetHdr::default()
        };
        let mut out = Vec::new();
        segment(&hdr, &mut p, |s| out = s.to_vec()).expect("ok");
        assert!(valid(&out));
        // Without the flag the packet passes untouched.
        let q = tcp(1, TCP_ACK, b"x", &[]);
        segment(&VnetHdr::default(), &mut q.clone(), |s| {
            assert_eq!(s, &q[..]);
        })
        .expect("ok");
    }

    #[test]
    fn a_super_packet_that_fits_one_segment_passes_whole() {
        let tso = VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: GSO_TCPV4,
            gso_size: 1400,
            csum_start: 20,
            csum_offset: 16,
            ..VnetHdr::default()
        };
        let mut p = tcp(5, TCP_ACK, &payload(900), &[]);
        let ps = fold(pseudo(&p, PROTO_TCP, p.len() - 20));
        put16(&mut p, 36, ps);
        let mut out = Vec::new();
        segment(&tso, &mut p, |s| out.push(s.to_vec())).expect("ok");
        assert_eq!(out.len(), 1);
        assert!(valid(&out[0]));
        // Without NEEDS_CSUM a complete checksum is left alone.
        let whole = tcp(5, TCP_ACK, &payload(900), &[]);
        let plain = VnetHdr { flags: 0, ..tso };
        segment(&plain, &mut whole.clone(), |s| {
            assert_eq!(s, &whole[..]);
        })
        .expect("ok");
    }

    #[test]
    fn hostile_headers_are_refused_not_panicked_on() {
        let tso = VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: GSO_TCPV4,
            gso_size: 100,
            csum_start: 20,
            csum_offset: 16,
            ..VnetHdr::default()
        };
        for mut p in [vec![], vec![0x45; 10], vec![0x4f; 60], {
            let mut p = tcp(0, TCP_ACK, &payload(300), &[]);
            p[32] = 0xf0; // header longer than the packet
            p.truncate(50);
            p
        }] {
            assert!(segment(&tso, &mut p, |_| {}).is_err());
        }
        let bad_csum = VnetHdr {
            flags: F_NEEDS_CSUM,
            csum_start: 60000,
            ..VnetHdr::default()
        };
        assert_eq!(
            segment(&bad_csum, &mut [0; 40], |_| {}),
            Err(Malformed::Bounds)
        );
        let udp = VnetHdr {
            gso_type: 3,
            gso_size: 100,
            ..VnetHdr::default()
        };
        assert_eq!(
            segment(&udp, &mut vec![0x45; 400], |_| {}),
            Err(Malformed::GsoType(3))
        );
        // A UDP super-packet whose protocol field says otherwise.
        let uso = VnetHdr {
            gso_type: GSO_UDP_L4,
            ..tso
        };
        let mut p = tcp(0, TCP_ACK, &payload(300), &[]);
        assert_eq!(segment(&uso, &mut p, |_| {}), Err(Malformed::Bounds));
        // ECN is a TCP flag: on a UDP type it is a type the link never took.
        let uso_ecn = VnetHdr {
            gso_type: GSO_UDP_L4 | GSO_ECN,
            ..tso
        };
        assert_eq!(
            segment(&uso_ecn, &mut self::udp(0, &payload(300)), |_| {}),
            Err(Malformed::GsoType(GSO_UDP_L4 | GSO_ECN))
        );
    }

    #[test]
    fn segments_coalesce_back_into_one_super_packet() {
        let data = payload(4000);
        let segs: Vec<Vec<u8>> = data
            .chunks(1000)
            .enumerate()
            .map(|(i, c)| {
                let f = if i == 3 { TCP_ACK | TCP_PSH } else { TCP_ACK };
                tcp(50 + 1000 * i as u32, f, c, &[1, 1, 1, 1])
            })
            .collect();
        let mut c = Coalescer::default();
        for s in &segs {
            assert!(c.push(s));
        }
        // The PSH segment closed the burst.
        assert!(!c.push(&tcp(4050, TCP_ACK, b"more", &[1, 1, 1, 1])));
        let out = c.take().expect("held").to_vec();
        assert!(c.is_empty());
        let hdr = VnetHdr::parse(&out).expect("header");
        assert_eq!(hdr.gso_type, GSO_TCPV4);
        assert_eq!(hdr.gso_size, 1000);
        assert_eq!(usize::from(hdr.hdr_len), 44);
        let mut pkt = out[VNET_HDR_LEN..].to_vec();
        assert_eq!(pkt.len(), 44 + 4000);
        assert_eq!(&pkt[44..], &data[..]);
        assert_eq!(pkt[33], TCP_ACK | TCP_PSH);
        // Completing the partial checksum as the kernel would gives a valid packet, and
        // segmenting it again gives back the very segments.
        complete_checksum(&mut pkt, 20, 16).expect("in bounds");
        assert!(valid(&pkt));
        let mut again = Vec::new();
        let mut p2 = out[VNET_HDR_LEN..].to_vec();
        segment(&hdr, &mut p2, |s| again.push(s.to_vec())).expect("ok");
        for (a, b) in again.iter().zip(&segs) {
            // The IP id is the super-packet's plus the index; the originals share one.
            assert_eq!(a[20..], b[20..]);
        }
    }

    #[test]
    fn only_continuations_of_one_flow_coalesce() {
        let mut c = Coalescer::default();
        assert!(c.push(&tcp(0, TCP_ACK, &payload(100), &[])));
        // A gap in the sequence, another flow, a SYN, a pure ACK, a larger segment.
        assert!(!c.push(&tcp(200, TCP_ACK, &payload(100), &[])));
        let mut other = tcp(100, TCP_ACK, &payload(100), &[]);
        put16(&mut other, 20, 40001);
        assert!(!c.push(&other));
        assert!(!c.push(&tcp(100, TCP_ACK | TCP_SYN, &payload(100), &[])));
        assert!(!c.push(&tcp(100, TCP_ACK, &[], &[])));
        assert!(!c.push(&tcp(100, TCP_ACK, &payload(101), &[])));
        // A shorter one continues but ends the burst.
        assert!(c.push(&tcp(100, TCP_ACK, &payload(50), &[])));
        assert!(!c.push(&tcp(150, TCP_ACK, &payload(50), &[])));
        // A lone segment goes out unchanged, behind an empty header.
        let mut one = Coalescer::default();
        let p = tcp(9, TCP_ACK, b"abc", &[]);
        assert!(one.push(&p));
        let out = one.take().expect("held");
        assert_eq!(VnetHdr::parse(out), Some(VnetHdr::default()));
        assert_eq!(&out[VNET_HDR_LEN..], &p[..]);
        assert!(one.take().is_none());
        assert!(!one.push(&[0x45; 30]));
    }
}
