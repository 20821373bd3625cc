//! How a policy owns its part of `routes.toml`.
//!
//! A policy crate defines the keys it owns on `[[routes]]` (for example `rate_limit`, or
//! `service_prefix` with `request_headers` and `response_headers`), the serde types of
//! their values, the checks on them and the compiled per-route state. The gateway knows
//! none of those types: it finds the keys in each route, hands the policy the spanned
//! values as [`RouteSections`], and turns the problems the policy reports into
//! `file:line:col: routes[N].key: message` diagnostics, exactly like its own.
//!
//! ```text
//!  routes.toml ── gateway parses the document ──► routes[i].rate_limit (spanned value)
//!                                                        │
//!      RoutePolicy::compile_route(RouteInfo, RouteSections, &mut ConfigErrors)
//!                                                        │ Option<Compiled>
//!            RoutePolicy::build(PerRoute<Compiled>, previous plugin) ──► the plugin
//! ```
//!
//! Registering a policy is one line in the gateway's registry (`Registry::with`).

use std::any::Any;
use std::ops::Range;
use std::sync::Arc;

use http::HeaderName;
use serde::de::DeserializeOwned;
use toml::Spanned;
use toml::de::{DeValue, ValueDeserializer};

use crate::{Plugin, RouteId};

/// Problems found while checking a config, each at a byte span of the file.
#[derive(Debug, Default)]
pub struct ConfigErrors {
    problems: Vec<(Range<usize>, String)>,
}

impl ConfigErrors {
    /// Reports a problem at `span` (a byte range of the config file, as [`Spanned`] gives).
    /// Say what is wrong with the value and, where it helps, how to fix it.
    pub fn error(&mut self, span: Range<usize>, message: impl Into<String>) {
        self.problems.push((span, message.into()));
    }

    /// True when nothing was reported.
    pub fn is_empty(&self) -> bool {
        self.problems.is_empty()
    }

    /// The problems, in the order they were reported.
    pub fn into_problems(self) -> Vec<(Range<usize>, String)> {
        self.problems
    }
}

/// One route's value of a policy's key, with its position in the file.
pub struct Section<'a> {
    value: Spanned<DeValue<'a>>,
}

impl<'a> Section<'a> {
    /// Wraps a value the gateway found in the parsed document.
    pub fn new(value: Spanned<DeValue<'a>>) -> Self {
        Section { value }
    }

    /// Where the value is in the file.
    pub fn span(&self) -> Range<usize> {
        self.value.span()
    }

    /// Deserializes the value into the policy's `File*` type. `Spanned` fields inside it
    /// get spans in the whole file's coordinates. A type error or unknown key is reported
    /// to `errors` (with its span) and gives `None`.
    pub fn parse<T: DeserializeOwned>(self, errors: &mut ConfigErrors) -> Option<T> {
        let whole = self.value.span();
        match T::deserialize(ValueDeserializer::from(self.value)) {
            Ok(value) => Some(value),
            Err(e) => {
                errors.error(e.span().unwrap_or(whole), e.message().to_owned());
                None
            }
        }
    }
}

/// The values of the keys one policy owns on one route, as found in the file.
pub struct RouteSections<'a> {
    entries: Vec<(&'static str, Section<'a>)>,
}

impl<'a> RouteSections<'a> {
    /// No sections yet.
    pub fn new() -> Self {
        RouteSections { entries: Vec::new() }
    }

    /// Adds the value of `key`.
    pub fn with(mut self, key: &'static str, section: Section<'a>) -> Self {
        self.entries.push((key, section));
        self
    }

    /// Takes the value of `key`, if the route has it.
    pub fn take(&mut self, key: &str) -> Option<Section<'a>> {
        let at = self.entries.iter().position(|(k, _)| *k == key)?;
        Some(self.entries.swap_remove(at).1)
    }

    /// True when no value is left to take.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl Default for RouteSections<'_> {
    fn default() -> Self {
        RouteSections::new()
    }
}

/// What a policy is told about the route whose sections it compiles.
#[derive(Clone, Debug)]
pub struct RouteInfo<'a> {
    /// The route's index in the compiled table.
    pub id: RouteId,
    /// The route's name (metric label).
    pub name: &'a str,
    /// The route's `prefix` as configured (a normalised path: `/api/users`, or `/`).
    pub prefix: &'a str,
    /// Headers the gateway fills from verified claims on every route
    /// (`auth.claims_to_headers`): the gateway owns them, so no policy may edit them.
    pub claim_headers: &'a [HeaderName],
    /// True when the route verifies tokens (`auth` is `required` or `optional`), so a
    /// verified [`crate::Identity`] may be on its requests.
    pub checks_tokens: bool,
    /// The route's `rollout_percent` as configured (100 when absent).
    pub rollout_percent: f64,
    /// True when the route has a sticky key (its `sticky`, or `claim:sub` where tokens
    /// are checked), so partial dials are possible.
    pub sticky: bool,
    /// Where the route's `name` is in the file, for problems about the route as a whole.
    pub name_span: Range<usize>,
}

/// A policy's compiled state for every route, indexed by [`RouteId`]; `None` where the
/// route does not use the policy. The table covers every route id of the snapshot.
#[derive(Debug)]
pub struct PerRoute<T> {
    entries: Vec<Option<T>>,
}

impl<T> PerRoute<T> {
    /// A table of `len` routes (the snapshot's route count), all without the policy.
    pub fn new(len: usize) -> Self {
        PerRoute { entries: (0..len).map(|_| None).collect() }
    }

    /// Sets route `id`'s state; ids outside the table are ignored.
    pub fn set(&mut self, id: RouteId, value: T) {
        if let Some(slot) = self.entries.get_mut(id.0) {
            *slot = Some(value);
        }
    }

    /// Route `id`'s state, if it uses the policy.
    pub fn get(&self, id: RouteId) -> Option<&T> {
        self.entries.get(id.0)?.as_ref()
    }

    /// True when no route uses the policy.
    pub fn is_empty(&self) -> bool {
        self.entries.iter().all(Option::is_none)
    }

    /// Routes that use the policy, with their ids.
    pub fn iter(&self) -> impl Iterator<Item = (RouteId, &T)> {
        self.entries.iter().enumerate().filter_map(|(i, entry)| Some((RouteId(i), entry.as_ref()?)))
    }

    /// Applies `f` to every entry.
    pub fn map<U>(self, mut f: impl FnMut(RouteId, T) -> U) -> PerRoute<U> {
        PerRoute {
            entries: self.entries.into_iter().enumerate().map(|(i, entry)| entry.map(|v| f(RouteId(i), v))).collect(),
        }
    }
}

/// A per-route policy: the factory the gateway registers once. Implement this in the
/// policy's crate; the plugin it builds does the per-request work.
pub trait RoutePolicy: Send + Sync + 'static {
    /// A short stable name: which plugin of the previous config is this policy's.
    const NAME: &'static str;
    /// The keys on `[[routes]]` this policy owns, e.g. `["rate_limit"]`; no two policies
    /// may own the same key.
    const ROUTE_KEYS: &'static [&'static str];
    /// What one route's section compiles to.
    type Compiled: Send + Sync + 'static;
    /// The plugin built for a whole config.
    type Plugin: Plugin;

    /// Checks one route's sections (the values of the policy's keys that the route has; at
    /// least one) and compiles them. Report every problem to `errors` and return `None` if
    /// there were any; never panic on input.
    fn compile_route(
        &self,
        route: &RouteInfo<'_>,
        sections: RouteSections<'_>,
        errors: &mut ConfigErrors,
    ) -> Option<Self::Compiled>;

    /// Builds the plugin for one config from every route's compiled state. `previous` is
    /// this policy's plugin of the config being replaced, so state worth keeping across a
    /// reload (counters, buckets) can be carried over. Called only when no problem was
    /// reported anywhere in the file. Returns `None` when no route needs the plugin, so
    /// routes that do not use a policy pay nothing for it.
    fn build(&self, routes: PerRoute<Self::Compiled>, previous: Option<&Self::Plugin>) -> Option<Self::Plugin>;
}

/// A built plugin, kept both as the pipeline sees it and as its concrete type (for the
/// next reload's `previous`).
#[derive(Clone)]
pub struct BuiltPlugin {
    /// The name of the policy that built it.
    pub name: &'static str,
    /// For the pipeline's phase lists.
    pub plugin: Arc<dyn Plugin>,
    /// The same plugin as its concrete type.
    concrete: Arc<dyn Any + Send + Sync>,
}

impl std::fmt::Debug for BuiltPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BuiltPlugin").field("name", &self.name).field("plugin", &self.plugin.name()).finish()
    }
}

impl BuiltPlugin {
    /// The plugin as its concrete type, when it is a `T` (the gateway's admin endpoints
    /// read a policy's own state this way).
    pub fn concrete<T: Any>(&self) -> Option<&T> {
        self.concrete.downcast_ref::<T>()
    }
}

/// Compiled sections of one policy, type-erased for the registry.
pub struct CompiledSections {
    entries: PerRoute<Box<dyn Any + Send + Sync>>,
}

/// [`RoutePolicy`] without its associated types, so the gateway can hold a list of them.
trait ErasedPolicy: Send + Sync {
    fn name(&self) -> &'static str;
    fn keys(&self) -> &'static [&'static str];
    fn compile_route(
        &self,
        route: &RouteInfo<'_>,
        sections: RouteSections<'_>,
        errors: &mut ConfigErrors,
    ) -> Option<Box<dyn Any + Send + Sync>>;
    fn build(&self, sections: CompiledSections, previous: Option<&BuiltPlugin>) -> Option<BuiltPlugin>;
}

struct Erased<P>(P);

impl<P: RoutePolicy> ErasedPolicy for Erased<P> {
    fn name(&self) -> &'static str {
        P::NAME
    }

    fn keys(&self) -> &'static [&'static str] {
        P::ROUTE_KEYS
    }

    fn compile_route(
        &self,
        route: &RouteInfo<'_>,
        sections: RouteSections<'_>,
        errors: &mut ConfigErrors,
    ) -> Option<Box<dyn Any + Send + Sync>> {
        let compiled = self.0.compile_route(route, sections, errors)?;
        Some(Box::new(compiled))
    }

    fn build(&self, sections: CompiledSections, previous: Option<&BuiltPlugin>) -> Option<BuiltPlugin> {
        // Every entry was made by this policy's compile_route, so the downcast holds; an
        // entry that did not would be dropped rather than panic.
        let routes = PerRoute {
            entries: sections
                .entries
                .entries
                .into_iter()
                .map(|entry| entry.and_then(|boxed| boxed.downcast::<P::Compiled>().ok().map(|b| *b)))
                .collect(),
        };
        let previous = previous.and_then(|built| built.concrete.downcast_ref::<P::Plugin>());
        let plugin = Arc::new(self.0.build(routes, previous)?);
        Some(BuiltPlugin { name: P::NAME, plugin: plugin.clone(), concrete: plugin })
    }
}

/// The per-route policies the gateway knows, in the order their phases run.
#[derive(Default)]
pub struct Registry {
    policies: Vec<Box<dyn ErasedPolicy>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.policies.iter().map(|p| p.name())).finish()
    }
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Registry::default()
    }

    /// Adds a policy; its phases run after those of the policies added before it.
    ///
    /// # Panics
    /// If a key of `policy` is already owned by a policy added before: two policies
    /// cannot both check one key (a programming error, found by any test that builds
    /// the registry).
    pub fn with<P: RoutePolicy>(mut self, policy: P) -> Self {
        for key in P::ROUTE_KEYS {
            assert!(self.keys().all(|(_, owned)| owned != *key), "route key {key} is registered twice");
        }
        self.policies.push(Box::new(Erased(policy)));
        self
    }

    /// Every route key the registered policies own, with the index of its policy, in
    /// registration order.
    pub fn keys(&self) -> impl Iterator<Item = (usize, &'static str)> + '_ {
        self.policies.iter().enumerate().flat_map(|(index, p)| p.keys().iter().map(move |key| (index, *key)))
    }

    /// Starts compiling one config: one table of sections per policy.
    pub fn start(&self, routes: usize) -> Vec<CompiledSections> {
        self.policies.iter().map(|_| CompiledSections { entries: PerRoute::new(routes) }).collect()
    }

    /// Compiles route `route`'s sections of the policy at `index` (as [`Registry::keys`]
    /// numbers them) into `tables`.
    pub fn compile_route(
        &self,
        tables: &mut [CompiledSections],
        index: usize,
        route: &RouteInfo<'_>,
        sections: RouteSections<'_>,
        errors: &mut ConfigErrors,
    ) {
        let (Some(policy), Some(table)) = (self.policies.get(index), tables.get_mut(index)) else { return };
        if sections.is_empty() {
            return;
        }
        if let Some(compiled) = policy.compile_route(route, sections, errors) {
            table.entries.set(route.id, compiled);
        }
    }

    /// Builds every policy's plugin, given the plugins of the config being replaced.
    pub fn build(&self, tables: Vec<CompiledSections>, previous: &[BuiltPlugin]) -> Vec<BuiltPlugin> {
        self.policies
            .iter()
            .zip(tables)
            .filter_map(|(policy, sections)| {
                let before = previous.iter().find(|built| built.name == policy.name());
                policy.build(sections, before)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Flow, Phases, RequestCtx};
    use serde::Deserialize;

    /// A policy owning `limit = { n = N }`: N must be positive; the plugin keeps the table
    /// and how many builds it has been through (carried over from `previous`).
    struct Counting;

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct FileLimit {
        n: Spanned<i64>,
    }

    struct CountingPlugin {
        routes: PerRoute<i64>,
        generation: u32,
    }

    impl Plugin for CountingPlugin {
        fn name(&self) -> &'static str {
            "counting"
        }
        fn phases(&self) -> Phases {
            Phases { on_request: true, ..Phases::default() }
        }
        fn on_request(&self, _ctx: &mut RequestCtx, _request: &mut http::request::Parts) -> Flow {
            Flow::Continue
        }
    }

    impl RoutePolicy for Counting {
        const NAME: &'static str = "counting";
        const ROUTE_KEYS: &'static [&'static str] = &["limit", "extra"];
        type Compiled = i64;
        type Plugin = CountingPlugin;

        fn compile_route(
            &self,
            route: &RouteInfo<'_>,
            mut sections: RouteSections<'_>,
            errors: &mut ConfigErrors,
        ) -> Option<i64> {
            let extra: i64 = match sections.take("extra") {
                Some(section) => section.parse(errors)?,
                None => 0,
            };
            let file: FileLimit = sections.take("limit")?.parse(errors)?;
            if *file.n.get_ref() <= 0 {
                errors.error(file.n.span(), format!("{}: n must be positive", route.name));
                return None;
            }
            Some(*file.n.get_ref() + extra)
        }

        fn build(&self, routes: PerRoute<i64>, previous: Option<&CountingPlugin>) -> Option<CountingPlugin> {
            if routes.is_empty() {
                return None;
            }
            Some(CountingPlugin { routes, generation: previous.map_or(1, |p| p.generation + 1) })
        }
    }

    fn info(id: usize) -> RouteInfo<'static> {
        RouteInfo {
            id: RouteId(id),
            name: "r",
            prefix: "/r",
            claim_headers: &[],
            checks_tokens: false,
            rollout_percent: 100.0,
            sticky: true,
            name_span: 0..1,
        }
    }

    fn value(text: &str) -> Section<'_> {
        Section::new(DeValue::parse(text).expect("TOML"))
    }

    fn limit(text: &str) -> RouteSections<'_> {
        RouteSections::new().with("limit", value(text))
    }

    fn concrete(built: &BuiltPlugin) -> &CountingPlugin {
        built.concrete.downcast_ref::<CountingPlugin>().expect("the counting plugin")
    }

    #[test]
    fn the_registry_compiles_sections_and_builds_plugins() {
        let registry = Registry::new().with(Counting);
        assert_eq!(registry.keys().collect::<Vec<_>>(), [(0, "limit"), (0, "extra")]);
        assert_eq!(format!("{registry:?}"), r#"["counting"]"#);
        let mut tables = registry.start(3);
        assert_eq!(tables.len(), 1);
        let mut errors = ConfigErrors::default();
        registry.compile_route(&mut tables, 0, &info(0), limit("{ n = 5 }"), &mut errors);
        let both = limit("{ n = 7 }").with("extra", value("3"));
        registry.compile_route(&mut tables, 0, &info(2), both, &mut errors);
        registry.compile_route(&mut tables, 1, &info(1), limit("{ n = 9 }"), &mut errors);
        registry.compile_route(&mut tables, 0, &info(1), RouteSections::default(), &mut errors);
        assert!(errors.is_empty());
        let built = registry.build(tables, &[]);
        assert_eq!(built.len(), 1);
        assert_eq!(built[0].name, "counting");
        assert_eq!(built[0].plugin.name(), "counting");
        assert_eq!(format!("{:?}", built[0]), r#"BuiltPlugin { name: "counting", plugin: "counting" }"#);
        let plugin = concrete(&built[0]);
        assert_eq!(plugin.generation, 1);
        assert_eq!(plugin.routes.get(RouteId(0)), Some(&5));
        assert_eq!(
            plugin.routes.get(RouteId(1)),
            None,
            "sections for a policy index that does not exist, and no sections, are ignored"
        );
        assert_eq!(plugin.routes.get(RouteId(2)), Some(&10), "both keys reach the policy");

        // The next build sees this one as `previous`.
        let mut tables = registry.start(3);
        registry.compile_route(&mut tables, 0, &info(0), limit("{ n = 1 }"), &mut errors);
        let next = registry.build(tables, &built);
        assert_eq!(concrete(&next[0]).generation, 2);
    }

    #[test]
    fn a_policy_no_route_uses_builds_nothing() {
        let registry = Registry::new().with(Counting);
        assert!(registry.build(registry.start(2), &[]).is_empty());
    }

    #[test]
    fn problems_keep_their_spans_in_file_coordinates() {
        let registry = Registry::new().with(Counting);
        let mut tables = registry.start(1);
        let mut errors = ConfigErrors::default();
        let text = "{ n = -3 }";
        registry.compile_route(&mut tables, 0, &info(0), limit(text), &mut errors);
        assert!(!errors.is_empty());
        let problems = errors.into_problems();
        assert_eq!(problems.len(), 1);
        assert_eq!(&text[problems[0].0.clone()], "-3");
        assert_eq!(problems[0].1, "r: n must be positive");

        let mut errors = ConfigErrors::default();
        let text = "{ n = 1, m = 2 }";
        let parsed: Option<FileLimit> = value(text).parse(&mut errors);
        assert!(parsed.is_none());
        let problems = errors.into_problems();
        assert!(problems[0].1.contains("unknown field `m`"), "{problems:?}");
        assert_eq!(&text[problems[0].0.clone()], "m");
        let section = value("{ n = 1 }");
        assert_eq!(section.span(), 0..9);
        let mut errors = ConfigErrors::default();
        assert_eq!(section.parse::<FileLimit>(&mut errors).map(|f| *f.n.get_ref()), Some(1));
    }

    #[test]
    #[should_panic(expected = "route key limit is registered twice")]
    fn two_policies_cannot_own_one_key() {
        let _ = Registry::new().with(Counting).with(Counting);
    }

    #[test]
    fn sections_are_taken_once() {
        let mut sections = limit("{ n = 1 }");
        assert!(sections.take("extra").is_none());
        assert!(sections.take("limit").is_some());
        assert!(sections.take("limit").is_none());
        assert!(sections.is_empty());
    }

    #[test]
    fn per_route_tables_index_by_route_id() {
        let mut table = PerRoute::new(3);
        assert!(table.is_empty());
        table.set(RouteId(1), "one");
        table.set(RouteId(9), "ignored");
        assert!(!table.is_empty());
        assert_eq!(table.get(RouteId(1)), Some(&"one"));
        assert_eq!(table.get(RouteId(0)), None);
        assert_eq!(table.get(RouteId(9)), None);
        assert_eq!(table.iter().collect::<Vec<_>>(), [(RouteId(1), &"one")]);
        let lengths = table.map(|id, text| (id.0, text.len()));
        assert_eq!(lengths.get(RouteId(1)), Some(&(1, 3)));
        assert_eq!(lengths.iter().count(), 1);
    }
}
