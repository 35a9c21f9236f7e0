//! WireGuard key sets: both keypairs of a Gateway (the VM's and the link's), generated
//! together and stored in one Kubernetes Secret so that half a set can never exist.
//!
//! Pure apart from the operating system's random source. The Secret's content is built and
//! read here; the API calls that create it live in the controller.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

/// Secret data key of the VM's private key (uploaded to Secret Manager, never to the VM's metadata).
pub const VM_PRIVATE: &str = "vm-private-key";
/// Secret data key of the VM's public key (the link's peer).
pub const VM_PUBLIC: &str = "vm-public-key";
/// Secret data key of the link's private key (read by the link through the API).
pub const LINK_PRIVATE: &str = "link-private-key";
/// Secret data key of the link's public key (the VM's peer, in its metadata).
pub const LINK_PUBLIC: &str = "link-public-key";
/// Secret data key of the set's version.
pub const VERSION: &str = "key-version";

/// Why a key set could not be made or read. Names the Secret's data key, never its value.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum KeysError {
    /// The operating system gave no randomness.
    #[error("no randomness for a WireGuard key: {0}")]
    NoRandomness(String),
    /// A data key of the set is absent.
    #[error("the key Secret lacks {0:?}")]
    Missing(&'static str),
    /// A data key is not UTF-8 text.
    #[error("the key Secret's {0:?} is not text")]
    NotText(&'static str),
    /// A data key is not a base64 32-byte key.
    #[error("the key Secret's {0:?} is not a base64 32-byte WireGuard key")]
    NotAKey(&'static str),
    /// The version is not a number.
    #[error("the key Secret's {VERSION:?} is not a number")]
    BadVersion,
    /// A public key is not the private key's.
    #[error("the key Secret's {0} public key does not match its private key")]
    Mismatch(&'static str),
}

/// A base64 WireGuard private key; its Debug never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct PrivateKey(String);

impl PrivateKey {
    /// The base64 text, for the two places that must hand it on (Secret Manager, the Secret).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PrivateKey(<redacted>)")
    }
}

impl Drop for PrivateKey {
    fn drop(&mut self) {
        // Overwrite in place; a String's bytes are plain ASCII here, so zeros stay valid UTF-8.
        let mut bytes = std::mem::take(&mut self.0).into_bytes();
        bytes.iter_mut().for_each(|b| *b = 0);
        std::hint::black_box(&bytes);
    }
}

/// One keypair.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyPair {
    /// Private half.
    pub private: PrivateKey,
    /// Public half, base64.
    pub public: String,
}

impl KeyPair {
    /// A fresh keypair from the operating system's random source.
    pub fn generate() -> Result<Self, KeysError> {
        let mut bytes = [0u8; 32];
        getrandom::getrandom(&mut bytes).map_err(|e| KeysError::NoRandomness(e.to_string()))?;
        // Clamped as `wg genkey` does, so the stored key is the canonical one.
        bytes[0] &= 248;
        bytes[31] &= 127;
        bytes[31] |= 64;
        let secret = x25519_dalek::StaticSecret::from(bytes);
        bytes.iter_mut().for_each(|b| *b = 0);
        let public = x25519_dalek::PublicKey::from(&secret);
        Ok(Self {
            private: PrivateKey(STANDARD.encode(secret.to_bytes())),
            public: STANDARD.encode(public.as_bytes()),
        })
    }
}

/// Both keypairs of a Gateway and their version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeySet {
    /// The VM's keypair.
    pub vm: KeyPair,
    /// The link's keypair.
    pub link: KeyPair,
    /// Increases whenever the set is replaced; the VM refetches its key when it changes.
    pub version: i64,
}

impl KeySet {
    /// A fresh set with `version`.
    pub fn generate(version: i64) -> Result<Self, KeysError> {
        Ok(Self {
            vm: KeyPair::generate()?,
            link: KeyPair::generate()?,
            version,
        })
    }

    /// The Secret's `data`.
    pub fn to_data(&self) -> BTreeMap<String, Vec<u8>> {
        [
            (VM_PRIVATE, self.vm.private.expose().to_owned()),
            (VM_PUBLIC, self.vm.public.clone()),
            (LINK_PRIVATE, self.link.private.expose().to_owned()),
            (LINK_PUBLIC, self.link.public.clone()),
            (VERSION, self.version.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.into_bytes()))
        .collect()
    }

    /// Reads a set back from a Secret's `data`. A set missing any part is an error, never a
    /// reason to regenerate half of it (the other half is already deployed somewhere).
    pub fn from_data(data: &BTreeMap<String, Vec<u8>>) -> Result<Self, KeysError> {
        let text = |k: &'static str| -> Result<String, KeysError> {
            let v = data.get(k).ok_or(KeysError::Missing(k))?;
            let s = std::str::from_utf8(v)
                .map_err(|_| KeysError::NotText(k))?
                .trim()
                .to_owned();
            Ok(s)
        };
        let key = |k: &'static str| -> Result<String, KeysError> {
            let s = text(k)?;
            match STANDARD.decode(&s) {
                Ok(b) if b.len() == 32 => Ok(s),
                _ => Err(KeysError::NotAKey(k)),
            }
        };
        let version = text(VERSION)?
            .parse::<i64>()
            .map_err(|_| KeysError::BadVersion)?;
        let set = Self {
            vm: KeyPair {
                private: PrivateKey(key(VM_PRIVATE)?),
                public: key(VM_PUBLIC)?,
            },
            link: KeyPair {
                private: PrivateKey(key(LINK_PRIVATE)?),
                public: key(LINK_PUBLIC)?,
            },
            version,
        };
        for (pair, what) in [(&set.vm, "VM"), (&set.link, "link")] {
            if public_of(pair.private.expose()).as_deref() != Some(pair.public.as_str()) {
                return Err(KeysError::Mismatch(what));
            }
        }
        Ok(set)
    }
}

fn public_of(private_b64: &str) -> Option<String> {
    let bytes: [u8; 32] = STANDARD.decode(private_b64).ok()?.try_into().ok()?;
    let secret = x25519_dalek::StaticSecret::from(bytes);
    Some(STANDARD.encode(x25519_dalek::PublicKey::from(&secret).as_bytes()))
}

/// Overwrites a Secret's data in place: the key Secret and an EgressGateway's wg-quick
/// Secret hold private keys, which should not linger in freed memory after a pass.
pub fn wipe(secret: &mut Secret) {
    use zeroize::Zeroize as _;
    for v in secret.data.iter_mut().flat_map(|d| d.values_mut()) {
        v.0.zeroize();
    }
    for v in secret.string_data.iter_mut().flat_map(|d| d.values_mut()) {
        v.zeroize();
    }
}

/// A Secret read from (or sent to) the API: its data is wiped when it is dropped, and its
/// `Debug` names it without its content.
#[derive(Clone, Default)]
pub struct WipedSecret(pub Secret);

impl std::ops::Deref for WipedSecret {
    type Target = Secret;

    fn deref(&self) -> &Secret {
        &self.0
    }
}

impl Drop for WipedSecret {
    fn drop(&mut self) {
        wipe(&mut self.0);
    }
}

impl std::fmt::Debug for WipedSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secret")
            .field("name", &self.0.metadata.name)
            .field(
                "keys",
                &self.0.data.as_ref().map(|d| d.keys().collect::<Vec<_>>()),
            )
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wiped_secret_keeps_no_key_and_its_debug_shows_none() {
        let set = KeySet::generate(1).expect("keys");
        let private = set.vm.private.expose().to_owned();
        let mut s = Secret {
            data: Some(
                set.to_data()
                    .into_iter()
                    .map(|(k, v)| (k, k8s_openapi::ByteString(v)))
                    .collect(),
            ),
            ..Secret::default()
        };
        let shown = format!("{:?}", WipedSecret(s.clone()));
        assert!(
            !shown.contains(&private) && shown.contains(VM_PRIVATE),
            "{shown}"
        );
        wipe(&mut s);
        assert!(
            s.data
                .iter()
                .flat_map(|d| d.values())
                .all(|v| v.0.iter().all(|b| *b == 0))
        );
    }

    #[test]
    fn a_generated_set_round_trips_and_matches_wg_conventions() {
        let set = KeySet::generate(3).expect("keys");
        assert_ne!(set.vm, set.link);
        let raw = STANDARD.decode(set.vm.private.expose()).expect("b64");
        assert_eq!(raw[0] & 7, 0, "clamped like wg genkey");
        assert_eq!(raw[31] & 0xc0, 0x40);
        let back = KeySet::from_data(&set.to_data()).expect("reads back");
        assert_eq!(back, set);
    }

    #[test]
    fn half_a_set_is_an_error_that_never_shows_a_key() {
        let set = KeySet::generate(1).expect("keys");
        let mut data = set.to_data();
        data.remove(LINK_PRIVATE);
        let e = KeySet::from_data(&data).expect_err("incomplete");
        assert_eq!(e, KeysError::Missing(LINK_PRIVATE));
        assert!(e.to_string().contains("link-private-key"), "{e}");
        let mut data = set.to_data();
        data.insert(VM_PUBLIC.into(), set.link.public.clone().into_bytes());
        let e = KeySet::from_data(&data).expect_err("mismatched");
        assert_eq!(e, KeysError::Mismatch("VM"));
        assert!(!e.to_string().contains(set.vm.private.expose()));
        assert!(!format!("{set:?}").contains(set.vm.private.expose()));
        assert!(!format!("{set:?}").contains(set.link.private.expose()));
    }
}
