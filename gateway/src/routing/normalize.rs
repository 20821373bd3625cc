//! Request-path normalisation, done once before authentication and routing.
//!
//! The router, the auth decision and the upstream all see the same normalised path, so
//! no encoding or dot-segment trick can make the gateway match one route while the
//! upstream serves another:
//!
//! 1. `%XX` escapes of unreserved characters (`A-Z a-z 0-9 - . _ ~`) are decoded; every
//!    other escape is kept, with its hex digits in upper case.
//! 2. Empty segments (`//`) are merged.
//! 3. `.` and `..` segments are resolved (RFC 3986 §5.2.4), after decoding, so `%2e%2e`
//!    counts as `..`.
//!
//! A path that cannot be normalised without ambiguity is refused (400): an encoded `/` or
//! `\`, a raw `\`, an encoded NUL, a malformed escape, a `..` that climbs above the root,
//! or anything that is not an absolute path.

use std::borrow::Cow;

/// Why a path was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// The request target is not an absolute path (`*`, empty, relative).
    #[error("the request path must start with '/'")]
    NotAbsolute,
    /// `%2F` or `%5C`: a separator the upstream might decode differently.
    #[error("the path contains an encoded '/' or '\\'")]
    EncodedSeparator,
    /// A raw backslash, which some servers treat as '/'.
    #[error("the path contains a '\\'")]
    Backslash,
    /// `%00`.
    #[error("the path contains an encoded NUL")]
    EncodedNul,
    /// `%` not followed by two hex digits.
    #[error("the path contains a malformed percent escape")]
    BadEscape,
    /// A `..` segment above the root.
    #[error("the path climbs above the root with '..'")]
    EscapesRoot,
    /// Read as a lenient back-end reads it (decoded again, `;params` dropped, look-alike
    /// characters folded), the path lands on another route.
    #[error("the path would reach another route on a server that decodes it leniently")]
    Ambiguous,
}

impl PathError {
    /// The `x-gateway-error` code for this refusal.
    pub fn code(self) -> &'static str {
        match self {
            PathError::NotAbsolute => "bad-path",
            PathError::EncodedSeparator => "bad-path-encoded-slash",
            PathError::Backslash => "bad-path-backslash",
            PathError::EncodedNul => "bad-path-encoded-nul",
            PathError::BadEscape => "bad-path-escape",
            PathError::EscapesRoot => "bad-path-dot-segments",
            PathError::Ambiguous => gateway_plugin_api::codes::BAD_PATH_AMBIGUOUS,
        }
    }
}

/// Normalises `raw` (the path part of the request target, without the query).
///
/// Returns the input unchanged, without allocating, when it is already normal.
pub fn normalize_path(raw: &str) -> Result<Cow<'_, str>, PathError> {
    if !raw.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    if is_normal(raw.as_bytes()) {
        return Ok(Cow::Borrowed(raw));
    }
    let decoded = decode_unreserved(raw)?;
    resolve_segments(&decoded).map(Cow::Owned)
}

/// True when the path has no escapes, backslashes, empty or dot segments.
fn is_normal(bytes: &[u8]) -> bool {
    let mut previous = 0u8;
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'%' | b'\\' => return false,
            b'/' if previous == b'/' => return false,
            b'.' if previous == b'/' => {
                // "." or ".." as a whole segment.
                let rest = &bytes[i..];
                let segment_end = rest.iter().position(|&c| c == b'/').unwrap_or(rest.len());
                if segment_end <= 2 && rest[..segment_end].iter().all(|&c| c == b'.') {
                    return false;
                }
            }
            _ => {}
        }
        previous = b;
    }
    true
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// The value of one hex digit.
pub(crate) fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn decode_unreserved(raw: &str) -> Result<String, PathError> {
    const HEX_UPPER: &[u8; 16] = b"0123456789ABCDEF";
    let bytes = raw.as_bytes();
    let mut out = String::with_capacity(raw.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let (Some(hi), Some(lo)) =
                    (bytes.get(i + 1).copied().and_then(hex_value), bytes.get(i + 2).copied().and_then(hex_value))
                else {
                    return Err(PathError::BadEscape);
                };
                let value = hi << 4 | lo;
                match value {
                    b'/' | b'\\' => return Err(PathError::EncodedSeparator),
                    0 => return Err(PathError::EncodedNul),
                    v if is_unreserved(v) => out.push(char::from(v)),
                    _ => {
                        out.push('%');
                        out.push(char::from(HEX_UPPER[usize::from(hi)]));
                        out.push(char::from(HEX_UPPER[usize::from(lo)]));
                    }
                }
                i += 3;
            }
            b'\\' => return Err(PathError::Backslash),
            _ => {
                // Copy the run of plain bytes up to the next '%' or '\' in one go; the
                // input is a &str, so a run boundary at an ASCII byte is a char boundary.
                let run = bytes[i..].iter().position(|&c| c == b'%' || c == b'\\').map_or(bytes.len(), |n| i + n);
                out.push_str(&raw[i..run]);
                i = run;
            }
        }
    }
    Ok(out)
}

fn resolve_segments(path: &str) -> Result<String, PathError> {
    let mut kept: Vec<&str> = Vec::new();
    let mut trailing_slash = false;
    let segments: Vec<&str> = path[1..].split('/').collect();
    let last = segments.len() - 1;
    for (i, segment) in segments.iter().enumerate() {
        let is_last = i == last;
        match *segment {
            "" | "." => trailing_slash = is_last && !kept.is_empty(),
            ".." => {
                if kept.pop().is_none() {
                    return Err(PathError::EscapesRoot);
                }
                trailing_slash = is_last && !kept.is_empty();
            }
            other => {
                kept.push(other);
                trailing_slash = false;
            }
        }
    }
    let mut out = String::with_capacity(path.len());
    for segment in &kept {
        out.push('/');
        out.push_str(segment);
    }
    if out.is_empty() || trailing_slash {
        out.push('/');
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn normalisation_table() {
        let good = [
            ("/", "/"),
            ("/api/users", "/api/users"),
            ("/api/users/", "/api/users/"),
            ("//api///users", "/api/users"),
            ("/api/./users", "/api/users"),
            ("/api/x/../users", "/api/users"),
            ("/api/users/..", "/api/"),
            ("/api/users/.", "/api/users/"),
            ("/a/..", "/"),
            ("/%61pi/%75sers", "/api/users"),
            ("/api/%2e%2E/admin", "/admin"),
            ("/api/%7euser", "/api/~user"),
            ("/api/caf%c3%a9", "/api/caf%C3%A9"),
            ("/api/a%20b", "/api/a%20b"),
            ("/.well-known/x", "/.well-known/x"),
            ("/a/.../b", "/a/.../b"),
            ("/a/..b/c", "/a/..b/c"),
            ("/api/users;jsessionid=1", "/api/users;jsessionid=1"),
        ];
        for (input, expected) in good {
            assert_eq!(normalize_path(input).as_deref(), Ok(expected), "input {input:?}");
        }
        let bad = [
            ("", PathError::NotAbsolute),
            ("*", PathError::NotAbsolute),
            ("api/users", PathError::NotAbsolute),
            ("/api%2fusers", PathError::EncodedSeparator),
            ("/api%2Fusers", PathError::EncodedSeparator),
            ("/api%5cusers", PathError::EncodedSeparator),
            ("/api\\users", PathError::Backslash),
            ("/api/%00", PathError::EncodedNul),
            ("/api/%", PathError::BadEscape),
            ("/api/%4", PathError::BadEscape),
            ("/api/%zz", PathError::BadEscape),
            ("/..", PathError::EscapesRoot),
            ("/api/../../etc", PathError::EscapesRoot),
            ("/%2e%2e/etc", PathError::EscapesRoot),
        ];
        for (input, expected) in bad {
            assert_eq!(normalize_path(input), Err(expected), "input {input:?}");
        }
    }

    #[test]
    fn already_normal_paths_are_borrowed() {
        assert!(matches!(normalize_path("/api/users/7?x"), Ok(Cow::Borrowed(_))));
        assert!(matches!(normalize_path("/api//users"), Ok(Cow::Owned(_))));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Normal form is a fixed point, has no empty or dot segments and no escapes of
        /// unreserved characters: whatever the encoding trick, there is one spelling.
        #[test]
        fn normal_form_is_stable(raw in "/[a-zA-Z0-9./%~_\\-]{0,40}") {
            if let Ok(once) = normalize_path(&raw) {
                let twice = normalize_path(&once).expect("normal form normalises");
                prop_assert_eq!(&twice, &once);
                prop_assert!(once.starts_with('/'));
                prop_assert!(!once.contains("//"));
                for segment in once.split('/') {
                    prop_assert!(segment != "." && segment != "..");
                }
                let bytes = once.as_bytes();
                for (i, _) in once.match_indices('%') {
                    let v = hex_value(bytes[i + 1]).unwrap() << 4 | hex_value(bytes[i + 2]).unwrap();
                    prop_assert!(!is_unreserved(v), "escaped unreserved byte in {}", once);
                }
            }
        }

        /// Any spelling of a path under /admin normalises to a path under /admin: decoding
        /// unreserved escapes and inserting "./" or "x/../" never changes where it lands.
        #[test]
        fn equivalent_spellings_agree(mask in proptest::collection::vec(any::<bool>(), 5), extra in 0usize..3) {
            let mut spelled = String::from("/");
            for (i, c) in "admin".chars().enumerate() {
                if mask[i] { spelled.push_str(&format!("%{:02x}", c as u8)); } else { spelled.push(c); }
            }
            for _ in 0..extra { spelled.push_str("/./x/..//"); }
            spelled.push_str("/panel");
            prop_assert_eq!(normalize_path(&spelled).unwrap(), "/admin/panel");
        }
    }
}
