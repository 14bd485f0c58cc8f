//! Content too large to queue inline goes to a file under `large-messages/`; the queued
//! message carries a short summary and the path.
//!
//! File names are a UTC time and 64 random bits, created with `O_EXCL`: two messages can
//! never share a name, and nothing a client sends is ever part of a path.

use std::fs::{self, DirBuilder, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use rand::rngs::OsRng;
use rand::{RngCore, TryRngCore};

/// How much of the content the summary keeps.
const SUMMARY_CHARS: usize = 200;
/// The time at the start of a file's name.
const NAME_TIME_FORMAT: &str = "%Y%m%dT%H%M%S%.3fZ";

/// Writes `content` to a new file (mode 0600) in `dir` and returns its path, after the file
/// and its directory entry are on disk.
pub fn write_file(dir: &Path, content: &str, now: DateTime<Utc>) -> std::io::Result<PathBuf> {
    let path = new_path(dir, now);
    write_at(dir, &path, &file_text(content, now))?;
    Ok(path)
}

/// A fresh name in `dir` for a file written at `now`; nothing is created yet.
pub fn new_path(dir: &Path, now: DateTime<Utc>) -> PathBuf {
    let mut random = [0u8; 8];
    OsRng.unwrap_err().fill_bytes(&mut random);
    let suffix: String = random.iter().map(|b| format!("{b:02x}")).collect();
    dir.join(format!("{}-{suffix}.md", now.format(NAME_TIME_FORMAT)))
}

/// What the file for `content` holds: a short header, then the content. Its length is what
/// the large-message caps count.
pub fn file_text(content: &str, now: DateTime<Utc>) -> String {
    let size_kb = content.len() as f64 / 1024.0;
    format!(
        "# IPC Message\nTime: {}\nSize: {size_kb:.1}KB\n\n## Content\n{content}\n",
        crate::clock::to_text(now)
    )
}

/// Creates `path` (which must not exist, mode 0600) in `dir` holding `text`, and returns once
/// the file and its directory entry are on disk.
pub fn write_at(dir: &Path, path: &Path, text: &str) -> std::io::Result<()> {
    DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    let written = file
        .write_all(text.as_bytes())
        .and_then(|_| file.sync_all())
        .and_then(|_| fs::File::open(dir)?.sync_all());
    if let Err(e) = written {
        // A full disk leaves a truncated file; no message will point at it, so remove it.
        let _ = fs::remove_file(path);
        return Err(e);
    }
    Ok(())
}

/// When the file named `name` was written, by the broker's clock, if the name is one
/// [`write_file`] makes: a UTC time, a dash, 16 hex digits and `.md`. Any other file is not
/// the broker's, and the orphan sweep never touches it.
pub fn written_at(name: &str) -> Option<DateTime<Utc>> {
    let stem = name.strip_suffix(".md")?;
    let (time, random) = stem.split_once('-')?;
    if random.len() != 16 || !random.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let time = chrono::NaiveDateTime::parse_from_str(time, NAME_TIME_FORMAT).ok()?;
    Some(time.and_utc())
}

/// Files in `dir` that [`write_file`] made before `before`, oldest name first. A missing
/// directory has none. Blocking: call it off the async executor.
pub fn files_written_before(dir: &Path, before: DateTime<Utc>) -> std::io::Result<Vec<PathBuf>> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut old = Vec::new();
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let written = name.to_str().and_then(written_at);
        if written.is_some_and(|at| at < before) && entry.file_type()?.is_file() {
            old.push(entry.path());
        }
    }
    old.sort();
    Ok(old)
}

/// The inline text that replaces large content: its start, then where the rest is.
pub fn summary(content: &str, path: &Path) -> String {
    let trimmed = content.trim();
    let mut start: String = trimmed.chars().take(SUMMARY_CHARS).collect();
    if start.len() < trimmed.len() {
        start.push('…');
    }
    format!("{start} Full content saved to: {}", path.display())
}

/// The size in KiB, to one decimal, as `data.original_size_kb` reports it.
pub fn size_kb(content: &str) -> f64 {
    (content.len() as f64 / 1024.0 * 10.0).round() / 10.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn files_written_in_the_same_millisecond_never_collide() {
        let dir = tempfile::tempdir().unwrap();
        let now = Utc::now();
        let paths: Vec<PathBuf> = (0..50)
            .map(|i| write_file(dir.path(), &format!("body {i}"), now).unwrap())
            .collect();
        let mut unique = paths.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), 50);
        let text = fs::read_to_string(&paths[7]).unwrap();
        assert!(text.contains("body 7"));
        let mode = fs::metadata(&paths[0]).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn only_names_the_broker_makes_have_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let now = Utc::now();
        let path = write_file(dir.path(), "body", now).unwrap();
        let name = path.file_name().unwrap().to_str().unwrap();
        let at = written_at(name).expect("the broker's own name");
        assert!((now - at).num_milliseconds().abs() <= 1);
        assert_eq!(written_at("notes.md"), None);
        assert_eq!(written_at("20260101T120000.000Z-abc.md"), None);
        let later = now + chrono::Duration::seconds(1);
        assert_eq!(files_written_before(dir.path(), later).unwrap(), [path]);
        assert!(
            files_written_before(dir.path(), now - chrono::Duration::seconds(1))
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn the_summary_keeps_the_start_and_names_the_file() {
        let content = "x".repeat(5000);
        let text = summary(&content, Path::new("/d/f.md"));
        assert!(text.starts_with(&"x".repeat(200)));
        assert!(text.ends_with("Full content saved to: /d/f.md"));
        assert!(text.len() < 300);
        assert_eq!(size_kb(&"y".repeat(15 * 1024 + 100)), 15.1);
    }
}
