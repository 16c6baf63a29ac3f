//! Repairing and selecting events on the way out of the archive.
//!
//! - [`FlowSet`]: the Snowplow event-recovery model. Flows with `Test` conditions on JSONPath
//!   (RFC 9535) paths; the first flow whose conditions all hold applies its steps (`Replace`,
//!   `Remove`, `Cast`) or routes the event to the unrecoverable output or drops it. An event no
//!   flow changed keeps its bytes; a changed one is serialised once, keeping its key order and
//!   number text.
//! - [`Selection`]: event types and domains (exact or glob) and a JSONPath filter expression.

pub mod flow;
pub mod path;
pub mod raw;
pub mod select;

pub use flow::{Applied, FlowError, FlowSet};
pub use path::Path;
pub use select::{Rejected, Selection, SelectionError};

#[cfg(test)]
mod tests;
