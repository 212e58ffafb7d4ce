//! RabbitMQ's password hash format (rabbit_password): `base64(salt ‖ H(salt ‖ password))`
//! with a 4-byte random salt and H one of SHA-256, SHA-512 or MD5.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use md5::Md5;
use sha2::{Digest, Sha256, Sha512};

use crate::model::HashingAlgorithm;

/// RabbitMQ's salt length.
pub const SALT_BYTES: usize = 4;

/// Length of the algorithm's digest.
pub fn digest_bytes(alg: HashingAlgorithm) -> usize {
    match alg {
        HashingAlgorithm::Sha256 => 32,
        HashingAlgorithm::Sha512 => 64,
        HashingAlgorithm::Md5 => 16,
    }
}

/// Hash a password with a fresh random salt.
///
/// Panics only if the operating system's random source fails, which on the supported
/// platforms means the system itself is broken (a predictable salt would be worse).
pub fn hash_password(alg: HashingAlgorithm, password: &str) -> String {
    let mut salt = [0u8; SALT_BYTES];
    getrandom::fill(&mut salt).expect("the OS random source failed while salting a password");
    hash_with_salt(alg, salt, password)
}

/// Hash a password with the given salt (for tests and `hash_password` tools).
pub fn hash_with_salt(alg: HashingAlgorithm, salt: [u8; SALT_BYTES], password: &str) -> String {
    let mut out = salt.to_vec();
    out.extend_from_slice(&digest(alg, &salt, password.as_bytes()));
    STANDARD.encode(out)
}

/// Does `password` match the stored hash? False for a malformed or empty stored hash and
/// for an empty password (RabbitMQ refuses blank passwords). The digest comparison takes the
/// same time wherever the first difference is.
pub fn verify(alg: HashingAlgorithm, stored_b64: &str, password: &str) -> bool {
    if stored_b64.is_empty() || password.is_empty() {
        return false;
    }
    let Some(stored) = decode(alg, stored_b64) else {
        return false;
    };
    let (salt, expected) = stored.split_at(SALT_BYTES);
    constant_time_eq(&digest(alg, salt, password.as_bytes()), expected)
}

/// Decode a stored hash, checking it is exactly salt plus one digest of `alg`.
pub(crate) fn decode(alg: HashingAlgorithm, stored_b64: &str) -> Option<Vec<u8>> {
    let bytes = STANDARD.decode(stored_b64.trim()).ok()?;
    (bytes.len() == SALT_BYTES + digest_bytes(alg)).then_some(bytes)
}

/// Why a stored hash is unusable, for import errors; `None` if it is well formed.
pub(crate) fn malformed_reason(alg: HashingAlgorithm, stored_b64: &str) -> Option<String> {
    if stored_b64.is_empty() {
        return None;
    }
    match STANDARD.decode(stored_b64.trim()) {
        Err(e) => Some(format!("password_hash is not valid base64 ({e})")),
        Ok(b) if b.len() != SALT_BYTES + digest_bytes(alg) => Some(format!(
            "password_hash decodes to {} bytes, {} expected for {} (4-byte salt + digest)",
            b.len(),
            SALT_BYTES + digest_bytes(alg),
            alg.name()
        )),
        Ok(_) => None,
    }
}

fn digest(alg: HashingAlgorithm, salt: &[u8], password: &[u8]) -> Vec<u8> {
    match alg {
        HashingAlgorithm::Sha256 => Sha256::new().chain_update(salt).chain_update(password).finalize().to_vec(),
        HashingAlgorithm::Sha512 => Sha512::new().chain_update(salt).chain_update(password).finalize().to_vec(),
        HashingAlgorithm::Md5 => Md5::new().chain_update(salt).chain_update(password).finalize().to_vec(),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    // Lengths are public (fixed by the algorithm); only the contents must not leak.
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rabbitmq_documented_sha256_vector() {
        let salt = [0x90, 0x8D, 0xC6, 0x0A];
        let h = hash_with_salt(HashingAlgorithm::Sha256, salt, "test12");
        assert_eq!(h, "kI3GCqW5JLMJa4iX1lo7X4D6XbYqlLgxIs30+P6tENUV2POR");
        assert!(verify(HashingAlgorithm::Sha256, &h, "test12"));
        assert!(!verify(HashingAlgorithm::Sha256, &h, "test13"));
    }

    #[test]
    fn rabbitmq_documented_foobarbaz_hashes_verify() {
        for stored in
            ["5ZbXJB3OWQlCzUNybwJ/XcL6ZqJA9zNQvXlwYnWQikQSP3lz", "TBybOvomyVw6BqBU/fHCEpVhDO7fLdQ4kxZDUpt6hagCxV8I"]
        {
            assert!(verify(HashingAlgorithm::Sha256, stored, "foobarbaz"), "{stored}");
            assert!(!verify(HashingAlgorithm::Sha256, stored, "foobarba"), "{stored}");
            // The same bytes read as another algorithm are the wrong length.
            assert!(!verify(HashingAlgorithm::Sha512, stored, "foobarbaz"));
        }
    }

    #[test]
    fn sha512_and_md5_round_trip_with_random_salt() {
        for alg in [HashingAlgorithm::Sha512, HashingAlgorithm::Md5, HashingAlgorithm::Sha256] {
            let h = hash_password(alg, "s3cret");
            assert_eq!(STANDARD.decode(&h).unwrap().len(), SALT_BYTES + digest_bytes(alg));
            assert!(verify(alg, &h, "s3cret"));
            assert!(!verify(alg, &h, "s3cret "));
        }
        // Salts are random: 8 hashes of one password are not all the same (a repeat of a
        // 32-bit salt across all 8 would be a broken random source).
        let first = hash_password(HashingAlgorithm::Sha256, "x");
        assert!((0..8).any(|_| hash_password(HashingAlgorithm::Sha256, "x") != first));
    }

    #[test]
    fn md5_matches_known_digest() {
        // md5(0x00000000 ‖ "guest") computed independently with Python hashlib.
        let h = hash_with_salt(HashingAlgorithm::Md5, [0, 0, 0, 0], "guest");
        assert_eq!(h, "AAAAAM8qHlIgCoMtmqYAu+KVRI8=");
        assert!(verify(HashingAlgorithm::Md5, &h, "guest"));
    }

    #[test]
    fn refuses_empty_and_malformed() {
        let h = hash_password(HashingAlgorithm::Sha256, "pw");
        assert!(!verify(HashingAlgorithm::Sha256, "", "pw"));
        assert!(!verify(HashingAlgorithm::Sha256, &h, ""));
        assert!(!verify(HashingAlgorithm::Sha256, "not base64!!", "pw"));
        assert!(!verify(HashingAlgorithm::Sha256, "AAAA", "pw"));
        assert!(malformed_reason(HashingAlgorithm::Sha256, "AAAA").is_some());
        assert!(malformed_reason(HashingAlgorithm::Sha256, &h).is_none());
    }
}
