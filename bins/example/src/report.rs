//! Error messages that carry their causes: drivers often keep the useful part ("Connection
//! refused", the server's message) in the source chain, not in `Display`.

use std::error::Error;

/// `error` and its sources joined by `: `, skipping a source whose text the message already
/// holds (wrappers that print their source themselves).
pub(crate) fn describe(error: &(dyn Error + 'static)) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    message
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
