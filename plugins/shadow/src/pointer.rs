//! JSON pointers (RFC 6901) and the `ignore` list: pointers whose subtrees are left out of
//! the comparison, with `*` standing for any one segment (`/items/*/updated_at`).

/// Why an `ignore` entry is not a JSON pointer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PointerError {
    /// A pointer is empty (the whole document) or starts with `/`.
    NoLeadingSlash(String),
    /// `~` must be followed by `0` or `1`.
    BadEscape(String),
}

impl std::fmt::Display for PointerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PointerError::NoLeadingSlash(p) => write!(f, "\"{p}\" is not a JSON pointer: write it as /field/sub"),
            PointerError::BadEscape(p) => write!(f, "\"{p}\": ~ must be written ~0, and / inside a name ~1"),
        }
    }
}

impl std::error::Error for PointerError {}

/// One segment as a pointer writes it: `~` as `~0`, `/` as `~1`.
pub fn escape_segment(segment: &str) -> String {
    segment.replace('~', "~0").replace('/', "~1")
}

fn unescape(segment: &str, whole: &str) -> Result<String, PointerError> {
    let mut out = String::with_capacity(segment.len());
    let mut chars = segment.chars();
    while let Some(c) = chars.next() {
        if c != '~' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('0') => out.push('~'),
            Some('1') => out.push('/'),
            _ => return Err(PointerError::BadEscape(whole.to_owned())),
        }
    }
    Ok(out)
}

/// A pattern segment: a name, or `*` for any one segment.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Segment {
    Name(String),
    Any,
}

/// The pointers a route leaves out of the comparison.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ignore {
    patterns: Vec<Vec<Segment>>,
}

impl Ignore {
    /// Parses the list; the first bad entry is the error.
    pub fn new<'a>(pointers: impl IntoIterator<Item = &'a str>) -> Result<Self, PointerError> {
        let mut patterns = Vec::new();
        for pointer in pointers {
            let Some(rest) = pointer.strip_prefix('/') else {
                return Err(PointerError::NoLeadingSlash(pointer.to_owned()));
            };
            let segments = rest
                .split('/')
                .map(|s| if s == "*" { Ok(Segment::Any) } else { unescape(s, pointer).map(Segment::Name) })
                .collect::<Result<Vec<_>, _>>()?;
            patterns.push(segments);
        }
        Ok(Ignore { patterns })
    }

    /// True when the value at `path` (unescaped segments) is inside an ignored subtree.
    pub fn covers(&self, path: &[String]) -> bool {
        self.patterns.iter().any(|pattern| {
            pattern.len() <= path.len()
                && pattern.iter().zip(path).all(|(p, s)| match p {
                    Segment::Any => true,
                    Segment::Name(name) => name == s,
                })
        })
    }

    /// True when nothing is ignored.
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }
}

/// `path` written as a pointer.
pub(crate) fn to_pointer(path: &[String]) -> String {
    path.iter().map(|s| format!("/{}", escape_segment(s))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(segments: &[&str]) -> Vec<String> {
        segments.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn an_ignored_pointer_covers_its_subtree_and_stars_match_one_segment() {
        let ignore = Ignore::new(["/meta", "/items/*/updated_at", "/a~1b/c~0d"]).expect("valid");
        assert!(ignore.covers(&path(&["meta"])));
        assert!(ignore.covers(&path(&["meta", "request_id"])));
        assert!(!ignore.covers(&path(&["metadata"])));
        assert!(ignore.covers(&path(&["items", "3", "updated_at"])));
        assert!(!ignore.covers(&path(&["items", "3", "name"])));
        assert!(!ignore.covers(&path(&["items"])), "a star needs a segment");
        assert!(ignore.covers(&path(&["a/b", "c~d"])), "escapes are read as RFC 6901 says");
    }

    #[test]
    fn bad_pointers_are_refused_with_a_reason() {
        assert_eq!(Ignore::new(["meta"]), Err(PointerError::NoLeadingSlash("meta".to_owned())));
        assert_eq!(Ignore::new(["/a~2"]), Err(PointerError::BadEscape("/a~2".to_owned())));
        assert!(Ignore::new(["/a~2"]).unwrap_err().to_string().contains("~0"));
    }

    #[test]
    fn pointers_are_written_with_escapes() {
        assert_eq!(to_pointer(&path(&["a/b", "c~d", "0"])), "/a~1b/c~0d/0");
        assert_eq!(to_pointer(&[]), "");
    }
}
