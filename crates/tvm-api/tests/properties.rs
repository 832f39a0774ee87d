//! Properties of request validation against the builtin language table and the default
//! bounds: what is in range is accepted as given, each thing out of range is refused
//! with its documented code, paths cannot leave the work dir, and no body makes the
//! parser panic.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use tvm_api::{
    parse_execute, validate, ExecuteCommand, ExecuteRequest, FileEncoding, InputFile,
    LanguageTable, LimitBounds, RequestLimits, ValidationError,
};

fn table() -> &'static LanguageTable {
    LanguageTable::builtin()
}

fn check(req: ExecuteRequest) -> Result<ExecuteCommand, ValidationError> {
    validate(req, table(), &LimitBounds::default())
}

/// A language's name or one of its aliases, in any ASCII case.
fn language() -> impl Strategy<Value = String> {
    let names: Vec<String> = table()
        .iter()
        .flat_map(|l| std::iter::once(l.name.clone()).chain(l.aliases.clone()))
        .collect();
    (proptest::sample::select(names), any::<u64>()).prop_map(|(n, mask)| {
        n.chars()
            .enumerate()
            .map(|(i, c)| {
                if mask >> (i % 64) & 1 == 1 {
                    c.to_ascii_uppercase()
                } else {
                    c
                }
            })
            .collect()
    })
}

/// `Some(v)` with `v` in `[min, max]` of the bound, or `None` (the default).
fn in_range(b: tvm_api::Bound) -> impl Strategy<Value = Option<u64>> {
    proptest::option::of(b.min..=b.max)
}

fn limits_in_range() -> impl Strategy<Value = RequestLimits> {
    let d = LimitBounds::default();
    (
        in_range(d.timeout_ms),
        in_range(d.memory_mb),
        in_range(d.vcpus),
        in_range(d.max_output_bytes),
        in_range(d.max_processes),
    )
        .prop_map(|(t, m, v, o, p)| RequestLimits {
            timeout_ms: t,
            memory_mb: m,
            vcpus: v.map(|v| v as u32),
            max_output_bytes: o,
            max_processes: p.map(|p| p as u32),
            ..Default::default()
        })
}

/// A path that stays inside the work dir: 1-4 components, none of them `.` or `..`.
fn safe_path() -> impl Strategy<Value = String> {
    vec(
        "[A-Za-z0-9_][A-Za-z0-9_.-]{0,8}|\\.[A-Za-z0-9_]{1,4}|\\.\\.[a-z]",
        1..5,
    )
    .prop_map(|c| c.join("/"))
}

/// Contents as the client sends them: text, or bytes in base64.
fn file_content() -> impl Strategy<Value = (String, FileEncoding)> {
    prop_oneof![
        "\\PC{0,32}".prop_map(|s| (s, FileEncoding::Utf8)),
        vec(any::<u8>(), 0..48).prop_map(|b| (STANDARD.encode(b), FileEncoding::Base64)),
    ]
}

fn no_nul(max: usize) -> impl Strategy<Value = String> {
    proptest::string::string_regex(&format!("[^\\x00]{{0,{max}}}")).expect("a valid regex")
}

/// A request that is within every bound; its file paths are distinct and none is the
/// code file's name.
fn valid_request() -> impl Strategy<Value = ExecuteRequest> {
    (
        language(),
        any::<String>(),
        proptest::option::of(any::<String>()),
        vec(no_nul(24), 0..8),
        btree_map("[A-Za-z_][A-Za-z0-9_]{0,15}", no_nul(24), 0..8),
        btree_map(safe_path(), file_content(), 0..6),
        limits_in_range(),
    )
        .prop_map(|(language, code, stdin, args, env, files, limits)| {
            let code_file = table()
                .get(&language)
                .map(|l| l.file_name.clone())
                .unwrap_or_default();
            // A file may not sit where another needs a directory (`a` and `a/b`).
            let names: std::collections::HashSet<String> =
                files.keys().cloned().chain([code_file.clone()]).collect();
            let files = files
                .into_iter()
                .filter(|(path, _)| *path != code_file)
                .filter(|(path, _)| {
                    !path
                        .match_indices('/')
                        .any(|(i, _)| names.contains(&path[..i]))
                })
                .map(|(path, (content, encoding))| InputFile {
                    path,
                    content,
                    encoding,
                })
                .collect();
            ExecuteRequest {
                language,
                code,
                stdin,
                args,
                env,
                files,
                limits,
                files_out: Vec::new(),
                tests: Vec::new(),
                network: None,
            }
        })
}

/// A path that names something outside the work dir, or climbs with `..`.
fn escaping_path() -> impl Strategy<Value = String> {
    prop_oneof![
        ("/+", safe_path()).prop_map(|(slashes, p)| slashes + &p),
        Just("/".to_string()),
        (vec(safe_path(), 0..3), vec(safe_path(), 0..3)).prop_map(|(before, after)| before
            .into_iter()
            .chain(std::iter::once("..".to_string()))
            .chain(after)
            .collect::<Vec<_>>()
            .join("/")),
        ("(\\.\\./){1,4}", "[a-z/]{0,20}").prop_map(|(up, rest)| up + &rest),
    ]
}

/// Arbitrary JSON, nested a few levels.
fn json() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::Value;
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        any::<String>().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..6).prop_map(Value::Array),
            btree_map(
                prop_oneof![
                    // Mostly the request's own keys, so the shape is exercised too.
                    proptest::sample::select(vec![
                        "language",
                        "code",
                        "stdin",
                        "args",
                        "env",
                        "files",
                        "limits",
                        "path",
                        "content",
                        "encoding",
                        "timeout_ms",
                        "memory_mb",
                        "vcpus",
                        "max_output_bytes",
                        "max_processes",
                    ])
                    .prop_map(str::to_string),
                    any::<String>(),
                ],
                inner,
                0..6
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// The documented error codes (`ValidationError::code`).
const CODES: [&str; 7] = [
    "invalid_json",
    "unknown_language",
    "limit_out_of_range",
    "input_too_large",
    "invalid_base64",
    "invalid_path",
    "invalid_argument",
];

proptest! {
    #[test]
    fn requests_within_bounds_are_accepted_as_given(req in valid_request()) {
        let cmd = check(req.clone())
            .map_err(|e| TestCaseError::fail(format!("refused: {e}")))?;
        let d = LimitBounds::default();
        let l = req.limits;
        prop_assert!(cmd.language.name.eq_ignore_ascii_case(&req.language)
            || cmd.language.aliases.iter().any(|a| a.eq_ignore_ascii_case(&req.language)));
        prop_assert_eq!(cmd.limits.timeout_ms, l.timeout_ms.unwrap_or(d.timeout_ms.default));
        prop_assert_eq!(cmd.limits.memory_mb, l.memory_mb.unwrap_or(d.memory_mb.default));
        prop_assert_eq!(u64::from(cmd.limits.vcpus), l.vcpus.map_or(d.vcpus.default, u64::from));
        prop_assert_eq!(
            cmd.limits.max_output_bytes,
            l.max_output_bytes.unwrap_or(d.max_output_bytes.default)
        );
        prop_assert_eq!(
            u64::from(cmd.limits.max_processes),
            l.max_processes.map_or(d.max_processes.default, u64::from)
        );
        prop_assert_eq!(cmd.code, req.code.into_bytes());
        prop_assert_eq!(cmd.stdin, req.stdin.unwrap_or_default().into_bytes());
        prop_assert_eq!(cmd.args, req.args);
        prop_assert_eq!(cmd.env, req.env);
        prop_assert_eq!(cmd.files.len(), req.files.len());
        for (got, sent) in cmd.files.iter().zip(&req.files) {
            prop_assert_eq!(&got.path, &sent.path);
            let want = match sent.encoding {
                FileEncoding::Utf8 => sent.content.clone().into_bytes(),
                FileEncoding::Base64 => STANDARD.decode(&sent.content)
                    .map_err(|e| TestCaseError::fail(e.to_string()))?,
            };
            prop_assert_eq!(&got.content, &want);
        }
    }

    #[test]
    fn each_limit_out_of_range_is_refused_with_limit_out_of_range(
        req in valid_request(),
        which in 0usize..5,
        above in any::<bool>(),
        pick in any::<u64>(),
    ) {
        let d = LimitBounds::default();
        let (name, bound, cap) = [
            ("timeout_ms", d.timeout_ms, u64::MAX),
            ("memory_mb", d.memory_mb, u64::MAX),
            ("vcpus", d.vcpus, u64::from(u32::MAX)),
            ("max_output_bytes", d.max_output_bytes, u64::MAX),
            ("max_processes", d.max_processes, u64::from(u32::MAX)),
        ][which];
        // A value below min (when min > 0) or above max, up to what the field can hold.
        let bad = if above || bound.min == 0 {
            bound.max + 1 + pick % (cap - bound.max)
        } else {
            pick % bound.min
        };
        let mut req = req;
        let l = &mut req.limits;
        match which {
            0 => l.timeout_ms = Some(bad),
            1 => l.memory_mb = Some(bad),
            2 => l.vcpus = Some(bad as u32),
            3 => l.max_output_bytes = Some(bad),
            _ => l.max_processes = Some(bad as u32),
        }
        let err = check(req).err();
        prop_assert_eq!(err.as_ref().map(ValidationError::code), Some("limit_out_of_range"));
        prop_assert_eq!(
            err,
            Some(ValidationError::LimitOutOfRange { name, min: bound.min, max: bound.max, got: bad })
        );
    }

    #[test]
    fn exceeding_any_size_or_count_bound_is_refused_with_input_too_large(
        req in valid_request(),
        which in 0usize..7,
    ) {
        // Lower one bound to just below what this request uses.
        let uses = [
            req.code.len(),
            req.stdin.as_ref().map_or(0, String::len),
            req.args.len(),
            req.env.len(),
            req.files.len(),
            req.args.iter().chain(req.env.values()).map(String::len).max().unwrap_or(0),
            req.files.iter().map(|f| match f.encoding {
                FileEncoding::Utf8 => f.content.len(),
                FileEncoding::Base64 => STANDARD.decode(&f.content).map_or(0, |b| b.len()),
            }).sum(),
        ];
        prop_assume!(uses[which] > 0);
        let mut b = LimitBounds::default();
        let limit = uses[which] - 1;
        *[
            &mut b.max_code_bytes,
            &mut b.max_stdin_bytes,
            &mut b.max_args,
            &mut b.max_env,
            &mut b.max_files,
            &mut b.max_arg_bytes,
            &mut b.max_file_bytes_total,
        ][which] = limit;
        let err = validate(req, table(), &b).err();
        prop_assert_eq!(err.as_ref().map(ValidationError::code), Some("input_too_large"));
    }

    #[test]
    fn absolute_and_escaping_paths_are_refused(
        req in valid_request(),
        path in escaping_path(),
        at in any::<prop::sample::Index>(),
        (content, encoding) in file_content(),
    ) {
        let mut req = req;
        let i = at.index(req.files.len() + 1);
        req.files.insert(i, InputFile { path: path.clone(), content, encoding });
        let err = check(req).err();
        prop_assert_eq!(err.as_ref().map(ValidationError::code), Some("invalid_path"), "{:?}", path);
        let named = matches!(&err, Some(ValidationError::InvalidPath { index, .. }) if *index == i);
        prop_assert!(named, "error names file {}: {:?}", i, err);
    }

    #[test]
    fn safe_relative_paths_are_accepted(
        path in safe_path(),
        lang in language(),
        (content, encoding) in file_content(),
    ) {
        let code_file = table().get(&lang).map(|l| l.file_name.clone());
        prop_assume!(Some(&path) != code_file.as_ref());
        let req = ExecuteRequest {
            language: lang,
            files: vec![InputFile { path: path.clone(), content, encoding }],
            ..Default::default()
        };
        let cmd = check(req).map_err(|e| TestCaseError::fail(format!("{path:?}: {e}")))?;
        prop_assert_eq!(&cmd.files[0].path, &path);
    }

    #[test]
    fn parse_execute_never_panics_on_arbitrary_json(value in json()) {
        let body = serde_json::to_vec(&value)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        parse_and_validate(&body)?;
    }

    #[test]
    fn parse_execute_never_panics_on_arbitrary_text(body in prop_oneof![
        vec(any::<u8>(), 0..256),
        any::<String>().prop_map(String::into_bytes),
        "\\{\"language\":\"[a-z]{0,6}\",\"code\":[ -~]{0,40}".prop_map(String::into_bytes),
    ]) {
        parse_and_validate(&body)?;
    }

    #[test]
    fn valid_requests_survive_their_json_encoding(req in valid_request()) {
        let body = serde_json::to_vec(&req).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(parse_execute(&body).ok(), Some(req));
    }
}

/// Parses, and validates what parses; every refusal carries a documented code, and a
/// request that parses is equal to itself after a JSON round trip.
fn parse_and_validate(body: &[u8]) -> Result<(), TestCaseError> {
    match parse_execute(body) {
        Err(e) => prop_assert_eq!(e.code(), "invalid_json"),
        Ok(req) => {
            let again = serde_json::to_vec(&req).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let reparsed = parse_execute(&again).ok();
            prop_assert_eq!(reparsed.as_ref(), Some(&req));
            if let Err(e) = check(req) {
                prop_assert!(CODES.contains(&e.code()), "{e}");
                let _ = e.to_string();
            }
        }
    }
    Ok(())
}

#[test]
fn every_error_maps_to_one_of_the_documented_codes() {
    let every_variant = [
        ValidationError::InvalidJson(String::new()),
        ValidationError::UnknownLanguage(String::new()),
        ValidationError::LimitOutOfRange {
            name: "vcpus",
            min: 1,
            max: 4,
            got: 0,
        },
        ValidationError::TooLarge {
            what: "code".into(),
            max: 0,
        },
        ValidationError::TooMany {
            what: "args",
            max: 0,
        },
        ValidationError::InvalidBase64 { index: 0 },
        ValidationError::InvalidPath {
            index: 0,
            path: String::new(),
            reason: String::new(),
        },
        ValidationError::InvalidEnvName(String::new()),
        ValidationError::NulByte(String::new()),
    ];
    let used: std::collections::BTreeSet<&str> =
        every_variant.iter().map(ValidationError::code).collect();
    assert_eq!(used, CODES.into_iter().collect());
}
