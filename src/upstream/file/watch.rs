//! File-system events for the flags file (inotify on Linux, through the `notify` crate): the
//! file's directory is watched, and any event that may have changed the file's content (a
//! write, a create, a rename onto it, a removal) marks it [`Changes::take`]-able, so the next
//! poll reads the content even when size, inode and mtime all stayed the same.
//!
//! Invariants: events only ever add reads; the metadata poll and the periodic content check go
//! on regardless, so a lost event (or no inotify at all) delays a change, never hides it. The
//! relay's own reads (open, read, close-without-write) are not changes.

use std::ffi::OsString;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use notify::event::{AccessKind, AccessMode};
use notify::{Event, EventKind, RecommendedWatcher, RecursiveMode, Watcher};

/// A watch on the flags file's directory, alive as long as this value.
pub(super) struct Changes {
    _watcher: RecommendedWatcher,
    touched: Arc<AtomicBool>,
}

impl Changes {
    /// Watches the directory of `path` for events about the file `path` names.
    pub(super) fn watch(path: &Path) -> notify::Result<Changes> {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => Path::new(".").to_path_buf(),
        };
        let name: Option<OsString> = path.file_name().map(|n| n.to_os_string());
        let touched = Arc::new(AtomicBool::new(false));
        let mark = touched.clone();
        let mut watcher = notify::recommended_watcher(move |res: notify::Result<Event>| {
            // An error may mean lost events: read once more rather than miss a change.
            let ours = res.map_or(true, |ev| may_change_content(&ev.kind) && ev.paths.iter().any(|p| p.file_name() == name.as_deref()));
            if ours {
                mark.store(true, Ordering::Release);
            }
        })?;
        watcher.watch(&dir, RecursiveMode::NonRecursive)?;
        Ok(Changes { _watcher: watcher, touched })
    }

    /// True if an event came for the file since the last call.
    pub(super) fn take(&self) -> bool {
        self.touched.swap(false, Ordering::AcqRel)
    }
}

/// Events that may change what reading the file returns; opens, reads and closes after reading
/// (the relay's own) do not.
fn may_change_content(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        EventKind::Create(_) | EventKind::Modify(_) | EventKind::Remove(_) | EventKind::Any | EventKind::Other => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{CreateKind, DataChange, ModifyKind, RenameMode};

    #[test]
    fn writes_creates_renames_and_removals_are_changes_and_the_relays_own_reads_are_not() {
        let rows = [
            (EventKind::Modify(ModifyKind::Data(DataChange::Any)), true),
            (EventKind::Modify(ModifyKind::Name(RenameMode::To)), true),
            (EventKind::Create(CreateKind::File), true),
            (EventKind::Access(AccessKind::Close(AccessMode::Write)), true),
            (EventKind::Access(AccessKind::Open(AccessMode::Any)), false),
            (EventKind::Access(AccessKind::Read), false),
            (EventKind::Access(AccessKind::Close(AccessMode::Read)), false),
        ];
        for (kind, change) in rows {
            assert_eq!(may_change_content(&kind), change, "{kind:?}");
        }
    }

    #[test]
    fn an_in_place_write_to_the_file_is_seen_and_one_to_a_neighbour_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("flags.json");
        std::fs::write(&path, b"{}").unwrap();
        let changes = Changes::watch(&path).unwrap();
        std::fs::write(dir.path().join("other.json"), b"{}").unwrap();
        let _ = std::fs::read(&path).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(200));
        assert!(!changes.take(), "a neighbour's write and our own read are not changes");
        std::fs::write(&path, b"[]").unwrap();
        let t0 = std::time::Instant::now();
        while !changes.take() {
            assert!(t0.elapsed() < std::time::Duration::from_secs(5), "no event for an in-place write");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
}
