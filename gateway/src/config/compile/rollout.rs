//! `[segments.<name>]` and each route's dial, sticky key, segments and anonymous side.

use super::*;

impl Checker<'_> {
    pub(super) fn check_segments(
        &mut self,
        segments: &BTreeMap<Spanned<String>, FileSegment>,
    ) -> BTreeMap<String, Arc<Segment>> {
        let mut checked = BTreeMap::new();
        for (name, segment) in segments {
            if !is_identifier(name.get_ref()) {
                self.error(span(name), "segment names use only a-z, 0-9, '-' and '_'");
                continue;
            }
            let tests: Vec<(&str, Range<usize>)> = [
                segment.equals.as_ref().map(|v| ("equals", span(v))),
                segment.ends_with.as_ref().map(|v| ("ends_with", span(v))),
                segment.contains.as_ref().map(|v| ("contains", span(v))),
                segment.one_of.as_ref().map(|v| ("one_of", span(v))),
            ]
            .into_iter()
            .flatten()
            .collect();
            let matcher = match (&segment.claim, &segment.header) {
                (Some(claim), None) => {
                    if tests.len() != 1 {
                        let at = tests.get(1).map_or_else(|| span(claim), |(_, at)| at.clone());
                        self.error(at, "a claim segment needs exactly one of equals, ends_with, contains, one_of");
                        continue;
                    }
                    let text = |v: &Option<Spanned<String>>| v.as_ref().map(|v| v.get_ref().clone());
                    let test = if let Some(v) = text(&segment.equals) {
                        ClaimTest::Equals(v)
                    } else if let Some(v) = text(&segment.ends_with) {
                        ClaimTest::EndsWith(v)
                    } else if let Some(v) = text(&segment.contains) {
                        ClaimTest::Contains(v)
                    } else {
                        ClaimTest::OneOf(segment.one_of.as_ref().map(|v| v.get_ref().clone()).unwrap_or_default())
                    };
                    SegmentMatch::Claim { claim: claim.get_ref().clone(), test }
                }
                (None, Some(header)) => {
                    let Ok(name) = HeaderName::from_bytes(header.get_ref().as_bytes()) else {
                        self.error(span(header), format!("\"{}\" is not a valid header name", header.get_ref()));
                        continue;
                    };
                    match (&segment.equals, tests.len()) {
                        (Some(equals), 1) => SegmentMatch::Header { header: name, equals: equals.get_ref().clone() },
                        _ => {
                            self.error(span(header), "a header segment takes exactly one test: equals");
                            continue;
                        }
                    }
                }
                (Some(_), Some(header)) => {
                    self.error(span(header), "a segment tests either a claim or a header, not both");
                    continue;
                }
                (None, None) => {
                    self.error(span(name), "a segment needs claim = \"NAME\" or header = \"NAME\"");
                    continue;
                }
            };
            checked.insert(
                name.get_ref().clone(),
                Arc::new(Segment { name: Arc::from(name.get_ref().as_str()), matcher }),
            );
        }
        checked
    }

    /// The route's rollout: dial, sticky key, segments and the side for keyless callers.
    pub(super) fn check_policy(
        &mut self,
        route: &FileRoute,
        auth: AuthMode,
        segments: &BTreeMap<String, Arc<Segment>>,
    ) -> Option<RoutePolicy> {
        let mut ok = true;
        let percent = match &route.rollout_percent {
            None => BasisPoints::ALL,
            Some(value) => match BasisPoints::from_percent(*value.get_ref()) {
                Some(percent) => percent,
                None => {
                    self.error(span(value), format!("must be 0 to 100 in steps of 0.01, got {}", value.get_ref()));
                    ok = false;
                    BasisPoints::ALL
                }
            },
        };
        let claims_available = auth != AuthMode::Off;
        let sticky = match &route.sticky {
            Some(text) => match text.get_ref().parse::<Sticky>() {
                Ok(Sticky::Claim(_)) if !claims_available => {
                    self.error(
                        span(text),
                        "claims exist only on routes that check tokens; this route has auth = \"off\"",
                    );
                    ok = false;
                    None
                }
                Ok(sticky) => Some(sticky),
                Err(e) => {
                    self.error(span(text), e.to_string());
                    ok = false;
                    None
                }
            },
            None if claims_available => Some(Sticky::Claim("sub".to_owned())),
            None => None,
        };
        let partial = percent != BasisPoints::ZERO && percent != BasisPoints::ALL;
        if partial && sticky.is_none() && ok {
            let at = route.rollout_percent.as_ref().map_or_else(|| span(&route.name), span);
            self.error(
                at,
                "a partial rollout needs a sticky key: set sticky = \"header:NAME\", \"cookie:NAME\" or \"ip\"",
            );
            ok = false;
        }
        let mut route_segments = Vec::new();
        for name in route.segments.iter().flatten() {
            match segments.get(name.get_ref()) {
                Some(segment) if matches!(segment.matcher, SegmentMatch::Claim { .. }) && !claims_available => {
                    self.error(
                        span(name),
                        format!("segment {} tests a claim, and this route has auth = \"off\"", name.get_ref()),
                    );
                    ok = false;
                }
                Some(segment) => route_segments.push(segment.clone()),
                None => {
                    let known: Vec<&str> = segments.keys().map(String::as_str).collect();
                    let known = if known.is_empty() {
                        "none are defined".to_owned()
                    } else {
                        format!("defined: {}", known.join(", "))
                    };
                    self.error(span(name), format!("unknown segment \"{}\" ({known})", name.get_ref()));
                    ok = false;
                }
            }
        }
        let anonymous = match route.anonymous.as_ref().map(|a| *a.get_ref()) {
            Some(FileSide::Service) => Target::Service,
            Some(FileSide::Monolith) | None => Target::Monolith,
        };
        ok.then(|| RoutePolicy {
            route: Arc::from(route.name.get_ref().as_str()),
            percent,
            sticky,
            segments: route_segments,
            anonymous,
        })
    }
}
