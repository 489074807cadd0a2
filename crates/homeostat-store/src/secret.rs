//! Secrets: generated from the OS's randomness, shown once, stored as
//! SHA-256 hashes, compared in constant time.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// A new secret with a readable prefix (`hsb_` bootstrap, `hsa_` agent
/// credential, `hsk_` API key) and 256 random bits.
pub(crate) fn generate(prefix: &str) -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the operating system's random source failed");
    format!("{prefix}_{}", hex::encode(bytes))
}

/// The hash stored for a secret.
pub(crate) fn hash(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// Compares a stored hash with a presented secret's hash in constant time.
pub(crate) fn matches(stored: &[u8], presented: &[u8; 32]) -> bool {
    stored.len() == presented.len() && bool::from(stored.ct_eq(presented))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_unique_prefixed_and_hash_stably() {
        let a = generate("hsk");
        let b = generate("hsk");
        assert_ne!(a, b);
        assert!(a.starts_with("hsk_") && a.len() == 4 + 64);
        assert!(matches(&hash(&a), &hash(&a)));
        assert!(!matches(&hash(&a), &hash(&b)));
        assert!(!matches(&hash(&a)[..31], &hash(&a)));
    }
}
