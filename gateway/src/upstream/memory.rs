//! An in-process transport: the upstream is a function from request to response.
//!
//! The phase tests build a snapshot from a real config and swap each upstream's transport
//! for one of these, so normalisation, routing, authentication, target selection,
//! breakers, fallback and aggregation all run as in production, without a socket.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};

use super::{SendFailure, UpstreamBody, UpstreamError};

/// What an in-memory upstream does with a request (its body already read).
#[derive(Debug)]
pub(crate) enum MemoryReply {
    /// Answers with this response.
    Respond(Response<Full<Bytes>>),
    /// Acts as if the connection could not be made: the request comes back unsent.
    RefuseConnection,
    /// Acts as if the exchange broke after the request was sent.
    BreakExchange,
}

type Handler = dyn Fn(Request<Bytes>) -> Pin<Box<dyn Future<Output = MemoryReply> + Send>> + Send + Sync + 'static;

/// An in-process upstream.
#[derive(Clone)]
pub(crate) struct MemoryService {
    handler: Arc<Handler>,
}

impl MemoryService {
    /// An upstream that answers with `handler`.
    pub(crate) fn new<F, Fut>(handler: F) -> Self
    where
        F: Fn(Request<Bytes>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = MemoryReply> + Send + 'static,
    {
        MemoryService { handler: Arc::new(move |request| Box::pin(handler(request))) }
    }

    pub(crate) async fn exchange(
        &self,
        name: &Arc<str>,
        request: Request<UpstreamBody>,
    ) -> Result<Response<Full<Bytes>>, SendFailure> {
        let (parts, body) = request.into_parts();
        let bytes = match body.collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(e) => {
                if let Some(fault) = super::client_body::client_fault(&*e) {
                    return Err(SendFailure { error: UpstreamError::Client(fault), unsent: None });
                }
                return Err(SendFailure {
                    error: UpstreamError::Exchange { upstream: name.clone(), source: e },
                    unsent: None,
                });
            }
        };
        match (self.handler)(Request::from_parts(parts.clone(), bytes.clone())).await {
            MemoryReply::Respond(response) => Ok(response),
            MemoryReply::RefuseConnection => Err(SendFailure {
                error: UpstreamError::Connect { upstream: name.clone(), reason: "connection refused".to_owned() },
                unsent: Some(Request::from_parts(parts, http_body_util::Either::Right(Full::new(bytes)))),
            }),
            MemoryReply::BreakExchange => Err(SendFailure {
                error: UpstreamError::Exchange { upstream: name.clone(), source: "connection reset".into() },
                unsent: None,
            }),
        }
    }
}
