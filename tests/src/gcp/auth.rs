//! OAuth for the emulator: service-account key generation (through the `openssl` binary,
//! like `gcloud iam service-accounts keys create` hands users a PEM) and verification of the
//! RS256 JWT-bearer assertions that `gcp_auth` sends to the token endpoint.
//!
//! I/O boundary: `generate_key_pem` runs `openssl`; the rest is pure.

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use ring::signature::{self, KeyPair as _, RsaKeyPair};
use serde_json::Value;

/// The grant type of a service-account JWT exchange.
pub const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

/// Generates a fresh 2048-bit RSA key as a PKCS#8 PEM.
pub fn generate_key_pem() -> Result<String, String> {
    let out = std::process::Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
        ])
        .output()
        .map_err(|e| format!("running openssl (install the openssl package): {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "openssl genpkey failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    String::from_utf8(out.stdout).map_err(|_| "openssl printed a non-UTF-8 key".to_owned())
}

/// The PKCS#1 `RSAPublicKey` DER of a PKCS#8 PEM private key.
pub fn public_key_der(pem: &str) -> Result<Vec<u8>, String> {
    let b64: String = pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect::<Vec<_>>()
        .concat();
    let der = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .map_err(|_| "private key PEM is not base64".to_owned())?;
    let pair = RsaKeyPair::from_pkcs8(&der).map_err(|e| format!("not a PKCS#8 RSA key: {e}"))?;
    Ok(pair.public_key().as_ref().to_vec())
}

/// What a verified assertion grants.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    /// The service account (`iss`).
    pub email: String,
    /// Requested scopes, space separated.
    pub scope: String,
}

fn b64url(s: &str) -> Result<Vec<u8>, String> {
    // gcp_auth pads its segments, RFC 7515 says not to: Google accepts both.
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s.trim_end_matches('='))
        .map_err(|_| "assertion segment is not base64url".to_owned())
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Google's documented token audience: Google's own client libraries sign for it whatever
/// token URL the key file names.
pub const GOOGLE_TOKEN_AUDIENCE: &str = "https://oauth2.googleapis.com/token";

/// Verifies a JWT-bearer assertion: RS256 signature by the issuer's registered key,
/// audience equal to the token endpoint (`audience`, or Google's documented one), and a
/// live validity window of at most an hour. Errors use the wording of Google's
/// `invalid_grant` descriptions.
pub fn verify_assertion(
    jwt: &str,
    keys: &HashMap<String, Vec<Vec<u8>>>,
    audience: &str,
) -> Result<Grant, String> {
    let mut parts = jwt.split('.');
    let (Some(h), Some(c), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("Invalid JWT: expected three segments".to_owned());
    };
    let header: Value =
        serde_json::from_slice(&b64url(h)?).map_err(|_| "Invalid JWT header".to_owned())?;
    if header.get("alg").and_then(Value::as_str) != Some("RS256") {
        return Err("Invalid JWT: alg must be RS256".to_owned());
    }
    let claims: Value =
        serde_json::from_slice(&b64url(c)?).map_err(|_| "Invalid JWT claims".to_owned())?;
    let iss = claims
        .get("iss")
        .and_then(Value::as_str)
        .ok_or("Invalid JWT: no iss")?;
    let Some(candidates) = keys.get(iss) else {
        return Err("Invalid JWT Signature.".to_owned());
    };
    let signed = &jwt[..h.len() + 1 + c.len()];
    let sig = b64url(s)?;
    let verified = candidates.iter().any(|k| {
        signature::UnparsedPublicKey::new(&signature::RSA_PKCS1_2048_8192_SHA256, k)
            .verify(signed.as_bytes(), &sig)
            .is_ok()
    });
    if !verified {
        return Err("Invalid JWT Signature.".to_owned());
    }
    let aud = claims.get("aud").and_then(Value::as_str);
    if aud != Some(audience) && aud != Some(GOOGLE_TOKEN_AUDIENCE) {
        return Err(format!("Invalid JWT: aud must be {audience}"));
    }
    let iat = claims.get("iat").and_then(Value::as_i64).unwrap_or(0);
    let exp = claims.get("exp").and_then(Value::as_i64).unwrap_or(0);
    let now = now_secs();
    // Google allows a few minutes of clock skew and at most one hour of validity.
    if iat > now + 300 || exp < now - 300 || exp - iat > 3600 {
        return Err("Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe. Check your iat and exp values in the JWT claim.".to_owned());
    }
    Ok(Grant {
        email: iss.to_owned(),
        scope: claims
            .get("scope")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sign(pem: &str, claims: &Value) -> String {
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        let der = base64::engine::general_purpose::STANDARD
            .decode(body)
            .expect("PEM body");
        let pair = RsaKeyPair::from_pkcs8(&der).expect("PKCS#8");
        let msg = format!(
            "{}.{}",
            b64(br#"{"alg":"RS256","typ":"JWT"}"#),
            b64(claims.to_string().as_bytes())
        );
        let mut sig = vec![0; pair.public().modulus_len()];
        pair.sign(
            &signature::RSA_PKCS1_SHA256,
            &ring::rand::SystemRandom::new(),
            msg.as_bytes(),
            &mut sig,
        )
        .expect("signing");
        format!("{msg}.{}", b64(&sig))
    }

    #[test]
    fn verifies_signature_audience_and_window() {
        let pem = generate_key_pem().expect("openssl is installed by make deps");
        let other = generate_key_pem().expect("openssl");
        let email = "op@p.iam.gserviceaccount.com".to_owned();
        let keys = HashMap::from([(email.clone(), vec![public_key_der(&pem).expect("key")])]);
        let now = now_secs();
        let claims = serde_json::json!({"iss": email, "aud": "http://e/token", "iat": now, "exp": now + 3595, "scope": "s"});
        let grant = verify_assertion(&sign(&pem, &claims), &keys, "http://e/token").expect("valid");
        assert_eq!(grant.email, email);
        assert!(verify_assertion(&sign(&other, &claims), &keys, "http://e/token").is_err());
        assert!(verify_assertion(&sign(&pem, &claims), &keys, "http://x/token").is_err());
        // Google's client libraries sign for Google's token URL: accepted too (issue 18,
        // item 9; refused before).
        let google = serde_json::json!({"iss": email, "aud": GOOGLE_TOKEN_AUDIENCE, "iat": now, "exp": now + 3595});
        assert!(verify_assertion(&sign(&pem, &google), &keys, "http://e/token").is_ok());
        let long = serde_json::json!({"iss": email, "aud": "http://e/token", "iat": now, "exp": now + 7200});
        assert!(verify_assertion(&sign(&pem, &long), &keys, "http://e/token").is_err());
        assert!(verify_assertion("a.b", &keys, "http://e/token").is_err());
    }
}
