//! How a validated DSO file leaves ped. The outbox (in the ledger) decides
//! *what* is due and remembers what was sent; a [`Deliver`] only moves one file
//! to one destination. Keeping the two apart lets the outbox be tested against
//! a destination that fails on purpose, and lets a new channel (SFTP, an API)
//! be added without touching the bookkeeping.

/// One file to hand over. `idempotency_key` is stable for a given file
/// version (e.g. its content hash), so a retry after a lost acknowledgement
/// cannot make the receiver count the file twice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub file_name: String,
    pub content: Vec<u8>,
    pub idempotency_key: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DeliveryError {
    /// Worth retrying later: connection refused, timeout, HTTP 5xx or 429.
    #[error("transient delivery failure: {0}")]
    Transient(String),
    /// Retrying the same bytes will not help: HTTP 4xx other than 408/429,
    /// a destination that is misconfigured. Needs a person.
    #[error("permanent delivery failure: {0}")]
    Permanent(String),
}

/// A destination. Blocking on purpose: delivery is rare, runs in a blocking
/// task, and must not hold the async runtime.
pub trait Deliver: Send + Sync {
    /// A short name for logs and metrics labels, e.g. `folder` or `https`.
    fn channel(&self) -> &'static str;
    /// Hand over one file; `Ok` carries the receiver's receipt (or a
    /// description of where the file went).
    fn deliver(&self, delivery: &Delivery) -> Result<String, DeliveryError>;
}
