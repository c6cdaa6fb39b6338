//! Reading the flags file defensively: what its metadata says ([`Stamp`]), whether it may be
//! read at all ([`admissible`]: a regular file within `upstream.max_file_bytes`), whether it
//! must be read again ([`needs_read`]), and the bounded read itself ([`probe`]).
//!
//! Invariants:
//! - Nothing but a regular file is ever read: a FIFO, a device (`/dev/zero` behind a symlink),
//!   a directory or a socket at the path is refused from its metadata, and the open is
//!   non-blocking and re-checked on the opened descriptor, so a FIFO swapped in between cannot
//!   block the watcher.
//! - At most `limit + 1` bytes are read, whatever the metadata said: a file over the limit is
//!   refused, never buffered.
//! - Everything here blocks on the file system: the watcher runs it on a blocking thread.

use std::fs::{File, Metadata};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::FileError;

/// What the file's metadata says, to tell whether it changed.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub(super) struct Stamp {
    pub modified: Option<SystemTime>,
    pub len: u64,
    pub ino: u64,
    pub dev: u64,
    pub kind: Kind,
}

/// The type of what is at the path (after symlinks).
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub(super) enum Kind {
    Regular,
    Directory,
    Fifo,
    CharDevice,
    BlockDevice,
    Socket,
    Other,
}

impl Kind {
    fn describe(self) -> &'static str {
        match self {
            Kind::Regular => "a regular file",
            Kind::Directory => "a directory",
            Kind::Fifo => "a FIFO",
            Kind::CharDevice => "a character device",
            Kind::BlockDevice => "a block device",
            Kind::Socket => "a socket",
            Kind::Other => "not a regular file",
        }
    }
}

fn stamp_of(m: &Metadata) -> Stamp {
    let ft = m.file_type();
    #[cfg(unix)]
    let (kind, ino, dev) = {
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        let kind = if ft.is_file() {
            Kind::Regular
        } else if ft.is_dir() {
            Kind::Directory
        } else if ft.is_fifo() {
            Kind::Fifo
        } else if ft.is_char_device() {
            Kind::CharDevice
        } else if ft.is_block_device() {
            Kind::BlockDevice
        } else if ft.is_socket() {
            Kind::Socket
        } else {
            Kind::Other
        };
        (kind, m.ino(), m.dev())
    };
    #[cfg(not(unix))]
    let (kind, ino, dev) = (if ft.is_file() { Kind::Regular } else if ft.is_dir() { Kind::Directory } else { Kind::Other }, 0, 0);
    Stamp { modified: m.modified().ok(), len: m.len(), ino, dev, kind }
}

/// The stamp of what `path` names (following symlinks).
pub(super) fn stamp(path: &Path) -> std::io::Result<Stamp> {
    std::fs::metadata(path).map(|m| stamp_of(&m))
}

/// A file may be read only if it is a regular file of at most `limit` bytes.
pub(super) fn admissible(path: &Path, s: &Stamp, limit: u64) -> Result<(), FileError> {
    if s.kind != Kind::Regular {
        return Err(FileError::NotRegular { path: path.to_path_buf(), kind: s.kind.describe() });
    }
    if s.len > limit {
        return Err(FileError::TooLarge { path: path.to_path_buf(), limit });
    }
    Ok(())
}

/// The content must be read again unless the stamp is the one last read, is not racy (see
/// [`is_racy`]), and nothing else asks for a read (`forced`: an inotify event for the file, or
/// the periodic content check).
pub(super) fn needs_read(prev: Option<&Stamp>, now: &Stamp, racy: bool, forced: bool) -> bool {
    forced || racy || prev != Some(now)
}

/// A stamp taken within two seconds of its mtime ("racy", as git calls it) cannot prove the
/// content unchanged: a write within the file system's timestamp granularity may not show.
pub(super) fn is_racy(s: &Stamp, now: SystemTime) -> bool {
    s.modified.is_none_or(|m| now.duration_since(m).map_or(true, |d| d < Duration::from_secs(2)))
}

/// Reads `r` to its end if that is at most `limit` bytes; `None` if there is more.
fn read_at_most(r: impl Read, limit: u64, expected: u64) -> std::io::Result<Option<Vec<u8>>> {
    let mut buf = Vec::with_capacity(expected.min(limit).saturating_add(1).try_into().unwrap_or(0));
    r.take(limit.saturating_add(1)).read_to_end(&mut buf)?;
    Ok((buf.len() as u64 <= limit).then_some(buf))
}

fn open_nonblocking(path: &Path) -> std::io::Result<File> {
    let mut o = std::fs::OpenOptions::new();
    o.read(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::custom_flags(&mut o, libc::O_NONBLOCK);
    o.open(path)
}

/// What a check of the file found.
#[derive(Debug)]
pub(super) enum Probe {
    /// The stamp is the one last read: the content need not be read.
    Unchanged,
    /// The content (bounded, of a regular file) and the stamp of the descriptor it came from.
    Read(Stamp, Vec<u8>),
}

/// Checks the file: stat, refuse what may not be read, read only when [`needs_read`] says so.
pub(super) fn probe(path: &Path, limit: u64, prev: Option<&Stamp>, forced: bool) -> Result<Probe, FileError> {
    let read_error = |error| FileError::Read { path: PathBuf::from(path), error };
    let now = stamp(path).map_err(read_error)?;
    admissible(path, &now, limit)?;
    if !needs_read(prev, &now, is_racy(&now, SystemTime::now()), forced) {
        return Ok(Probe::Unchanged);
    }
    let file = open_nonblocking(path).map_err(read_error)?;
    // What was opened may not be what was stat'ed: check the descriptor itself.
    let opened = stamp_of(&file.metadata().map_err(read_error)?);
    admissible(path, &opened, limit)?;
    match read_at_most(&file, limit, opened.len).map_err(read_error)? {
        Some(bytes) => Ok(Probe::Read(opened, bytes)),
        None => Err(FileError::TooLarge { path: path.to_path_buf(), limit }),
    }
}

/// SHA-1 of the content: equal hashes mean nothing to load.
pub(super) fn content_hash(bytes: &[u8]) -> [u8; 20] {
    use sha1::{Digest, Sha1};
    Sha1::digest(bytes).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn regular(len: u64) -> Stamp {
        Stamp { modified: Some(SystemTime::UNIX_EPOCH), len, ino: 1, dev: 1, kind: Kind::Regular }
    }

    #[test]
    fn only_a_regular_file_within_the_limit_is_admissible() {
        let p = Path::new("/x/flags.json");
        let rows: [(&str, Stamp, Option<&str>); 5] = [
            ("a regular file at the limit", regular(100), None),
            ("a regular file over the limit", regular(101), Some("larger than upstream.max_file_bytes (100 bytes)")),
            ("a FIFO", Stamp { kind: Kind::Fifo, ..regular(0) }, Some("is a FIFO, not a regular file")),
            ("/dev/zero", Stamp { kind: Kind::CharDevice, ..regular(0) }, Some("is a character device")),
            ("a directory", Stamp { kind: Kind::Directory, ..regular(4096) }, Some("is a directory")),
        ];
        for (name, s, want) in rows {
            let got = admissible(p, &s, 100).err().map(|e| e.to_string());
            match (want, got) {
                (None, None) => {}
                (Some(w), Some(g)) => assert!(g.contains(w), "{name}: {g}"),
                (w, g) => panic!("{name}: expected {w:?}, got {g:?}"),
            }
        }
    }

    #[test]
    fn the_content_is_read_again_only_when_something_says_it_may_have_changed() {
        let s = regular(10);
        let other = Stamp { len: 11, ..s };
        // (previous stamp, racy, forced) -> read?
        let rows = [
            (None, false, false, true),
            (Some(other), false, false, true),
            (Some(s), false, false, false),
            (Some(s), true, false, true),
            (Some(s), false, true, true),
        ];
        for (prev, racy, forced, read) in rows {
            assert_eq!(needs_read(prev.as_ref(), &s, racy, forced), read, "prev {prev:?} racy {racy} forced {forced}");
        }
    }

    #[test]
    fn a_stamp_is_racy_within_two_seconds_of_its_mtime() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let s = Stamp { modified: Some(t), ..regular(1) };
        assert!(is_racy(&s, t + Duration::from_millis(1999)));
        assert!(!is_racy(&s, t + Duration::from_secs(2)));
        assert!(is_racy(&s, t - Duration::from_secs(1)), "an mtime in the future proves nothing");
        assert!(is_racy(&Stamp { modified: None, ..s }, t), "no mtime proves nothing");
    }

    #[test]
    fn an_endless_source_is_read_to_one_byte_over_the_limit_and_refused() {
        assert_eq!(read_at_most(std::io::repeat(0), 1000, 0).unwrap(), None);
        assert_eq!(read_at_most(&b"12345"[..], 5, 5).unwrap().as_deref(), Some(&b"12345"[..]));
        assert_eq!(read_at_most(&b"123456"[..], 5, 5).unwrap(), None);
    }

    #[cfg(unix)]
    #[test]
    fn a_fifo_is_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("flags.json");
        let ok = std::process::Command::new("mkfifo").arg(&fifo).status().unwrap();
        assert!(ok.success());
        let e = probe(&fifo, 1 << 20, None, true).unwrap_err();
        assert!(e.to_string().contains("a FIFO"), "{e}");
        // Even when the stat said otherwise, the descriptor is checked: open does not block.
        let f = open_nonblocking(&fifo).unwrap();
        let s = stamp_of(&f.metadata().unwrap());
        assert_eq!(s.kind, Kind::Fifo);
    }
}
