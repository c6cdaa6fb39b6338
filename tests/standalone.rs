//! The repository stands alone. A copy of what git tracks, with nothing beside it, holds every
//! conformance vector where the conformance test looks for them; nothing the code, the tests,
//! the benchmarks or CI run reads beside the checkout; and README's test command
//! (`scripts/test`) stops at once when a tool is missing, naming all of them with the install
//! command.
//!
//! The copy is checked, not built: building a second checkout would compile the crate again
//! (minutes on CI's two cores), while the vector directory is resolved by the same function the
//! conformance test uses (`conformance/vectors.rs`), so pointing it at the copy is the check.

#[path = "conformance/vectors.rs"]
mod vectors;

use std::path::{Path, PathBuf};
use std::process::Command;

const REPO: &str = env!("CARGO_MANIFEST_DIR");

/// The tracked files (`git ls-files`), or `None` outside a git checkout (a source tarball), where
/// what a clone holds cannot be known.
fn tracked_files() -> Option<Vec<PathBuf>> {
    let out = Command::new("git").args(["-C", REPO, "ls-files", "-z"]).output().ok()?;
    if !out.status.success() {
        return None;
    }
    Some(out.stdout.split(|b| *b == 0).filter(|p| !p.is_empty()).map(|p| PathBuf::from(String::from_utf8_lossy(p).into_owned())).collect())
}

/// The names of the `.feature` files in a vector directory, sorted.
fn vector_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".feature"))
        .collect();
    names.sort();
    names
}

#[test]
fn a_copy_of_the_tracked_files_holds_every_conformance_vector() {
    let Some(files) = tracked_files() else {
        eprintln!("not a git checkout: what a clone holds is unknown, nothing to compare");
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let copy = tmp.path().join("flagrelay");
    for f in &files {
        let from = Path::new(REPO).join(f);
        // Tracked but deleted in this working tree: a clone would have it, the vectors below
        // are compared with this working tree's anyway.
        if from.is_file() {
            let to = copy.join(f);
            std::fs::create_dir_all(to.parent().unwrap()).unwrap();
            std::fs::copy(&from, &to).unwrap_or_else(|e| panic!("{}: {e}", from.display()));
        }
    }
    assert!(!tmp.path().join("shared").exists());
    let in_copy = vectors::dir(&copy);
    assert!(in_copy.join("ORIGIN.md").is_file(), "the vectors' origin and licence note is tracked");
    let here = vector_names(&vectors::dir(Path::new(REPO)));
    assert!(!here.is_empty(), "no vectors in {}", vectors::DIR);
    assert_eq!(vector_names(&in_copy), here, "every vector the conformance test reads is tracked");
}

#[test]
fn nothing_that_runs_reads_beside_the_checkout() {
    let Some(files) = tracked_files() else {
        eprintln!("not a git checkout: nothing to check");
        return;
    };
    // Built here so that this file does not name it.
    let beside = format!("../{}", "shared");
    let mut readers = Vec::new();
    for f in files.iter().filter(|f| ["src/", "tests/", "benches/", ".ci/", "ci/", "scripts/"].iter().any(|d| f.starts_with(d))) {
        if let Ok(text) = std::fs::read_to_string(Path::new(REPO).join(f)) {
            if text.contains(&beside) {
                readers.push(f.display().to_string());
            }
        }
    }
    assert!(readers.is_empty(), "these read {beside}: {readers:?}");
}

/// The first `name` on the test's own PATH.
fn on_path(name: &str) -> PathBuf {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{name} is not on PATH"))
}

#[test]
fn the_test_command_names_every_missing_tool_at_once_with_the_install_command() {
    // A PATH with only what the script itself needs before its check.
    let bin = tempfile::tempdir().unwrap();
    for tool in ["bash", "dirname", "sed", "id"] {
        std::os::unix::fs::symlink(on_path(tool), bin.path().join(tool)).unwrap();
    }
    let out = Command::new(bin.path().join("bash"))
        .arg(Path::new(REPO).join("scripts/test"))
        .env("PATH", bin.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("missing on PATH: redis-server redis-cli openssl node npm kill chromium python3 cargo"), "{err}");
    assert!(err.contains("apt-get install -y redis-server redis-tools openssl nodejs npm procps chromium python3-venv"), "{err}");
    assert_eq!(err.lines().filter(|l| l.contains("missing")).count(), 1, "one message: {err}");
}
