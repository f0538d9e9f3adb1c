//! Finding the span of a key or value in the source by its path
//! (`load_balancers.0.socket`), so that checks made after deserialization can
//! still point at the exact line and column.

use std::ops::Range;
use toml::de::{DeTable, DeValue};
use toml::Spanned;

/// A step in a path through the document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seg {
    Key(String),
    Index(usize),
}

impl From<&str> for Seg {
    fn from(s: &str) -> Seg {
        Seg::Key(s.to_string())
    }
}

impl From<usize> for Seg {
    fn from(i: usize) -> Seg {
        Seg::Index(i)
    }
}

/// Build a path: `path!["deploy", "run", 1]`.
#[macro_export]
macro_rules! path {
    ($($seg:expr),* $(,)?) => {
        vec![$($crate::config::locate::Seg::from($seg)),*]
    };
}

pub struct Locator<'a> {
    root: Option<Spanned<DeTable<'a>>>,
}

impl<'a> Locator<'a> {
    pub fn new(source: &'a str) -> Locator<'a> {
        Locator {
            root: DeTable::parse(source).ok(),
        }
    }

    /// The span of the value at `path`, or of the nearest ancestor that exists
    /// (so a missing key points at its table).
    pub fn value(&self, path: &[Seg]) -> Option<Range<usize>> {
        self.walk(path, false)
    }

    /// The span of the key of the last segment (for unknown-key warnings).
    pub fn key(&self, path: &[Seg]) -> Option<Range<usize>> {
        self.walk(path, true)
    }

    fn walk(&self, path: &[Seg], want_key: bool) -> Option<Range<usize>> {
        let root = self.root.as_ref()?;
        let mut table: Option<&DeTable> = Some(root.get_ref());
        let mut array: Option<&toml::de::DeArray> = None;
        let mut best = root.span();
        for (i, seg) in path.iter().enumerate() {
            let last = i + 1 == path.len();
            let value: &Spanned<DeValue> = match (seg, table, array) {
                (Seg::Key(k), Some(t), _) => {
                    let (key, value) = t.iter().find(|(key, _)| key.get_ref().as_ref() == k)?;
                    if last && want_key {
                        return Some(key.span());
                    }
                    value
                }
                (Seg::Index(n), _, Some(a)) => a.get(*n)?,
                _ => return Some(best),
            };
            best = value.span();
            table = value.get_ref().as_table();
            array = value.get_ref().as_array();
        }
        Some(best)
    }
}

/// 1-based line and column of a byte offset.
pub fn line_col(source: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(source.len());
    let before = &source[..offset];
    let line = before.matches('\n').count() + 1;
    let col = before.rfind('\n').map_or(offset, |nl| offset - nl - 1) + 1;
    (line, col)
}
