//! Session tokens. The shared-secret formulas (the static `auth_token`, the proofs) are the
//! protocol's, in [`crate::protocol::auth`], where the clients take them from too.
//!
//! A token is 32 bytes from the OS random source, sent as base64url without padding (43
//! characters). The broker keeps only its SHA-256 ([`TokenHash`]), so a copy of the database cannot be used
//! to speak as anyone.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::rngs::OsRng;
use rand::TryRngCore;

pub use crate::domain::TokenHash;

/// A fresh session token.
pub fn new_token() -> std::io::Result<String> {
    let mut bytes = [0u8; 32];
    OsRng
        .try_fill_bytes(&mut bytes)
        .map_err(|e| std::io::Error::other(format!("the OS random source failed: {e}")))?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

/// `bytes` random bytes from the OS random source, as lower-case hex (the dashboard's login
/// token).
pub fn random_hex(bytes: usize) -> std::io::Result<String> {
    let mut random = vec![0u8; bytes];
    OsRng
        .try_fill_bytes(&mut random)
        .map_err(|e| std::io::Error::other(format!("the OS random source failed: {e}")))?;
    Ok(random.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_43_url_safe_characters_and_differ() {
        let a = new_token().unwrap();
        let b = new_token().unwrap();
        assert_eq!(a.len(), 43);
        assert!(a
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'));
        assert_ne!(a, b);
    }
}
