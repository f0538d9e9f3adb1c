//! Config errors and warnings as miette diagnostics: file, line, column, a
//! label at the exact spot, and a hint that says what to do.

use super::locate::line_col;
use miette::{Diagnostic, NamedSource, SourceSpan};
use std::fmt;
use std::ops::Range;
use std::sync::Arc;

/// One thing wrong with the config.
#[derive(Debug, thiserror::Error, Diagnostic)]
#[error("{message}")]
#[diagnostic(code(changeover::config))]
pub struct ConfigError {
    pub message: String,
    #[source_code]
    src: NamedSource<Arc<String>>,
    #[label("{label}")]
    span: Option<SourceSpan>,
    label: String,
    #[help]
    pub help: Option<String>,
    /// `file:line:col`, for one-line output and JSON.
    pub location: String,
}

impl ConfigError {
    pub fn new(
        file: &str,
        source: &Arc<String>,
        span: Option<Range<usize>>,
        message: impl Into<String>,
        label: impl Into<String>,
        help: Option<String>,
    ) -> ConfigError {
        let location = match &span {
            Some(r) => {
                let (line, col) = line_col(source, r.start);
                format!("{file}:{line}:{col}")
            }
            None => file.to_string(),
        };
        ConfigError {
            message: message.into(),
            src: NamedSource::new(file, Arc::clone(source)),
            span: span.map(|r| SourceSpan::from(r.start..r.end.max(r.start))),
            label: label.into(),
            help,
            location,
        }
    }
}

/// Every error found in one config file (validation does not stop at the
/// first, so a user fixes them all in one go).
#[derive(Debug, thiserror::Error, Diagnostic)]
#[error("{file} is not a valid changeover config ({} problem{})", errors.len(), if errors.len() == 1 { "" } else { "s" })]
#[diagnostic(code(changeover::config::invalid))]
pub struct ConfigErrors {
    pub file: String,
    #[related]
    pub errors: Vec<ConfigError>,
}

/// A key changeover does not know: ignored, but said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigWarning {
    pub key: String,
    pub location: String,
    pub message: String,
}

impl fmt::Display for ConfigWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.location, self.message)
    }
}
