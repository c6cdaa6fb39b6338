//! Where the Featureflow testbed vectors live: `tests/conformance/testbed/` inside the crate
//! (origin and licence in its `ORIGIN.md`). Shared by the conformance test and
//! `tests/standalone.rs`, so that both resolve the vectors the same way.

use std::path::{Path, PathBuf};

/// The vectors' directory, relative to the crate root.
pub const DIR: &str = "tests/conformance/testbed";

/// The vectors' directory of the crate checked out at `root`.
pub fn dir(root: &Path) -> PathBuf {
    root.join(DIR)
}
