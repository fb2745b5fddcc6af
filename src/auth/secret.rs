//! Secrets: random tokens, and argon2 hashes of passwords and token
//! secrets.

use argon2::Argon2;
use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};

/// Prefix of every token, so a leaked one is easy to recognise.
pub const PREFIX: &str = "thk_";

/// Returns a new token as (id, secret, the whole credential).
pub fn new_token() -> (String, String, String) {
    let id = hex(&random::<8>());
    let secret = hex(&random::<32>());
    let credential = format!("{PREFIX}{id}_{secret}");
    (id, secret, credential)
}

/// Splits a credential into its id and secret.
pub fn split(credential: &str) -> Option<(&str, &str)> {
    let rest = credential.strip_prefix(PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    let valid = |part: &str| !part.is_empty() && part.chars().all(|c| c.is_ascii_hexdigit());
    (valid(id) && valid(secret)).then_some((id, secret))
}

/// Returns the argon2id hash of `secret` with a random salt, as a PHC
/// string.
pub fn hash(secret: &str) -> String {
    Argon2::default()
        .hash_password(secret.as_bytes())
        .expect("argon2 with default parameters hashes any input")
        .to_string()
}

/// Checks `secret` against a PHC hash.
pub fn verify(secret: &str, hash: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|parsed| {
        Argon2::default()
            .verify_password(secret.as_bytes(), &parsed)
            .is_ok()
    })
}

fn random<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).expect("the operating system provides random bytes");
    bytes
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_split_and_verify() {
        let (id, secret, credential) = new_token();
        assert_eq!(split(&credential), Some((id.as_str(), secret.as_str())));
        let stored = hash(&secret);
        assert!(stored.starts_with("$argon2id$"));
        assert!(!stored.contains(&secret));
        assert!(verify(&secret, &stored));
        assert!(!verify("0000", &stored));
        assert!(!verify(&secret, "not a hash"));
    }

    #[test]
    fn malformed_credentials_do_not_split() {
        for credential in ["", "thk_", "thk_abc", "abc_def", "thk_zz_00", "thk__00"] {
            assert_eq!(split(credential), None, "{credential}");
        }
    }
}
