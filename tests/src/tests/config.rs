//! The bundled routes.toml: it is what `gateway demo` serves, so it must stay valid and
//! mean what the README says.

use std::path::Path;

#[test]
fn the_bundled_routes_toml_compiles_to_the_documented_routes() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../routes.toml");
    let snapshot = gateway::config::load(&path, 1).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(snapshot.server.listen, Some("127.0.0.1:8080".parse().unwrap()));
    assert_eq!(snapshot.server.admin_listen.to_string(), "127.0.0.1:9901");
    let upstreams: Vec<(&str, &str)> =
        snapshot.upstreams.iter().map(|(name, u)| (name.as_str(), u.settings.url.as_str())).collect();
    assert_eq!(
        upstreams,
        [
            ("monolith", "http://127.0.0.1:3000"),
            ("orders", "http://127.0.0.1:3002"),
            ("users", "http://127.0.0.1:3001")
        ]
    );
    let routes: Vec<(&str, Option<&str>, Option<&str>, &str)> = snapshot
        .routes
        .iter()
        .map(|r| (&*r.name, r.prefix.as_deref(), r.service.as_ref().map(|s| &*s.name), &*r.monolith.name))
        .collect();
    assert_eq!(
        routes,
        [
            ("users", Some("/api/users"), Some("users"), "monolith"),
            ("orders", Some("/api/orders"), Some("orders"), "monolith"),
            ("dashboard", None, None, "monolith"),
            ("_default", None, None, "monolith"),
        ]
    );
    let dashboard = snapshot.routes[2].aggregate.as_ref().expect("an aggregate");
    let parts: Vec<&str> = dashboard.parts.iter().map(|p| &*p.name).collect();
    assert_eq!(parts, ["profile", "orders", "news"]);
    use gateway_plugin_auth::AuthMode;
    let modes: Vec<AuthMode> = snapshot.routes.iter().map(|r| r.auth).collect();
    assert_eq!(modes, [AuthMode::Required, AuthMode::Optional, AuthMode::Required, AuthMode::Off]);
    let verifier = snapshot.auth.as_ref().expect("the bundled config checks tokens").verifier();
    assert_eq!(verifier.issuer(), Some("https://auth.demo.local"));
    assert_eq!(verifier.audiences(), ["api"]);
    let users = snapshot.routes[0].policy.as_ref().expect("users has a dial");
    assert_eq!(users.percent.to_string(), "25.00%");
    assert_eq!(users.sticky.as_ref().map(ToString::to_string).as_deref(), Some("claim:sub"));
    let segments: Vec<&str> = users.segments.iter().map(|s| &*s.name).collect();
    assert_eq!(segments, ["employees", "canary"]);
    assert_eq!(snapshot.routes[1].policy.as_ref().expect("orders has a dial").percent.to_string(), "100.00%");
}
