//! Entry points for the fuzz targets in `fuzz/` and for the corpus replay test
//! (`gateway/tests/fuzz_corpus.rs`), one per parser the gateway owns. Each takes arbitrary
//! bytes, must never panic, and asserts the invariants the data plane relies on, so a
//! fuzzer finds wrong answers as well as crashes.

use std::path::Path;
use std::sync::LazyLock;
use std::time::Duration;

use gateway_plugin_api::RouteId;
use gateway_plugin_auth::{KeySet, Verifier};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Uri, Version, header};
use jsonwebtoken::Algorithm;

use crate::proxy::headers::{
    HeadProblem, apply_underscore_policy, canonicalise_content_length, check_host, scan_request,
};
use crate::routing::lenient::lenient_reading;
use crate::routing::normalize::normalize_path;
use crate::routing::router::Router;
use crate::snapshot::UnderscoreHeaders;

/// The routes the path target decides between: nested prefixes, a root-level one and an
/// exact (aggregate) path, so a confused reading has somewhere else to land.
static ROUTER: LazyLock<Router> = LazyLock::new(|| {
    Router::new(
        [
            ("/public".to_owned(), RouteId(0)),
            ("/admin".to_owned(), RouteId(1)),
            ("/admin/keys".to_owned(), RouteId(2)),
            ("/api/users".to_owned(), RouteId(3)),
        ],
        RouteId(9),
    )
    .with_exact_paths([("/api/users/dashboard".to_owned(), RouteId(4))])
});

/// Path normaliser, lenient reading and router: the normal form is a fixed point, and a
/// path the router accepts reads the same way leniently.
pub fn path(data: &[u8]) {
    let Ok(raw) = std::str::from_utf8(data) else { return };
    let Ok(normal) = normalize_path(raw) else { return };
    assert!(normal.starts_with('/'), "{raw:?} normalised to {normal:?}");
    assert_eq!(normalize_path(&normal).as_deref(), Ok(&*normal), "normalising {raw:?} twice differs");
    let strict = ROUTER.find(&normal);
    let lenient = lenient_reading(&normal);
    if let Some(lenient) = &lenient {
        assert!(lenient.starts_with('/'), "{normal:?} read leniently as {lenient:?}");
        assert!(!lenient.split('/').any(|s| s == ".." || s == "."), "{lenient:?} keeps a dot segment");
    }
    match ROUTER.route(&normal) {
        Ok(route) => {
            assert_eq!(route, strict, "route and find disagree on {normal:?}");
            if let Some(lenient) = &lenient {
                assert_eq!(
                    ROUTER.find(lenient),
                    strict,
                    "{normal:?} served, but read as {lenient:?} it routes elsewhere"
                );
            }
        }
        Err(error) => assert_eq!(error, crate::routing::normalize::PathError::Ambiguous),
    }
}

/// The config compiler: any text is a snapshot or an error naming the file, never a panic.
/// Texts naming special files are skipped: reading `/dev/zero` as a key file would never
/// end, and the fuzzer would find that rather than a bug.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if ["/dev", "/proc", "/sys"].iter().any(|special| text.contains(special)) {
        return;
    }
    if let Err(error) = crate::config::compile(Path::new("fuzz.toml"), text, 1) {
        let message = error.to_string();
        assert!(message.starts_with("fuzz.toml"), "an error that does not name the file: {message}");
    }
}

/// The published test keys (`tests/fixtures/keys/jwks.json`, public keys only).
const FIXTURE_JWKS: &str = include_str!("../../tests/fixtures/keys/jwks.json");

static VERIFIER: LazyLock<Verifier> = LazyLock::new(|| {
    let keys = KeySet::from_jwks(FIXTURE_JWKS).expect("the fixture JWKS parses");
    Verifier::new(keys, vec![Algorithm::RS256, Algorithm::ES256], Some("fuzz".to_owned()), vec!["api".to_owned()], 0)
});

/// The JWT front: header decoding, `alg`/`kid`/`crit` checks, then signature and claims.
/// No input without a valid signature of a fixture key may verify; the fuzzer has none.
/// The first byte chooses the form: 0 sends the rest as the token; otherwise the rest is
/// split at `0xFF` into header, claims and signature, each base64url-encoded, so the
/// fuzzer reaches past the base64 layer.
pub fn token(data: &[u8]) {
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let Some((&form, rest)) = data.split_first() else { return };
    let token = if form == 0 {
        match std::str::from_utf8(rest) {
            Ok(token) => token.to_owned(),
            Err(_) => return,
        }
    } else {
        rest.split(|&b| b == 0xFF).map(|part| URL_SAFE_NO_PAD.encode(part)).collect::<Vec<_>>().join(".")
    };
    let verified = VERIFIER.verify(&token, 1_700_000_000);
    assert!(verified.is_err(), "a token without a fixture key's signature verified: {token}");
}

/// A published key set, as a `jwks_url` answer is read: never a panic; a set that loads
/// has keys, no `kid` twice, and a key for every kid it lists; loading the same bytes
/// again is "unchanged", so an unchanged answer never voids cached tokens.
pub fn jwks(data: &[u8]) {
    use gateway_plugin_auth::{Applied, RemoteKeys, RemoteSettings};
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok((set, _skipped)) = KeySet::from_published_jwks(text) else { return };
    assert!(!set.keys().is_empty(), "a loaded set has keys");
    let kids: Vec<&str> = set.kids().collect();
    let distinct: std::collections::HashSet<&str> = kids.iter().copied().collect();
    assert_eq!(kids.len(), distinct.len(), "a kid twice: {kids:?}");
    assert!(kids.iter().all(|kid| set.by_kid(kid).is_some()));
    let source = RemoteKeys::new(RemoteSettings { source: "fuzz".to_owned(), refresh: Duration::from_secs(1) });
    assert_eq!(source.apply(set, Vec::new(), 0), Applied::First);
    let (again, _) = KeySet::from_published_jwks(text).expect("the same bytes load again");
    assert_eq!(source.apply(again, Vec::new(), 1), Applied::Unchanged);
    assert_eq!(source.epoch(), 0);
}

/// The request-head screen, WebSocket upgrade detection and gRPC content-type detection,
/// over a head made of `name: value` lines (the first line is the request target).
pub fn request_head(data: &[u8]) {
    let mut lines = data.split(|&b| b == b'\n');
    let target = lines.next().and_then(|line| Uri::try_from(line.trim_ascii()).ok()).unwrap_or_default();
    let mut headers = HeaderMap::new();
    for line in lines {
        let Some(colon) = line.iter().position(|&b| b == b':') else { continue };
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(line[..colon].trim_ascii()),
            HeaderValue::from_bytes(line[colon + 1..].trim_ascii()),
        ) else {
            continue;
        };
        headers.append(name, value);
    }
    let scan = scan_request(&headers);
    assert_eq!(scan.host, headers.contains_key(header::HOST));
    assert_eq!(scan.content_length, headers.contains_key(header::CONTENT_LENGTH));
    if check_host(&headers, &target).is_ok() {
        assert!(headers.get_all(header::HOST).iter().count() <= 1);
    }
    let mut canonical = headers.clone();
    match canonicalise_content_length(&mut canonical) {
        Ok(()) => {
            let values: Vec<_> = canonical.get_all(header::CONTENT_LENGTH).iter().collect();
            assert!(values.len() <= 1, "{values:?}");
            if let Some(value) = values.first() {
                let text = value.to_str().expect("digits");
                assert!(text.parse::<u64>().is_ok_and(|n| n.to_string() == text), "not canonical: {text}");
            }
        }
        Err(problem) => assert_eq!(problem, HeadProblem::InvalidContentLength),
    }
    for policy in [UnderscoreHeaders::Drop, UnderscoreHeaders::Reject, UnderscoreHeaders::Pass] {
        let mut screened = headers.clone();
        let result = apply_underscore_policy(&mut screened, policy);
        let underscored = screened.keys().any(|name| name.as_str().contains('_'));
        match policy {
            UnderscoreHeaders::Drop => assert!(result.is_ok() && !underscored),
            UnderscoreHeaders::Reject => assert_eq!(result.is_err(), scan.underscore),
            UnderscoreHeaders::Pass => assert!(result.is_ok() && screened.len() == headers.len()),
        }
    }
    for (method, version) in
        [(Method::GET, Version::HTTP_11), (Method::POST, Version::HTTP_11), (Method::GET, Version::HTTP_2)]
    {
        let websocket = crate::proxy::upgrade::is_websocket(&method, version, &headers);
        assert!(
            !websocket || (method == Method::GET && version == Version::HTTP_11),
            "upgrade on {method} {version:?}"
        );
    }
    let _ = crate::proxy::reply::is_grpc(Version::HTTP_2, &headers);
    assert!(!crate::proxy::reply::is_grpc(Version::HTTP_11, &headers), "HTTP/1.1 is never gRPC");
}
