//! The one check for paths of user files, used by the API validator and again by the agent.

/// Why a user-supplied path was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("path is empty")]
    Empty,
    #[error("path is longer than {max} bytes")]
    TooLong { max: usize },
    #[error("path must be relative to the work dir")]
    Absolute,
    #[error("path must not contain '..'")]
    ParentDir,
    #[error("path must not contain empty or '.' components")]
    EmptyComponent,
    #[error("path contains a NUL or control character")]
    BadCharacter,
}

/// Longest accepted path, in bytes.
pub const MAX_PATH_BYTES: usize = 255;

/// Accepts `a/b.txt`; refuses anything that could leave the work dir or is ambiguous.
pub fn check_relative_path(path: &str) -> Result<(), PathError> {
    if path.is_empty() {
        return Err(PathError::Empty);
    }
    if path.len() > MAX_PATH_BYTES {
        return Err(PathError::TooLong {
            max: MAX_PATH_BYTES,
        });
    }
    if path.chars().any(char::is_control) {
        return Err(PathError::BadCharacter);
    }
    if path.starts_with('/') {
        return Err(PathError::Absolute);
    }
    for component in path.split('/') {
        match component {
            ".." => return Err(PathError::ParentDir),
            "" | "." => return Err(PathError::EmptyComponent),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plain_relative_paths() {
        for p in [
            "a",
            "a.txt",
            "data/in.txt",
            "x/y/z",
            "..a",
            "a..b",
            ".hidden",
        ] {
            assert_eq!(check_relative_path(p), Ok(()), "{p}");
        }
    }

    #[test]
    fn refuses_escapes_and_oddities() {
        assert_eq!(check_relative_path(""), Err(PathError::Empty));
        assert_eq!(check_relative_path("/etc/passwd"), Err(PathError::Absolute));
        assert_eq!(check_relative_path("../x"), Err(PathError::ParentDir));
        assert_eq!(check_relative_path("a/../../x"), Err(PathError::ParentDir));
        assert_eq!(check_relative_path("a/.."), Err(PathError::ParentDir));
        assert_eq!(check_relative_path("a//b"), Err(PathError::EmptyComponent));
        assert_eq!(check_relative_path("./a"), Err(PathError::EmptyComponent));
        assert_eq!(check_relative_path("a/"), Err(PathError::EmptyComponent));
        assert_eq!(check_relative_path("a\0b"), Err(PathError::BadCharacter));
        assert_eq!(check_relative_path("a\nb"), Err(PathError::BadCharacter));
        assert!(matches!(
            check_relative_path(&"a".repeat(300)),
            Err(PathError::TooLong { .. })
        ));
    }
}
