//! `shadow = { ... }` on a route: the config section, its checks and its compiled form.

use http::{HeaderName, Method};
use serde::Deserialize;
use toml::Spanned;

use gateway_plugin_api::config::{ConfigErrors, PerRoute, RouteInfo, RoutePolicy, RouteSections};

use crate::plugin::ShadowPlugin;
use crate::pointer::Ignore;

/// The key this policy owns on `[[routes]]`.
pub const ROUTE_KEY: &str = "shadow";
/// Copies in flight per route by default; more are dropped and counted.
pub const DEFAULT_MAX_IN_FLIGHT: u64 = 64;
/// Highest accepted `max_in_flight`.
pub const MAX_IN_FLIGHT_LIMIT: u64 = 10_000;
/// Bytes of each body (request and both answers) looked at by default.
pub const DEFAULT_MAX_BODY_BYTES: u64 = 1024 * 1024;
/// Highest accepted `max_body_bytes`: every copy in flight may hold this much twice.
pub const MAX_BODY_BYTES_LIMIT: u64 = 16 * 1024 * 1024;
/// Most `ignore` pointers per route.
pub const MAX_IGNORE_POINTERS: usize = 1_000;

/// `shadow = { ... }` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileShadow {
    /// Share of the requests the monolith answers that are copied, 0 to 100.
    pub percent: Spanned<f64>,
    /// Methods copied; default GET and HEAD.
    pub methods: Option<Vec<Spanned<String>>>,
    /// JSON pointers left out of the comparison (`*` matches one segment).
    pub ignore: Option<Vec<Spanned<String>>>,
    /// Learn noise from a second monolith answer to sampled requests; default false.
    pub learn_noise: Option<bool>,
    /// Copies in flight at most; default [`DEFAULT_MAX_IN_FLIGHT`].
    pub max_in_flight: Option<Spanned<u64>>,
    /// Bytes of each body looked at; default [`DEFAULT_MAX_BODY_BYTES`].
    pub max_body_bytes: Option<Spanned<u64>>,
}

/// One route's shadow settings, checked.
#[derive(Clone, Debug, PartialEq)]
pub struct RouteShadow {
    /// The route's name (metric label, admin key).
    pub route: String,
    /// Copied share in hundredths of a percent (0..=10000), so sampling is integer math.
    pub basis_points: u32,
    /// Methods copied.
    pub methods: Vec<Method>,
    /// The `ignore` pointers as written (for display and for equality across reloads).
    pub ignore_pointers: Vec<String>,
    /// The same, parsed.
    pub ignore: Ignore,
    /// Whether noise is learned.
    pub learn_noise: bool,
    /// Copies in flight at most.
    pub max_in_flight: usize,
    /// Bytes of each body looked at.
    pub max_body_bytes: usize,
    /// Request headers whose values never appear in a sample: the gateway's claim
    /// headers, plus `authorization`, `proxy-authorization` and `cookie`.
    pub secret_headers: Vec<HeaderName>,
}

impl RouteShadow {
    /// The configured share, in percent.
    pub fn percent(&self) -> f64 {
        f64::from(self.basis_points) / 100.0
    }
}

/// The policy: owns `shadow` on `[[routes]]`.
#[derive(Clone, Copy, Debug, Default)]
pub struct ShadowPolicy;

impl RoutePolicy for ShadowPolicy {
    const NAME: &'static str = "shadow";
    const ROUTE_KEYS: &'static [&'static str] = &[ROUTE_KEY];
    type Compiled = RouteShadow;
    type Plugin = ShadowPlugin;

    fn compile_route(
        &self,
        route: &RouteInfo<'_>,
        mut sections: RouteSections<'_>,
        errors: &mut ConfigErrors,
    ) -> Option<RouteShadow> {
        let file: FileShadow = sections.take(ROUTE_KEY)?.parse(errors)?;
        compile(route, file, errors)
    }

    fn build(&self, routes: PerRoute<RouteShadow>, previous: Option<&ShadowPlugin>) -> Option<ShadowPlugin> {
        (!routes.is_empty()).then(|| ShadowPlugin::new(routes, previous))
    }
}

fn compile(route: &RouteInfo<'_>, file: FileShadow, errors: &mut ConfigErrors) -> Option<RouteShadow> {
    let mut valid = true;
    let percent = *file.percent.get_ref();
    if !(0.0..=100.0).contains(&percent) {
        errors.error(file.percent.span(), format!("percent must be between 0 and 100, got {percent}"));
        valid = false;
    }
    let mut methods = Vec::new();
    match &file.methods {
        None => methods.extend([Method::GET, Method::HEAD]),
        Some(list) => {
            for written in list {
                match method(written.get_ref()) {
                    Ok(method) if !methods.contains(&method) => methods.push(method),
                    Ok(_) => {}
                    Err(problem) => {
                        errors.error(written.span(), problem);
                        valid = false;
                    }
                }
            }
        }
    }
    let mut ignore_pointers = Vec::new();
    let ignore_list = file.ignore.unwrap_or_default();
    if ignore_list.len() > MAX_IGNORE_POINTERS {
        errors.error(
            ignore_list[MAX_IGNORE_POINTERS].span(),
            format!("at most {MAX_IGNORE_POINTERS} ignore pointers per route"),
        );
        valid = false;
    }
    for pointer in &ignore_list {
        match Ignore::new([pointer.get_ref().as_str()]) {
            Ok(_) => ignore_pointers.push(pointer.get_ref().clone()),
            Err(problem) => {
                errors.error(pointer.span(), format!("ignore: {problem}"));
                valid = false;
            }
        }
    }
    let mut bounded = |value: &Option<Spanned<u64>>, default: u64, max: u64, what: &str| match value {
        None => default,
        Some(value) if (1..=max).contains(value.get_ref()) => *value.get_ref(),
        Some(value) => {
            errors.error(value.span(), format!("{what} must be between 1 and {max}, got {}", value.get_ref()));
            valid = false;
            default
        }
    };
    let max_in_flight = bounded(&file.max_in_flight, DEFAULT_MAX_IN_FLIGHT, MAX_IN_FLIGHT_LIMIT, "max_in_flight");
    let max_body_bytes = bounded(&file.max_body_bytes, DEFAULT_MAX_BODY_BYTES, MAX_BODY_BYTES_LIMIT, "max_body_bytes");
    if !valid {
        return None;
    }
    let ignore = Ignore::new(ignore_pointers.iter().map(String::as_str)).ok()?;
    let mut secret_headers = route.claim_headers.to_vec();
    secret_headers.extend([http::header::AUTHORIZATION, http::header::PROXY_AUTHORIZATION, http::header::COOKIE]);
    Some(RouteShadow {
        route: route.name.to_owned(),
        basis_points: (percent * 100.0).round() as u32,
        methods,
        ignore_pointers,
        ignore,
        learn_noise: file.learn_noise.unwrap_or(false),
        max_in_flight: usize::try_from(max_in_flight).unwrap_or(usize::MAX),
        max_body_bytes: usize::try_from(max_body_bytes).unwrap_or(usize::MAX),
        secret_headers,
    })
}

/// A method as written: an HTTP method name in capitals; CONNECT is never copied.
fn method(written: &str) -> Result<Method, String> {
    if written.is_empty() || written.bytes().any(|b| !b.is_ascii_uppercase()) {
        return Err(format!("methods: \"{written}\" is not a method name in capitals (GET, POST, ...)"));
    }
    let method =
        Method::from_bytes(written.as_bytes()).map_err(|_| format!("methods: \"{written}\" is not a method"))?;
    if method == Method::CONNECT {
        return Err("methods: CONNECT opens a tunnel and cannot be copied".to_owned());
    }
    Ok(method)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use gateway_plugin_api::RouteId;
    use gateway_plugin_api::config::Section;
    use toml::de::DeValue;

    /// Compiles one `shadow` value on a route `users` with claim header `x-user-id`; the
    /// problems come with the text each span covers.
    pub(crate) fn compile_text(text: &str) -> Result<RouteShadow, Vec<String>> {
        let value = DeValue::parse(text).expect("test values are TOML");
        let claim_headers = [HeaderName::from_static("x-user-id")];
        let info = RouteInfo {
            id: RouteId(0),
            name: "users",
            prefix: "/api/users",
            claim_headers: &claim_headers,
            checks_tokens: true,
            rollout_percent: 100.0,
            sticky: true,
            name_span: 0..0,
        };
        let mut errors = ConfigErrors::default();
        let sections = RouteSections::new().with(ROUTE_KEY, Section::new(value));
        let compiled = ShadowPolicy.compile_route(&info, sections, &mut errors);
        let problems: Vec<String> =
            errors.into_problems().into_iter().map(|(span, message)| format!("{}: {message}", &text[span])).collect();
        match compiled {
            Some(compiled) if problems.is_empty() => Ok(compiled),
            _ => Err(problems),
        }
    }

    #[test]
    fn defaults_copy_reads_only() {
        let shadow = compile_text("{ percent = 10.0 }").unwrap();
        assert_eq!(shadow.basis_points, 1000);
        assert_eq!(shadow.methods, [Method::GET, Method::HEAD]);
        assert!(!shadow.learn_noise);
        assert_eq!(shadow.max_in_flight, 64);
        assert_eq!(shadow.max_body_bytes, 1024 * 1024);
        assert!(shadow.secret_headers.contains(&HeaderName::from_static("x-user-id")));
        assert!(shadow.secret_headers.contains(&http::header::AUTHORIZATION));
    }

    #[test]
    fn every_setting_is_read() {
        let shadow = compile_text(
            r#"{ percent = 12.345, methods = ["GET", "POST", "GET"], ignore = ["/updated_at", "/items/*/id"], learn_noise = true, max_in_flight = 8, max_body_bytes = 4096 }"#,
        )
        .unwrap();
        assert_eq!(shadow.basis_points, 1235);
        assert_eq!(shadow.methods, [Method::GET, Method::POST]);
        assert_eq!(shadow.ignore_pointers, ["/updated_at", "/items/*/id"]);
        assert!(shadow.ignore.covers(&["items".into(), "3".into(), "id".into()]));
        assert!(shadow.learn_noise);
        assert_eq!((shadow.max_in_flight, shadow.max_body_bytes), (8, 4096));
    }

    #[test]
    fn problems_point_at_the_value() {
        let problems = compile_text(
            r#"{ percent = 120.0, methods = ["get", "CONNECT"], ignore = ["updated_at", "/a~2"], max_in_flight = 0, max_body_bytes = 99999999999 }"#,
        )
        .unwrap_err();
        assert_eq!(problems.len(), 7, "{problems:#?}");
        assert!(problems[0].starts_with("120.0: percent must be between 0 and 100"), "{problems:#?}");
        assert!(problems[1].starts_with("\"get\": methods: \"get\" is not a method name in capitals"));
        assert!(problems[2].starts_with("\"CONNECT\": methods: CONNECT opens a tunnel"));
        assert!(problems[3].starts_with("\"updated_at\": ignore:"), "{problems:#?}");
        assert!(problems[4].starts_with("\"/a~2\": ignore:"), "{problems:#?}");
        assert!(problems[5].starts_with("0: max_in_flight must be between 1 and 10000"));
        assert!(problems[6].starts_with("99999999999: max_body_bytes must be between 1 and 16777216"));
    }

    #[test]
    fn unknown_keys_and_missing_percent_are_refused() {
        let problems = compile_text("{ percent = 5.0, sample = 3 }").unwrap_err();
        assert!(problems[0].contains("unknown field `sample`"), "{problems:#?}");
        let problems = compile_text("{ methods = [\"GET\"] }").unwrap_err();
        assert!(problems[0].contains("missing field `percent`"), "{problems:#?}");
    }
}
