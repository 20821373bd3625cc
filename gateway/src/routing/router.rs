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

use super::lenient::with_lenient_reading;
use super::normalize::PathError;

/// Maps normalised paths to routes; built once per config snapshot.
#[derive(Debug)]
pub struct Router {
    /// Lower-case exact path -> aggregate; checked before prefixes.
    exact: HashMap<String, RouteId>,
    /// Lower-case prefix -> route.
    prefixes: HashMap<String, RouteId>,
    /// Returned when nothing matches: the route to `server.default_upstream`.
    default: RouteId,
    /// Most segments in any prefix or exact path: segments deeper than this never decide.
    max_depth: usize,
}

fn depth(path: &str) -> usize {
    path.split('/').filter(|segment| !segment.is_empty()).count()
}

impl Router {
    /// A router over `(prefix, route)` pairs; prefixes must be lower case, without a
    /// trailing `/` (except the root) and unique, which config validation guarantees.
    pub fn new(prefixes: impl IntoIterator<Item = (String, RouteId)>, default: RouteId) -> Self {
        let prefixes: HashMap<String, RouteId> = prefixes.into_iter().collect();
        let max_depth = prefixes.keys().map(|p| depth(p)).max().unwrap_or(0);
        Router { exact: HashMap::new(), prefixes, default, max_depth }
    }

    /// Adds exact-path entries (aggregates), which win over any prefix.
    pub fn with_exact_paths(mut self, paths: impl IntoIterator<Item = (String, RouteId)>) -> Self {
        self.exact = paths.into_iter().collect();
        self.max_depth = self.max_depth.max(self.exact.keys().map(|p| depth(p)).max().unwrap_or(0));
        self
    }

    /// The route for a normalised path, as the data plane and `gateway explain` decide
    /// it: [`Router::find`], unless the path's lenient reading (see
    /// [`super::lenient::lenient_reading`]) would land on another route, which is refused.
    pub fn route(&self, path: &str) -> Result<RouteId, PathError> {
        let strict = self.find(path);
        if self.prefixes.is_empty() && self.exact.is_empty() {
            return Ok(strict);
        }
        let elsewhere = with_lenient_reading(path, |lenient, same_segments| {
            // The same segments, the first `max_depth` spelt alike: routed alike, no lookup.
            let decided_alike = lenient.eq_ignore_ascii_case(path)
                || (same_segments
                    && path
                        .split('/')
                        .zip(lenient.split('/'))
                        .take(self.max_depth + 1)
                        .all(|(a, b)| a.eq_ignore_ascii_case(b)));
            !decided_alike && self.find(lenient) != strict
        });
        match elsewhere {
            Some(true) => Err(PathError::Ambiguous),
            _ => Ok(strict),
        }
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
    let (mut upper, mut params) = (false, false);
    for b in path.bytes() {
        upper |= b.is_ascii_uppercase();
        params |= b == b';';
    }
    if !upper && !params {
        return Cow::Borrowed(path);
    }
    let mut key = if params {
        let mut key = String::with_capacity(path.len());
        for (i, segment) in path.split('/').enumerate() {
            if i > 0 {
                key.push('/');
            }
            key.push_str(segment.split(';').next().unwrap_or(""));
        }
        key
    } else {
        path.to_owned()
    };
    key.make_ascii_lowercase();
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
    fn a_path_a_lenient_server_reads_into_another_route_is_refused() {
        let r = Router::new([("/public".to_owned(), RouteId(0)), ("/admin".to_owned(), RouteId(1))], RouteId(9));
        for tricky in [
            "/public/%252e%252e/admin",
            "/public/..%252fadmin",
            "/public/..;/admin",
            "/public/%C0%AE%C0%AE/admin",
            "/public/..%C0%AFadmin",
            "/public/..%EF%BC%8Fadmin",
            "/elsewhere/..;/admin/keys",
            "/%EF%BD%81dmin/x",
        ] {
            assert_eq!(r.route(tricky), Err(PathError::Ambiguous), "{tricky}");
        }
        for served in ["/public/a", "/search/100%25", "/public/100%25/x", "/admin;v=1/x", "/public/caf%C3%A9"] {
            assert_eq!(r.route(served), Ok(r.find(served)), "{served}");
        }
        assert_eq!(Router::new([], RouteId(0)).route("/x/..;/y"), Ok(RouteId(0)), "one route: nothing to confuse");
    }

    /// A lenient back-end written as plainly as possible, as the oracle for the property
    /// below: undo the escapes the generator makes until nothing changes, then resolve.
    fn naive_lenient(path: &str) -> String {
        const FOLDS: [(&str, &str); 8] = [
            ("%25", "%"),
            ("%2e", "."),
            ("%2f", "/"),
            ("%5c", "/"),
            ("%c0%ae", "."),
            ("%c0%af", "/"),
            ("%ef%bc%8f", "/"),
            ("\\", "/"),
        ];
        let mut text = path.to_ascii_lowercase();
        loop {
            let before = text.clone();
            for (from, to) in FOLDS {
                text = text.replace(from, to);
            }
            if text == before {
                break;
            }
        }
        let mut kept: Vec<&str> = Vec::new();
        for segment in text.split('/').map(|s| s.split(';').next().unwrap_or("")) {
            match segment {
                "" | "." => {}
                ".." => {
                    kept.pop();
                }
                s => kept.push(s),
            }
        }
        format!("/{}", kept.join("/"))
    }

    fn confusable_router() -> Router {
        Router::new(
            [
                ("/public".to_owned(), RouteId(0)),
                ("/admin".to_owned(), RouteId(1)),
                ("/admin/keys".to_owned(), RouteId(2)),
            ],
            RouteId(9),
        )
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]

        #[test]
        fn what_the_gateway_serves_a_lenient_back_end_routes_the_same_way(
            raw in "(/(public|admin|keys|x|\\.|\\.\\.|;p|%25|%252[eEfF]|%2[eE]|%[cC]0%[aA][eEfF]|%[eE][fF]%[bB][cC]%8[fF]|%25[cC]0%25[aA][eEfF]){0,3}){1,5}"
        ) {
            let router = confusable_router();
            if let Ok(strict) = crate::routing::normalize::normalize_path(&raw) {
                match router.route(&strict) {
                    Ok(route) => proptest::prop_assert_eq!(router.find(&naive_lenient(&strict)), route, "{} -> {}", raw, strict),
                    Err(error) => proptest::prop_assert_eq!(error, PathError::Ambiguous),
                }
            }
        }

        #[test]
        fn ordinary_paths_are_never_refused(raw in "(/[a-zA-Z0-9._~-]{0,12}){1,6}") {
            let router = confusable_router();
            if let Ok(strict) = crate::routing::normalize::normalize_path(&raw) {
                proptest::prop_assert_eq!(router.route(&strict), Ok(router.find(&strict)));
            }
        }
    }

    #[test]
    fn no_routes_means_default() {
        let r = Router::new([], RouteId(0));
        assert_eq!(r.find("/anything"), RouteId(0));
    }
}
