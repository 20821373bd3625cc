//! Pure routing logic, shared by the data plane, config validation and `gateway explain`:
//! the path normaliser (one spelling of every path), the lenient reading that guards
//! against route confusion, and the longest-prefix router.

pub mod lenient;
pub mod normalize;
pub mod router;
