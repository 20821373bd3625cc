//! Unit tests of the bucket function, the dial, segments, sticky keys and client addresses.

use std::collections::BTreeMap;
use std::io::Cursor;

use gateway_plugin_api::ClaimValue;
use http::HeaderValue;
use proptest::prelude::*;

use super::*;

fn murmur(input: &str, seed: u32) -> u32 {
    murmur3::murmur3_32(&mut Cursor::new(input.as_bytes()), seed).expect("in memory")
}

/// Published MurmurHash3_x86_32 vectors (the quick-brown-fox ones appear in SMHasher-derived
/// test suites and on Wikipedia), plus UTF-8 keys checked against the reference C++
/// implementation (through Python's mmh3).
#[test]
fn murmur3_x86_32_matches_reference_vectors() {
    let vectors: [(&str, u32, u32); 10] = [
        ("", 0, 0),
        ("", 0x9747_b28c, 0xebb6_c228),
        ("hello", 0, 0x248b_fa47),
        ("The quick brown fox jumps over the lazy dog", 0, 0x2e4f_f723),
        ("The quick brown fox jumps over the lazy dog", 0x9747_b28c, 0x2fa8_26cd),
        ("abc", 0, 3_017_643_002),
        ("abcd", 0, 1_139_631_978),
        ("abcde", 0, 3_902_511_862),
        ("ünïcödé", 0, 2_069_557_956),
        ("日本語", 0, 2_779_017_879),
    ];
    for (input, seed, expected) in vectors {
        assert_eq!(murmur(input, seed), expected, "{input:?} seed {seed:#x}");
    }
}

/// The table published in the README: anyone can check a user's side by hand.
#[test]
fn bucket_table_from_the_readme() {
    let table = [
        ("users", "alice", 8456),
        ("users", "bob", 7636),
        ("users", "carol", 4347),
        ("users", "user-42", 6577),
        ("orders", "alice", 4336),
        ("checkout", "8f14e45f", 6629),
        ("users", "ünïcödé", 8096),
        ("users", "日本語", 1846),
        ("users", "😀", 8813),
        ("users", "203.0.113.7", 4978),
    ];
    for (route, key, expected) in table {
        assert_eq!(bucket(route, key), expected, "{route}:{key}");
        assert_eq!(bucket(route, key), murmur(&format!("{route}:{key}"), 0) % BUCKETS);
    }
}

fn policy(percent: f64, segments: Vec<Arc<Segment>>) -> RoutePolicy {
    RoutePolicy {
        route: Arc::from("users"),
        percent: BasisPoints::from_percent(percent).expect("valid percent"),
        sticky: Some(Sticky::Header(http::HeaderName::from_static("x-user"))),
        segments,
        anonymous: Target::Monolith,
    }
}

fn headers_with_user(user: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert("x-user", HeaderValue::from_str(user).expect("valid"));
    headers
}

fn side(policy: &RoutePolicy, user: &str) -> Target {
    let headers = headers_with_user(user);
    decide(policy, &Caller { identity: None, headers: &headers, client_ip: None }, ServiceHealth::Available).target
}

#[test]
fn about_a_quarter_of_ten_thousand_users_land_on_the_service_at_25_percent() {
    let quarter = policy(25.0, vec![]);
    let on_service = (0..10_000).filter(|i| side(&quarter, &format!("user-{i}")) == Target::Service).count();
    assert!((2350..=2650).contains(&on_service), "{on_service} of 10000 at 25% (expected 2500 ± 150)");
}

#[test]
fn each_user_is_sticky() {
    let half = policy(50.0, vec![]);
    for i in 0..200 {
        let user = format!("user-{i}");
        let first = side(&half, &user);
        assert!((0..5).all(|_| side(&half, &user) == first), "{user} moved");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Raising the dial only moves users from the monolith to the service.
    #[test]
    fn raising_the_dial_never_moves_anyone_back(key in "\\PC{1,40}", p1 in 0u32..=10_000, p2 in 0u32..=10_000) {
        let (low, high) = (p1.min(p2), p1.max(p2));
        let at = |bp: u32| side(&policy(f64::from(bp) / 100.0, vec![]), &key);
        if at(low) == Target::Service {
            prop_assert_eq!(at(high), Target::Service);
        }
    }

    /// Buckets are always in range, whatever the key.
    #[test]
    fn buckets_are_in_range(route in "[a-z-]{1,20}", key in "\\PC{0,60}") {
        prop_assert!(bucket(&route, &key) < BUCKETS);
    }
}

fn employees() -> Arc<Segment> {
    Arc::new(Segment {
        name: Arc::from("employees"),
        matcher: SegmentMatch::Claim {
            claim: "email".to_owned(),
            test: ClaimTest::EndsWith("@company.com".to_owned()),
        },
    })
}

fn identity(claims: &[(&str, ClaimValue)]) -> Identity {
    Identity {
        claims: claims.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect::<BTreeMap<_, _>>(),
        expires_at: 0,
    }
}

#[test]
fn a_segment_beats_a_zero_dial_and_the_breaker_beats_a_segment() {
    let zero = policy(0.0, vec![employees()]);
    let staff = identity(&[("email", ClaimValue::Text("ada@company.com".to_owned()))]);
    let outsider = identity(&[("email", ClaimValue::Text("eve@example.com".to_owned()))]);
    let headers = HeaderMap::new();
    let caller = |identity| Caller { identity: Some(identity), headers: &headers, client_ip: None };
    let decision = decide(&zero, &caller(&staff), ServiceHealth::Available);
    assert_eq!(decision, Decision { target: Target::Service, reason: Reason::Segment(Arc::from("employees")) });
    assert_eq!(decide(&zero, &caller(&outsider), ServiceHealth::Available).reason, Reason::DialAtZero);
    let open = decide(&zero, &caller(&staff), ServiceHealth::BreakerOpen);
    assert_eq!(open, Decision { target: Target::Monolith, reason: Reason::BreakerOpen });
}

#[test]
fn segments_match_claims_lists_and_headers() {
    let beta = Segment {
        name: Arc::from("beta"),
        matcher: SegmentMatch::Claim { claim: "groups".to_owned(), test: ClaimTest::OneOf(vec!["beta".to_owned()]) },
    };
    let canary = Segment {
        name: Arc::from("canary"),
        matcher: SegmentMatch::Header { header: http::HeaderName::from_static("x-canary"), equals: "true".to_owned() },
    };
    let member = identity(&[("groups", ClaimValue::List(vec!["staff".to_owned(), "beta".to_owned()]))]);
    let mut headers = HeaderMap::new();
    assert!(beta.matches(&Caller { identity: Some(&member), headers: &headers, client_ip: None }));
    assert!(!beta.matches(&Caller { identity: None, headers: &headers, client_ip: None }));
    assert!(!canary.matches(&Caller { identity: None, headers: &headers, client_ip: None }));
    headers.insert("x-canary", HeaderValue::from_static("true"));
    assert!(canary.matches(&Caller { identity: None, headers: &headers, client_ip: None }));
    headers.insert("x-canary", HeaderValue::from_static("TRUE"));
    assert!(!canary.matches(&Caller { identity: None, headers: &headers, client_ip: None }), "exact comparison");
}

#[test]
fn callers_without_a_sticky_key_get_the_anonymous_side() {
    let mut half = policy(50.0, vec![]);
    let headers = HeaderMap::new();
    let anonymous = Caller { identity: None, headers: &headers, client_ip: None };
    assert_eq!(
        decide(&half, &anonymous, ServiceHealth::Available),
        Decision { target: Target::Monolith, reason: Reason::NoStickyKey }
    );
    half.anonymous = Target::Service;
    assert_eq!(decide(&half, &anonymous, ServiceHealth::Available).target, Target::Service);
    let full = policy(100.0, vec![]);
    assert_eq!(decide(&full, &anonymous, ServiceHealth::Available).reason, Reason::DialAtFull, "100% is everyone");
    let empty = headers_with_user("");
    let blank = Caller { identity: None, headers: &empty, client_ip: None };
    assert_eq!(decide(&policy(50.0, vec![]), &blank, ServiceHealth::Available).reason, Reason::NoStickyKey);
}

#[test]
fn percentages_have_two_decimals_at_most() {
    assert_eq!(BasisPoints::from_percent(25.0).map(BasisPoints::buckets), Some(2500));
    assert_eq!(BasisPoints::from_percent(33.33).map(BasisPoints::buckets), Some(3333));
    assert_eq!(BasisPoints::from_percent(0.01).map(BasisPoints::buckets), Some(1));
    assert_eq!(BasisPoints::from_percent(100.0), Some(BasisPoints::ALL));
    assert_eq!(BasisPoints::from_percent(33.333), None);
    assert_eq!(BasisPoints::from_percent(-1.0), None);
    assert_eq!(BasisPoints::from_percent(100.01), None);
    assert_eq!(BasisPoints::from_percent(f64::NAN), None);
    assert_eq!(BasisPoints::from_percent(25.5).expect("valid").to_string(), "25.50%");
}

#[test]
fn sticky_sources_parse_and_print() {
    for text in ["claim:sub", "header:x-user", "cookie:uid", "ip"] {
        assert_eq!(text.parse::<Sticky>().expect(text).to_string(), text);
    }
    for bad in ["", "claim:", "sub", "header:bad header", "query:uid", "ip:x"] {
        assert!(bad.parse::<Sticky>().is_err(), "{bad:?}");
    }
}

#[test]
fn the_client_address_is_taken_from_trusted_proxies_only() {
    let trusted: Vec<ipnet::IpNet> = vec!["10.0.0.0/8".parse().expect("cidr")];
    let peer_lb: IpAddr = "10.0.0.5".parse().expect("ip");
    let stranger: IpAddr = "198.51.100.9".parse().expect("ip");
    let mut headers = HeaderMap::new();
    headers.insert("x-forwarded-for", HeaderValue::from_static("6.6.6.6, 203.0.113.7, 10.0.0.2"));
    assert_eq!(client_ip(stranger, &headers, &trusted), stranger, "an untrusted peer's header is ignored");
    assert_eq!(client_ip(peer_lb, &headers, &trusted), "203.0.113.7".parse::<IpAddr>().expect("ip"));
    headers.insert("x-forwarded-for", HeaderValue::from_static("10.1.1.1, 10.0.0.2"));
    assert_eq!(client_ip(peer_lb, &headers, &trusted), "10.1.1.1".parse::<IpAddr>().expect("ip"));
    headers.insert("x-forwarded-for", HeaderValue::from_static("not-an-ip"));
    assert_eq!(client_ip(peer_lb, &headers, &trusted), peer_lb);
    assert_eq!(client_ip(peer_lb, &HeaderMap::new(), &trusted), peer_lb);
}

/// A caller whose bucket is exactly the dial's bucket count is on the monolith side:
/// the service side is buckets `[0, n)`, open at `n`.
#[test]
fn the_dial_boundary_is_exclusive() {
    for i in 0..50 {
        let user = format!("edge-{i}");
        let b = bucket("users", &user);
        if b == 0 || b >= BUCKETS - 1 {
            continue;
        }
        let at = |bp: u32| side(&policy(f64::from(bp) / 100.0, vec![]), &user);
        assert_eq!(at(b), Target::Monolith, "{user} in bucket {b} at {b} buckets");
        assert_eq!(at(b + 1), Target::Service, "{user} in bucket {b} at {} buckets", b + 1);
    }
}

#[test]
fn each_claim_test_accepts_its_match_and_refuses_the_rest() {
    let cases = [
        (ClaimTest::Equals("beta".to_owned()), "beta", "betas"),
        (ClaimTest::EndsWith("@company.com".to_owned()), "a@company.com", "a@company.co"),
        (ClaimTest::Contains("ops".to_owned()), "devops-team", "dev-team"),
        (ClaimTest::OneOf(vec!["gold".to_owned(), "silver".to_owned()]), "silver", "bronze"),
    ];
    for (test, accepted, refused) in cases {
        let segment = Segment {
            name: Arc::from("s"),
            matcher: SegmentMatch::Claim { claim: "tier".to_owned(), test: test.clone() },
        };
        let matches = |value: &str| {
            let identity = identity(&[("tier", ClaimValue::Text(value.to_owned()))]);
            let headers = HeaderMap::new();
            segment.matches(&Caller { identity: Some(&identity), headers: &headers, client_ip: None })
        };
        assert!(matches(accepted), "{test:?} accepts {accepted}");
        assert!(!matches(refused), "{test:?} refuses {refused}");
    }
}

#[test]
fn percentages_at_and_just_past_the_ends() {
    assert_eq!(BasisPoints::from_percent(0.0), Some(BasisPoints::ZERO));
    assert_eq!(BasisPoints::from_percent(100.0).map(BasisPoints::buckets), Some(BUCKETS));
    assert_eq!(BasisPoints::from_percent(-0.01), None);
    assert_eq!(BasisPoints::from_percent(100.000001), None);
    assert_eq!(BasisPoints::from_percent(12.34).map(BasisPoints::buckets), Some(1234));
    assert_eq!(BasisPoints::from_percent(12.345), None);
    assert_eq!(BasisPoints::from_percent(f64::INFINITY), None);
}

#[test]
fn basis_points_read_back_as_percent() {
    assert_eq!(BasisPoints::from_percent(25.5).map(BasisPoints::percent), Some(25.5));
    assert_eq!(BasisPoints::from_percent(0.01).map(BasisPoints::percent), Some(0.01));
    assert_eq!(BasisPoints::ALL.percent(), 100.0);
    assert_eq!(BasisPoints::ZERO.percent(), 0.0);
}

#[test]
fn every_reason_is_described_for_explain() {
    let dial = BasisPoints::from_percent(25.0).expect("valid");
    let cases = [
        (Reason::BreakerOpen, "the service's circuit breaker is open"),
        (Reason::Segment(Arc::from("beta")), "segment beta always gets the service"),
        (Reason::DialAtZero, "the dial is at 0.00%"),
        (Reason::DialAtFull, "the dial is at 100.00%"),
        (Reason::Bucket { bucket: 2499 }, "bucket 2499 < 2500 (dial 25.00%)"),
        (Reason::Bucket { bucket: 2500 }, "bucket 2500 >= 2500 (dial 25.00%)"),
        (Reason::Bucket { bucket: 9000 }, "bucket 9000 >= 2500 (dial 25.00%)"),
        (Reason::Bucket { bucket: 0 }, "bucket 0 < 2500 (dial 25.00%)"),
        (Reason::NoStickyKey, "no sticky key (anonymous caller)"),
    ];
    for (reason, text) in cases {
        assert_eq!(reason.describe(dial), text);
    }
}
