//! The TUN device carrying wg0's plaintext side. I/O boundary: `/dev/net/tun` and the
//! `TUNSETIFF` ioctl; the device disappears when the last descriptor closes, which is how
//! fencing removes wg0 even if the process is killed.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, RawFd};

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;

#[repr(C)]
struct IfReq {
    name: [libc::c_char; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// Offloads the link takes from the kernel: partial checksums and TCP/IPv4 super-packets,
/// which [`crate::offload`] completes and splits. No IPv6 (the tunnel is IPv4) and no ECN
/// segmentation, so such flows arrive as ordinary packets.
const OFFLOADS: libc::c_uint = libc::TUN_F_CSUM | libc::TUN_F_TSO4;
/// UDP segmentation offload (Linux 6.2 and later), asked for on top of [`OFFLOADS`]: UDP
/// super-packets from senders that use UDP_SEGMENT (QUIC stacks do) arrive whole, and the
/// link may write bursts of datagrams back as one. The kernel takes the IPv4 and IPv6
/// flags only together; an IPv6 super-packet would be dropped as malformed, but the
/// tunnel routes no IPv6.
const USO: libc::c_uint = libc::TUN_F_USO4 | libc::TUN_F_USO6;

/// An open TUN device, non-blocking, every packet behind a virtio-net header
/// ([`crate::offload::VNET_HDR_LEN`] bytes) in both directions.
pub struct Tun {
    file: File,
    name: String,
    offloads: bool,
    uso: bool,
}

impl Tun {
    /// Creates (or attaches to) the TUN device `name`.
    pub fn open(name: &str) -> io::Result<Self> {
        if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains('\0') {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{name:?} is not a valid interface name"),
            ));
        }
        let file = OpenOptions::new().read(true).write(true).open("/dev/net/tun").map_err(|e| {
            io::Error::new(e.kind(), format!("cannot open /dev/net/tun ({e}): the pod needs the device (a hostPath or device plugin) and CAP_NET_ADMIN"))
        })?;
        let mut req = IfReq {
            name: [0; libc::IFNAMSIZ],
            flags: (libc::IFF_TUN | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short,
            _pad: [0; 22],
        };
        for (d, s) in req.name.iter_mut().zip(name.bytes()) {
            *d = s as libc::c_char;
        }
        // SAFETY: TUNSETIFF reads and writes one `struct ifreq`, which IfReq mirrors
        // (16-byte name, flags, padding to 40 bytes); the descriptor is open and ours.
        #[allow(unsafe_code)]
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, &mut req as *mut IfReq) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        let fd = file.as_raw_fd();
        let hdr_len = crate::offload::VNET_HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one c_int through the pointer; TUNSETOFFLOAD takes
        // its flags by value; F_GETFL/F_SETFL take and return plain flags. The descriptor
        // is open and ours.
        #[allow(unsafe_code)]
        let (hdr_ok, uso, offloads, nonblocking) = unsafe {
            let hdr_ok =
                libc::ioctl(fd, libc::TUNSETVNETHDRSZ, &hdr_len as *const libc::c_int) == 0;
            // Older kernels refuse the unknown UDP flags with EINVAL: then without them.
            let uso = libc::ioctl(fd, libc::TUNSETOFFLOAD, (OFFLOADS | USO) as libc::c_ulong) == 0;
            let offloads =
                uso || libc::ioctl(fd, libc::TUNSETOFFLOAD, OFFLOADS as libc::c_ulong) == 0;
            let fl = libc::fcntl(fd, libc::F_GETFL);
            (
                hdr_ok,
                uso,
                offloads,
                fl >= 0 && libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK) == 0,
            )
        };
        if !hdr_ok || !nonblocking {
            return Err(io::Error::last_os_error());
        }
        if !offloads {
            // Still correct, one packet per read: the kernel segments before the TUN.
            tracing::info!(error = %io::Error::last_os_error(), "the TUN device refused offloads");
        }
        Ok(Self {
            file,
            name: name.to_owned(),
            offloads,
            uso,
        })
    }

    /// Whether the kernel hands over super-packets.
    pub fn offloads(&self) -> bool {
        self.offloads
    }

    /// Whether UDP super-packets pass in both directions.
    pub fn uso(&self) -> bool {
        self.uso
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Raw descriptor, for poll(2).
    pub fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    /// Reads one packet with its virtio-net header; `WouldBlock` when none is queued.
    pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        io::Read::read(&mut &self.file, buf)
    }

    /// Writes one packet behind its virtio-net header.
    pub fn write(&self, buf: &[u8]) -> io::Result<usize> {
        io::Write::write(&mut &self.file, buf)
    }
}

/// Waits up to `timeout_ms` for `fd` to become readable; `Ok(false)` on timeout.
pub fn wait_readable(fd: RawFd, timeout_ms: i32) -> io::Result<bool> {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd on the stack, count 1.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::poll(&mut p, 1, timeout_ms) };
    match rc {
        r if r < 0 => {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                Ok(false)
            } else {
                Err(e)
            }
        }
        0 => Ok(false),
        _ => Ok(true),
    }
}
