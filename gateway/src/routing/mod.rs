//! Pure routing logic, shared by the data plane, config validation and `gateway explain`:
//! the path normaliser (one spelling of every path) and the longest-prefix router.

pub mod normalize;
pub mod router;
