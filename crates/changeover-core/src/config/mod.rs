//! Raw TOML -> validated [`Plan`](crate::plan::Plan).
//!
//! Like ripgrep's low-level/high-level args: the raw layer ([`raw`]) accepts
//! anything shaped like TOML; [`validate`] turns it into a plan that cannot be
//! wrong, collecting every problem with its file, line and column before
//! anything is touched.

pub mod diagnostic;
pub mod locate;
mod raw;
mod validate;

pub use diagnostic::{ConfigError, ConfigErrors, ConfigWarning};

use crate::plan::Plan;
use std::path::Path;
use std::sync::Arc;

/// A plan and the warnings met on the way.
#[derive(Debug)]
pub struct Loaded {
    pub plan: Plan,
    pub warnings: Vec<ConfigWarning>,
}

/// Read and validate a config file.
pub fn load(path: &Path) -> Result<Loaded, ConfigErrors> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigErrors {
        file: file.clone(),
        errors: vec![ConfigError::new(
            &file,
            &Arc::new(String::new()),
            None,
            format!("cannot read {file}: {e}"),
            "",
            Some("pass the config with --config FILE (default: changeover.toml in the current directory)".into()),
        )],
    })?;
    let base = path.parent().unwrap_or(Path::new("."));
    parse(&file, &text, base)
}

/// Validate config text. `base_dir` anchors relative paths (state_dir).
pub fn parse(file: &str, text: &str, base_dir: &Path) -> Result<Loaded, ConfigErrors> {
    validate::Validator::new(file, text, base_dir).run()
}
