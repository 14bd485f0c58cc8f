//! Turning a failed write into advice an operator can act on: the disk is full, or the data
//! directory is read-only. SQLite reports a write on a read-only filesystem as a generic I/O
//! error, so when the error itself does not say, a small probe write in the data directory
//! asks the filesystem directly.

use std::io::Write;
use std::path::Path;

use super::BrokerError;
use crate::store::DiskTrouble;

/// What is wrong with the data directory, when that is why a write failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataDirProblem {
    Full,
    ReadOnly(String),
}

impl DataDirProblem {
    /// The reply text: what happened, that nothing was stored, and what to do.
    pub fn advice(&self, data_dir: &Path) -> String {
        match self {
            DataDirProblem::Full => format!(
                "the disk holding {} is full: free space there, then retry; nothing was stored",
                data_dir.display()
            ),
            DataDirProblem::ReadOnly(reason) => format!(
                "the data directory {} is not writable ({reason}): make it writable for the broker's user, then retry; nothing was stored",
                data_dir.display()
            ),
        }
    }
}

/// Reads the problem from the error if it names one, else probes `data_dir`. Blocking: call
/// it off the async executor.
pub fn diagnose(error: &BrokerError, data_dir: &Path) -> Option<DataDirProblem> {
    from_error(error).or_else(|| probe(data_dir))
}

fn from_error(error: &BrokerError) -> Option<DataDirProblem> {
    match error {
        BrokerError::LargeFile(io) => from_io(io),
        BrokerError::Store(error) => match error.disk_trouble()? {
            DiskTrouble::Full => Some(DataDirProblem::Full),
            DiskTrouble::ReadOnly => {
                Some(DataDirProblem::ReadOnly("the database is read-only".into()))
            }
        },
        _ => None,
    }
}

fn from_io(error: &std::io::Error) -> Option<DataDirProblem> {
    match error.raw_os_error()? {
        libc::ENOSPC | libc::EDQUOT => Some(DataDirProblem::Full),
        libc::EROFS | libc::EACCES | libc::EPERM => {
            Some(DataDirProblem::ReadOnly(error.to_string()))
        }
        _ => None,
    }
}

/// Writes (and removes) one page-sized file in `data_dir`: the same kind of write the
/// database needs.
fn probe(data_dir: &Path) -> Option<DataDirProblem> {
    let path = data_dir.join(format!(".write-probe-{}", std::process::id()));
    let written = std::fs::File::create(&path).and_then(|mut file| {
        file.write_all(&[0u8; 4096])?;
        file.sync_all()
    });
    let _ = std::fs::remove_file(&path);
    written.err().as_ref().and_then(from_io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_values_name_the_problem() {
        let io = |errno| BrokerError::LargeFile(std::io::Error::from_raw_os_error(errno));
        assert_eq!(from_error(&io(libc::ENOSPC)), Some(DataDirProblem::Full));
        assert!(matches!(
            from_error(&io(libc::EROFS)),
            Some(DataDirProblem::ReadOnly(_))
        ));
        assert_eq!(from_error(&io(libc::EIO)), None);
    }

    #[test]
    fn a_writable_directory_has_no_problem() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(probe(dir.path()), None);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn the_advice_says_what_to_do_and_that_nothing_was_stored() {
        let text = DataDirProblem::Full.advice(Path::new("/srv/ipc"));
        assert!(text.contains("/srv/ipc is full: free space there"));
        assert!(text.ends_with("nothing was stored"));
    }
}
