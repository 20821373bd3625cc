//! The registry of per-route policies: each is a crate under `plugins/` on the plugin
//! contract (`gateway_plugin_api::config::RoutePolicy`). Adding a policy is one line here
//! (plus its crate in the workspace); the order is the order its phases run in.

use gateway_plugin_api::config::Registry;

/// Every per-route policy the gateway knows.
pub(crate) fn registry() -> Registry {
    Registry::new()
        .with(gateway_plugin_ratelimit::RateLimitPolicy)
        .with(gateway_plugin_transform::TransformPolicy)
        .with(gateway_plugin_shadow::ShadowPolicy)
        .with(gateway_plugin_ramp::RampPolicy)
}
