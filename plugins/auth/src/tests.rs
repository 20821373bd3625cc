//! Unit tests of verification, the cache and the plugin, with an injected clock.

use std::sync::atomic::{AtomicU64, Ordering};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use gateway_plugin_api::{RouteId, Target};
use http::Request;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use proptest::prelude::*;
use serde_json::{Value, json};

use super::*;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/keys/");
const NOW: u64 = 1_800_000_000;
const ISSUER: &str = "https://auth.example.com";

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!("{FIXTURES}{name}")).expect("fixture exists")
}

struct ManualClock(AtomicU64);

impl Clock for ManualClock {
    fn now_unix(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

fn jwks() -> KeySet {
    KeySet::from_jwks(&String::from_utf8(fixture("jwks.json")).expect("utf-8")).expect("fixture JWKS loads")
}

fn verifier_with(algorithms: Vec<Algorithm>, leeway: u64) -> Verifier {
    Verifier::new(jwks(), algorithms, Some(ISSUER.to_owned()), vec!["api".to_owned()], leeway)
}

fn verifier() -> Verifier {
    verifier_with(vec![Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA], 0)
}

fn good_claims() -> Value {
    json!({ "sub": "alice", "email": "alice@company.com", "iss": ISSUER, "aud": "api", "exp": NOW + 600, "n": 7 })
}

fn sign(algorithm: Algorithm, kid: &str, claims: &Value) -> String {
    let key = match algorithm {
        Algorithm::RS256 | Algorithm::PS256 => EncodingKey::from_rsa_pem(&fixture("rsa-private.pem")),
        Algorithm::ES256 => EncodingKey::from_ec_pem(&fixture("ec-private.pem")),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(&fixture("ed-private.pem")),
        other => panic!("no fixture key for {other:?}"),
    }
    .expect("fixture key loads");
    let mut header = Header::new(algorithm);
    header.kid = Some(kid.to_owned());
    jsonwebtoken::encode(&header, claims, &key).expect("signs")
}

fn b64(value: &Value) -> String {
    URL_SAFE_NO_PAD.encode(value.to_string())
}

// === verification ===

#[test]
fn valid_tokens_of_each_family_verify() {
    for (algorithm, kid) in [(Algorithm::RS256, "rsa-1"), (Algorithm::ES256, "ec-1"), (Algorithm::EdDSA, "ed-1")] {
        let identity = verifier().verify(&sign(algorithm, kid, &good_claims()), NOW).expect("valid");
        assert_eq!(identity.subject(), Some("alice"), "{algorithm:?}");
        assert_eq!(identity.claim("n"), Some("7"), "numbers read as text");
        assert_eq!(identity.expires_at, NOW + 600);
    }
}

#[test]
fn alg_none_is_never_accepted_in_any_spelling() {
    for alg in ["none", "None", "NONE", "nOnE"] {
        let token = format!("{}.{}.", b64(&json!({"alg": alg, "kid": "rsa-1"})), b64(&good_claims()));
        assert_eq!(verifier().verify(&token, NOW).unwrap_err(), AuthFailure::AlgorithmNotAllowed, "{alg}");
    }
}

#[test]
fn an_rsa_public_key_cannot_be_used_as_an_hmac_secret() {
    // The classic confusion attack: sign HS256 with the server's *public* key as secret.
    let public_pem = fixture("rsa-public.pem");
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("rsa-1".to_owned());
    let forged = jsonwebtoken::encode(&header, &good_claims(), &EncodingKey::from_secret(&public_pem)).expect("signs");
    let lenient = verifier_with(vec![Algorithm::RS256, Algorithm::HS256], 0);
    assert_eq!(lenient.verify(&forged, NOW).unwrap_err(), AuthFailure::AlgorithmNotAllowed);
    let pem_keyed = Verifier::new(
        KeySet::from_pem(&public_pem).expect("pem"),
        vec![Algorithm::RS256, Algorithm::HS256],
        None,
        vec![],
        0,
    );
    assert_eq!(pem_keyed.verify(&forged, NOW).unwrap_err(), AuthFailure::AlgorithmNotAllowed);
}

#[test]
fn algorithms_outside_the_allow_list_or_the_keys_pin_are_refused() {
    let only_es = verifier_with(vec![Algorithm::ES256], 0);
    assert_eq!(
        only_es.verify(&sign(Algorithm::RS256, "rsa-1", &good_claims()), NOW).unwrap_err(),
        AuthFailure::AlgorithmNotAllowed
    );
    // The JWK for rsa-1 pins RS256, so a PS256 signature by the same key is refused.
    let with_ps = verifier_with(vec![Algorithm::RS256, Algorithm::PS256], 0);
    assert_eq!(
        with_ps.verify(&sign(Algorithm::PS256, "rsa-1", &good_claims()), NOW).unwrap_err(),
        AuthFailure::AlgorithmNotAllowed
    );
    let unknown_alg = format!("{}.{}.c2ln", b64(&json!({"alg": "XS999", "kid": "rsa-1"})), b64(&good_claims()));
    assert_eq!(verifier().verify(&unknown_alg, NOW).unwrap_err(), AuthFailure::AlgorithmNotAllowed);
}

#[test]
fn an_unknown_kid_is_refused() {
    let token = sign(Algorithm::RS256, "rotated-away", &good_claims());
    assert_eq!(verifier().verify(&token, NOW).unwrap_err(), AuthFailure::UnknownKid);
    // A key of the wrong family under a known kid is a confusion, not an unknown kid.
    let token = sign(Algorithm::ES256, "rsa-1", &good_claims());
    assert_eq!(verifier().verify(&token, NOW).unwrap_err(), AuthFailure::AlgorithmNotAllowed);
}

#[test]
fn a_tampered_payload_or_a_foreign_signature_fails_the_signature_check() {
    let token = sign(Algorithm::RS256, "rsa-1", &good_claims());
    let parts: Vec<&str> = token.split('.').collect();
    let mut escalated = good_claims();
    escalated["sub"] = json!("admin");
    let tampered = format!("{}.{}.{}", parts[0], b64(&escalated), parts[2]);
    assert_eq!(verifier().verify(&tampered, NOW).unwrap_err(), AuthFailure::BadSignature);

    let other = EncodingKey::from_rsa_pem(&fixture("other-rsa-private.pem")).expect("loads");
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("rsa-1".to_owned());
    let foreign = jsonwebtoken::encode(&header, &good_claims(), &other).expect("signs");
    assert_eq!(verifier().verify(&foreign, NOW).unwrap_err(), AuthFailure::BadSignature);
}

#[test]
fn exp_and_nbf_respect_the_leeway_at_its_edges() {
    let with_exp = |exp: u64| {
        let mut claims = good_claims();
        claims["exp"] = json!(exp);
        sign(Algorithm::ES256, "ec-1", &claims)
    };
    let strict = verifier_with(vec![Algorithm::ES256], 0);
    assert_eq!(strict.verify(&with_exp(NOW), NOW).unwrap_err(), AuthFailure::Expired, "exp is exclusive");
    assert!(strict.verify(&with_exp(NOW + 1), NOW).is_ok());
    let lenient = verifier_with(vec![Algorithm::ES256], 30);
    assert!(lenient.verify(&with_exp(NOW - 29), NOW).is_ok(), "29 s past exp is within 30 s of leeway");
    assert_eq!(lenient.verify(&with_exp(NOW - 30), NOW).unwrap_err(), AuthFailure::Expired);

    let with_nbf = |nbf: u64| {
        let mut claims = good_claims();
        claims["nbf"] = json!(nbf);
        sign(Algorithm::ES256, "ec-1", &claims)
    };
    assert!(lenient.verify(&with_nbf(NOW + 30), NOW).is_ok());
    assert_eq!(lenient.verify(&with_nbf(NOW + 31), NOW).unwrap_err(), AuthFailure::NotYetValid);
    assert!(strict.verify(&with_nbf(NOW), NOW).is_ok());
    assert_eq!(strict.verify(&with_nbf(NOW + 1), NOW).unwrap_err(), AuthFailure::NotYetValid);
}

#[test]
fn missing_exp_issuer_and_audience_are_checked() {
    let mut claims = good_claims();
    claims.as_object_mut().expect("object").remove("exp");
    assert_eq!(
        verifier().verify(&sign(Algorithm::ES256, "ec-1", &claims), NOW).unwrap_err(),
        AuthFailure::MissingExpiry
    );
    let mut claims = good_claims();
    claims["exp"] = json!("tomorrow");
    assert_eq!(
        verifier().verify(&sign(Algorithm::ES256, "ec-1", &claims), NOW).unwrap_err(),
        AuthFailure::MissingExpiry
    );

    let mut claims = good_claims();
    claims["iss"] = json!("https://evil.example.com");
    assert_eq!(verifier().verify(&sign(Algorithm::ES256, "ec-1", &claims), NOW).unwrap_err(), AuthFailure::BadIssuer);
    claims.as_object_mut().expect("object").remove("iss");
    assert_eq!(verifier().verify(&sign(Algorithm::ES256, "ec-1", &claims), NOW).unwrap_err(), AuthFailure::BadIssuer);

    for (aud, ok) in [(json!("api"), true), (json!(["web", "api"]), true), (json!("web"), false), (json!([]), false)] {
        let mut claims = good_claims();
        claims["aud"] = aud.clone();
        let result = verifier().verify(&sign(Algorithm::ES256, "ec-1", &claims), NOW);
        assert_eq!(result.is_ok(), ok, "aud {aud}");
        if !ok {
            assert_eq!(result.unwrap_err(), AuthFailure::BadAudience);
        }
    }
}

#[test]
fn malformed_tokens_are_refused_before_any_cryptography() {
    let valid = sign(Algorithm::ES256, "ec-1", &good_claims());
    let crit = format!(
        "{}.{}.{}",
        b64(&json!({"alg": "ES256", "kid": "ec-1", "crit": ["exp"]})),
        b64(&good_claims()),
        valid.split('.').nth(2).expect("signature")
    );
    for token in [
        "",
        "abc",
        "a.b",
        "a.b.c.d",
        "!!!.e30.e30",
        "e30.e30.e30",
        &format!("{valid}.extra"),
        &crit,
        &"a".repeat(MAX_TOKEN_BYTES + 1),
    ] {
        let failure = verifier().verify(token, NOW).unwrap_err();
        assert_eq!(failure, AuthFailure::Malformed, "{token:.40}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    /// Whatever arrives in the Authorization header, verification returns a refusal and
    /// never panics.
    #[test]
    fn arbitrary_input_never_verifies(token in "[A-Za-z0-9_.=+/-]{0,300}") {
        prop_assert!(verifier().verify(&token, NOW).is_err());
    }

    /// Flipping any character of a valid token's payload or signature breaks it.
    #[test]
    fn any_single_character_change_breaks_a_valid_token(position in 0usize..400, replacement in "[A-Za-z0-9_-]") {
        let token = sign(Algorithm::ES256, "ec-1", &good_claims());
        let header_len = token.find('.').expect("a dot") + 1;
        let position = header_len + position % (token.len() - header_len);
        let mut bytes = token.clone().into_bytes();
        if bytes[position] == b'.' || bytes[position] == replacement.as_bytes()[0] {
            return Ok(());
        }
        bytes[position] = replacement.as_bytes()[0];
        let changed = String::from_utf8(bytes).expect("ascii");
        prop_assert!(verifier().verify(&changed, NOW).is_err(), "accepted a changed token");
    }
}

// === cache ===

fn authenticator(clock: Arc<ManualClock>, cache_entries: u64) -> Authenticator {
    Authenticator::new(
        verifier_with(vec![Algorithm::ES256, Algorithm::RS256], 0),
        vec![("sub".to_owned(), HeaderName::from_static("x-user-id"))],
        Some("session".to_owned()),
        cache_entries,
        clock,
    )
}

#[test]
fn a_cache_hit_returns_the_same_verification_until_exp() {
    let clock = Arc::new(ManualClock(AtomicU64::new(NOW)));
    let auth = authenticator(clock.clone(), 100);
    let token = sign(Algorithm::ES256, "ec-1", &good_claims());
    let first = auth.authenticate(&token).expect("valid");
    let second = auth.authenticate(&token).expect("cached");
    assert!(Arc::ptr_eq(&first, &second), "the second call is a cache hit");
    assert_eq!(auth.cache().expect("enabled").len(), 1);
    // The cached entry is still checked against the clock.
    clock.0.store(NOW + 600, Ordering::SeqCst);
    assert_eq!(auth.authenticate(&token).unwrap_err(), AuthFailure::Expired);
    assert!(auth.cache().expect("enabled").is_empty(), "the expired entry is dropped");
}

/// The fixture JWKS with only the keys whose kid is listed.
fn jwks_of(kids: &[&str]) -> KeySet {
    let mut document: Value = serde_json::from_slice(&fixture("jwks.json")).expect("json");
    document["keys"].as_array_mut().expect("keys").retain(|k| kids.contains(&k["kid"].as_str().unwrap_or("")));
    KeySet::from_jwks(&document.to_string()).expect("loads")
}

#[test]
fn a_key_its_remote_source_drops_voids_its_cached_tokens_only_and_an_unchanged_set_keeps_them() {
    let clock = Arc::new(ManualClock(AtomicU64::new(NOW)));
    let source = Arc::new(RemoteKeys::new(RemoteSettings {
        source: "https://idp.test/keys".to_owned(),
        refresh: std::time::Duration::from_secs(300),
    }));
    let ring = KeyRing::new(KeySet::empty(), Vec::new(), vec![source.clone()]);
    let verifier = Verifier::new(
        ring,
        vec![Algorithm::RS256, Algorithm::ES256],
        Some(ISSUER.to_owned()),
        vec!["api".to_owned()],
        0,
    );
    let auth = Authenticator::new(verifier, Vec::new(), None, 100, clock);
    let rsa = sign(Algorithm::RS256, "rsa-1", &good_claims());
    let ec = sign(Algorithm::ES256, "ec-1", &good_claims());
    assert_eq!(auth.authenticate(&rsa).unwrap_err(), AuthFailure::UnknownKid, "nothing fetched yet");
    source.apply(jwks_of(&["rsa-1", "ec-1"]), Vec::new(), NOW);
    let first = auth.authenticate(&rsa).expect("fetched key");
    let ec_first = auth.authenticate(&ec).expect("fetched key");
    source.apply(jwks_of(&["rsa-1", "ec-1"]), Vec::new(), NOW + 1);
    assert!(Arc::ptr_eq(&first, &auth.authenticate(&rsa).expect("cached")), "an unchanged set keeps the cache");
    source.apply(jwks_of(&["ec-1", "ed-1"]), Vec::new(), NOW + 2);
    assert_eq!(auth.authenticate(&rsa).unwrap_err(), AuthFailure::UnknownKid, "the cached token is refused");
    let ec_after = auth.authenticate(&ec).expect("a kept key's token still passes");
    assert!(Arc::ptr_eq(&ec_first.identity, &ec_after.identity), "from the cache, not verified again");
}

#[test]
fn the_cache_is_bounded_and_failures_are_not_cached() {
    let clock = Arc::new(ManualClock(AtomicU64::new(NOW)));
    let auth = authenticator(clock, 20);
    for i in 0..200 {
        let mut claims = good_claims();
        claims["sub"] = json!(format!("user-{i}"));
        auth.authenticate(&sign(Algorithm::ES256, "ec-1", &claims)).expect("valid");
    }
    let held = auth.cache().expect("enabled").len();
    assert!(held <= 20, "{held} entries in a cache of 20");
    let bad = auth.authenticate("a.b.c");
    assert!(bad.is_err());
    assert!(auth.cache().expect("enabled").len() <= 20);
}

#[test]
fn claim_headers_are_built_once_from_text_claims() {
    let clock = Arc::new(ManualClock(AtomicU64::new(NOW)));
    let auth = Authenticator::new(
        verifier_with(vec![Algorithm::ES256], 0),
        vec![
            ("sub".to_owned(), HeaderName::from_static("x-user-id")),
            ("groups".to_owned(), HeaderName::from_static("x-groups")),
            ("n".to_owned(), HeaderName::from_static("x-n")),
        ],
        None,
        0,
        clock,
    );
    let mut claims = good_claims();
    claims["groups"] = json!(["a", "b"]);
    let verified = auth.authenticate(&sign(Algorithm::ES256, "ec-1", &claims)).expect("valid");
    let names: Vec<&str> = verified.headers.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["x-user-id", "x-n"], "arrays are not forwarded as headers");

    claims["sub"] = json!("日本語");
    let verified = auth.authenticate(&sign(Algorithm::ES256, "ec-1", &claims)).expect("valid");
    assert_eq!(verified.headers[0].1.as_bytes(), "日本語".as_bytes(), "non-ASCII goes as UTF-8 bytes");
    claims["sub"] = json!("evil\r\nx-admin: 1");
    let verified = auth.authenticate(&sign(Algorithm::ES256, "ec-1", &claims)).expect("valid");
    assert!(verified.headers.iter().all(|(n, _)| n != "x-user-id"), "a value with CR/LF is left out");
}

// === token extraction and the plugin ===

#[test]
fn tokens_come_from_bearer_or_the_cookie_never_elsewhere() {
    let clock = Arc::new(ManualClock(AtomicU64::new(NOW)));
    let auth = authenticator(clock, 10);
    let headers = |pairs: &[(&'static str, &'static str)]| {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_static(value));
        }
        map
    };
    assert_eq!(auth.token(&headers(&[("authorization", "Bearer abc")])), Ok(Some("abc")));
    assert_eq!(auth.token(&headers(&[("authorization", "bearer   abc ")])), Ok(Some("abc")));
    assert_eq!(auth.token(&headers(&[("authorization", "Bearer")])), Ok(Some("")));
    assert_eq!(auth.token(&headers(&[("authorization", "Basic dTpw")])), Ok(None));
    assert_eq!(auth.token(&headers(&[("authorization", "Bearerabc")])), Ok(None));
    assert_eq!(
        auth.token(&headers(&[("authorization", "Bearer a"), ("authorization", "Bearer b")])),
        Err(AuthFailure::Malformed)
    );
    assert_eq!(auth.token(&headers(&[("cookie", "theme=dark; session=tok123")])), Ok(Some("tok123")));
    assert_eq!(auth.token(&headers(&[("cookie", "sessionx=nope")])), Ok(None));
}

fn plugin(modes: Vec<AuthMode>) -> AuthPlugin {
    let clock = Arc::new(ManualClock(AtomicU64::new(NOW)));
    AuthPlugin::new(Arc::new(authenticator(clock, 10)), modes)
}

fn request(pairs: &[(&str, &str)]) -> Parts {
    let mut builder = Request::get("/api/users/1");
    for (name, value) in pairs {
        builder = builder.header(*name, *value);
    }
    builder.body(()).expect("valid").into_parts().0
}

fn ctx(route: usize) -> RequestCtx {
    let mut ctx = RequestCtx::new(HeaderValue::from_static("test"), std::time::Duration::ZERO);
    ctx.route = Some(RouteId(route));
    ctx
}

#[test]
fn required_routes_refuse_missing_and_bad_tokens_with_a_bearer_challenge() {
    let plugin = plugin(vec![AuthMode::Required]);
    let mut ctx = ctx(0);
    let Flow::Respond(rejection) = plugin.authenticate(&mut ctx, &mut request(&[])) else { panic!("must refuse") };
    assert_eq!(rejection.status, StatusCode::UNAUTHORIZED);
    assert_eq!(rejection.code, "jwt-missing");
    assert_eq!(rejection.headers, vec![(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"))]);
    assert_eq!(ctx.auth_failure, Some("missing"));

    let mut ctx = self::ctx(0);
    let Flow::Respond(rejection) = plugin.authenticate(&mut ctx, &mut request(&[("authorization", "Bearer x.y.z")]))
    else {
        panic!("must refuse")
    };
    assert_eq!(rejection.code, "jwt-malformed");
    assert_eq!(
        rejection.headers[0].1,
        r#"Bearer error="invalid_token", error_description="the token is not a well-formed JWT""#
    );
    assert!(ctx.identity.is_none());
}

#[test]
fn a_verified_token_sets_the_identity_and_replaces_spoofed_claim_headers() {
    let plugin = plugin(vec![AuthMode::Required]);
    let token = format!("Bearer {}", sign(Algorithm::ES256, "ec-1", &good_claims()));
    let mut parts = request(&[("authorization", &token), ("x-user-id", "mallory")]);
    let mut ctx = ctx(0);
    assert!(matches!(plugin.authenticate(&mut ctx, &mut parts), Flow::Continue));
    assert_eq!(parts.headers.get_all("x-user-id").iter().collect::<Vec<_>>(), ["alice"]);
    assert_eq!(ctx.identity.as_ref().and_then(|i| i.subject()), Some("alice"));
    assert_eq!(ctx.target, None::<Target>, "authentication does not choose a side");
}

#[test]
fn optional_and_off_routes() {
    let plugin = plugin(vec![AuthMode::Optional, AuthMode::Off]);
    let mut anonymous = request(&[("x-user-id", "mallory")]);
    let mut ctx0 = ctx(0);
    assert!(matches!(plugin.authenticate(&mut ctx0, &mut anonymous), Flow::Continue));
    assert!(ctx0.identity.is_none());
    assert!(anonymous.headers.get("x-user-id").is_none(), "spoofed identity removed on optional routes");

    let mut bad = request(&[("authorization", "Bearer not.a.jwt")]);
    assert!(
        matches!(plugin.authenticate(&mut ctx(0), &mut bad), Flow::Respond(_)),
        "optional: a bad token is still 401"
    );

    let mut off = request(&[("authorization", "Bearer not.a.jwt"), ("x-user-id", "mallory")]);
    let mut ctx1 = ctx(1);
    assert!(matches!(plugin.authenticate(&mut ctx1, &mut off), Flow::Continue), "off: tokens are not looked at");
    assert!(off.headers.get("x-user-id").is_none(), "spoofed identity removed on auth-off routes too");
    assert!(off.headers.get("authorization").is_some(), "the monolith's own auth header passes");
}

#[test]
fn the_system_clock_is_the_wall_clock() {
    let now = SystemClock.now_unix();
    let reference = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("after 1970").as_secs();
    assert!(now.abs_diff(reference) <= 1, "{now} vs {reference}");
}

/// A reload keeps the authenticator (and its verified tokens) only when nothing that
/// decides acceptance or the claim headers changed.
#[test]
fn authenticators_are_equivalent_only_when_every_setting_matches() {
    let clock = || Arc::new(ManualClock(AtomicU64::new(NOW)));
    let base = || authenticator(clock(), 10);
    assert!(base().equivalent(&base()));
    let headers = Authenticator::new(
        verifier_with(vec![Algorithm::ES256, Algorithm::RS256], 0),
        vec![("sub".to_owned(), HeaderName::from_static("x-subject"))],
        Some("session".to_owned()),
        10,
        clock(),
    );
    assert!(!base().equivalent(&headers), "other claim headers");
    let cookie = Authenticator::new(
        verifier_with(vec![Algorithm::ES256, Algorithm::RS256], 0),
        vec![("sub".to_owned(), HeaderName::from_static("x-user-id"))],
        None,
        10,
        clock(),
    );
    assert!(!base().equivalent(&cookie), "another cookie");
    assert!(!base().equivalent(&authenticator(clock(), 11)), "another cache size");
    let algorithms = Authenticator::new(
        verifier_with(vec![Algorithm::RS256], 0),
        vec![("sub".to_owned(), HeaderName::from_static("x-user-id"))],
        Some("session".to_owned()),
        10,
        clock(),
    );
    assert!(!base().equivalent(&algorithms), "other algorithms");
}

#[test]
fn verifiers_are_equivalent_only_with_the_same_keys_algorithms_issuer_audience_and_leeway() {
    let base = || verifier_with(vec![Algorithm::RS256], 0);
    assert!(base().equivalent(&base()));
    assert!(!base().equivalent(&verifier_with(vec![Algorithm::RS256, Algorithm::ES256], 0)), "algorithms");
    assert!(!base().equivalent(&verifier_with(vec![Algorithm::RS256], 5)), "leeway");
    let issuer =
        Verifier::new(jwks(), vec![Algorithm::RS256], Some("https://other".to_owned()), vec!["api".to_owned()], 0);
    assert!(!base().equivalent(&issuer), "issuer");
    let audience = Verifier::new(jwks(), vec![Algorithm::RS256], Some(ISSUER.to_owned()), vec!["web".to_owned()], 0);
    assert!(!base().equivalent(&audience), "audience");
    let secret = KeySet::from_secret(&[7u8; 32]).expect("valid");
    let keys = Verifier::new(secret, vec![Algorithm::RS256], Some(ISSUER.to_owned()), vec!["api".to_owned()], 0);
    assert!(!base().equivalent(&keys), "keys");
}

#[test]
fn the_plugin_names_itself_and_its_phase() {
    let plugin = plugin(vec![AuthMode::Required]);
    assert_eq!(plugin.name(), "auth");
    assert_eq!(plugin.phases(), gateway_plugin_api::Phases { authenticate: true, ..Default::default() });
}

/// Cached entries expire with their token (plus leeway) on the wall clock.
#[test]
fn cache_entries_expire_with_their_token() {
    let cache = TokenCache::new(10, 0);
    assert!(cache.is_empty());
    let verified = |expires_at| {
        Arc::new(Verified {
            identity: Arc::new(Identity { claims: Default::default(), expires_at }),
            headers: vec![],
            origin: KeyOrigin::Fixed,
        })
    };
    let now = SystemClock.now_unix();
    cache.insert(TokenCache::digest("live"), verified(now + 3600));
    cache.insert(TokenCache::digest("dead"), verified(now.saturating_sub(10)));
    assert!(cache.get(&TokenCache::digest("live")).is_some());
    assert!(cache.get(&TokenCache::digest("dead")).is_none(), "expired on the wall clock");
    assert!(!cache.is_empty());
}

#[test]
fn the_verifier_reports_what_it_checks() {
    let verifier = verifier_with(vec![Algorithm::RS256], 12);
    assert_eq!(verifier.issuer(), Some(ISSUER));
    assert_eq!(verifier.audiences(), ["api".to_owned()]);
    assert_eq!(verifier.leeway_seconds(), 12);
}

/// A valid RS256 token padded to exactly `length` bytes, if one can be: a `pad` claim
/// sets the payload's length, and a `cty` header shifts the lengths base64 cannot reach.
fn token_of_length(length: usize) -> Option<String> {
    let signed = |pad: usize, cty: usize| {
        let mut claims = good_claims();
        claims["pad"] = json!("x".repeat(pad));
        let key = EncodingKey::from_rsa_pem(&fixture("rsa-private.pem")).expect("fixture key loads");
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some("rsa-1".to_owned());
        header.cty = (cty > 0).then(|| "c".repeat(cty));
        jsonwebtoken::encode(&header, &claims, &key).expect("signs")
    };
    for cty in 0..4 {
        let mut pad = 0;
        for _ in 0..20 {
            let token = signed(pad, cty);
            match token.len().cmp(&length) {
                std::cmp::Ordering::Equal => return Some(token),
                std::cmp::Ordering::Greater => break,
                // Each pad byte is 4/3 of a token byte; close in from below.
                std::cmp::Ordering::Less => pad += ((length - token.len()) * 3 / 4).max(1),
            }
        }
    }
    None
}

#[test]
fn tokens_up_to_the_size_limit_verify_and_longer_ones_are_malformed() {
    let verifier = verifier();
    let at_limit = token_of_length(MAX_TOKEN_BYTES).expect("a token of exactly the limit");
    assert!(verifier.verify(&at_limit, NOW).is_ok(), "exactly {MAX_TOKEN_BYTES} bytes is accepted");
    let half = token_of_length(MAX_TOKEN_BYTES / 2).expect("an 8 KiB token");
    assert!(verifier.verify(&half, NOW).is_ok(), "8 KiB tokens (fat claims) are fine");
    let over: Vec<String> = (1..=3).filter_map(|extra| token_of_length(MAX_TOKEN_BYTES + extra)).collect();
    assert!(!over.is_empty());
    for token in over {
        assert_eq!(verifier.verify(&token, NOW).unwrap_err(), AuthFailure::Malformed, "{} bytes", token.len());
    }
}

#[test]
fn exp_may_be_a_fraction_but_never_negative() {
    let verifier = verifier();
    let mut claims = good_claims();
    claims["exp"] = json!((NOW + 600) as f64 + 0.5);
    assert!(verifier.verify(&sign(Algorithm::RS256, "rsa-1", &claims), NOW).is_ok(), "fractions truncate");
    claims["exp"] = json!(-5.0);
    assert_eq!(
        verifier.verify(&sign(Algorithm::RS256, "rsa-1", &claims), NOW).unwrap_err(),
        AuthFailure::MissingExpiry
    );
}

#[test]
fn an_audience_list_needs_one_accepted_entry() {
    let verifier = verifier();
    let mut claims = good_claims();
    claims["aud"] = json!(["web", "api"]);
    assert!(verifier.verify(&sign(Algorithm::RS256, "rsa-1", &claims), NOW).is_ok());
    claims["aud"] = json!(["web", "mobile"]);
    assert_eq!(verifier.verify(&sign(Algorithm::RS256, "rsa-1", &claims), NOW).unwrap_err(), AuthFailure::BadAudience);
}

#[test]
fn boolean_and_number_claims_read_as_text() {
    let mut claims = good_claims();
    claims["admin"] = json!(true);
    claims["level"] = json!(3);
    let identity = verifier().verify(&sign(Algorithm::RS256, "rsa-1", &claims), NOW).expect("valid");
    assert_eq!(identity.claim("admin"), Some("true"));
    assert_eq!(identity.claim("level"), Some("3"));
}
