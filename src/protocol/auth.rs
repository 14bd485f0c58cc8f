//! The shared-secret formulas, in the one place both the broker and the client take them from:
//! the legacy static `auth_token`, and the two HMAC proofs of the challenge-response
//! registration (see `docs/PROTOCOL.md`, "challenge").
//!
//! The static token `sha256("<name>:<secret>")` never changes, so whoever sees it once can
//! register as that name until the secret changes. The proofs are HMAC-SHA256 keyed by the
//! secret over fresh nonces from both sides, the name and the client's uid, so a recorded proof
//! is worth nothing later, for another name, or relayed by another user's process.

use hmac::{Hmac, Mac};
use rand::rngs::OsRng;
use rand::TryRngCore;
use sha2::{Digest, Sha256};

/// What the broker's proof is computed over, first: a label no other proof starts with, so a
/// server proof can never be passed off as a client proof.
pub const SERVER_PROOF_LABEL: &str = "claude-ipc server proof v1";
/// The client proof's label.
pub const CLIENT_PROOF_LABEL: &str = "claude-ipc client proof v1";
/// Stands for the client's uid in both proofs when the broker cannot know it (a peer on a
/// non-loopback address, with `--allow-remote`).
pub const UNKNOWN_UID: &str = "-";
/// Random bytes in a nonce; sent as lowercase hex (64 characters).
pub const NONCE_BYTES: usize = 32;
/// How long a nonce may be, in characters: enough for 16 random bytes in hex, at most 128.
pub const NONCE_CHARS: std::ops::RangeInclusive<usize> = 32..=128;

/// The uid a proof is bound to: the client's own, as the broker sees it on the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProofUid(pub Option<u32>);

impl ProofUid {
    /// The uid as it enters the proof: decimal, or [`UNKNOWN_UID`].
    pub fn text(self) -> String {
        match self.0 {
            Some(uid) => uid.to_string(),
            None => UNKNOWN_UID.to_owned(),
        }
    }
}

/// The legacy `auth_token` a client sends to register `name` when a shared secret is set:
/// lowercase hex `sha256("<name>:<secret>")`.
pub fn expected_auth_token(name: &str, secret: &str) -> String {
    hex(&Sha256::digest(format!("{name}:{secret}").as_bytes()))
}

/// The broker's answer to a `challenge`: lowercase hex HMAC-SHA256, keyed by the secret, of
/// `label 0 name 0 client_nonce 0 server_nonce 0 uid`. Only a holder of the secret can make it,
/// and it covers the client's fresh nonce and the uid the broker sees the client as, so an
/// old one cannot be replayed and one relayed from another user's connection does not verify.
pub fn server_proof(
    secret: &str,
    name: &str,
    client_nonce: &str,
    server_nonce: &str,
    uid: ProofUid,
) -> String {
    hmac_hex(
        secret,
        &[
            SERVER_PROOF_LABEL,
            name,
            client_nonce,
            server_nonce,
            &uid.text(),
        ],
    )
}

/// The client's `auth_proof` for `register`: lowercase hex HMAC-SHA256, keyed by the secret,
/// of `label 0 name 0 server_nonce 0 client_nonce 0 uid`.
pub fn client_proof(
    secret: &str,
    name: &str,
    server_nonce: &str,
    client_nonce: &str,
    uid: ProofUid,
) -> String {
    hmac_hex(
        secret,
        &[
            CLIENT_PROOF_LABEL,
            name,
            server_nonce,
            client_nonce,
            &uid.text(),
        ],
    )
}

/// A fresh nonce: [`NONCE_BYTES`] from the OS random source, as lowercase hex.
pub fn fresh_nonce() -> std::io::Result<String> {
    let mut bytes = [0u8; NONCE_BYTES];
    OsRng
        .try_fill_bytes(&mut bytes)
        .map_err(|e| std::io::Error::other(format!("the OS random source failed: {e}")))?;
    Ok(hex(&bytes))
}

/// Whether `text` may be a nonce: [`NONCE_CHARS`] letters, digits, `-` or `_` (hex or
/// base64url). Nothing else may enter a proof, so no field can contain the 0 separator.
pub fn is_valid_nonce(text: &str) -> bool {
    NONCE_CHARS.contains(&text.len())
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Compares two byte strings in time that depends only on their lengths, so a wrong token or
/// proof reveals nothing about how much of it was right.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let difference = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(difference) == 0
}

/// Text a broker sent, as a client's error may repeat it: at most `max_chars` characters,
/// control characters as `?`, so a hostile broker cannot put escape sequences or a flood of
/// text into what a person reads.
pub fn printable(text: &str, max_chars: usize) -> String {
    text.chars()
        .take(max_chars)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// HMAC-SHA256 keyed by `secret` over `fields` joined by 0 bytes, as lowercase hex.
fn hmac_hex(secret: &str, fields: &[&str]) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes a key of any length");
    for (i, field) in fields.iter().enumerate() {
        if i > 0 {
            mac.update(&[0]);
        }
        mac.update(field.as_bytes());
    }
    hex(&mac.finalize().into_bytes())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLIENT_NONCE: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
    const SERVER_NONCE: &str = "ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100";

    /// Computed with python3's `hmac` and `hashlib` modules, not with this code:
    /// `hmac.new(b"s3cret", b"claude-ipc server proof v1\0alice\0" + C + b"\0" + S +
    /// b"\01000", hashlib.sha256).hexdigest()`, and likewise for the client proof (label,
    /// name, S, C, uid) with uid `1000` and `-`. C and S are the nonces above.
    const SERVER_VECTOR: &str = "141c5238418256f7632b906b76e91f7de5e1852d9709e53b4048f47d020a32e1";
    const CLIENT_VECTOR: &str = "9ee13a8902489829558d2c6db5276ab6d9ce92ddd2493ed13249271e1be109ef";
    const CLIENT_VECTOR_UNKNOWN_UID: &str =
        "9dfec2d0b2940619aa347f873477506f4d3a889b19417b540499d7d77f31fe60";

    #[test]
    fn the_static_token_matches_the_legacy_formula() {
        // Computed with python3, not with this code:
        // hashlib.sha256(b"alice:s3cret").hexdigest()
        assert_eq!(
            expected_auth_token("alice", "s3cret"),
            "1fe25d9a2d615222be6f64cccdf98ccb67023a1b492f090876ad1bf896833f04"
        );
        // hashlib.sha256("bob:pässword with spaces".encode()).hexdigest(): the secret is
        // hashed as its UTF-8 bytes, spaces and all.
        assert_eq!(
            expected_auth_token("bob", "pässword with spaces"),
            "991e1f522d58e907bd828ba455c5e579de9ca93a889a271847f71c4ae48ec61b"
        );
        assert_eq!(
            hex(&Sha256::digest(b"abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn hmac_is_the_standard_one() {
        // RFC 4231, test case 2: key "Jefe", data "what do ya want for nothing?".
        assert_eq!(
            hmac_hex("Jefe", &["what do ya want for nothing?"]),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn the_proofs_match_vectors_computed_independently() {
        assert_eq!(
            server_proof(
                "s3cret",
                "alice",
                CLIENT_NONCE,
                SERVER_NONCE,
                ProofUid(Some(1000))
            ),
            SERVER_VECTOR
        );
        assert_eq!(
            client_proof(
                "s3cret",
                "alice",
                SERVER_NONCE,
                CLIENT_NONCE,
                ProofUid(Some(1000))
            ),
            CLIENT_VECTOR
        );
        assert_eq!(
            client_proof(
                "s3cret",
                "alice",
                SERVER_NONCE,
                CLIENT_NONCE,
                ProofUid(None)
            ),
            CLIENT_VECTOR_UNKNOWN_UID
        );
    }

    #[test]
    fn every_input_changes_the_proof() {
        let base = client_proof("k", "alice", SERVER_NONCE, CLIENT_NONCE, ProofUid(Some(0)));
        for other in [
            client_proof("K", "alice", SERVER_NONCE, CLIENT_NONCE, ProofUid(Some(0))),
            client_proof("k", "alicf", SERVER_NONCE, CLIENT_NONCE, ProofUid(Some(0))),
            client_proof("k", "alice", CLIENT_NONCE, CLIENT_NONCE, ProofUid(Some(0))),
            client_proof("k", "alice", SERVER_NONCE, SERVER_NONCE, ProofUid(Some(0))),
            client_proof("k", "alice", SERVER_NONCE, CLIENT_NONCE, ProofUid(Some(1))),
            client_proof("k", "alice", SERVER_NONCE, CLIENT_NONCE, ProofUid(None)),
            server_proof("k", "alice", CLIENT_NONCE, SERVER_NONCE, ProofUid(Some(0))),
        ] {
            assert_ne!(base, other);
        }
    }

    #[test]
    fn nonces_are_fresh_hex_and_only_plain_characters_are_accepted() {
        let (a, b) = (fresh_nonce().unwrap(), fresh_nonce().unwrap());
        assert_eq!(a.len(), 64);
        assert!(is_valid_nonce(&a));
        assert_ne!(a, b);
        assert!(is_valid_nonce(&"A-_z".repeat(8)));
        assert!(!is_valid_nonce(&"a".repeat(31)));
        assert!(!is_valid_nonce(&"a".repeat(129)));
        assert!(!is_valid_nonce(&format!("{}\0", "a".repeat(40))));
        assert!(!is_valid_nonce(&format!("{} ", "a".repeat(40))));
    }

    #[test]
    fn printable_text_is_cut_and_has_no_control_characters() {
        assert_eq!(printable("\u{1b}[2Jhello", 6), "?[2Jhe");
        assert_eq!(printable("uid 1000", 16), "uid 1000");
    }

    #[test]
    fn constant_time_eq_is_plain_equality() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}
