//! `service_prefix`: the matched route prefix replaced for requests sent to the service.
//!
//! The rewrite works on the normalised path the router matched, byte for byte: nothing is
//! decoded or re-encoded, so a percent-encoded segment (`a%2Fb`) reaches the service
//! exactly as it was matched, and the query string is kept as the client sent it.

use http::uri::{PathAndQuery, Uri};

/// A route prefix and what replaces it on the service side.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePrefix {
    /// The route's prefix, lower-cased (the router matches prefixes ignoring ASCII case).
    matched: String,
    /// What the service expects in its place: a normalised path, `/` allowed.
    replacement: String,
}

impl ServicePrefix {
    /// The rewrite of `matched` (a route prefix) to `replacement` (a valid service prefix,
    /// see [`prefix_problem`]).
    pub fn new(matched: &str, replacement: &str) -> Self {
        ServicePrefix { matched: matched.to_ascii_lowercase(), replacement: replacement.to_owned() }
    }

    /// What replaces the matched prefix.
    pub fn replacement(&self) -> &str {
        &self.replacement
    }

    /// `path` with the matched prefix replaced, or `None` when the path is not under the
    /// prefix (an aggregate part with a path outside its route's prefix is sent as written).
    pub fn rewrite_path(&self, path: &str) -> Option<String> {
        let rest = self.rest(path)?;
        let mut rewritten = String::with_capacity(self.replacement.len() + rest.len());
        // "/" + "/7" would be "//7": a root replacement contributes only the rest.
        if rest.is_empty() || self.replacement != "/" {
            rewritten.push_str(&self.replacement);
        }
        rewritten.push_str(rest);
        Some(rewritten)
    }

    /// `uri` (origin-form) with its path rewritten and its query kept; `None` when the
    /// path is not under the prefix or the result is not a valid request target.
    pub fn rewrite(&self, uri: &Uri) -> Option<Uri> {
        let path = self.rewrite_path(uri.path())?;
        let target = match uri.query() {
            Some(query) => format!("{path}?{query}"),
            None => path,
        };
        PathAndQuery::try_from(target).ok().map(Uri::from)
    }

    /// The part of `path` after the prefix: empty, or starting with `/`.
    fn rest<'p>(&self, path: &'p str) -> Option<&'p str> {
        if self.matched == "/" {
            return path.starts_with('/').then_some(if path == "/" { "" } else { path });
        }
        let head = path.as_bytes().get(..self.matched.len())?;
        if !head.eq_ignore_ascii_case(self.matched.as_bytes()) {
            return None;
        }
        let rest = &path[self.matched.len()..];
        // Whole segments only: /api/users does not cover /api/usersX.
        (rest.is_empty() || rest.starts_with('/')).then_some(rest)
    }
}

/// Why `prefix` cannot be a `service_prefix`, if it cannot.
pub fn prefix_problem(prefix: &str) -> Option<&'static str> {
    if !prefix.starts_with('/') {
        return Some("a service prefix is a path: it starts with '/'");
    }
    if prefix.len() > 1 && prefix.ends_with('/') {
        return Some("drop the trailing '/': the rest of the path starts with '/' (use \"/\" for the root)");
    }
    if prefix.contains(['?', '#']) {
        return Some("a service prefix is a path only, without '?' or '#' (the client's query is kept)");
    }
    if prefix.len() > 1 && prefix[1..].split('/').any(|segment| matches!(segment, "" | "." | "..")) {
        return Some("a service prefix must be a normalised path: no empty, '.' or '..' segments");
    }
    let bytes = prefix.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let escaped = bytes.get(i + 1..i + 3).and_then(|hex| std::str::from_utf8(hex).ok());
                match escaped.and_then(|hex| u8::from_str_radix(hex, 16).ok()) {
                    Some(byte) if is_unreserved(byte) => {
                        return Some("write plain characters as they are, not percent-encoded");
                    }
                    Some(_) => i += 3,
                    None => return Some("a '%' must start an escape of two hex digits"),
                }
            }
            byte if is_path_char(byte) => i += 1,
            _ => return Some("a service prefix uses only URL path characters (escape others as %XX)"),
        }
    }
    None
}

/// RFC 3986 unreserved characters.
fn is_unreserved(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~')
}

/// Characters a normalised path carries unescaped (`pchar` and `/`, without `;`, which the
/// gateway's normaliser refuses in paths).
fn is_path_char(byte: u8) -> bool {
    is_unreserved(byte)
        || matches!(byte, b'/' | b':' | b'@' | b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b'=')
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rewrite(matched: &str, replacement: &str, target: &str) -> Option<String> {
        let uri: Uri = target.parse().expect("test targets are valid");
        ServicePrefix::new(matched, replacement).rewrite(&uri).map(|uri| uri.to_string())
    }

    #[test]
    fn the_prefix_is_replaced_and_the_rest_kept() {
        assert_eq!(rewrite("/api/users", "/v2/users", "/api/users/7").as_deref(), Some("/v2/users/7"));
        assert_eq!(rewrite("/api/users", "/v2/users", "/api/users").as_deref(), Some("/v2/users"));
        assert_eq!(rewrite("/api/users", "/v2/users", "/api/users/7/orders/").as_deref(), Some("/v2/users/7/orders/"));
        assert_eq!(rewrite("/api/users", "/v2", "/api/users/").as_deref(), Some("/v2/"));
    }

    #[test]
    fn a_root_replacement_strips_the_prefix() {
        assert_eq!(rewrite("/api/users", "/", "/api/users/7").as_deref(), Some("/7"));
        assert_eq!(rewrite("/api/users", "/", "/api/users").as_deref(), Some("/"));
        assert_eq!(rewrite("/api/users", "/", "/api/users?page=2").as_deref(), Some("/?page=2"));
    }

    #[test]
    fn a_root_route_prefix_puts_the_whole_path_under_the_replacement() {
        assert_eq!(rewrite("/", "/legacy", "/a/b").as_deref(), Some("/legacy/a/b"));
        assert_eq!(rewrite("/", "/legacy", "/").as_deref(), Some("/legacy"));
        assert_eq!(rewrite("/", "/", "/a").as_deref(), Some("/a"));
    }

    #[test]
    fn the_query_is_kept_as_sent() {
        assert_eq!(
            rewrite("/api/users", "/v2/users", "/api/users/7?fields=name&x=%20").as_deref(),
            Some("/v2/users/7?fields=name&x=%20")
        );
        assert_eq!(rewrite("/api/users", "/v2/users", "/api/users?").as_deref(), Some("/v2/users?"));
    }

    #[test]
    fn percent_encoded_segments_are_kept_as_normalised() {
        assert_eq!(rewrite("/api/files", "/v2/files", "/api/files/a%2Fb").as_deref(), Some("/v2/files/a%2Fb"));
        assert_eq!(rewrite("/api/files", "/v2/files", "/api/files/%E2%9C%93").as_deref(), Some("/v2/files/%E2%9C%93"));
    }

    #[test]
    fn only_whole_segments_under_the_prefix_are_rewritten() {
        assert_eq!(rewrite("/api/users", "/v2/users", "/api/usersX"), None);
        assert_eq!(rewrite("/api/users", "/v2/users", "/api"), None);
        assert_eq!(rewrite("/api/users", "/v2/users", "/other/users/7"), None);
        // The router matches prefixes ignoring ASCII case; the rewrite follows it.
        assert_eq!(rewrite("/api/Users", "/v2/users", "/API/users/7").as_deref(), Some("/v2/users/7"));
    }

    #[test]
    fn service_prefixes_must_be_normalised_paths() {
        for good in ["/", "/v2", "/v2/users", "/a-b_c.d~e", "/caf%C3%A9", "/x:y@z"] {
            assert_eq!(prefix_problem(good), None, "{good}");
        }
        for (bad, why) in [
            ("v2", "starts with '/'"),
            ("", "starts with '/'"),
            ("/v2/", "trailing '/'"),
            ("/v2?x=1", "without '?'"),
            ("/v2#top", "without '?' or '#'"),
            ("/a//b", "normalised"),
            ("/a/./b", "normalised"),
            ("/a/..", "normalised"),
            ("/a%41", "plain characters"),
            ("/a%4", "two hex digits"),
            ("/a%zz", "two hex digits"),
            ("/a b", "URL path characters"),
            ("/a%20 b", "URL path characters"),
            ("/a;b", "URL path characters"),
            ("/a\\b", "URL path characters"),
        ] {
            let problem = prefix_problem(bad).unwrap_or_else(|| panic!("{bad:?} accepted"));
            assert!(problem.contains(why), "{bad:?}: {problem}");
        }
    }

    proptest! {
        /// For any path under the prefix, the service sees the replacement followed by the
        /// same rest, and the query untouched.
        #[test]
        fn the_rest_and_query_survive_the_rewrite(
            segments in proptest::collection::vec("[a-z0-9%]{1,6}", 0..4),
            query in proptest::option::of("[a-z0-9=&%]{0,8}"),
            root in any::<bool>(),
        ) {
            let rest: String = segments.iter().map(|s| format!("/{s}")).collect();
            let replacement = if root { "/" } else { "/v2" };
            let target = match &query {
                Some(query) => format!("/api{rest}?{query}"),
                None => format!("/api{rest}"),
            };
            let Ok(uri) = target.parse::<Uri>() else { return Ok(()) };
            let rewritten = ServicePrefix::new("/api", replacement).rewrite(&uri).expect("under the prefix");
            let expected_path = match (root, rest.is_empty()) {
                (true, true) => "/".to_owned(),
                (true, false) => rest.clone(),
                (false, _) => format!("/v2{rest}"),
            };
            prop_assert_eq!(rewritten.path(), expected_path.as_str());
            prop_assert_eq!(rewritten.query(), uri.query());
        }
    }
}
