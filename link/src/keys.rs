//! WireGuard key material: parsing from base64, public-key derivation, and types whose
//! `Debug` never shows the secret. No I/O.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use x25519_dalek as x25519;

/// Why a key string was refused. Never carries the key itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// Not base64 at all.
    #[error("is not base64")]
    NotBase64,
    /// Base64, but not 32 bytes.
    #[error("decodes to {0} bytes, a WireGuard key has 32")]
    WrongLength(usize),
}

fn decode32(s: &str) -> Result<[u8; 32], KeyError> {
    let bytes = STANDARD
        .decode(s.trim().as_bytes())
        .map_err(|_| KeyError::NotBase64)?;
    <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| KeyError::WrongLength(bytes.len()))
}

/// A public key (or any non-secret 32-byte key such as the peer's).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicKey(pub [u8; 32]);

impl PublicKey {
    /// Parses the base64 form used by wg(8) and Kubernetes objects.
    pub fn parse(s: &str) -> Result<Self, KeyError> {
        decode32(s).map(Self)
    }

    /// The base64 form.
    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0)
    }
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicKey({})", self.to_base64())
    }
}

/// A private key or preshared key. Zeroed on drop; `Debug` is redacted.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretKey([u8; 32]);

impl SecretKey {
    /// Parses the base64 form.
    pub fn parse(s: &str) -> Result<Self, KeyError> {
        decode32(s).map(Self)
    }

    /// The raw bytes, for handing to the noise protocol only.
    pub fn bytes(&self) -> [u8; 32] {
        self.0
    }

    /// The matching public key (meaningful when this is a private key).
    pub fn public(&self) -> PublicKey {
        let secret = x25519::StaticSecret::from(self.0);
        PublicKey(x25519::PublicKey::from(&secret).to_bytes())
    }
}

impl Drop for SecretKey {
    fn drop(&mut self) {
        // Volatile writes so the compiler cannot drop the wipe of a dying value.
        for b in &mut self.0 {
            // SAFETY: `b` is a valid, aligned, exclusive reference into our own array.
            #[allow(unsafe_code)]
            unsafe {
                std::ptr::write_volatile(b, 0);
            }
        }
    }
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretKey(<redacted>)")
    }
}

/// Whether `message` repeats 16 or more consecutive bytes of `secret`: the check the
/// tests and fuzz targets apply to every error a parser of secret material returns. The
/// one echo parsers allow, a quoted setting name of at most 24 letters, is blanked first.
/// Key material (base64, hex) never holds whitespace, so only runs without whitespace
/// count, and runs of letters only are left out too. That keeps the check from flagging
/// fixed message text a fuzzer copied into its input.
pub fn echoes_secret(message: &str, secret: &[u8]) -> bool {
    echoes_secret_beyond(message, secret, &[])
}

/// [`echoes_secret`], not counting runs that also occur in `public`: input that is not
/// secret (a link's `config.json`) may be quoted, and a fuzzer may copy it into the
/// secret part.
pub fn echoes_secret_beyond(message: &str, secret: &[u8], public: &[u8]) -> bool {
    const RUN: usize = 16;
    let m = blank_quoted_names(message);
    secret.windows(RUN).any(|w| {
        !w.iter().all(u8::is_ascii_alphabetic)
            && !w.iter().any(u8::is_ascii_whitespace)
            && m.windows(RUN).any(|x| x == w)
            && !public.windows(RUN).any(|x| x == w)
    })
}

/// `message` with every `"Name"` (1 to 24 ASCII letters in double quotes) blanked.
fn blank_quoted_names(message: &str) -> Vec<u8> {
    let mut out = message.as_bytes().to_vec();
    let mut i = 0;
    while i < out.len() {
        if out[i] == b'"' {
            let name = out[i + 1..]
                .iter()
                .take_while(|b| b.is_ascii_alphabetic())
                .count();
            if (1..=24).contains(&name) && out.get(i + 1 + name) == Some(&b'"') {
                out[i..=i + 1 + name].fill(b' ');
                i += name + 2;
                continue;
            }
        }
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    // RFC 7748 section 6.1 test vector (Alice).
    const ALICE_PRIV: &str = "dwdtCnMYpX08FsFyUbJmRd9ML4frwJkqsXf7pR25LCo=";
    const ALICE_PUB: &str = "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo=";

    #[test]
    fn an_echo_is_16_bytes_of_the_secret_but_not_a_quoted_setting_name() {
        let file = format!("PrivateKey: {ALICE_PRIV}\nPersistentKeepaliveX = 1\n");
        let leak = format!("line 1: unknown setting {}", &ALICE_PRIV[..20]);
        assert!(echoes_secret(&leak, file.as_bytes()));
        assert!(!echoes_secret(
            "line 2: unknown setting \"PersistentKeepaliveX\"",
            file.as_bytes()
        ));
        assert!(!echoes_secret("line 1: a fixed reason", file.as_bytes()));
        // A quoted setting name the fuzzer planted with its quotes is the allowed echo.
        let file = "x = \"PersistentKeepelive\"9\nPersistentKeepelive = 1\n";
        assert!(!echoes_secret(
            "line 2: unknown key \"PersistentKeepelive\" in [Interface]",
            file.as_bytes()
        ));
        // Fixed text a fuzzer planted in its input is not an echo.
        let planted = "AllowedIPs = 32is not UTF-8 text/0";
        assert!(!echoes_secret(
            "line 3: is not UTF-8 text",
            planted.as_bytes()
        ));
    }

    #[test]
    fn derives_the_public_key() {
        let k = SecretKey::parse(ALICE_PRIV).expect("valid");
        assert_eq!(k.public().to_base64(), ALICE_PUB);
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let k = SecretKey::parse(ALICE_PRIV).expect("valid");
        let shown = format!("{k:?}");
        assert!(
            !shown.contains(ALICE_PRIV) && !shown.contains("dwdt"),
            "{shown}"
        );
    }

    #[test]
    fn refuses_bad_keys_without_echoing_them() {
        assert_eq!(SecretKey::parse("not base64!"), Err(KeyError::NotBase64));
        let e = SecretKey::parse("AAAA").expect_err("3 bytes");
        assert_eq!(e, KeyError::WrongLength(3));
        assert!(!e.to_string().contains("AAAA"));
        assert!(
            PublicKey::parse(&format!(" {ALICE_PUB}\n")).is_ok(),
            "whitespace is trimmed"
        );
    }
}
