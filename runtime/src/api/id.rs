//! Pod, container and exec ids: they name directories and travel to the guest, so they must
//! be non-empty, short, and free of path tricks.

/// Longest id accepted (a file name component, with room for suffixes).
pub const MAX_ID_LEN: usize = 128;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("Empty {0} id")]
    Empty(&'static str),
    #[error("The {what} id is longer than {MAX_ID_LEN} bytes")]
    TooLong { what: &'static str },
    #[error("Invalid {what} id {id:?}: {why}")]
    Invalid {
        what: &'static str,
        id: String,
        why: &'static str,
    },
}

/// Check an id: non-empty, at most [`MAX_ID_LEN`] bytes, no `/`, not `.` or `..` (nor any `..`),
/// not starting with `-` or `.`, and only ASCII letters, digits, `-`, `_`, `.`, `+`, `:`, `@`.
pub fn validate(what: &'static str, id: &str) -> Result<(), Error> {
    let invalid = |why| Error::Invalid {
        what,
        id: id.to_string(),
        why,
    };
    if id.is_empty() {
        return Err(Error::Empty(what));
    }
    if id.len() > MAX_ID_LEN {
        return Err(Error::TooLong { what });
    }
    if id.contains('/') {
        return Err(invalid("contains '/'"));
    }
    if id.contains("..") {
        return Err(invalid("contains '..'"));
    }
    if id.starts_with('.') || id.starts_with('-') {
        return Err(invalid("starts with '.' or '-'"));
    }
    if let Some(_bad) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '+' | ':' | '@')))
    {
        return Err(invalid("may only hold letters, digits and - _ . + : @"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_ids_pass() {
        for id in [
            "a",
            "pod-1",
            "c_2.x",
            "sha256:abc",
            "A9+b@c",
            &"x".repeat(MAX_ID_LEN),
        ] {
            assert_eq!(validate("pod", id), Ok(()), "{id}");
        }
    }

    #[test]
    fn bad_ids_are_refused() {
        assert_eq!(validate("pod", ""), Err(Error::Empty("pod")));
        assert_eq!(
            validate("container", &"x".repeat(MAX_ID_LEN + 1)),
            Err(Error::TooLong { what: "container" })
        );
        for id in [
            "a/b", "/abs", "..", ".", "a..b", ".hidden", "-rf", "sp ace", "nl\n", "é", "a\0b",
        ] {
            let err = validate("pod", id).unwrap_err();
            assert!(matches!(err, Error::Invalid { .. }), "{id:?}: {err}");
        }
    }

    #[test]
    fn messages_name_the_kind() {
        assert_eq!(validate("pod", "").unwrap_err().to_string(), "Empty pod id");
        let msg = validate("container", "a/b").unwrap_err().to_string();
        assert!(msg.starts_with("Invalid container id \"a/b\""), "{msg}");
    }
}
