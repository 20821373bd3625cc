//! Several instances per upstream, as pure logic the gateway wires to its pools: which
//! endpoint gets the next request ([`balance`]) and which endpoints may get one at all
//! ([`health`]). Nothing here knows of sockets or clocks; time comes in as `now`.
#![forbid(unsafe_code)]

pub mod balance;
pub mod health;

pub use balance::{Balance, pick};
pub use health::{ActiveCheck, Ejection, EndpointHealth, EndpointState, may_eject_one_more};
