//! Secret mode cannot be switched off by accident: a data directory remembers that it is
//! protected by a shared secret, and a broker started there without that secret refuses.
//!
//! The directory keeps a verifier of the secret, never the secret: a random salt and
//! HMAC-SHA256 keyed by the secret over a fixed context and the salt (`data_dir_security`,
//! see [`crate::store::security`]). A copy of the database therefore tells whether a guessed
//! secret is right only at the cost of one HMAC per guess, as the legacy `auth_token` already
//! does; a long random secret is what keeps it safe.
//!
//! What a start does, by what the directory remembers and what the broker was given:
//!
//! | remembered | given | start |
//! |---|---|---|
//! | open | no secret | serves in open mode |
//! | open | a secret | records its verifier, ends every session, serves |
//! | secret | the same secret | serves |
//! | secret | none, or another | refuses, changing nothing |
//! | anything | `--reset-secret` | records the given secret (or open mode), ends every session |
//!
//! Sessions end on every change because a session issued under one mode must not outlive it:
//! whoever registered in open mode never proved knowing the secret.

use std::path::Path;

use hmac::{Hmac, Mac};
use rand::rngs::OsRng;
use rand::TryRngCore;
use sha2::Sha256;

use crate::domain::Timestamp;
use crate::protocol::auth::constant_time_eq;
use crate::store::security::Protection;
use crate::store::{Durability, Store, StoreError};

/// What the verifier's HMAC covers before the salt, so it cannot stand for anything else
/// made with the same secret.
const VERIFIER_CONTEXT: &[u8] = b"claude-ipc data-dir verifier v1";
/// Random bytes per verifier: two directories with one secret get different verifiers.
const SALT_BYTES: usize = 16;

/// Why a broker may not serve this data directory with the secret it was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mismatch {
    /// The directory is protected and the broker has no secret.
    SecretMissing,
    /// The directory is protected by another secret.
    SecretDiffers,
}

impl Mismatch {
    /// The refusal as a person reads it: what happened and how to change it on purpose.
    pub fn advice(self, data_dir: &Path) -> String {
        let problem = match self {
            Mismatch::SecretMissing => "IPC_SHARED_SECRET is not set",
            Mismatch::SecretDiffers => "IPC_SHARED_SECRET does not match it",
        };
        format!(
            "refusing to start: the data directory {} is protected by a shared secret, and \
             {problem}. Set the same secret, or run 'claude-ipc serve --reset-secret' once to \
             make the secret now given (or open mode, without one) the directory's own; that \
             ends every session",
            data_dir.display()
        )
    }
}

/// What a start changed in the directory's protection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Nothing: the directory's mode is the broker's.
    None,
    /// The directory is now protected by the given secret.
    Protected { sessions_ended: usize },
    /// `--reset-secret` without a secret: the directory is in open mode again.
    Opened { sessions_ended: usize },
}

/// Why [`apply`] did not let the broker start.
#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    #[error("{}", .mismatch.advice(.data_dir))]
    Refused {
        mismatch: Mismatch,
        data_dir: std::path::PathBuf,
    },
    #[error("cannot make a verifier of the secret: the OS random source failed: {0}")]
    Random(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Checks the broker's secret against the directory's protection and records a change, in
/// one job on the writer thread; a refusal writes nothing. `now` is the broker clock's time.
pub async fn apply(
    store: &Store,
    data_dir: &Path,
    secret: Option<String>,
    reset: bool,
    now: Timestamp,
) -> Result<Change, GuardError> {
    let data_dir = data_dir.to_owned();
    store
        .write(Durability::Flushed, move |tx| {
            let stored = tx.read_protection()?;
            let wanted = match decide(&stored, secret.as_deref(), reset) {
                Ok(None) => return Ok(Change::None),
                Ok(Some(wanted)) => wanted,
                Err(mismatch) => return Err(GuardError::Refused { mismatch, data_dir }),
            };
            let protection = match &wanted {
                Some(secret) => protect_with(secret)?,
                None => Protection::Open,
            };
            tx.record_protection(&protection, now)?;
            let sessions_ended = tx.end_all_sessions(now)?;
            Ok(match wanted {
                Some(_) => Change::Protected { sessions_ended },
                None => Change::Opened { sessions_ended },
            })
        })
        .await
}

/// Logs what [`apply`] changed, at INFO: the mode and how many sessions ended, never the
/// secret.
pub fn log_change(change: Change, data_dir: &Path, reset: bool) {
    match change {
        Change::None => {}
        Change::Protected { sessions_ended } => tracing::info!(
            data_dir = %data_dir.display(),
            sessions_ended,
            "the data directory is now protected by the shared secret given to this broker \
             (only a verifier of it is stored); every session issued before ended, so each \
             instance registers again with the secret"
        ),
        Change::Opened { sessions_ended } => tracing::info!(
            data_dir = %data_dir.display(),
            sessions_ended,
            "--reset-secret without a secret: the data directory is in open mode again; every \
             session issued before ended"
        ),
    }
    if reset {
        tracing::warn!(
            "--reset-secret is meant for one start: remove it, or every start ends every session"
        );
    }
}

/// What the directory's protection must become: `Ok(None)` keeps it, `Ok(Some(secret))`
/// records `secret` (or open mode for `None`), `Err` refuses the start.
fn decide(
    stored: &Protection,
    secret: Option<&str>,
    reset: bool,
) -> Result<Option<Option<String>>, Mismatch> {
    let given = secret.map(str::to_owned);
    if reset {
        return Ok(Some(given));
    }
    match (stored, secret) {
        (Protection::Open, None) => Ok(None),
        (Protection::Open, Some(_)) => Ok(Some(given)),
        (Protection::Secret { .. }, None) => Err(Mismatch::SecretMissing),
        (Protection::Secret { salt, verifier }, Some(secret)) => {
            if constant_time_eq(&verifier_of(secret, salt), verifier) {
                Ok(None)
            } else {
                Err(Mismatch::SecretDiffers)
            }
        }
    }
}

/// A fresh salt and the verifier of `secret` over it.
fn protect_with(secret: &str) -> Result<Protection, GuardError> {
    let mut salt = vec![0u8; SALT_BYTES];
    OsRng
        .try_fill_bytes(&mut salt)
        .map_err(|e| GuardError::Random(e.to_string()))?;
    let verifier = verifier_of(secret, &salt);
    Ok(Protection::Secret { salt, verifier })
}

/// HMAC-SHA256(key = secret, context || salt).
fn verifier_of(secret: &str, salt: &[u8]) -> Vec<u8> {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes a key of any length");
    mac.update(VERIFIER_CONTEXT);
    mac.update(salt);
    mac.finalize().into_bytes().to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn protected_by(secret: &str) -> Protection {
        protect_with(secret).unwrap()
    }

    #[test]
    fn an_open_directory_serves_without_a_secret_and_is_protected_by_the_first_one() {
        assert_eq!(decide(&Protection::Open, None, false), Ok(None));
        assert_eq!(
            decide(&Protection::Open, Some("s"), false),
            Ok(Some(Some("s".into())))
        );
    }

    #[test]
    fn a_protected_directory_needs_its_own_secret() {
        let stored = protected_by("right");
        assert_eq!(decide(&stored, Some("right"), false), Ok(None));
        assert_eq!(
            decide(&stored, Some("wrong"), false),
            Err(Mismatch::SecretDiffers)
        );
        assert_eq!(decide(&stored, None, false), Err(Mismatch::SecretMissing));
    }

    #[test]
    fn reset_records_whatever_is_given() {
        let stored = protected_by("old");
        assert_eq!(decide(&stored, None, true), Ok(Some(None)));
        assert_eq!(
            decide(&stored, Some("new"), true),
            Ok(Some(Some("new".into())))
        );
    }

    #[test]
    fn verifiers_are_salted_and_keyed_by_the_secret() {
        let Protection::Secret { salt, verifier } = protected_by("s") else {
            unreachable!()
        };
        assert_eq!(verifier.len(), 32);
        assert_eq!(verifier_of("s", &salt), verifier);
        assert_ne!(verifier_of("t", &salt), verifier);
        assert_ne!(verifier_of("s", b"another salt"), verifier);
        // RFC 4231 test case 2: the HMAC is the standard one.
        let mut mac = Hmac::<Sha256>::new_from_slice(b"Jefe").unwrap();
        mac.update(b"what do ya want for nothing?");
        let hex: String = mac
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(
            hex,
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn the_refusal_says_what_and_how_to_change_it() {
        let text = Mismatch::SecretMissing.advice(Path::new("/x"));
        assert!(
            text.contains("the data directory /x is protected by a shared secret"),
            "{text}"
        );
        assert!(text.contains("IPC_SHARED_SECRET is not set"), "{text}");
        assert!(text.contains("claude-ipc serve --reset-secret"), "{text}");
        let text = Mismatch::SecretDiffers.advice(Path::new("/x"));
        assert!(text.contains("does not match it"), "{text}");
    }
}
