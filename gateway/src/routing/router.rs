//! Longest whole-segment prefix matching over normalised paths.
//!
//! `/api/users` matches `/api/users`, `/api/users/` and `/api/users/7`, never
//! `/api/usersX`. Matching ignores ASCII case and `;parameters` inside a segment, so
//! `/API/Users;jsessionid=1/7` lands on the `/api/users` route (and its auth) even if the
//! monolith behind would have served it as `/api/users/7`; the upstream still receives the
//! path exactly as normalised.

use std::borrow::Cow;
use std::collections::HashMap;

use gateway_plugin_api::RouteId;

/// Maps normalised paths to routes; built once per config snapshot.
#[derive(Debug)]
pub struct Router {
    /// Lower-case exact path -> aggregate; checked before prefixes.
    exact: HashMap<String, RouteId>,
    /// Lower-case prefix -> route.
    prefixes: HashMap<String, RouteId>,
    /// Returned when nothing matches: the route to `server.default_upstream`.
    default: RouteId,
}

impl Router {
    /// A router over `(prefix, route)` pairs; prefixes must be lower case, without a
    /// trailing `/` (except the root) and unique, which config validation guarantees.
    pub fn new(prefixes: impl IntoIterator<Item = (String, RouteId)>, default: RouteId) -> Self {
        Router { exact: HashMap::new(), prefixes: prefixes.into_iter().collect(), default }
    }

    /// Adds exact-path entries (aggregates), which win over any prefix.
    pub fn with_exact_paths(mut self, paths: impl IntoIterator<Item = (String, RouteId)>) -> Self {
        self.exact = paths.into_iter().collect();
        self
    }

    /// The route for a normalised path: the longest prefix that ends on a segment
    /// boundary, or the default route.
    pub fn find(&self, path: &str) -> RouteId {
        if self.prefixes.is_empty() && self.exact.is_empty() {
            return self.default;
        }
        let key = match_key(path);
        if !self.exact.is_empty()
            && let Some(route) = self.exact.get(key.trim_end_matches('/')).or_else(|| self.exact.get(&*key))
        {
            return *route;
        }
        let mut candidate: &str = &key;
        loop {
            if let Some(route) = self.prefixes.get(candidate) {
                return *route;
            }
            match candidate.rfind('/') {
                Some(0) if candidate.len() > 1 => candidate = "/",
                Some(i) if i > 0 => candidate = &candidate[..i],
                _ => return self.default,
            }
        }
    }
}

/// The path as the matcher compares it: ASCII lower case, `;params` dropped per segment.
fn match_key(path: &str) -> Cow<'_, str> {
    if !path.bytes().any(|b| b.is_ascii_uppercase() || b == b';') {
        return Cow::Borrowed(path);
    }
    let mut key = String::with_capacity(path.len());
    for (i, segment) in path.split('/').enumerate() {
        if i > 0 {
            key.push('/');
        }
        let name = segment.split(';').next().unwrap_or("");
        key.extend(name.chars().map(|c| c.to_ascii_lowercase()));
    }
    Cow::Owned(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router() -> Router {
        Router::new(
            [
                ("/api/users".to_owned(), RouteId(0)),
                ("/api/users/admin".to_owned(), RouteId(1)),
                ("/api".to_owned(), RouteId(2)),
            ],
            RouteId(9),
        )
    }

    #[test]
    fn longest_whole_segment_prefix_wins() {
        let r = router();
        let cases = [
            ("/api/users", 0),
            ("/api/users/", 0),
            ("/api/users/7", 0),
            ("/api/users/7/orders", 0),
            ("/api/usersX", 2),
            ("/api/users-old/1", 2),
            ("/api/users/admin", 1),
            ("/api/users/admin/keys", 1),
            ("/api/users/administrator", 0),
            ("/api", 2),
            ("/api/", 2),
            ("/apiary", 9),
            ("/", 9),
            ("/other/api/users", 9),
        ];
        for (path, expected) in cases {
            assert_eq!(r.find(path), RouteId(expected), "path {path}");
        }
    }

    #[test]
    fn case_and_matrix_parameters_do_not_dodge_a_route() {
        let r = router();
        assert_eq!(r.find("/API/Users/7"), RouteId(0));
        assert_eq!(r.find("/api/users;jsessionid=abc/7"), RouteId(0));
        assert_eq!(r.find("/api;x=1/users/admin;y"), RouteId(1));
    }

    #[test]
    fn root_prefix_catches_everything_else() {
        let r = Router::new([("/".to_owned(), RouteId(0)), ("/api".to_owned(), RouteId(1))], RouteId(2));
        assert_eq!(r.find("/"), RouteId(0));
        assert_eq!(r.find("/x/y"), RouteId(0));
        assert_eq!(r.find("/api/y"), RouteId(1));
    }

    #[test]
    fn exact_paths_win_over_prefixes() {
        let r = router().with_exact_paths([("/api/users/dashboard".to_owned(), RouteId(5))]);
        assert_eq!(r.find("/api/users/dashboard"), RouteId(5));
        assert_eq!(r.find("/API/Users/Dashboard/"), RouteId(5));
        assert_eq!(r.find("/api/users/dashboard/x"), RouteId(0), "exact means exact");
    }

    #[test]
    fn no_routes_means_default() {
        let r = Router::new([], RouteId(0));
        assert_eq!(r.find("/anything"), RouteId(0));
    }
}
