//! Finding the programs the fixtures need.

use std::path::PathBuf;

/// Locate `program` on PATH (and in the sbin directories, which root's PATH
/// may lack), or panic with how to install it. Tests must fail loudly, not
/// skip, when a component is missing.
pub fn require(program: &str, package: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
    for extra in ["/usr/sbin", "/sbin", "/usr/local/sbin"] {
        dirs.push(PathBuf::from(extra));
    }
    for dir in dirs {
        let candidate = dir.join(program);
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!(
        "`{program}` is not installed; these tests run against the real thing. \
         Install it with `apt-get install -y {package}` (see .ci/run)."
    );
}
