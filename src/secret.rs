//! The shared secret, found the same way by the broker and every client: `IPC_SHARED_SECRET`,
//! or the first line of the file `IPC_SHARED_SECRET_FILE` names, so the secret need not sit in
//! a configuration file such as `~/.claude.json` or in a process's environment.
//!
//! The file must be a regular file of the user's own that no one else can read or write
//! (mode 0600); anything else is refused with what to do. When both are set they must agree:
//! two different secrets mean a configuration mistake, and guessing which one was meant would
//! either lock the user out or run with a secret they did not intend. No error ever includes
//! the secret itself.

use std::path::{Path, PathBuf};

use crate::private_file::{self, PrivateFileError};
use crate::protocol::auth::constant_time_eq;

/// The variable holding the secret itself.
pub const SECRET_VAR: &str = "IPC_SHARED_SECRET";
/// The variable naming a file that holds the secret.
pub const SECRET_FILE_VAR: &str = "IPC_SHARED_SECRET_FILE";

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    // Not a `source`: the message already says it, and a chain printer would repeat it.
    #[error("cannot use the shared-secret file: {0}")]
    File(PrivateFileError),
    #[error("the shared-secret file {path} is empty; write the secret into it (one line), or unset IPC_SHARED_SECRET_FILE for open mode")]
    Empty { path: PathBuf },
    #[error("IPC_SHARED_SECRET and the shared-secret file {path} hold different secrets; set only one of them")]
    Conflict { path: PathBuf },
}

impl From<PrivateFileError> for SecretError {
    fn from(error: PrivateFileError) -> Self {
        SecretError::File(error)
    }
}

/// The secret from the environment: `IPC_SHARED_SECRET`, else the file named by
/// `IPC_SHARED_SECRET_FILE`; `None` (open mode) when neither is set. An empty variable
/// counts as unset.
pub fn shared_secret_from_env() -> Result<Option<String>, SecretError> {
    shared_secret_with_file(None)
}

/// [`shared_secret_from_env`], with `file` (`serve --secret-file`), when given, in place of
/// the file `IPC_SHARED_SECRET_FILE` names. The only place either variable is read.
pub fn shared_secret_with_file(file: Option<&Path>) -> Result<Option<String>, SecretError> {
    let file = match file {
        Some(path) => Some(path.to_owned()),
        None => non_empty_var(SECRET_FILE_VAR).map(PathBuf::from),
    };
    shared_secret(non_empty_var(SECRET_VAR), file.as_deref())
}

/// The secret from `given` (the variable's value) and `file` (a path to read it from), with
/// the same rules as [`shared_secret_from_env`].
fn shared_secret(
    given: Option<String>,
    file: Option<&Path>,
) -> Result<Option<String>, SecretError> {
    let Some(path) = file else {
        return Ok(given);
    };
    let from_file = read_secret_file(path)?;
    match given {
        // Compared in constant time: the mismatch must not tell how much of it matched.
        Some(given) if !constant_time_eq(given.as_bytes(), from_file.as_bytes()) => {
            Err(SecretError::Conflict {
                path: path.to_owned(),
            })
        }
        _ => Ok(Some(from_file)),
    }
}

/// The file's contents without the trailing newline an editor or `echo` leaves.
fn read_secret_file(path: &Path) -> Result<String, SecretError> {
    let text = private_file::read_private(path)?;
    let secret = text.trim_end_matches(['\n', '\r']);
    if secret.is_empty() {
        return Err(SecretError::Empty {
            path: path.to_owned(),
        });
    }
    Ok(secret.to_owned())
}

fn non_empty_var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|value| !value.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn secret_file(text: &str, mode: u32) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        (dir, path)
    }

    #[test]
    fn the_file_gives_the_secret_without_its_newline() {
        let (_dir, path) = secret_file("correct horse\n", 0o600);
        let secret = shared_secret(None, Some(&path)).unwrap();
        assert_eq!(secret.as_deref(), Some("correct horse"));
    }

    #[test]
    fn the_variable_alone_is_used_as_before() {
        let secret = shared_secret(Some("from-env".into()), None).unwrap();
        assert_eq!(secret.as_deref(), Some("from-env"));
        assert_eq!(shared_secret(None, None).unwrap(), None);
    }

    #[test]
    fn both_set_must_agree() {
        let (_dir, path) = secret_file("same\n", 0o600);
        let agreed = shared_secret(Some("same".into()), Some(&path)).unwrap();
        assert_eq!(agreed.as_deref(), Some("same"));
        let error = shared_secret(Some("other".into()), Some(&path)).unwrap_err();
        assert!(matches!(error, SecretError::Conflict { .. }));
        assert!(!error.to_string().contains("same"), "{error}");
    }

    #[test]
    fn an_empty_or_open_file_is_refused_without_showing_the_secret() {
        let (_dir, empty) = secret_file("\n", 0o600);
        assert!(matches!(
            shared_secret(None, Some(&empty)),
            Err(SecretError::Empty { .. })
        ));
        let (_dir, open) = secret_file("hunter2-hunter2\n", 0o640);
        let error = shared_secret(None, Some(&open)).unwrap_err().to_string();
        assert!(error.contains("chmod 600"), "{error}");
        assert!(!error.contains("hunter2"), "{error}");
    }
}
