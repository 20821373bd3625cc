//! Phase: mirror. Copies of a request the monolith answers, for the policies that asked
//! ([`Plugin::mirror`], shadow traffic): chosen before the forward, started once the
//! monolith's response head is in hand, never awaited by the client's request.
//!
//! - A copy that needs the client's body gets it buffered before the forward, only when
//!   its length is known and within the mirror's cap; otherwise the copy is skipped (the
//!   body streams to the monolith untouched and is never sent twice half-read).
//! - The monolith's body streams to the client as always; a [`BodyTee`] keeps a copy of
//!   it up to the cap for the comparison.
//! - Each copy runs in its own task; the client's response does not wait for it.

use std::sync::Arc;

use bytes::Bytes;
use gateway_plugin_api::side::{Mirror, MirrorSkipped, PrimaryAnswer, RouteSides, SideError, SideFuture};
use gateway_plugin_api::{Exchange, Plugin, RequestCtx, Target};
use http::header::CONTENT_TYPE;
use http::{Request, Response};
use http_body_util::{Either, Full};
use hyper::body::Body;

use super::forward::buffer;
use super::reply::ProxyError;
use super::traced::CallSpan;
use crate::clock;
use crate::snapshot::Route;
use crate::telemetry::trace::Tracer;
use crate::upstream::call::side_call;
use crate::upstream::tee::BodyTee;
use crate::upstream::{ResponseBody, UpstreamBody};

/// The copies asked for one request, and the request body buffered for them.
pub(super) struct Mirrors {
    mirrors: Vec<Box<dyn Mirror>>,
    request_body: Bytes,
}

impl Mirrors {
    /// Asks every `mirror` plugin about the outgoing head (as matched).
    pub(super) fn choose(plugins: &[Arc<dyn Plugin>], ctx: &RequestCtx, parts: &http::request::Parts) -> Self {
        Mirrors {
            mirrors: plugins.iter().filter_map(|plugin| plugin.mirror(ctx, parts)).collect(),
            request_body: Bytes::new(),
        }
    }

    /// True when no copy was asked for (the usual case).
    pub(super) fn is_empty(&self) -> bool {
        self.mirrors.is_empty()
    }

    /// The body to forward: buffered (and kept for the copies) when a copy needs it and
    /// its length is known and within the smallest cap of those copies; else as it came,
    /// and the copies that needed it are skipped.
    pub(super) async fn prepare_body(&mut self, body: UpstreamBody) -> Result<UpstreamBody, ProxyError> {
        if body.is_end_stream() || !self.mirrors.iter().any(|m| m.wants_request_body()) {
            return Ok(body);
        }
        let cap = self.mirrors.iter().filter(|m| m.wants_request_body()).map(|m| m.max_body_bytes()).min();
        let fits = body.size_hint().upper().zip(cap).is_some_and(|(upper, cap)| upper <= cap as u64);
        if !fits {
            let (skipped, kept) = std::mem::take(&mut self.mirrors).into_iter().partition(|m| m.wants_request_body());
            self.mirrors = kept;
            for mirror in skipped {
                mirror.skip(MirrorSkipped::BodyNotBuffered);
            }
            return Ok(body);
        }
        let limit = body.size_hint().upper().unwrap_or_default();
        let bytes = buffer(body, limit).await?;
        self.request_body = bytes.clone();
        Ok(Either::Right(Full::new(bytes)))
    }

    /// The monolith's head is in hand: subscribes each copy to its body and spawns it.
    /// A response the gateway made itself (not an upstream's) gets no copy.
    pub(super) fn start(
        self,
        response: &mut Response<ResponseBody>,
        route: &Route,
        ctx: &RequestCtx,
        exchange_hooks: &[Arc<dyn Plugin>],
        tracer: Option<&Arc<Tracer>>,
    ) {
        let status = response.status();
        let content_type = response.headers().get(CONTENT_TYPE).cloned();
        let Either::Left(body) = response.body_mut() else { return };
        let latency = clock::now().saturating_sub(ctx.started);
        let sides = RouteSideRequests { route, ctx, exchange_hooks, tracer };
        let mut tee = BodyTee::default();
        for mirror in self.mirrors {
            let primary = PrimaryAnswer {
                status,
                content_type: content_type.clone(),
                latency,
                body: tee.subscribe(mirror.max_body_bytes()),
                request_body: self.request_body.clone(),
                now: clock::now,
            };
            tokio::spawn(mirror.start(primary, &sides));
        }
        body.tee(tee);
    }
}

/// The sides of the route being served, for a mirror's copies: each request gets the
/// side's `upstream_exchange` plugins (the service's path rewrite) as the data plane's do.
pub(crate) struct RouteSideRequests<'a> {
    pub(crate) route: &'a Route,
    pub(crate) ctx: &'a RequestCtx,
    pub(crate) exchange_hooks: &'a [Arc<dyn Plugin>],
    /// The span exporter, when the request is traced: each copy is a child span.
    pub(crate) tracer: Option<&'a Arc<Tracer>>,
}

impl RouteSides for RouteSideRequests<'_> {
    fn send(&self, side: Target, request: Request<Bytes>, max_body_bytes: usize) -> SideFuture {
        let upstream = match side {
            Target::Service => self.route.service.clone(),
            _ => Some(self.route.monolith.clone()),
        };
        let Some(upstream) = upstream else {
            return Box::pin(async { Err(SideError::UnknownUpstream("(the route has no service)".to_owned())) });
        };
        let (mut parts, body) = request.into_parts();
        let exchange = Exchange { route: self.route.id, side };
        super::run_exchange_hooks(self.exchange_hooks, self.ctx, exchange, &mut parts);
        let what = if side == Target::Service { "shadow copy" } else { "shadow noise sample" };
        let span = CallSpan::start(self.tracer, self.ctx, what, &upstream, &mut parts.headers);
        let call = side_call(upstream, Request::from_parts(parts, body), max_body_bytes);
        match span {
            None => call,
            Some(span) => Box::pin(async move {
                let result = call.await;
                match &result {
                    Ok(answer) => span.answered(answer.status().as_u16()),
                    Err(error) => span.failed(error.to_string()),
                }
                result
            }),
        }
    }
}
