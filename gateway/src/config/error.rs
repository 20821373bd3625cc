//! Config errors that name the file, line, column and key path of every problem.

use std::fmt;
use std::ops::Range;
use std::path::PathBuf;

use toml::de::{DeTable, DeValue};

/// One problem found in a config file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in characters.
    pub column: usize,
    /// Dotted key path, e.g. `routes[1].service`; empty for the document itself.
    pub key: String,
    /// What is wrong and, where it helps, how to fix it.
    pub message: String,
}

/// Why a config could not be loaded. The old config, if any, keeps serving.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{}: cannot read config: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The file was read but is not a valid config; every problem is listed.
    #[error("{}", render(path, diagnostics))]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Every problem, in file order.
        diagnostics: Vec<Diagnostic>,
    },
}

fn render(path: &std::path::Path, diagnostics: &[Diagnostic]) -> String {
    let mut out = String::new();
    for (i, d) in diagnostics.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        out.push_str(&format!("{}:{d}", path.display()));
    }
    out
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}:{}: {}", self.line, self.column, self.message)
        } else {
            write!(f, "{}:{}: {}: {}", self.line, self.column, self.key, self.message)
        }
    }
}

/// Turns byte spans into line/column positions and key paths for one source text.
pub(crate) struct SourceMap<'a> {
    text: &'a str,
    /// The spanned document, parsed only when an error needs a key path: a valid file
    /// (every reload that applies) never pays for this second parse.
    document: std::cell::OnceCell<Option<toml::Spanned<DeTable<'a>>>>,
}

impl<'a> SourceMap<'a> {
    pub(crate) fn new(text: &'a str) -> Self {
        SourceMap { text, document: std::cell::OnceCell::new() }
    }

    /// A diagnostic at `span`, with the key path found from the document.
    pub(crate) fn at(&self, span: Option<Range<usize>>, message: impl Into<String>) -> Diagnostic {
        let span = span.unwrap_or(0..0);
        let key = self.key_path(span.start);
        self.with_key(span, key, message)
    }

    /// A diagnostic at `span` with an explicit key path.
    pub(crate) fn with_key(&self, span: Range<usize>, key: String, message: impl Into<String>) -> Diagnostic {
        let (line, column) = self.line_col(span.start);
        Diagnostic { line, column, key, message: message.into() }
    }

    fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let before = self.text.get(..offset).unwrap_or(self.text);
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = before[line_start..].chars().count() + 1;
        (line, column)
    }

    /// The dotted path of the innermost key or value that contains `offset`.
    fn key_path(&self, offset: usize) -> String {
        let Some(doc) = self.document.get_or_init(|| DeTable::parse(self.text).ok()) else {
            return String::new();
        };
        find_in_table(doc.get_ref(), offset, "").unwrap_or_default()
    }
}

// Table spans cover only their `[header]`, not their body, so the search visits every
// subtree rather than pruning by span, and the deepest match wins.
fn find_in_table(table: &DeTable<'_>, offset: usize, prefix: &str) -> Option<String> {
    for (key, value) in table.iter() {
        let path = if prefix.is_empty() { key.get_ref().to_string() } else { format!("{prefix}.{}", key.get_ref()) };
        if let Some(deeper) = find_in_value(value.get_ref(), offset, &path) {
            return Some(deeper);
        }
        if key.span().contains(&offset) || value.span().contains(&offset) {
            return Some(path);
        }
    }
    None
}

fn find_in_value(value: &DeValue<'_>, offset: usize, path: &str) -> Option<String> {
    match value {
        DeValue::Table(table) => find_in_table(table, offset, path),
        DeValue::Array(items) => items.iter().enumerate().find_map(|(i, item)| {
            let item_path = format!("{path}[{i}]");
            find_in_value(item.get_ref(), offset, &item_path)
                .or_else(|| item.span().contains(&offset).then_some(item_path))
        }),
        _ => None,
    }
}
