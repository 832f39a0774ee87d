//! Judging test cases: how a case's status, exit and output become a [`Verdict`].
//!
//! The output rule, as documented in docs/api.md: both the program's stdout and
//! `expected_stdout` are normalised (`\r\n` becomes `\n`, trailing spaces, tabs and
//! `\r` are removed from every line, trailing empty lines are dropped) and must
//! then be equal byte for byte. Leading whitespace and blank lines in the middle
//! still count.

use crate::types::{CaseResult, ExecutionStatus, Verdict};

/// `text` with line endings and trailing whitespace normalised (see the module docs).
pub fn normalise_output(text: &str) -> String {
    let mut lines: Vec<&str> = text
        .split('\n')
        .map(|l| l.trim_end_matches([' ', '\t', '\r']))
        .collect();
    while lines.last().is_some_and(|l| l.is_empty()) {
        lines.pop();
    }
    lines.join("\n")
}

/// Whether `actual` matches `expected` under [`normalise_output`].
pub fn output_matches(actual: &str, expected: &str) -> bool {
    normalise_output(actual) == normalise_output(expected)
}

/// The verdict of one case; `None` when the case could not be judged (the sandbox
/// failed, or the compile did: no case ran).
pub fn judge(
    status: ExecutionStatus,
    exit_code: Option<i32>,
    stdout: &str,
    expected_stdout: Option<&str>,
) -> Option<Verdict> {
    match status {
        ExecutionStatus::Timeout => Some(Verdict::TimeLimit),
        ExecutionStatus::MemoryLimit => Some(Verdict::MemoryLimit),
        ExecutionStatus::OutputLimit => Some(Verdict::RuntimeError),
        ExecutionStatus::SandboxError | ExecutionStatus::CompileError => None,
        ExecutionStatus::Completed => Some(match (exit_code, expected_stdout) {
            (Some(0), Some(want)) if !output_matches(stdout, want) => Verdict::WrongAnswer,
            (Some(0), _) => Verdict::Accepted,
            _ => Verdict::RuntimeError,
        }),
    }
}

/// The request's verdict: `accepted` when every case was, else the first case's
/// that was not; `None` if a case before that could not be judged (or no case ran).
pub fn overall(cases: &[CaseResult]) -> Option<Verdict> {
    for c in cases {
        match c.verdict {
            Some(Verdict::Accepted) => continue,
            other => return other,
        }
    }
    (!cases.is_empty()).then_some(Verdict::Accepted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trailing_whitespace_and_line_endings_do_not_count() {
        assert!(output_matches("1 2 3\n", "1 2 3"));
        assert!(output_matches("a  \r\nb\t\r\n\n\n", "a\nb\n"));
        assert!(output_matches("", "\n\n"));
        // Leading whitespace, inner blank lines and inner spaces do count.
        assert!(!output_matches(" a\n", "a\n"));
        assert!(!output_matches("a\n\nb\n", "a\nb\n"));
        assert!(!output_matches("a b\n", "a  b\n"));
        assert!(!output_matches("42\n", "43\n"));
    }

    #[test]
    fn statuses_map_to_verdicts() {
        use ExecutionStatus as S;
        assert_eq!(
            judge(S::Completed, Some(0), "4\n", Some("4")),
            Some(Verdict::Accepted)
        );
        assert_eq!(
            judge(S::Completed, Some(0), "5\n", Some("4")),
            Some(Verdict::WrongAnswer)
        );
        assert_eq!(
            judge(S::Completed, Some(0), "anything", None),
            Some(Verdict::Accepted)
        );
        // A crash is a runtime error even when the output was right.
        assert_eq!(
            judge(S::Completed, Some(1), "4\n", Some("4")),
            Some(Verdict::RuntimeError)
        );
        assert_eq!(
            judge(S::Completed, None, "", None),
            Some(Verdict::RuntimeError)
        );
        assert_eq!(judge(S::Timeout, None, "", None), Some(Verdict::TimeLimit));
        assert_eq!(
            judge(S::MemoryLimit, None, "", None),
            Some(Verdict::MemoryLimit)
        );
        assert_eq!(
            judge(S::OutputLimit, None, "", None),
            Some(Verdict::RuntimeError)
        );
        assert_eq!(judge(S::SandboxError, None, "", None), None);
    }

    fn case(v: Option<Verdict>) -> CaseResult {
        CaseResult {
            status: ExecutionStatus::Completed,
            exit_code: Some(0),
            signal: None,
            stdout: String::new(),
            stderr: String::new(),
            stdout_truncated: false,
            stderr_truncated: false,
            duration_ms: 1,
            verdict: v,
            error: None,
        }
    }

    #[test]
    fn overall_is_the_first_failure() {
        use Verdict::*;
        assert_eq!(overall(&[]), None);
        assert_eq!(
            overall(&[case(Some(Accepted)), case(Some(Accepted))]),
            Some(Accepted)
        );
        assert_eq!(
            overall(&[
                case(Some(Accepted)),
                case(Some(TimeLimit)),
                case(Some(WrongAnswer))
            ]),
            Some(TimeLimit)
        );
        assert_eq!(overall(&[case(None), case(Some(WrongAnswer))]), None);
    }
}
