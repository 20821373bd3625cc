//! `host_header` on `[upstreams.<name>]`: the `Host` an upstream is sent.
//!
//! ```toml
//! [upstreams.users]
//! host_header = "upstream"   # client (default) | upstream (the url's host:port) | a literal host
//! ```
//!
//! This is a setting of the upstream, not of a route: every request to the upstream
//! honours it (forwards, fallback replays, aggregate parts, side requests), so the
//! gateway's upstream handle applies it; this module owns its vocabulary and checks.

use std::str::FromStr;

use http::HeaderValue;
use http::uri::Authority;

/// Which `Host` an upstream gets.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum HostHeader {
    /// The client's `Host`, as sent; a request the gateway makes itself (an aggregate
    /// part, a side request) gets the url's host:port.
    #[default]
    Client,
    /// The url's host:port, for services behind virtual hosting.
    Upstream,
    /// This host (and port), whatever the url says.
    Literal(HeaderValue),
}

impl HostHeader {
    /// The `Host` to put on a request to an upstream whose url has `authority`, or `None`
    /// to keep the one the request carries (and only add `authority` when it has none).
    pub fn replacement<'a>(&'a self, authority: &'a HeaderValue) -> Option<&'a HeaderValue> {
        match self {
            HostHeader::Client => None,
            HostHeader::Upstream => Some(authority),
            HostHeader::Literal(host) => Some(host),
        }
    }
}

impl std::fmt::Display for HostHeader {
    /// As written in the config.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HostHeader::Client => f.write_str("client"),
            HostHeader::Upstream => f.write_str("upstream"),
            HostHeader::Literal(host) => f.write_str(host.to_str().unwrap_or_default()),
        }
    }
}

impl FromStr for HostHeader {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "client" => return Ok(HostHeader::Client),
            "upstream" => return Ok(HostHeader::Upstream),
            _ => {}
        }
        let problem = format!(
            "\"{text}\" is not client, upstream or a host[:port] (for example users.internal or users.internal:8080)"
        );
        // An authority without credentials, as a Host header carries it (RFC 9110 §7.2).
        let authority = Authority::from_str(text).map_err(|_| problem.clone())?;
        let has_port = authority.as_str().len() > authority.host().len();
        if text.contains('@') || authority.host().is_empty() || (has_port && authority.port_u16().is_none()) {
            return Err(problem);
        }
        HeaderValue::from_str(authority.as_str()).map(HostHeader::Literal).map_err(|_| problem)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_three_modes_parse() {
        assert_eq!("client".parse(), Ok(HostHeader::Client));
        assert_eq!("upstream".parse(), Ok(HostHeader::Upstream));
        for literal in ["users.internal", "users.internal:8080", "10.0.0.7:3001", "[::1]:8080", "Users.Internal"] {
            assert_eq!(
                literal.parse::<HostHeader>(),
                Ok(HostHeader::Literal(HeaderValue::from_static(literal))),
                "{literal}"
            );
        }
        for text in ["client", "upstream", "users.internal:8080"] {
            assert_eq!(text.parse::<HostHeader>().map(|mode| mode.to_string()).as_deref(), Ok(text), "round trip");
        }
    }

    #[test]
    fn anything_else_is_refused_with_the_choices() {
        for bad in ["", "user:pw@host", "http://users", "users/v2", "a b", "host:port", ":8080", "host\n"] {
            let problem = bad.parse::<HostHeader>().expect_err(bad);
            assert!(problem.contains("not client, upstream or a host[:port]"), "{bad:?}: {problem}");
        }
    }

    #[test]
    fn each_mode_picks_its_host() {
        let authority = HeaderValue::from_static("127.0.0.1:3001");
        assert_eq!(HostHeader::Client.replacement(&authority), None);
        assert_eq!(HostHeader::Upstream.replacement(&authority), Some(&authority));
        let literal = HeaderValue::from_static("users.internal");
        assert_eq!(HostHeader::Literal(literal.clone()).replacement(&authority), Some(&literal));
    }
}
