//! Where a caller's sticky key comes from, and who the client is behind trusted proxies.

use std::borrow::Cow;
use std::net::IpAddr;
use std::str::FromStr;

use http::header::{HeaderMap, HeaderName};
use ipnet::IpNet;

use crate::Caller;

/// The source of the key that pins a caller to a bucket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Sticky {
    /// A claim of the verified token (`claim:sub`).
    Claim(String),
    /// A request header (`header:x-user`).
    Header(HeaderName),
    /// A cookie (`cookie:uid`).
    Cookie(String),
    /// The client address (`ip`).
    Ip,
}

/// Why a `sticky` value could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("\"{0}\" is not claim:NAME, header:NAME, cookie:NAME or ip")]
pub struct StickyParseError(pub String);

impl FromStr for Sticky {
    type Err = StickyParseError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || StickyParseError(text.to_owned());
        match text.split_once(':') {
            None if text == "ip" => Ok(Sticky::Ip),
            Some((_, "")) | None => Err(bad()),
            Some(("claim", name)) => Ok(Sticky::Claim(name.to_owned())),
            Some(("header", name)) => HeaderName::from_bytes(name.as_bytes()).map(Sticky::Header).map_err(|_| bad()),
            Some(("cookie", name)) => Ok(Sticky::Cookie(name.to_owned())),
            Some(_) => Err(bad()),
        }
    }
}

impl std::fmt::Display for Sticky {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Sticky::Claim(name) => write!(f, "claim:{name}"),
            Sticky::Header(name) => write!(f, "header:{name}"),
            Sticky::Cookie(name) => write!(f, "cookie:{name}"),
            Sticky::Ip => f.write_str("ip"),
        }
    }
}

impl Sticky {
    /// The caller's key, if it has one; an empty value is no key.
    pub fn key<'a>(&self, caller: &Caller<'a>) -> Option<Cow<'a, str>> {
        let key = match self {
            Sticky::Claim(name) => caller.identity?.claim(name).map(Cow::Borrowed),
            Sticky::Header(name) => caller.headers.get(name).and_then(|v| v.to_str().ok()).map(Cow::Borrowed),
            Sticky::Cookie(name) => gateway_plugin_api::cookie(caller.headers, name).map(Cow::Borrowed),
            Sticky::Ip => caller.client_ip.map(|ip| Cow::Owned(ip.to_string())),
        };
        key.filter(|k| !k.is_empty())
    }
}

/// The client behind `peer`: the peer itself, unless it is a trusted proxy. Then the
/// `x-forwarded-for` chain is walked from the right (the hop nearest us) past every
/// trusted proxy, and the first address that is not one is the client. Entries a client
/// wrote itself sit further left and are never reached while a trusted proxy appended
/// the real address.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted_proxies: &[IpNet]) -> IpAddr {
    let trusted = |ip: &IpAddr| trusted_proxies.iter().any(|net| net.contains(ip));
    if !trusted(&peer) {
        return peer;
    }
    let hops: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    let mut client = peer;
    for hop in hops.iter().rev() {
        let Ok(ip) = hop.parse::<IpAddr>() else {
            // Garbage in the chain: trust nothing further left.
            return client;
        };
        client = ip;
        if !trusted(&ip) {
            return ip;
        }
    }
    client
}
