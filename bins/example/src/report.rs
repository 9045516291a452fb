//! Error messages that carry their causes: drivers often keep the useful part ("Connection
//! refused", the server's message) in the source chain, not in `Display`.

use std::error::Error;

/// `error` and its sources on one line, each source once (see
/// [`error_chain`](outbox_core::redact::error_chain)).
pub(crate) fn describe(error: &(dyn Error + 'static)) -> String {
    outbox_core::redact::error_chain(error)
}

#[cfg(test)]
mod tests {
    use super::describe;

    #[derive(Debug, thiserror::Error)]
    #[error("outer: {0}")]
    struct Outer(#[source] Middle);

    #[derive(Debug, thiserror::Error)]
    #[error("middle")]
    struct Middle(#[source] std::io::Error);

    #[test]
    fn causes_are_appended_once() {
        let error = Outer(Middle(std::io::Error::other("connection refused")));
        assert_eq!(describe(&error), "outer: middle: connection refused");
    }
}
