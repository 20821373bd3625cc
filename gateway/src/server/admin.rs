//! The admin listener: `/health`, `/ready`, `/metrics`, `/admin/config`, `/admin/migration`,
//! `/admin/shadow/ROUTE` and the `/admin/` page.
//!
//! It runs on its own address (loopback by default), apart from the data plane, so
//! metrics and config are never reachable through the proxy port.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use bytes::Bytes;
use gateway_plugin_api::{Rejection, Target, codes};
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::proxy::headers::request_id;
use crate::proxy::reply::render;
use crate::proxy::upstream_target;
use crate::server::state::{Gateway, stopped};

/// Serves the admin endpoints until shutdown.
pub(crate) async fn serve(listener: TcpListener, gateway: Arc<Gateway>, mut shutdown: watch::Receiver<bool>) {
    let builder = auto::Builder::new(TokioExecutor::new());
    let graceful = GracefulShutdown::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let gateway = gateway.clone();
                let service = service_fn(move |request| {
                    let response = respond(&gateway, &request);
                    async move { Ok::<_, Infallible>(response) }
                });
                let connection = graceful.watch(builder.serve_connection(TokioIo::new(stream), service).into_owned());
                tokio::spawn(async move {
                    let _ = connection.await;
                });
            }
            _ = stopped(&mut shutdown) => break,
        }
    }
    drop(listener);
    graceful.shutdown().await;
}

fn respond(gateway: &Gateway, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        let rejection = Rejection::new(
            StatusCode::METHOD_NOT_ALLOWED,
            codes::METHOD_NOT_ALLOWED,
            "admin endpoints answer GET only",
        );
        return render(rejection, &request_id(request.headers()));
    }
    match request.uri().path() {
        "/health" => json_response(StatusCode::OK, &json!({ "status": "alive" })),
        "/ready" if gateway.is_ready() => json_response(StatusCode::OK, &json!({ "status": "ready" })),
        "/ready" => json_response(StatusCode::SERVICE_UNAVAILABLE, &json!({ "status": "starting" })),
        "/metrics" => {
            let mut response = Response::new(Full::new(Bytes::from(gateway.render_metrics())));
            response
                .headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"));
            response
        }
        "/admin/config" => json_response(StatusCode::OK, &config_document(gateway)),
        "/admin/migration" => json_response(StatusCode::OK, &json!(gateway.migration_report())),
        "/admin/" | "/admin" => migration_page(gateway),
        path if path.starts_with(SHADOW_PREFIX) => shadow_document(gateway, &path[SHADOW_PREFIX.len()..])
            .map(|document| json_response(StatusCode::OK, &document))
            .unwrap_or_else(|| {
                let rejection =
                    Rejection::new(StatusCode::NOT_FOUND, codes::NOT_FOUND, "no route of that name has a shadow");
                render(rejection, &request_id(request.headers()))
            }),
        _ => {
            let rejection = Rejection::new(StatusCode::NOT_FOUND, codes::NOT_FOUND, "no such admin endpoint");
            render(rejection, &request_id(request.headers()))
        }
    }
}

/// `GET /admin/shadow/ROUTE`.
const SHADOW_PREFIX: &str = "/admin/shadow/";

/// `/admin/shadow/ROUTE`: the route's shadow results with its last mismatches (method,
/// path without query, both statuses, the differing pointers with both values cut to 200
/// characters; the caller's secrets already redacted by the plugin).
fn shadow_document(gateway: &Gateway, name: &str) -> Option<serde_json::Value> {
    let snapshot = gateway.snapshot();
    let route = snapshot.route_named(name)?;
    let shadow = snapshot.shadow()?;
    let summary = shadow.summary(route.id)?;
    let samples: Vec<serde_json::Value> = shadow
        .samples(route.id)?
        .iter()
        .rev()
        .map(|sample| {
            json!({
                "method": sample.method,
                "path": sample.path,
                "monolith_status": sample.statuses.0,
                "service_status": sample.statuses.1,
                "differences": sample.differences.iter().map(|d| json!({
                    "pointer": d.pointer,
                    "monolith": d.primary,
                    "service": d.shadow,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    Some(json!({
        "route": &*route.name,
        "summary": summary,
        "last_mismatches": samples,
    }))
}

/// `/admin/config`: what is being served and where it came from.
fn config_document(gateway: &Gateway) -> serde_json::Value {
    let snapshot = gateway.snapshot();
    let meta = &snapshot.meta;
    let loaded_at_unix = meta.loaded_at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let routes: Vec<_> = snapshot
        .routes
        .iter()
        .filter(|r| r.prefix.is_some())
        .map(|r| {
            json!({
                "name": &*r.name,
                "prefix": r.prefix,
                "service": r.service.as_ref().map(|s| &*s.name),
                "monolith": &*r.monolith.name,
                // What the service receives for the prefix itself (service_prefix applied).
                "service_path": r.prefix.as_deref().map(|p| upstream_target(&snapshot, r, Target::Service, p)),
            })
        })
        .collect();
    let upstreams: serde_json::Map<String, serde_json::Value> = snapshot
        .upstreams
        .iter()
        .map(|(name, u)| {
            let s = &u.settings;
            (
                name.clone(),
                json!({
                    "url": s.url,
                    "timeout_ms": s.timeout.as_millis() as u64,
                    "connect_timeout_ms": s.connect_timeout.as_millis() as u64,
                    "breaker": u.breaker.as_ref().map(|b| b.state(crate::clock::now()).as_str()),
                    "host_header": s.host_header.to_string(),
                    "protocol": s.protocol.as_str(),
                    "balance": s.balance.as_str(),
                    "discovery": s.discovery.as_ref().map(|dns| {
                        let mut shown = json!({
                            "dns": dns.name_and_port(),
                            "refresh_seconds": dns.refresh.as_secs(),
                            "nameservers": dns.nameservers.iter().map(ToString::to_string).collect::<Vec<_>>(),
                        });
                        if let (Some(status), Some(fields)) = (u.discovery_status(), shown.as_object_mut()) {
                            fields.extend(status.to_json(crate::clock::now()));
                        }
                        shown
                    }),
                    "endpoints": u.endpoints().iter().map(|e| json!({
                        "address": e.address.to_str().unwrap_or_default(),
                        "state": e.health.state(crate::clock::now()).as_str(),
                        "reason": e.health.reason(),
                        "outstanding": e.health.outstanding(),
                    })).collect::<Vec<_>>(),
                }),
            )
        })
        .collect();
    json!({
        "version": meta.version,
        "auth": snapshot.auth.as_ref().map(|auth| auth_document(auth, &snapshot.jwks_sources)),
        "source": meta.source.display().to_string(),
        "checksum": meta.checksum,
        "loaded_at": httpdate::fmt_http_date(meta.loaded_at),
        "loaded_at_unix": loaded_at_unix,
        "last_reload_error": gateway.reload_state().last_error(),
        "recent_changes": gateway.reload_state().history(),
        "default_upstream": &*snapshot.default_route().monolith.name,
        "routes": routes,
        "upstreams": upstreams,
    })
}

/// `[auth]` in `/admin/config`: the algorithms and every key source with its `kid`s; a
/// `jwks_url` also with its fetches, the age of its keys and its last error. Never key
/// material or a secret.
fn auth_document(
    auth: &gateway_plugin_auth::Authenticator,
    jwks_sources: &[Arc<crate::upstream::jwks::JwksSource>],
) -> serde_json::Value {
    let verifier = auth.verifier();
    let now = gateway_plugin_auth::Clock::now_unix(&gateway_plugin_auth::SystemClock);
    let mut sources: Vec<serde_json::Value> = verifier
        .keys()
        .fixed_sources()
        .iter()
        .map(|s| json!({ "kind": s.kind.as_str(), "source": s.name, "kids": s.kids }))
        .collect();
    // Kids already provided by a file or an earlier URL: those fetched keys are not used.
    let mut earlier: std::collections::HashSet<String> = verifier.keys().fixed().kids().map(str::to_owned).collect();
    sources.extend(jwks_sources.iter().map(|source| {
        let keys = &source.keys;
        let status = keys.status();
        let (current, _) = keys.current();
        let kids: Vec<&str> = current.as_ref().map(|set| set.kids().collect()).unwrap_or_default();
        let shadowed: Vec<&str> = kids.iter().copied().filter(|kid| earlier.contains(*kid)).collect();
        earlier.extend(kids.iter().map(|kid| (*kid).to_owned()));
        json!({
            "kind": gateway_plugin_auth::SourceKind::JwksUrl.as_str(),
            "source": keys.settings().source,
            "refresh_seconds": keys.settings().refresh.as_secs(),
            "kids": current.as_ref().map(|set| set.kids().collect::<Vec<_>>()),
            "fetched": current.is_some(),
            "age_seconds": keys.age_seconds(now),
            "fetches_ok": status.fetches_ok,
            "fetches_failed": status.fetches_failed,
            "last_error": status.last_error,
            "skipped_keys": status.skipped,
            "shadowed_kids": shadowed,
        })
    }));
    json!({
        "algorithms": verifier.algorithms().iter().map(|a| format!("{a:?}")).collect::<Vec<_>>(),
        "issuer": verifier.issuer(),
        "audiences": verifier.audiences(),
        "sources": sources,
        "cached_tokens": auth.cache().map(|c| c.len()),
    })
}

/// The migration page: self-contained HTML with the report embedded, refreshed in place.
const MIGRATION_PAGE: &str = include_str!("assets/migration.html");

fn migration_page(gateway: &Gateway) -> Response<Full<Bytes>> {
    // "</" inside the embedded JSON could end the script element early.
    let data = json!(gateway.migration_report()).to_string().replace("</", "<\\/");
    let page = MIGRATION_PAGE.replace("__MIGRATION_JSON__", &data);
    let mut response = Response::new(Full::new(Bytes::from(page)));
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    response
}

fn json_response(status: StatusCode, value: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(value.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}
