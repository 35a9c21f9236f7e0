//! What the link reports: readiness, liveness and Prometheus metrics, computed from the
//! live device and counters at scrape time. Shared between the control loop and the HTTP
//! server; no I/O here.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, Weak};
use std::time::Duration;

use crate::wg::Device;

/// Readiness floor: WireGuard re-handshakes at most every two minutes under traffic.
const MIN_READY_AGE: Duration = Duration::from_secs(150);

#[derive(Default)]
struct Inner {
    device: Option<Weak<Device>>,
    forwards: usize,
    keepalive: Option<u16>,
    last_error: Option<String>,
    configured: bool,
}

/// Shared status of one link process.
#[derive(Default)]
pub struct Status {
    inner: Mutex<Inner>,
    leader: AtomicBool,
    applies: AtomicU64,
    errors: AtomicU64,
    /// Whether leader election is in use (a standby is ready; a sole process must lead).
    pub elected: AtomicBool,
}

/// The answer of `/readyz`.
#[derive(Debug, PartialEq, Eq)]
pub struct Readiness {
    /// Ready or not.
    pub ready: bool,
    /// One sentence saying why.
    pub reason: String,
}

impl Status {
    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records the device that now carries wg0 (or none after fencing).
    pub fn set_device(&self, d: Option<Weak<Device>>) {
        self.inner().device = d;
    }

    /// Records the active forward count and keepalive.
    pub fn set_forwards(&self, n: usize, keepalive: Option<u16>) {
        let mut i = self.inner();
        i.forwards = n;
        i.keepalive = keepalive;
    }

    /// Records a successful apply.
    pub fn applied(&self) {
        self.applies.fetch_add(1, Ordering::Relaxed);
        let mut i = self.inner();
        i.last_error = None;
        i.configured = true;
    }

    /// Records a failed apply or an invalid config.
    pub fn failed(&self, why: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        self.inner().last_error = Some(why);
    }

    /// When the tunnel's last handshake happened (whole seconds), if there was one.
    pub fn last_handshake(&self) -> Option<std::time::SystemTime> {
        let age = self.device().and_then(|d| d.handshake_age())?;
        let at = std::time::SystemTime::now().checked_sub(age)?;
        let secs = at.duration_since(std::time::UNIX_EPOCH).ok()?.as_secs();
        Some(std::time::UNIX_EPOCH + Duration::from_secs(secs))
    }

    /// Records leadership.
    pub fn set_leader(&self, l: bool) {
        self.leader.store(l, Ordering::SeqCst);
    }

    /// Whether this process holds the data plane.
    pub fn is_leader(&self) -> bool {
        self.leader.load(Ordering::SeqCst)
    }

    fn device(&self) -> Option<std::sync::Arc<Device>> {
        self.inner().device.as_ref().and_then(Weak::upgrade)
    }

    /// Readiness: a standby is ready; the leader is ready once its last handshake is
    /// younger than max(3 x keepalive, 150 s) and the last config applied cleanly.
    pub fn readiness(&self) -> Readiness {
        let (err, configured, keepalive) = {
            let i = self.inner();
            (i.last_error.clone(), i.configured, i.keepalive)
        };
        if !self.is_leader() {
            let elected = self.elected.load(Ordering::Relaxed);
            return Readiness {
                ready: elected,
                reason: if elected {
                    "standby: another replica holds the lease".into()
                } else {
                    "not started".into()
                },
            };
        }
        if !configured {
            let reason = match err {
                Some(e) => format!("config not applied: {e}"),
                None => "waiting for configuration".into(),
            };
            return Readiness {
                ready: false,
                reason,
            };
        }
        // A refused update leaves the last good data plane serving: keep the pod in its
        // Service, but say so.
        let note = err
            .map(|e| format!("; serving the last good config, the newest was refused: {e}"))
            .unwrap_or_default();
        let limit = MIN_READY_AGE.max(Duration::from_secs(3 * u64::from(keepalive.unwrap_or(0))));
        match self.device().and_then(|d| d.handshake_age()) {
            Some(age) if age < limit => Readiness {
                ready: true,
                reason: format!("handshake {}s ago{note}", age.as_secs()),
            },
            Some(age) => Readiness {
                ready: false,
                reason: format!(
                    "last handshake {}s ago (limit {}s){note}",
                    age.as_secs(),
                    limit.as_secs()
                ),
            },
            None => Readiness {
                ready: false,
                reason: format!("no handshake with the peer yet{note}"),
            },
        }
    }

    /// Prometheus text exposition.
    pub fn metrics(&self) -> String {
        let mut s = String::new();
        let dev = self.device();
        let stats = dev.as_ref().map(|d| d.stats()).unwrap_or_default();
        let age = dev.as_ref().and_then(|d| d.handshake_age());
        let forwards = self.inner().forwards;
        let mut metric = |name: &str, kind: &str, help: &str, value: String| {
            let _ = writeln!(
                s,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        };
        metric(
            "wgnet_link_leader",
            "gauge",
            "1 when this replica holds wg0 and the nftables table.",
            u8::from(self.is_leader()).to_string(),
        );
        metric(
            "wgnet_link_handshake_age_seconds",
            "gauge",
            "Seconds since the last WireGuard handshake; NaN when there is none.",
            age.map_or_else(|| "NaN".into(), |a| format!("{:.3}", a.as_secs_f64())),
        );
        metric(
            "wgnet_link_rx_bytes_total",
            "counter",
            "Plaintext bytes received from the tunnel.",
            stats.rx_bytes.to_string(),
        );
        metric(
            "wgnet_link_tx_bytes_total",
            "counter",
            "Plaintext bytes sent into the tunnel.",
            stats.tx_bytes.to_string(),
        );
        metric(
            "wgnet_link_rx_packets_total",
            "counter",
            "Packets received from the tunnel.",
            stats.rx_packets.to_string(),
        );
        metric(
            "wgnet_link_tx_packets_total",
            "counter",
            "Packets sent into the tunnel.",
            stats.tx_packets.to_string(),
        );
        metric(
            "wgnet_link_dropped_packets_total",
            "counter",
            "Packets dropped by the WireGuard device.",
            stats.dropped.to_string(),
        );
        metric(
            "wgnet_link_tx_super_packets_total",
            "counter",
            "TCP and UDP super-packets from the pod split into segments before encryption (TSO, USO).",
            stats.tx_super_packets.to_string(),
        );
        metric(
            "wgnet_link_rx_super_packets_total",
            "counter",
            "Decrypted TCP segments or UDP datagrams merged into super-packets for the pod (GRO).",
            stats.rx_super_packets.to_string(),
        );
        metric(
            "wgnet_link_forwards",
            "gauge",
            "Forwards active in the nftables table.",
            forwards.to_string(),
        );
        metric(
            "wgnet_link_config_applies_total",
            "counter",
            "Configurations applied.",
            self.applies.load(Ordering::Relaxed).to_string(),
        );
        metric(
            "wgnet_link_config_errors_total",
            "counter",
            "Configurations refused or failed to apply.",
            self.errors.load(Ordering::Relaxed).to_string(),
        );
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_reasons() {
        let s = Status::default();
        assert!(!s.readiness().ready);
        s.elected.store(true, Ordering::Relaxed);
        assert_eq!(
            s.readiness().reason,
            "standby: another replica holds the lease"
        );
        assert!(s.readiness().ready);
        s.set_leader(true);
        assert_eq!(
            s.readiness(),
            Readiness {
                ready: false,
                reason: "waiting for configuration".into()
            }
        );
        s.failed("peer.publicKey is not base64".into());
        assert!(s.readiness().reason.contains("config not applied"));
        s.applied();
        assert_eq!(s.readiness().reason, "no handshake with the peer yet");
        s.failed("forward 80/tcp is listed twice".into());
        assert_eq!(
            s.readiness().reason,
            "no handshake with the peer yet; serving the last good config, the newest was refused: forward 80/tcp is listed twice"
        );
    }

    #[test]
    fn metrics_are_prometheus_text() {
        let s = Status::default();
        s.applied();
        let m = s.metrics();
        assert!(m.contains("# TYPE wgnet_link_config_applies_total counter\nwgnet_link_config_applies_total 1\n"), "{m}");
        assert!(m.contains("wgnet_link_handshake_age_seconds NaN"));
        for line in m.lines().filter(|l| !l.starts_with('#')) {
            let mut parts = line.split(' ');
            let (name, value) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            assert!(
                name.starts_with("wgnet_link_") && parts.next().is_none(),
                "{line}"
            );
            assert!(value == "NaN" || value.parse::<f64>().is_ok(), "{line}");
        }
    }
}
