//! `[telemetry]`: where spans go and how many traces are recorded.

use super::*;
use crate::config::file::FileTelemetry;
use crate::telemetry::trace::TraceSettings;

impl Checker<'_> {
    /// `Some(None)` without an `otlp_endpoint` (nothing is traced); `None` after an error.
    pub(super) fn check_telemetry(
        &mut self,
        telemetry: Option<&Spanned<FileTelemetry>>,
    ) -> Option<Option<TraceSettings>> {
        let Some(section) = telemetry else { return Some(None) };
        let telemetry = section.get_ref();
        let sample_basis_points = match &telemetry.trace_sample_percent {
            None => DEFAULT_TRACE_SAMPLE_BASIS_POINTS,
            Some(percent) => match BasisPoints::from_percent(*percent.get_ref()) {
                Some(bp) => bp.buckets(),
                None => {
                    self.error(span(percent), format!("must be 0 to 100 in steps of 0.01, got {}", percent.get_ref()));
                    return None;
                }
            },
        };
        let Some(endpoint) = &telemetry.otlp_endpoint else {
            if telemetry.trace_sample_percent.is_some() || telemetry.service_name.is_some() {
                self.error(span(section), "give otlp_endpoint, the collector's URL, e.g. \"http://collector:4318\"");
                return None;
            }
            return Some(None);
        };
        let text = endpoint.get_ref().trim_end_matches('/');
        let url = match text.parse::<Uri>() {
            Ok(url)
                if url.authority().is_some()
                    && matches!(url.scheme_str(), Some("http" | "https"))
                    && url.query().is_none() =>
            {
                url
            }
            _ => {
                self.error(span(endpoint), format!("\"{text}\" is not a collector URL like http://collector:4318"));
                return None;
            }
        };
        let tls = if url.scheme_str() == Some("https") {
            let host = url.authority().map_or("", |a| a.host()).trim_start_matches('[').trim_end_matches(']');
            match crate::tls::UpstreamTls::new(None, host, None, b"http/1.1") {
                Ok(tls) => Some(tls),
                Err(e) => {
                    self.error(span(endpoint), format!("{e:?}"));
                    return None;
                }
            }
        } else {
            None
        };
        // The collector's base URL: spans go to /v1/traces under it.
        let traces = format!("{}/v1/traces", url.path().trim_end_matches('/'));
        let url = Uri::builder()
            .scheme(url.scheme_str().unwrap_or("http"))
            .authority(url.authority().map_or("", |a| a.as_str()))
            .path_and_query(traces)
            .build()
            .ok()?;
        let service_name = telemetry.service_name.as_ref().map_or("gateway", |n| n.get_ref().as_str()).to_owned();
        if service_name.trim().is_empty() {
            self.error(span(telemetry.service_name.as_ref().expect("set")), "give a service name");
            return None;
        }
        Some(Some(TraceSettings {
            url,
            tls,
            sample_basis_points,
            service_name,
            resource_attributes: telemetry.resource_attributes.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        }))
    }
}

/// New traces recorded when `trace_sample_percent` is not given: 1%.
pub(super) const DEFAULT_TRACE_SAMPLE_BASIS_POINTS: u32 = 100;
