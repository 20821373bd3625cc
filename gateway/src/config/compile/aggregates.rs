//! `[[aggregates]]`: exact paths answered by parts fetched in parallel.

use super::*;

impl Checker<'_> {
    pub(super) fn check_aggregate(
        &mut self,
        aggregate: &FileAggregate,
        names: &mut HashSet<String>,
        upstreams: &HashSet<&str>,
        routes: &HashSet<&str>,
        paths: &mut HashSet<String>,
    ) -> Option<Aggregate> {
        let mut ok = true;
        let name = aggregate.name.get_ref();
        if !is_identifier(name) || name.starts_with('_') {
            self.error(
                span(&aggregate.name),
                "aggregate names use only a-z, 0-9, '-' and '_', and do not start with '_'",
            );
            ok = false;
        } else if !names.insert(name.clone()) {
            self.error(span(&aggregate.name), format!("another route or aggregate is named \"{name}\""));
            ok = false;
        }
        let path = aggregate.path.get_ref();
        match prefix_problem(path) {
            Some(problem) => {
                self.error(span(&aggregate.path), format!("\"{path}\": {}", problem.replace("prefix", "path")));
                ok = false;
            }
            None if !paths.insert(path.to_ascii_lowercase()) => {
                self.error(span(&aggregate.path), format!("another aggregate answers \"{path}\""));
                ok = false;
            }
            None => {}
        }
        let timeout = self.bounded(&aggregate.timeout_ms, DEFAULT_AGGREGATE_TIMEOUT_MS, 1, MAX_TIMEOUT_MS, "ms");
        let max_part_bytes =
            self.bounded(&aggregate.max_part_bytes, DEFAULT_MAX_PART_BYTES, 1, 64 * 1024 * 1024, "bytes");
        if aggregate.parts.get_ref().is_empty() {
            self.error(span(&aggregate.parts), "list at least one part");
            ok = false;
        }
        let mut part_names = HashSet::new();
        let mut parts = Vec::new();
        for part in aggregate.parts.get_ref() {
            let part_name = part.name.get_ref();
            if part_name.is_empty() || part_name.starts_with('_') || !part_names.insert(part_name.clone()) {
                self.error(
                    span(&part.name),
                    format!("part names are unique and do not start with '_' (\"{part_name}\")"),
                );
                ok = false;
            }
            let source = match (&part.upstream, &part.route) {
                (Some(upstream), None) if upstreams.contains(upstream.get_ref().as_str()) => {
                    Some(PartSource::Upstream(Arc::from(upstream.get_ref().as_str())))
                }
                (Some(upstream), None) => {
                    self.error(span(upstream), format!("unknown upstream \"{}\"", upstream.get_ref()));
                    None
                }
                (None, Some(route)) if routes.contains(route.get_ref().as_str()) => {
                    Some(PartSource::Route(Arc::from(route.get_ref().as_str())))
                }
                (None, Some(route)) => {
                    self.error(span(route), format!("unknown route \"{}\"", route.get_ref()));
                    None
                }
                _ => {
                    self.error(span(&part.name), "a part names exactly one of upstream or route");
                    None
                }
            };
            let part_path = part.path.get_ref();
            if !part_path.starts_with('/') || part_path.parse::<http::uri::PathAndQuery>().is_err() {
                self.error(span(&part.path), format!("\"{part_path}\" is not a path (and query) starting with '/'"));
                ok = false;
            }
            let part_timeout = match &part.timeout_ms {
                Some(t) if *t.get_ref() == 0 || *t.get_ref() > timeout => {
                    self.error(
                        span(t),
                        format!("must be between 1 and the aggregate's timeout_ms ({timeout}), got {}", t.get_ref()),
                    );
                    timeout
                }
                Some(t) => *t.get_ref(),
                None => timeout,
            };
            let default =
                part.default.as_ref().map(|value| serde_json::to_value(value).unwrap_or(serde_json::Value::Null));
            if let Some(source) = source {
                parts.push(Part {
                    name: Arc::from(part_name.as_str()),
                    source,
                    path: part_path.clone(),
                    required: part.required.unwrap_or(true),
                    timeout: Duration::from_millis(part_timeout),
                    default,
                });
            } else {
                ok = false;
            }
        }
        ok.then(|| Aggregate {
            name: Arc::from(name.as_str()),
            path: path.clone(),
            timeout: Duration::from_millis(timeout),
            max_part_bytes: max_part_bytes as usize,
            parts,
        })
    }
}
