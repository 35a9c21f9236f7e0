//! Batched I/O on the WireGuard UDP socket: many encrypted datagrams per system call.
//! Sends go out through `sendmmsg`, with runs of equal-sized datagrams carried as one UDP
//! GSO message (`UDP_SEGMENT`) that the kernel splits as late as possible; receives come
//! in through `recvmmsg` with `UDP_GRO`, so a burst from the peer arrives as a few large
//! buffers. I/O boundary: the socket's descriptor; the grouping is pure and unit-tested.

use std::io;
use std::net::{SocketAddr, SocketAddrV4};
use std::os::fd::RawFd;

/// The kernel's UDP_MAX_SEGMENTS: datagrams per GSO message.
const MAX_SEGMENTS: usize = 64;
/// Bytes per GSO message: the total must fit one IP packet's 16-bit length with room for
/// the IP and UDP headers.
const MAX_GSO_BYTES: usize = 65_000;
/// Room for the datagrams of one flush. A TCP super-packet becomes at most this much
/// ciphertext when its segments are at least 536 bytes; smaller ones flush part-way.
const ARENA: usize = 256 * 1024;
/// Receive buffers per `recvmmsg`; each holds one coalesced burst of up to 64 KiB.
const RECV_SLOTS: usize = 8;
const RECV_BUF: usize = 65_536;

/// One message of a flush: `len` bytes from `start`, cut into `seg`-byte datagrams by the
/// kernel (`seg == 0`: one datagram).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Group {
    start: usize,
    len: usize,
    seg: usize,
    /// Index of its first datagram, to resume after a failed GSO send.
    first: usize,
}

/// Groups datagrams (their lengths, in order, laid end to end) into GSO messages: equal
/// sizes, the last one of a group possibly shorter, within the kernel's limits.
fn groups(lens: &[usize], from: usize, gso: bool) -> Vec<Group> {
    let mut out: Vec<Group> = Vec::new();
    let mut start: usize = lens[..from].iter().sum();
    let mut open = false;
    for (i, &len) in lens.iter().enumerate().skip(from) {
        if let Some(g) = out.last_mut().filter(|_| open) {
            let fits =
                len <= g.seg && (g.len / g.seg) < MAX_SEGMENTS && g.len + len <= MAX_GSO_BYTES;
            if fits {
                g.len += len;
                // A shorter datagram can only end a group.
                open = len == g.seg;
                start += len;
                continue;
            }
        }
        out.push(Group {
            start,
            len,
            seg: len,
            first: i,
        });
        open = gso && len > 0;
        start += len;
    }
    for g in &mut out {
        if g.len == g.seg {
            g.seg = 0;
        }
    }
    out
}

/// Datagrams waiting to be sent to one destination.
pub struct Sender {
    arena: Vec<u8>,
    used: usize,
    lens: Vec<usize>,
    gso: bool,
}

impl Sender {
    /// An empty batch; `gso` off sends one datagram per message.
    pub fn new(gso: bool) -> Self {
        Self {
            arena: vec![0; ARENA],
            used: 0,
            lens: Vec::with_capacity(256),
            gso,
        }
    }

    /// Space for the next datagram, if `need` bytes are left; otherwise flush first.
    pub fn room(&mut self, need: usize) -> Option<&mut [u8]> {
        (self.arena.len() - self.used >= need).then(|| &mut self.arena[self.used..])
    }

    /// Takes the first `len` bytes of the last [`Sender::room`] as a datagram.
    pub fn commit(&mut self, len: usize) {
        self.used += len;
        self.lens.push(len);
    }

    /// Datagrams waiting.
    pub fn len(&self) -> usize {
        self.lens.len()
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.lens.is_empty()
    }

    /// Sends everything to `to` and empties the batch. Returns how many datagrams the
    /// kernel took; the rest were dropped (the socket's error is returned only when none
    /// could be sent). A kernel or route that refuses UDP GSO turns it off for good.
    pub fn flush(&mut self, fd: RawFd, to: SocketAddr) -> io::Result<usize> {
        let result = match to {
            SocketAddr::V4(to) => self.send_all(fd, to),
            SocketAddr::V6(_) => Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "the tunnel socket is IPv4",
            )),
        };
        self.used = 0;
        self.lens.clear();
        result
    }

    fn send_all(&mut self, fd: RawFd, to: SocketAddrV4) -> io::Result<usize> {
        let mut from = 0;
        loop {
            let gs = groups(&self.lens, from, self.gso);
            match send_groups(fd, &mut self.arena, &gs, to) {
                Ok(()) => return Ok(self.lens.len()),
                Err((sent, e)) => {
                    let retry = self.gso
                        && matches!(
                            e.raw_os_error(),
                            Some(libc::EIO | libc::EINVAL | libc::ENOPROTOOPT | libc::EOPNOTSUPP)
                        );
                    let first_unsent = gs.get(sent).map_or(self.lens.len(), |g| g.first);
                    if !retry {
                        return if first_unsent == 0 {
                            Err(e)
                        } else {
                            Ok(first_unsent)
                        };
                    }
                    tracing::info!(error = %e, "UDP segmentation offload refused; sending datagrams one by one");
                    self.gso = false;
                    from = first_unsent;
                }
            }
        }
    }
}

fn sockaddr(to: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: to.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*to.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}

/// Sends the groups with `sendmmsg`; on failure, how many groups went out and the error.
#[allow(unsafe_code)]
fn send_groups(
    fd: RawFd,
    arena: &mut [u8],
    gs: &[Group],
    to: SocketAddrV4,
) -> Result<(), (usize, io::Error)> {
    let mut name = sockaddr(to);
    let mut iovs: Vec<libc::iovec> = gs
        .iter()
        .map(|g| libc::iovec {
            iov_base: arena[g.start..g.start + g.len].as_mut_ptr().cast(),
            iov_len: g.len,
        })
        .collect();
    // One aligned control buffer per message, for its UDP_SEGMENT size.
    let mut control = vec![[0u64; 4]; gs.len()];
    // SAFETY: mmsghdr is plain old data; all-zero is a valid empty header.
    let mut msgs: Vec<libc::mmsghdr> = vec![unsafe { std::mem::zeroed() }; gs.len()];
    for (i, g) in gs.iter().enumerate() {
        let h = &mut msgs[i].msg_hdr;
        h.msg_name = (&mut name as *mut libc::sockaddr_in).cast();
        h.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        h.msg_iov = &mut iovs[i];
        h.msg_iovlen = 1;
        if g.seg > 0 {
            h.msg_control = control[i].as_mut_ptr().cast();
            // SAFETY: CMSG_SPACE only computes a size.
            h.msg_controllen = unsafe { libc::CMSG_SPACE(2) } as usize;
            // SAFETY: the control buffer is 32 bytes, aligned for cmsghdr, and
            // CMSG_SPACE(2) (24 on 64-bit) fits it, so the first header and its two data
            // bytes lie inside the buffer.
            unsafe {
                let c = libc::CMSG_FIRSTHDR(h);
                (*c).cmsg_level = libc::SOL_UDP;
                (*c).cmsg_type = libc::UDP_SEGMENT;
                (*c).cmsg_len = libc::CMSG_LEN(2) as usize;
                std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<u16>(), g.seg as u16);
            }
        }
    }
    let mut sent = 0;
    while sent < msgs.len() {
        // SAFETY: every header points at live buffers above (name, iovec, control) that
        // outlive the call; the count matches the slice.
        let rc = unsafe {
            libc::sendmmsg(
                fd,
                msgs[sent..].as_mut_ptr(),
                (msgs.len() - sent) as libc::c_uint,
                0,
            )
        };
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err((sent, e));
        }
        sent += rc as usize;
    }
    Ok(())
}

/// Turns on UDP GRO for the socket; `false` if the kernel does not have it.
#[allow(unsafe_code)]
pub fn enable_gro(fd: RawFd) -> bool {
    let on: libc::c_int = 1;
    // SAFETY: setsockopt reads one c_int from a valid pointer with its exact length.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_UDP,
            libc::UDP_GRO,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of_val(&on) as libc::socklen_t,
        ) == 0
    }
}

/// Receive buffers for `recvmmsg`.
pub struct Receiver {
    bufs: Vec<Vec<u8>>,
    names: Vec<libc::sockaddr_in>,
    control: Vec<[u64; 8]>,
    /// Per message received: length, datagram size (from UDP_GRO), source.
    got: Vec<(usize, usize, Option<SocketAddr>)>,
}

impl Default for Receiver {
    fn default() -> Self {
        Self {
            bufs: vec![vec![0; RECV_BUF]; RECV_SLOTS],
            // SAFETY: sockaddr_in is plain old data; zero is a valid value.
            #[allow(unsafe_code)]
            names: vec![unsafe { std::mem::zeroed() }; RECV_SLOTS],
            control: vec![[0; 8]; RECV_SLOTS],
            got: Vec::with_capacity(RECV_SLOTS),
        }
    }
}

impl Receiver {
    /// Receives what is queued without waiting; the number of messages (0 if none).
    #[allow(unsafe_code)]
    pub fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        let mut iovs: Vec<libc::iovec> = self
            .bufs
            .iter_mut()
            .map(|b| libc::iovec {
                iov_base: b.as_mut_ptr().cast(),
                iov_len: b.len(),
            })
            .collect();
        // SAFETY: mmsghdr is plain old data; all-zero is a valid empty header.
        let mut msgs: Vec<libc::mmsghdr> = vec![unsafe { std::mem::zeroed() }; RECV_SLOTS];
        for (i, m) in msgs.iter_mut().enumerate() {
            let h = &mut m.msg_hdr;
            h.msg_name = (&mut self.names[i] as *mut libc::sockaddr_in).cast();
            h.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            h.msg_iov = &mut iovs[i];
            h.msg_iovlen = 1;
            h.msg_control = self.control[i].as_mut_ptr().cast();
            h.msg_controllen = std::mem::size_of::<[u64; 8]>();
        }
        // SAFETY: every header points at buffers owned by self or this frame that
        // outlive the call; the count matches the vector.
        let rc = unsafe {
            libc::recvmmsg(
                fd,
                msgs.as_mut_ptr(),
                RECV_SLOTS as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        self.got.clear();
        if rc < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(0),
                _ => Err(e),
            };
        }
        for (i, m) in msgs.iter().take(rc as usize).enumerate() {
            let len = m.msg_len as usize;
            let mut seg = len;
            // SAFETY: the kernel filled msg_controllen bytes of our control buffer with
            // well-formed headers; CMSG_FIRSTHDR/NXTHDR stay inside that length.
            unsafe {
                let mut c = libc::CMSG_FIRSTHDR(&m.msg_hdr);
                while !c.is_null() {
                    if (*c).cmsg_level == libc::SOL_UDP && (*c).cmsg_type == libc::UDP_GRO {
                        let s = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::c_int>());
                        if s > 0 {
                            seg = s as usize;
                        }
                    }
                    c = libc::CMSG_NXTHDR(&m.msg_hdr, c);
                }
            }
            let n = &self.names[i];
            let from = (i32::from(n.sin_family) == libc::AF_INET).then(|| {
                SocketAddr::from((
                    u32::from_be(n.sin_addr.s_addr).to_be_bytes(),
                    u16::from_be(n.sin_port),
                ))
            });
            self.got.push((len, seg.max(1), from));
        }
        Ok(self.got.len())
    }

    /// Message `i` of the last receive: its source and its datagrams.
    pub fn message(&self, i: usize) -> (Option<SocketAddr>, std::slice::Chunks<'_, u8>) {
        let (len, seg, from) = self.got[i];
        (from, self.bufs[i][..len].chunks(seg))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(start: usize, len: usize, seg: usize, first: usize) -> Group {
        Group {
            start,
            len,
            seg,
            first,
        }
    }

    #[test]
    fn equal_datagrams_share_a_message_and_a_short_one_ends_it() {
        let lens = [100, 100, 100, 60, 100, 100, 148];
        assert_eq!(
            groups(&lens, 0, true),
            vec![g(0, 360, 100, 0), g(360, 200, 100, 4), g(560, 148, 0, 6)]
        );
        // Without GSO every datagram is its own message.
        let plain = groups(&lens, 0, false);
        assert_eq!(plain.len(), lens.len());
        assert!(plain.iter().all(|g| g.seg == 0));
        assert_eq!(plain[3], g(300, 60, 0, 3));
        // Resuming part-way keeps the offsets.
        assert_eq!(
            groups(&lens, 5, false),
            vec![g(460, 100, 0, 5), g(560, 148, 0, 6)]
        );
    }

    #[test]
    fn messages_stay_within_the_kernel_limits() {
        let lens = vec![1000; 150];
        let gs = groups(&lens, 0, true);
        assert!(gs.iter().all(|g| g.len <= MAX_GSO_BYTES));
        assert_eq!(gs.iter().map(|g| g.len).sum::<usize>(), 150_000);
        let small = vec![10; 200];
        let gs = groups(&small, 0, true);
        assert!(gs.iter().all(|g| g.len / 10 <= MAX_SEGMENTS));
        assert_eq!(gs.len(), 4);
    }

    #[test]
    fn datagrams_round_trip_over_loopback_with_and_without_gso() {
        use std::net::UdpSocket;
        use std::os::fd::AsRawFd as _;
        let rx = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let tx = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let to = rx.local_addr().expect("addr");
        let gro = enable_gro(rx.as_raw_fd());
        for gso in [true, false] {
            let mut s = Sender::new(gso);
            let sizes = [1200, 1200, 1200, 700, 90];
            for (i, &n) in sizes.iter().enumerate() {
                let room = s.room(n).expect("room");
                room[..n].fill(i as u8);
                s.commit(n);
            }
            assert_eq!(s.len(), 5);
            assert_eq!(s.flush(tx.as_raw_fd(), to).expect("sent"), 5);
            assert!(s.is_empty());
            let mut r = Receiver::default();
            let mut got = Vec::new();
            for _ in 0..200 {
                for i in 0..r.recv(rx.as_raw_fd()).expect("recv") {
                    let (from, dgrams) = r.message(i);
                    assert_eq!(from, Some(tx.local_addr().expect("addr")));
                    got.extend(dgrams.map(<[u8]>::to_vec));
                }
                if got.len() >= sizes.len() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            let want: Vec<Vec<u8>> = sizes
                .iter()
                .enumerate()
                .map(|(i, &n)| vec![i as u8; n])
                .collect();
            assert_eq!(got, want, "gso {gso}, gro {gro}");
        }
    }
}
