//! The HTTP/2 transport (`protocol = "http2"`): one multiplexed connection per upstream,
//! spoken with prior knowledge over `http://` (h2c).
//!
//! Every request shares the connection, each on its own stream; trailers pass both ways
//! (gRPC carries its status in them). A connection that closed or failed is replaced by
//! the next request that finds it so. A request that never reached a stream (the
//! connection could not be made, or was not ready) comes back unsent, so a fallback may
//! replay it.

use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderValue};
use http::uri::{Authority, Scheme};
use http::{Request, Response, Uri, Version};
use hyper::client::conn::http2::{self, SendRequest};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::sync::Mutex;

use super::http1::PooledBody;
use super::{
    SendFailure, UpstreamBody, UpstreamError, UpstreamSettings, connect_address, connect_upstream, exchange_error,
};

/// Headers HTTP/2 forbids on a request (RFC 9113 §8.2.2); hop-by-hop stripping removed
/// the client's already, this also covers what a policy or a WebSocket handshake set.
const CONNECTION_SPECIFIC: [header::HeaderName; 4] =
    [header::CONNECTION, header::UPGRADE, header::TRANSFER_ENCODING, header::HeaderName::from_static("keep-alive")];

pub(crate) struct Http2 {
    connect_to: String,
    authority: Authority,
    connect_timeout: Duration,
    /// TLS for an `https://` upstream (ALPN h2).
    tls: Option<crate::tls::UpstreamTls>,
    /// The shared connection; replaced when it closes. The lock is held only to clone the
    /// sender or to connect.
    connection: Mutex<Option<SendRequest<UpstreamBody>>>,
}

impl Http2 {
    pub(crate) fn new(settings: &UpstreamSettings, authority: &Authority) -> Self {
        let connect_to = connect_address(authority, settings.tls.is_some());
        Http2 {
            connect_to,
            authority: authority.clone(),
            connect_timeout: settings.connect_timeout,
            tls: settings.tls.clone(),
            connection: Mutex::new(None),
        }
    }

    pub(crate) async fn exchange(
        &self,
        name: &Arc<str>,
        request: Request<UpstreamBody>,
    ) -> Result<Response<PooledBody>, SendFailure> {
        let mut sender = match self.sender(name).await {
            Ok(sender) => sender,
            Err(error) => return Err(SendFailure { error, unsent: Some(request) }),
        };
        let request = self.to_http2(request);
        if let Err(e) = sender.ready().await {
            return Err(SendFailure { error: exchange_error(name, e), unsent: Some(self.back_to_http1(request)) });
        }
        match sender.try_send_request(request).await {
            Ok(response) => Ok(response.map(PooledBody::unpooled)),
            Err(mut failed) => {
                let unsent = failed.take_message().map(|request| self.back_to_http1(request));
                Err(SendFailure { error: exchange_error(name, failed.into_error()), unsent })
            }
        }
    }

    /// The shared connection, made first when there is none or it closed.
    async fn sender(&self, name: &Arc<str>) -> Result<SendRequest<UpstreamBody>, UpstreamError> {
        let mut connection = self.connection.lock().await;
        if let Some(sender) = connection.as_ref().filter(|s| !s.is_closed()) {
            return Ok(sender.clone());
        }
        let sender = self.connect(name).await?;
        *connection = Some(sender.clone());
        Ok(sender)
    }

    async fn connect(&self, name: &Arc<str>) -> Result<SendRequest<UpstreamBody>, UpstreamError> {
        let stream = connect_upstream(name, &self.connect_to, self.connect_timeout, self.tls.as_ref()).await?;
        let connect_error = |reason: String| UpstreamError::Connect { upstream: name.clone(), reason };
        let (sender, connection) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .initial_stream_window_size(super::UPSTREAM_H2_STREAM_WINDOW)
            .initial_connection_window_size(super::UPSTREAM_H2_CONNECTION_WINDOW)
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| connect_error(e.to_string()))?;
        let name = name.clone();
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(upstream = %name, error = %e, "upstream HTTP/2 connection ended with an error");
            }
        });
        Ok(sender)
    }

    /// The request as HTTP/2 sends it: `:authority` from the `Host` the upstream is to get
    /// (then no `Host` header), `:scheme` http, no connection-specific headers, and
    /// `te: trailers` for gRPC, whose servers ask for it.
    fn to_http2(&self, mut request: Request<UpstreamBody>) -> Request<UpstreamBody> {
        let headers = request.headers_mut();
        let authority = headers
            .remove(header::HOST)
            .and_then(|host| Authority::try_from(host.as_bytes()).ok())
            .unwrap_or_else(|| self.authority.clone());
        for name in &CONNECTION_SPECIFIC {
            headers.remove(name);
        }
        if super::is_grpc_content_type(headers) {
            headers.insert(header::TE, HeaderValue::from_static("trailers"));
        }
        let mut parts = request.uri().clone().into_parts();
        parts.scheme = Some(if self.tls.is_some() { Scheme::HTTPS } else { Scheme::HTTP });
        parts.authority = Some(authority);
        if let Ok(uri) = Uri::from_parts(parts) {
            *request.uri_mut() = uri;
        }
        *request.version_mut() = Version::HTTP_2;
        request
    }

    /// An unsent request as the rest of the gateway knows it (origin-form, `Host`), so a
    /// replay on an HTTP/1.1 monolith is well formed.
    fn back_to_http1(&self, mut request: Request<UpstreamBody>) -> Request<UpstreamBody> {
        if let Some(authority) = request.uri().authority().cloned()
            && let Ok(host) = HeaderValue::from_str(authority.as_str())
        {
            request.headers_mut().insert(header::HOST, host);
        }
        if let Some(path) = request.uri().path_and_query().cloned() {
            *request.uri_mut() = Uri::from(path);
        }
        *request.version_mut() = Version::HTTP_11;
        request
    }
}
