//! Local users: the uid this process runs as, the translation between uids and user names,
//! and a user's home directory, through the system's user database (`getpwuid_r` / `getpwnam_r`, so NSS sources such
//! as LDAP count as much as `/etc/passwd`).

use std::ffi::{CStr, CString, OsStr};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

/// The first buffer size for a user record; doubled on `ERANGE` up to [`MAX_RECORD`].
const FIRST_RECORD: usize = 1024;
const MAX_RECORD: usize = 1 << 20;

/// The effective uid of this process: the user whose broker a client trusts by default.
pub fn effective_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// One user's record, as much of it as this program needs.
struct UserRecord {
    name: String,
    uid: u32,
    home: PathBuf,
}

/// The name of user `uid`, if the user database knows it.
pub fn user_name(uid: u32) -> Option<String> {
    by_uid(uid).map(|user| user.name)
}

/// `$HOME`, else the working directory: where this user's own files (the session file, the
/// default data directory) go by default.
pub fn own_home() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// The home directory the user database gives for user `uid` (not `$HOME`, which the
/// environment can change).
pub fn home_dir(uid: u32) -> Option<PathBuf> {
    by_uid(uid).map(|user| user.home)
}

fn by_uid(uid: u32) -> Option<UserRecord> {
    lookup(|record, buffer, found| {
        // SAFETY: every pointer is valid for the call: `record` and `found` point to live
        // locals, `buffer` is writable for the length passed.
        unsafe { libc::getpwuid_r(uid, record, buffer.as_mut_ptr(), buffer.len(), found) }
    })
}

/// The uid of the user called `name`, if there is one.
pub fn uid_of(name: &str) -> Option<u32> {
    let name = CString::new(name).ok()?;
    lookup(|record, buffer, found| {
        // SAFETY: as in `user_name`; `name` is a NUL-terminated string that outlives the call.
        unsafe {
            libc::getpwnam_r(
                name.as_ptr(),
                record,
                buffer.as_mut_ptr(),
                buffer.len(),
                found,
            )
        }
    })
    .map(|user| user.uid)
}

/// Runs one `getpw*_r` call, growing the buffer while the record does not fit; the user's
/// record, or `None` when there is no such user (or the database cannot be read).
fn lookup(
    call: impl Fn(*mut libc::passwd, &mut [libc::c_char], *mut *mut libc::passwd) -> libc::c_int,
) -> Option<UserRecord> {
    let mut size = FIRST_RECORD;
    loop {
        // SAFETY: passwd is plain data (integers and pointers) for which all zeros is valid.
        let mut record: libc::passwd = unsafe { std::mem::zeroed() };
        let mut buffer = vec![0 as libc::c_char; size];
        let mut found: *mut libc::passwd = std::ptr::null_mut();
        let status = call(&mut record, &mut buffer, &mut found);
        if status == libc::ERANGE && size < MAX_RECORD {
            size *= 2;
            continue;
        }
        if status != 0 || found.is_null() {
            return None;
        }
        if record.pw_name.is_null() || record.pw_dir.is_null() {
            return None;
        }
        // SAFETY: on success `pw_name` and `pw_dir` point to NUL-terminated strings inside
        // `buffer`, which is still alive here.
        let (name, home) = unsafe {
            (
                CStr::from_ptr(record.pw_name),
                CStr::from_ptr(record.pw_dir),
            )
        };
        return Some(UserRecord {
            name: name.to_string_lossy().into_owned(),
            uid: record.pw_uid,
            home: PathBuf::from(OsStr::from_bytes(home.to_bytes())),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_is_uid_zero_both_ways() {
        assert_eq!(user_name(0).as_deref(), Some("root"));
        assert_eq!(uid_of("root"), Some(0));
        assert_eq!(home_dir(0), Some(PathBuf::from("/root")));
    }

    #[test]
    fn an_unknown_user_or_uid_is_none() {
        assert_eq!(uid_of("no-such-user-here-ever"), None);
        assert_eq!(uid_of("bad\0name"), None);
        assert_eq!(user_name(4_000_000_000), None);
    }

    #[test]
    fn this_process_knows_its_own_name() {
        let me = effective_uid();
        if let Some(name) = user_name(me) {
            assert_eq!(uid_of(&name), Some(me));
        }
    }
}
