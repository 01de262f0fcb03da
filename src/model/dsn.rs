//! What a delivery status notification says about each recipient (RFC 3464),
//! as plain data: the spool keeps owed notices, `protocol::dsn` writes them.

use crate::model::notify::Notify;

/// Whether the DSN reports failures or delays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// The recipients failed permanently.
    Failure,
    /// The recipients are still queued.
    Delay,
}

/// One recipient's line in a DSN (kept in the spool while the DSN is owed).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RecipientStatus {
    /// The recipient address.
    pub address: String,
    /// ORCPT, if the client gave one.
    pub orcpt: Option<String>,
    /// Enhanced status code, e.g. `5.7.10` or `4.4.1`.
    pub status: String,
    /// The MX host whose reply decided it, if any.
    pub remote_mta: Option<String>,
    /// The server's reply (`smtp;` diagnostic), if any.
    pub diagnostic: Option<String>,
    /// Plain words: what happened on each host.
    pub reason: String,
}

/// Whether a recipient's NOTIFY asks for this kind of DSN (RFC 3461 §4.1;
/// no NOTIFY means failures and delays).
pub fn wanted(notify: &Notify, kind: Kind) -> bool {
    if notify.contains(Notify::NEVER) {
        return false;
    }
    if notify.is_empty() {
        return true;
    }
    notify.contains(match kind {
        Kind::Failure => Notify::FAILURE,
        Kind::Delay => Notify::DELAY,
    })
}
