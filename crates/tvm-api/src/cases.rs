//! Test cases of a request (`tests`): each case's input and limits, validated
//! against the request's own limits and the configured bounds.

use crate::types::{ExecuteRequest, TestCase};
use crate::validate::{bounded, check_args, LimitBounds, Limits, ValidationError};

/// One validated test case: its input and its own resolved limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaseCommand {
    pub stdin: Vec<u8>,
    pub args: Vec<String>,
    pub expected_stdout: Option<String>,
    pub limits: Limits,
}

/// The request's test cases, each with its limits resolved against the request's.
pub(crate) fn check_tests(
    req: &ExecuteRequest,
    base: Limits,
    bounds: &LimitBounds,
) -> Result<Vec<CaseCommand>, ValidationError> {
    if req.tests.is_empty() {
        return Ok(Vec::new());
    }
    if req.tests.len() > bounds.max_tests {
        return Err(ValidationError::TooMany {
            what: "tests",
            max: bounds.max_tests,
        });
    }
    if !req.args.is_empty() || req.stdin.is_some() {
        return Err(ValidationError::Conflict(
            "with tests, give each case its own stdin and args (not the request's)",
        ));
    }
    if !req.files_out.is_empty() {
        return Err(ValidationError::Conflict(
            "files_out cannot be combined with tests (each case has its own work dir)",
        ));
    }
    let mut total_stdin = 0usize;
    req.tests
        .iter()
        .enumerate()
        .map(|(i, t): (usize, &TestCase)| {
            let pick = |v: Option<u64>, base: u64| Some(v.unwrap_or(base));
            let limits = Limits {
                timeout_ms: bounded(
                    "tests[].limits.timeout_ms",
                    pick(t.limits.timeout_ms, base.timeout_ms),
                    bounds.timeout_ms,
                )?,
                memory_mb: bounded(
                    "tests[].limits.memory_mb",
                    pick(t.limits.memory_mb, base.memory_mb),
                    bounds.memory_mb,
                )?,
                max_output_bytes: bounded(
                    "tests[].limits.max_output_bytes",
                    pick(t.limits.max_output_bytes, base.max_output_bytes),
                    bounds.max_output_bytes,
                )?,
                max_processes: bounded(
                    "tests[].limits.max_processes",
                    pick(
                        t.limits.max_processes.map(u64::from),
                        u64::from(base.max_processes),
                    ),
                    bounds.max_processes,
                )? as u32,
                ..base
            };
            let stdin = t.stdin.clone().unwrap_or_default().into_bytes();
            total_stdin += stdin.len();
            if total_stdin > bounds.max_stdin_bytes {
                return Err(ValidationError::TooLarge {
                    what: "tests[].stdin (in total)".into(),
                    max: bounds.max_stdin_bytes,
                });
            }
            if let Some(e) = &t.expected_stdout {
                if e.len() > base.max_output_bytes as usize {
                    return Err(ValidationError::TooLarge {
                        what: format!("tests[{i}].expected_stdout"),
                        max: base.max_output_bytes as usize,
                    });
                }
            }
            check_args(&format!("tests[{i}].args"), &t.args, bounds)?;
            Ok(CaseCommand {
                stdin,
                args: t.args.clone(),
                expected_stdout: t.expected_stdout.clone(),
                limits,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::languages::LanguageTable;
    use crate::validate::tests::{check, req};
    use crate::validate::validate_in_sandbox;

    #[test]
    fn test_cases_take_the_request_limits_unless_they_set_their_own() {
        use crate::types::{CaseLimits, TestCase};
        let mut r = req("python", "print(input())");
        r.limits.timeout_ms = Some(5000);
        r.tests = vec![
            TestCase {
                stdin: Some("1".into()),
                expected_stdout: Some("1".into()),
                ..Default::default()
            },
            TestCase {
                args: vec!["x".into()],
                limits: CaseLimits {
                    timeout_ms: Some(700),
                    memory_mb: Some(512),
                    ..Default::default()
                },
                ..Default::default()
            },
        ];
        let cmd = check(r.clone()).unwrap();
        assert_eq!(cmd.tests.len(), 2);
        assert_eq!(cmd.tests[0].limits.timeout_ms, 5000);
        assert_eq!(cmd.tests[0].stdin, b"1");
        assert_eq!(cmd.tests[1].limits.timeout_ms, 700);
        assert_eq!(cmd.tests[1].args, ["x"]);
        assert_eq!(cmd.vm_memory_mb(), 512);

        let mut bad = r.clone();
        bad.tests[1].limits.timeout_ms = Some(1);
        let e = check(bad).unwrap_err();
        assert!(e.to_string().contains("tests[].limits.timeout_ms"), "{e}");
        let mut bad = r.clone();
        bad.stdin = Some("x".into());
        assert!(matches!(check(bad), Err(ValidationError::Conflict(_))));
        let mut bad = r.clone();
        bad.files_out = vec!["*.txt".into()];
        assert!(matches!(check(bad), Err(ValidationError::Conflict(_))));
        let mut bad = r.clone();
        bad.tests = vec![TestCase::default(); LimitBounds::default().max_tests + 1];
        assert!(matches!(check(bad), Err(ValidationError::TooMany { .. })));
        let bad = r.clone();
        assert!(matches!(
            validate_in_sandbox(bad, LanguageTable::builtin(), &LimitBounds::default()),
            Err(ValidationError::Conflict(_))
        ));
    }
}
