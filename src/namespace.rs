//! Namespace names: checked before any system call.
//!
//! A namespace is 1 to [`MAX_NAMESPACE_LEN`] bytes of ASCII letters, digits,
//! `_`, `-` and `.`, not starting with `.` or `-`. That keeps every file name
//! (`{ns}_data_{id}` included) within `NAME_MAX`, free of `/`, NUL, spaces
//! and shell metacharacters, never hidden, and parseable from the right.

use crate::error::BlobError;

/// Longest namespace accepted, in bytes.
pub const MAX_NAMESPACE_LEN: usize = 64;

/// Why a namespace is rejected, or `None` if it is valid.
pub fn invalid_reason(ns: &str) -> Option<&'static str> {
    if ns.is_empty() {
        return Some("it is empty");
    }
    if ns.len() > MAX_NAMESPACE_LEN {
        return Some("it is longer than 64 bytes");
    }
    if ns.starts_with('.') || ns.starts_with('-') {
        return Some("it starts with '.' or '-'");
    }
    if !ns
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
    {
        return Some("it holds a character other than ASCII letters, digits, '_', '-' and '.'");
    }
    None
}

/// Whether `ns` is a valid namespace.
pub fn is_valid(ns: &str) -> bool {
    invalid_reason(ns).is_none()
}

/// Checks `ns`, returning the typed error the public API reports.
pub fn validate(ns: &str) -> Result<(), BlobError> {
    match invalid_reason(ns) {
        None => Ok(()),
        Some(reason) => Err(BlobError::InvalidNamespace {
            namespace: ns.escape_debug().to_string(),
            reason,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_documented_set() {
        for ns in ["myapp", "a", "A_b-c.d", "x.1", &"n".repeat(64)] {
            assert!(validate(ns).is_ok(), "{ns}");
        }
    }

    #[test]
    fn rejects_everything_else() {
        for ns in [
            "",
            ".",
            "..",
            ".hidden",
            "-x",
            "a/b",
            "../etc",
            "a b",
            "a\0b",
            "é",
            "a*",
            "a\n",
            &"n".repeat(65),
        ] {
            assert!(
                matches!(validate(ns), Err(BlobError::InvalidNamespace { .. })),
                "{ns:?}"
            );
        }
    }
}
