//! `[[routes]]`: names, prefixes and fallback settings.

use super::*;

impl Checker<'_> {
    pub(super) fn check_route(
        &mut self,
        route: &FileRoute,
        auth: AuthMode,
        names: &mut HashSet<String>,
        prefixes: &mut HashSet<String>,
    ) -> Option<CheckedRoute> {
        let name = route.name.get_ref();
        let fallback_settings = Fallback {
            enabled: !matches!(route.fallback.as_ref().map(|f| *f.get_ref()), Some(FileFallback::Never)),
            body_limit: self.bounded(
                &route.fallback_body_limit,
                DEFAULT_FALLBACK_BODY_LIMIT,
                0,
                64 * 1024 * 1024,
                "bytes",
            ),
        };
        let mut ok = true;
        if !is_identifier(name) || name.starts_with('_') {
            self.error(span(&route.name), "route names use only a-z, 0-9, '-' and '_', and do not start with '_'");
            ok = false;
        } else if !names.insert(name.clone()) {
            self.error(span(&route.name), format!("duplicate route name \"{name}\""));
            ok = false;
        }
        let prefix = route.prefix.get_ref();
        match prefix_problem(prefix) {
            Some(problem) => {
                self.error(span(&route.prefix), format!("\"{prefix}\": {problem}"));
                ok = false;
            }
            None if !prefixes.insert(prefix.to_ascii_lowercase()) => {
                self.error(
                    span(&route.prefix),
                    format!("another route already has the prefix \"{prefix}\" (prefixes match case-insensitively)"),
                );
                ok = false;
            }
            None => {}
        }
        ok.then(|| CheckedRoute {
            name: name.clone(),
            prefix: prefix.clone(),
            service: route.service.get_ref().clone(),
            monolith: route.monolith.as_ref().map(|m| m.get_ref().clone()).unwrap_or_default(),
            auth,
            policy: RoutePolicy {
                route: Arc::from(name.as_str()),
                percent: BasisPoints::ALL,
                sticky: None,
                segments: Vec::new(),
                anonymous: Target::Monolith,
            },
            fallback: fallback_settings,
        })
    }
}
