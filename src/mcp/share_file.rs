//! Reading a file for `share_file`: a regular text file only, read up to a cap, and never the
//! session file, the secret file, the broker's data directory, a credential store or a file of
//! the kernel's live state.
//!
//! A link is followed, but the file it leads to must pass every check, and the checks that
//! decide are made on the file that was actually opened (its `fstat`, its filesystem and its
//! path as `/proc/self/fd/N` names it), so swapping a link between a check and the open gains
//! nothing. The checks made before opening only give a clearer reason and keep a device or a
//! FIFO from being opened at all.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Component, Path, PathBuf};

/// Credential stores under a home directory: a directory means everything in it.
const HOME_CREDENTIAL_STORES: &[&str] = &[
    ".ssh",
    ".gnupg",
    ".aws",
    ".config/gcloud",
    ".azure",
    ".kube",
    ".docker/config.json",
    ".netrc",
    ".git-credentials",
    ".pgpass",
    ".npmrc",
    ".pypirc",
    ".claude.json",
    ".claude/.credentials.json",
    ".config/gh",
    ".config/hub",
    ".cargo/credentials",
    ".cargo/credentials.toml",
    ".gem/credentials",
    ".vault-token",
    ".password-store",
    ".local/share/keyrings",
];

/// System files that hold password hashes, sudo rules or host keys.
const SYSTEM_SECRETS: &[&str] = &[
    "/etc/shadow",
    "/etc/shadow-",
    "/etc/gshadow",
    "/etc/gshadow-",
    "/etc/sudoers",
    "/etc/sudoers.d",
    "/etc/ssl/private",
];

/// File names of private keys, wherever they are.
const PRIVATE_KEY_NAMES: &[&str] = &[
    "id_rsa",
    "id_dsa",
    "id_ecdsa",
    "id_ed25519",
    "id_ecdsa_sk",
    "id_ed25519_sk",
];

/// Extensions of key and certificate bundles, wherever they are.
const KEY_EXTENSIONS: &[&str] = &["pem", "key", "p12", "pfx"];

/// Directories of the kernel's live state: their files report sizes that are not their
/// contents (`/proc/self/environ` says 0 bytes) or never end (`/dev/zero`).
const LIVE_STATE_DIRS: &[&str] = &["/proc", "/sys", "/dev"];

/// Magic numbers (`statfs`'s `f_type`) of the pseudo filesystems of the kernel's live state,
/// so a procfs or sysfs mounted somewhere else is refused too.
const LIVE_STATE_FILESYSTEMS: &[(u32, &str)] = &[
    (0x9fa0, "procfs"),
    (0x6265_6572, "sysfs"),
    (0x6462_6720, "debugfs"),
    (0x7472_6163, "tracefs"),
    (0x7363_6673, "securityfs"),
    (0x0027_e0eb, "cgroupfs"),
    (0x6367_7270, "cgroup2fs"),
    (0xcafe_4a11, "bpffs"),
    (0xde5e_81e4, "efivarfs"),
    (0x6265_6570, "configfs"),
    (0x1cd1, "devpts"),
];

/// A file read for sharing.
#[derive(Debug)]
pub struct SharedFile {
    /// The opened file's real path, with `..` and links resolved.
    pub path: PathBuf,
    pub text: String,
}

/// Why a file is not shared; nothing was sent.
#[derive(Debug, thiserror::Error)]
pub enum ShareFileError {
    #[error("Cannot read {path}: {reason}. Give the path of a readable text file")]
    Unreadable { path: String, reason: String },
    #[error("Refusing to share {path}: it is {kind}, not a regular file; share_file sends regular text files only")]
    NotRegular { path: String, kind: &'static str },
    #[error("Refusing to share {path}: it is {place}, the kernel's live state (sizes there are not contents, and files like /proc/self/environ hold a process's environment); copy what you mean to share into a regular file")]
    LiveState { path: String, place: String },
    #[error("Refusing to share {path}: {reason}; copy what you mean to share elsewhere")]
    Protected { path: String, reason: String },
    #[error("Refusing to share {path}: it holds more than {cap} bytes (counted while reading, whatever size the file reports); share a smaller part, or tell the recipient the path")]
    TooLarge { path: String, cap: u64 },
    #[error("Refusing to share {path}: it is not UTF-8 text; share_file sends text files only")]
    NotText { path: String },
}

/// The places `share_file` never reads, for the user running this server.
#[derive(Debug, Clone)]
pub struct Protected {
    /// The session file (`IPC_SESSION_FILE`) and `~/.ipc-session` of every home below.
    pub session_files: Vec<PathBuf>,
    /// `IPC_SHARED_SECRET_FILE`, when set.
    pub secret_file: Option<PathBuf>,
    /// The broker's data directories (the configured one and the default): everyone's mail
    /// and sessions.
    pub data_dirs: Vec<PathBuf>,
    /// `$HOME` and the home directory in the password database (they differ when HOME was
    /// changed), whose credential stores are refused.
    pub homes: Vec<PathBuf>,
}

impl Protected {
    /// The protected places for this process: its environment, its user and `data_dir`.
    pub fn for_this_user(data_dir: &Path) -> Protected {
        let mut homes = vec![crate::os::users::own_home()];
        homes.extend(password_database_home());
        homes.dedup();
        let mut session_files = vec![crate::session_file::path()];
        session_files.extend(homes.iter().map(|home| home.join(".ipc-session")));
        Protected {
            session_files,
            secret_file: std::env::var_os("IPC_SHARED_SECRET_FILE")
                .filter(|p| !p.is_empty())
                .map(PathBuf::from),
            data_dirs: vec![
                data_dir.to_path_buf(),
                crate::config::Config::default_data_dir(),
            ],
            homes,
        }
    }

    /// Why `path` may not be shared, if it may not.
    fn reason_for(&self, path: &Path) -> Option<String> {
        self.own_secret_reason(path)
            .or_else(|| self.credential_store_reason(path))
            .or_else(|| system_secret_reason(path))
            .or_else(|| name_reason(path))
    }

    fn own_secret_reason(&self, path: &Path) -> Option<String> {
        for session in &self.session_files {
            if is_within(path, session) || is_temporary_of(path, session) {
                return Some(
                    "it is the session file, which holds this instance's session token".to_owned(),
                );
            }
        }
        if let Some(secret) = &self.secret_file {
            if is_within(path, secret) {
                return Some("it is the shared secret's file".to_owned());
            }
        }
        let data_dir = self.data_dirs.iter().find(|dir| is_within(path, dir));
        data_dir.map(|dir| {
            format!(
                "it is in the broker's data directory {}, which holds everyone's mail and sessions",
                dir.display()
            )
        })
    }

    fn credential_store_reason(&self, path: &Path) -> Option<String> {
        for home in &self.homes {
            for store in HOME_CREDENTIAL_STORES {
                if is_within(path, &home.join(store)) {
                    let how = if path_eq(path, &home.join(store)) {
                        "it is"
                    } else {
                        "it is in"
                    };
                    return Some(format!("{how} ~/{store}, a credential store"));
                }
            }
            // Claude Code keeps backups beside its configuration, which can hold the secret.
            let in_home = path.parent().is_some_and(|dir| path_eq(dir, home));
            if in_home && file_name(path).starts_with(".claude.json") {
                return Some(
                    "it is a copy of ~/.claude.json, which holds MCP servers' environments"
                        .to_owned(),
                );
            }
        }
        None
    }

    /// The (device, inode) pairs of the session and secret files, so a hard link to one of
    /// them is refused too.
    fn own_secret_inodes(&self) -> Vec<(u64, u64)> {
        self.session_files
            .iter()
            .chain(self.secret_file.iter())
            .filter_map(|path| std::fs::metadata(path).ok())
            .map(|meta| (meta.dev(), meta.ino()))
            .collect()
    }
}

fn system_secret_reason(path: &Path) -> Option<String> {
    let store = SYSTEM_SECRETS
        .iter()
        .find(|store| is_within(path, Path::new(store)));
    if let Some(store) = store {
        return Some(format!("{store} holds password hashes or sudo rules"));
    }
    let in_etc = path.parent().is_some_and(|dir| dir == Path::new("/etc"));
    if in_etc && file_name(path).starts_with("sudoers") {
        return Some("it holds sudo rules".to_owned());
    }
    let in_etc_ssh = path
        .parent()
        .is_some_and(|dir| dir == Path::new("/etc/ssh"));
    if in_etc_ssh && file_name(path).ends_with("_key") {
        return Some("it is a private SSH host key".to_owned());
    }
    None
}

/// Refusals by the file's name alone, wherever it is.
fn name_reason(path: &Path) -> Option<String> {
    let name = file_name(path);
    if name == ".env" || name.starts_with(".env.") {
        return Some(format!(
            "`{name}` files hold credentials and settings that are not meant to leave"
        ));
    }
    if PRIVATE_KEY_NAMES.contains(&name.as_str()) {
        return Some(format!("`{name}` is the name of a private key"));
    }
    let extension = path.extension().map(|e| e.to_string_lossy().to_lowercase());
    if let Some(extension) = extension.filter(|e| KEY_EXTENSIONS.contains(&e.as_str())) {
        return Some(format!("a `.{extension}` file holds keys or certificates"));
    }
    if [".netrc", ".pgpass", ".git-credentials", ".ipc-session"].contains(&name.as_str()) {
        return Some(format!("`{name}` is the name of a credential file"));
    }
    None
}

fn live_state_place(path: &Path) -> Option<String> {
    LIVE_STATE_DIRS
        .iter()
        .find(|dir| is_within(path, Path::new(dir)))
        .map(|dir| format!("in {dir}"))
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Whether `path` is `place` or inside it, comparing `place` both as written and resolved.
fn is_within(path: &Path, place: &Path) -> bool {
    path.starts_with(place) || std::fs::canonicalize(place).is_ok_and(|real| path.starts_with(real))
}

fn path_eq(a: &Path, b: &Path) -> bool {
    a == b || std::fs::canonicalize(b).is_ok_and(|real| a == real)
}

/// Whether `path` is a temporary file the session file is written through (`<file>.<pid>.tmp`).
fn is_temporary_of(path: &Path, session: &Path) -> bool {
    let same_dir = match (path.parent(), session.parent()) {
        (Some(a), Some(b)) => path_eq(a, b),
        _ => false,
    };
    let prefix = format!("{}.", file_name(session));
    same_dir && file_name(path).starts_with(&prefix)
}

/// `path` made absolute against the working directory, with `.` and `..` removed by their
/// spelling: what the caller asked for, before any link is followed.
fn lexically_absolute(path: &Path) -> PathBuf {
    let joined = std::env::current_dir().unwrap_or_default().join(path);
    let mut clean = PathBuf::new();
    for component in joined.components() {
        match component {
            Component::ParentDir => {
                clean.pop();
            }
            Component::CurDir => {}
            other => clean.push(other),
        }
    }
    clean
}

/// Reads `given` for sharing, at most `cap` bytes, after every check.
pub fn read(given: &str, protected: &Protected, cap: u64) -> Result<SharedFile, ShareFileError> {
    let asked = lexically_absolute(Path::new(given));
    refuse_place(given, &asked, protected)?;
    let unreadable = |e: std::io::Error| ShareFileError::Unreadable {
        path: given.to_owned(),
        reason: e.to_string(),
    };
    let real = std::fs::canonicalize(&asked).map_err(unreadable)?;
    refuse_place(given, &real, protected)?;
    let kind = std::fs::metadata(&real).map_err(unreadable)?.file_type();
    refuse_unless_regular(given, kind)?;
    let file = open_without_blocking(&real).map_err(unreadable)?;
    let opened = check_opened(given, &file, protected)?;
    let bytes = read_at_most(&file, cap).map_err(unreadable)?;
    if bytes.len() as u64 > cap {
        return Err(ShareFileError::TooLarge {
            path: given.to_owned(),
            cap,
        });
    }
    let text = String::from_utf8(bytes).map_err(|_| ShareFileError::NotText {
        path: given.to_owned(),
    })?;
    Ok(SharedFile { path: opened, text })
}

fn refuse_place(given: &str, path: &Path, protected: &Protected) -> Result<(), ShareFileError> {
    if let Some(place) = live_state_place(path) {
        return Err(ShareFileError::LiveState {
            path: given.to_owned(),
            place,
        });
    }
    match protected.reason_for(path) {
        Some(reason) => Err(ShareFileError::Protected {
            path: given.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

fn refuse_unless_regular(given: &str, kind: std::fs::FileType) -> Result<(), ShareFileError> {
    let name = if kind.is_file() {
        return Ok(());
    } else if kind.is_dir() {
        "a directory"
    } else if kind.is_fifo() {
        "a FIFO (a named pipe)"
    } else if kind.is_socket() {
        "a socket"
    } else if kind.is_char_device() || kind.is_block_device() {
        "a device"
    } else {
        "not a plain file"
    };
    Err(ShareFileError::NotRegular {
        path: given.to_owned(),
        kind: name,
    })
}

/// Opens for reading without waiting: a FIFO swapped in after the checks would otherwise block
/// the open until someone writes to it. `O_NOCTTY` keeps a terminal from becoming ours.
fn open_without_blocking(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
}

/// The decisive checks, on the opened file itself; returns its real path.
fn check_opened(
    given: &str,
    file: &File,
    protected: &Protected,
) -> Result<PathBuf, ShareFileError> {
    let unreadable = |e: std::io::Error| ShareFileError::Unreadable {
        path: given.to_owned(),
        reason: e.to_string(),
    };
    let meta = file.metadata().map_err(unreadable)?;
    refuse_unless_regular(given, meta.file_type())?;
    if let Some(filesystem) = live_state_filesystem(file) {
        return Err(ShareFileError::LiveState {
            path: given.to_owned(),
            place: format!("on {filesystem}"),
        });
    }
    let opened =
        std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd())).map_err(|e| {
            unreadable(std::io::Error::new(
                e.kind(),
                format!("cannot tell which file was opened ({e}; is /proc mounted?)"),
            ))
        })?;
    refuse_place(given, &opened, protected)?;
    if protected
        .own_secret_inodes()
        .contains(&(meta.dev(), meta.ino()))
    {
        return Err(ShareFileError::Protected {
            path: given.to_owned(),
            reason: "it is a link to the session file or the secret's file".to_owned(),
        });
    }
    Ok(opened)
}

fn live_state_filesystem(file: &File) -> Option<&'static str> {
    // SAFETY: fstatfs only writes into the zeroed struct it is given, for an fd we own.
    let mut stats: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstatfs(file.as_raw_fd(), &mut stats) } != 0 {
        return None;
    }
    let magic = stats.f_type as u32;
    LIVE_STATE_FILESYSTEMS
        .iter()
        .find(|(known, _)| *known == magic)
        .map(|(_, name)| *name)
}

/// Reads at most `cap + 1` bytes, so a file larger than the cap is known to be larger without
/// reading it all, whatever size it reports and however it grows while read.
fn read_at_most(file: impl Read, cap: u64) -> std::io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    file.take(cap.saturating_add(1)).read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// The home directory the password database gives for this process's user.
fn password_database_home() -> Option<PathBuf> {
    use crate::os::users;
    users::home_dir(users::effective_uid())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reading_stops_one_byte_past_the_cap_of_an_endless_source() {
        let endless = std::io::repeat(b'a');
        assert_eq!(read_at_most(endless, 10).unwrap().len(), 11);
        assert_eq!(read_at_most(&b"short"[..], 10).unwrap(), b"short");
    }

    #[test]
    fn credential_names_are_refused_wherever_they_are() {
        for path in [
            "/x/.env",
            "/x/.env.local",
            "/x/id_ed25519",
            "/x/server.PEM",
            "/x/tls.key",
            "/x/.netrc",
        ] {
            assert!(name_reason(Path::new(path)).is_some(), "{path}");
        }
        for path in [
            "/x/env.txt",
            "/x/id_ed25519.pub",
            "/x/notes.md",
            "/x/.envrc",
        ] {
            assert!(name_reason(Path::new(path)).is_none(), "{path}");
        }
    }

    #[test]
    fn parent_components_are_removed_by_their_spelling() {
        assert_eq!(
            lexically_absolute(Path::new("/a/b/../c/./d")),
            PathBuf::from("/a/c/d")
        );
    }
}
