//! Error reporting shared by every layer: an error and its whole `source()` chain on one line.

/// An error and its whole `source()` chain on one line, the way users read it
/// (`Cannot start pod p: The VMM process failed: ...`).
pub fn report(err: &(dyn std::error::Error + 'static)) -> String {
    let mut msg = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        msg.push_str(": ");
        msg.push_str(&e.to_string());
        cur = e.source();
    }
    msg
}

#[cfg(test)]
mod tests {
    #[derive(Debug, thiserror::Error)]
    #[error("Outer")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn the_chain_is_on_one_line() {
        let e = Outer(std::io::Error::other("inner"));
        assert_eq!(super::report(&e), "Outer: inner");
    }
}
