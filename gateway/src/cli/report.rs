//! `gateway report`: the migration table of a running gateway, in the terminal.
//!
//! It reads `/admin/migration` from the admin listener (plain HTTP/1.1 over TCP) and
//! prints one line per route.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use serde_json::Value;

/// How long the report waits for the gateway.
const TIMEOUT: Duration = Duration::from_secs(5);

/// Why the report could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// The admin URL is not `http://HOST:PORT`.
    #[error("{0:?} is not an admin url like http://127.0.0.1:9901")]
    BadUrl(String),
    /// The gateway could not be reached or answered badly.
    #[error("cannot read {url}/admin/migration: {reason}")]
    Fetch {
        /// The admin URL.
        url: String,
        /// What went wrong.
        reason: String,
    },
}

/// Fetches `/admin/migration` from the admin listener at `admin` (`http://HOST:PORT`).
pub fn fetch(admin: &str) -> Result<Value, ReportError> {
    let authority = admin
        .strip_prefix("http://")
        .map(|rest| rest.trim_end_matches('/'))
        .filter(|rest| !rest.is_empty() && !rest.contains('/'))
        .ok_or_else(|| ReportError::BadUrl(admin.to_owned()))?;
    let fail = |reason: String| ReportError::Fetch { url: admin.trim_end_matches('/').to_owned(), reason };
    let address = authority
        .to_socket_addrs()
        .map_err(|e| fail(e.to_string()))?
        .next()
        .ok_or_else(|| fail("the host has no address".to_owned()))?;
    let mut stream = TcpStream::connect_timeout(&address, TIMEOUT).map_err(|e| fail(e.to_string()))?;
    stream.set_read_timeout(Some(TIMEOUT)).map_err(|e| fail(e.to_string()))?;
    write!(
        stream,
        "GET /admin/migration HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\nAccept: application/json\r\n\r\n"
    )
    .map_err(|e| fail(e.to_string()))?;
    let mut reply = Vec::new();
    stream.read_to_end(&mut reply).map_err(|e| fail(e.to_string()))?;
    let reply = String::from_utf8_lossy(&reply);
    let (head, body) = reply.split_once("\r\n\r\n").ok_or_else(|| fail("not an HTTP response".to_owned()))?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(fail(head.lines().next().unwrap_or_default().to_owned()));
    }
    serde_json::from_str(body).map_err(|e| fail(format!("not JSON: {e}")))
}

/// A route's shadow column: match rate and comparisons, `-` without a shadow.
fn shadow_cell(shadow: &Value) -> String {
    if shadow.is_null() {
        return "-".to_owned();
    }
    let compared = shadow["compared"].as_u64().unwrap_or(0);
    match shadow["match_rate_percent"].as_f64() {
        Some(rate) => format!("{rate:.1}% of {compared}"),
        None => "no comparisons yet".to_owned(),
    }
}

/// A route's ramp column: its state and where it goes, `-` without a ramp.
fn ramp_cell(ramp: &Value) -> String {
    if ramp.is_null() {
        return "-".to_owned();
    }
    let state = ramp["state"].as_str().unwrap_or("-");
    let to = ramp["to_percent"].as_f64().unwrap_or(0.0);
    match ramp["last_event"]["event"].as_str() {
        Some(event) => format!("{state} (to {to:.2}%, last: {event})"),
        None => format!("{state} (to {to:.2}%)"),
    }
}

/// The report as a table.
pub fn render(report: &Value) -> String {
    let pct = |v: &Value| v.as_f64().map_or_else(|| "-".to_owned(), |p| format!("{p:.1}%"));
    let ms = |v: &Value| v.as_f64().map_or_else(|| "-".to_owned(), |p| format!("{p}ms"));
    let overall = &report["overall"];
    let mut out = format!(
        "config v{}: {} of all traffic served by extracted services; {} of {} routes fully migrated; {} requests\n\n",
        report["config_version"],
        pct(&overall["service_share_percent"]),
        overall["routes_fully_migrated"],
        overall["routes_extracted"],
        overall["requests"],
    );
    let mut rows = vec![
        [
            "ROUTE",
            "PREFIX",
            "DIAL",
            "OBSERVED 15m",
            "1m",
            "STAGE",
            "BREAKER",
            "ERR svc/mono",
            "P99 svc/mono",
            "FALLBACKS",
            "SHADOW MATCH",
            "RAMP",
        ]
        .map(str::to_owned),
    ];
    for route in report["routes"].as_array().into_iter().flatten() {
        let share = &route["observed_service_share_percent"];
        let side = |name: &str| {
            let recent = &route[format!("{name}_15m")];
            if recent["requests"].as_u64().unwrap_or(0) > 0 {
                recent.clone()
            } else {
                route[format!("{name}_since_start")].clone()
            }
        };
        let (service, monolith) = (side("service"), side("monolith"));
        let fallbacks = route["fallbacks"]
            .as_object()
            .map(|f| f.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(", "))
            .filter(|f| !f.is_empty())
            .unwrap_or_else(|| "-".to_owned());
        let dial = match (route["dial_percent"].as_f64(), route["effective_dial_percent"].as_f64()) {
            (Some(d), Some(e)) if (d - e).abs() > f64::EPSILON => format!("{d:.2}% (eff {e:.2}%)"),
            (Some(d), _) => format!("{d:.2}%"),
            _ => "-".to_owned(),
        };
        rows.push([
            route["name"].as_str().unwrap_or_default().to_owned(),
            route["prefix"].as_str().unwrap_or_default().to_owned(),
            dial,
            pct(if share["last_15m"].is_null() { &share["since_start"] } else { &share["last_15m"] }),
            pct(&share["last_1m"]),
            route["stage"].as_str().unwrap_or_default().to_owned(),
            route["breaker"].as_str().unwrap_or("-").to_owned(),
            format!("{} / {}", pct(&service["error_rate_percent"]), pct(&monolith["error_rate_percent"])),
            format!("{} / {}", ms(&service["p99_ms"]), ms(&monolith["p99_ms"])),
            fallbacks,
            shadow_cell(&route["shadow"]),
            ramp_cell(&route["ramp"]),
        ]);
    }
    let widths: Vec<usize> =
        (0..rows[0].len()).map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0)).collect();
    for row in &rows {
        let line: Vec<String> = row.iter().zip(&widths).map(|(cell, w)| format!("{cell:<w$}")).collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    if rows.len() == 1 {
        out.push_str("(no extracted routes)\n");
    }
    out
}
