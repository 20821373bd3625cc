//! Why a request meant for the service was answered by the monolith.

/// The reason a fallback happened: a label of `gateway_fallbacks_total` and a key of the
/// migration report, so each is spelled once, here.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FallbackReason {
    /// The service's circuit breaker is open (the request never left the gateway).
    BreakerOpen,
    /// The service could not be connected to.
    ConnectError,
    /// The service sent no response head in time.
    Timeout,
    /// The service answered with a failure status and the request could be replayed.
    Status5xx,
    /// The exchange with the service broke.
    ExchangeError,
    /// Every endpoint of the service failed its health checks or is ejected (the request
    /// never left the gateway).
    NoHealthyEndpoint,
}

impl FallbackReason {
    /// Every reason, in report order (also the index order of per-reason tables).
    pub const ALL: [FallbackReason; 6] = [
        FallbackReason::BreakerOpen,
        FallbackReason::ConnectError,
        FallbackReason::Timeout,
        FallbackReason::Status5xx,
        FallbackReason::ExchangeError,
        FallbackReason::NoHealthyEndpoint,
    ];

    /// The metric label and report key.
    pub fn as_str(self) -> &'static str {
        match self {
            FallbackReason::BreakerOpen => "breaker_open",
            FallbackReason::ConnectError => "connect_error",
            FallbackReason::Timeout => "timeout",
            FallbackReason::Status5xx => "status_5xx",
            FallbackReason::ExchangeError => "exchange_error",
            FallbackReason::NoHealthyEndpoint => "no_healthy_endpoint",
        }
    }

    /// Position in [`FallbackReason::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indexes_follow_all_and_labels_are_distinct() {
        let mut labels = std::collections::HashSet::new();
        for (i, reason) in FallbackReason::ALL.iter().enumerate() {
            assert_eq!(reason.index(), i);
            assert!(labels.insert(reason.as_str()));
        }
        assert_eq!(FallbackReason::Status5xx.as_str(), "status_5xx");
        assert_eq!(FallbackReason::BreakerOpen.as_str(), "breaker_open");
        assert_eq!(FallbackReason::ConnectError.as_str(), "connect_error");
        assert_eq!(FallbackReason::Timeout.as_str(), "timeout");
        assert_eq!(FallbackReason::ExchangeError.as_str(), "exchange_error");
    }
}
