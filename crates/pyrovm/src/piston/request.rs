//! Piston's request, translated into the `ExecuteRequest` every surface validates:
//! the runtime asked for, its files, stdin and limits, in Piston's words when refused.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tvm_api::{
    Bound, ExecuteRequest, FileEncoding, InputFile, LanguageTable, LimitBounds, RequestLimits,
};

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize, utoipa::ToSchema)]
pub struct PistonFile {
    #[serde(default)]
    pub name: Option<String>,
    pub content: String,
    #[serde(default)]
    pub encoding: Option<String>,
}

/// Limits are JSON numbers, as in Piston (`1e4` and `2500.5` included).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, utoipa::ToSchema)]
pub struct PistonRequest {
    pub language: String,
    #[serde(default)]
    pub version: Option<String>,
    pub files: Vec<PistonFile>,
    #[serde(default)]
    pub stdin: Option<String>,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub run_timeout: Option<f64>,
    #[serde(default)]
    pub run_memory_limit: Option<f64>,
    #[serde(default)]
    pub compile_timeout: Option<f64>,
    #[serde(default)]
    pub compile_memory_limit: Option<f64>,
    #[serde(default)]
    pub compile_cpu_time: Option<f64>,
    #[serde(default)]
    pub run_cpu_time: Option<f64>,
}

/// Whether a requested Piston version selects our version of a language: `*`/`x`,
/// or the dotted components both have are equal (`3`, `3.11`, `3.11.0` and `3.11.2`
/// select `3.11`; `3.1` does not). `x` or `*` in a component matches any.
pub fn version_matches(requested: Option<&str>, ours: &str) -> bool {
    match requested.map(str::trim) {
        None | Some("") | Some("*") | Some("x") | Some("X") => true,
        Some(v) => v
            .trim_start_matches(['=', '^', '~', 'v'])
            .split('.')
            .zip(ours.split('.'))
            .all(|(a, b)| a == b || matches!(a, "x" | "X" | "*")),
    }
}

/// A timeout in ms as Piston takes it: absent, `null` or `0` is the default.
fn timeout_limit(name: &str, value: Option<f64>, b: Bound) -> Result<Option<u64>, String> {
    match value.filter(|v| *v != 0.0) {
        None => Ok(None),
        Some(v) if v.is_nan() || v < 0.0 => Err(format!("{name} must be non-negative")),
        Some(v) if v > b.max as f64 => Err(format!(
            "{name} cannot exceed the configured limit of {}",
            b.max
        )),
        Some(v) if v < b.min as f64 => Err(format!("{name} must be at least {}", b.min)),
        Some(v) => Ok(Some(v.ceil() as u64)),
    }
}

/// A memory limit in bytes as Piston takes it: absent, `null`, `0` or negative (`-1`,
/// "no limit") is the default; otherwise rounded up to MiB.
fn memory_limit(name: &str, value: Option<f64>, b: Bound) -> Result<Option<u64>, String> {
    let Some(v) = value.filter(|v| *v > 0.0) else {
        return Ok(None);
    };
    let mb = (v / (1u64 << 20) as f64).ceil();
    if mb > b.max as f64 {
        return Err(format!(
            "{name} cannot exceed the configured limit of {}",
            b.max << 20
        ));
    }
    if mb < b.min as f64 {
        return Err(format!("{name} must be at least {}", b.min << 20));
    }
    Ok(Some(mb as u64))
}

/// The program's stdin as Piston gives it: with a trailing newline added when it
/// has none (so an absent or empty stdin is one newline), as `job.js` does.
fn piston_stdin(stdin: Option<String>) -> String {
    let mut s = stdin.unwrap_or_default();
    if !s.ends_with('\n') {
        s.push('\n');
    }
    s
}

/// Pure translation into the one request type every surface validates.
pub fn to_request(
    p: PistonRequest,
    table: &LanguageTable,
    bounds: &LimitBounds,
) -> Result<ExecuteRequest, String> {
    let lang = table
        .get(&p.language)
        .filter(|l| version_matches(p.version.as_deref(), &l.version))
        .ok_or_else(|| {
            format!(
                "{}-{} runtime is unknown",
                p.language,
                p.version.as_deref().unwrap_or("*")
            )
        })?;
    let mut files = p.files.into_iter();
    let main = files.next().ok_or("files must contain at least one file")?;
    let decode = |f: &PistonFile| -> Result<(String, FileEncoding), String> {
        match f.encoding.as_deref().unwrap_or("utf8") {
            "utf8" | "utf-8" => Ok((f.content.clone(), FileEncoding::Utf8)),
            "base64" => Ok((f.content.clone(), FileEncoding::Base64)),
            "hex" => {
                let bytes =
                    hex::decode(f.content.trim()).map_err(|_| "file content is not valid hex")?;
                use base64::Engine as _;
                Ok((
                    base64::engine::general_purpose::STANDARD.encode(bytes),
                    FileEncoding::Base64,
                ))
            }
            other => Err(format!(
                "file encoding {other:?} is not one of utf8, base64, hex"
            )),
        }
    };
    let (main_content, main_enc) = decode(&main)?;
    let code = match main_enc {
        FileEncoding::Utf8 => main_content,
        FileEncoding::Base64 => {
            use base64::Engine as _;
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(main_content.as_bytes())
                .map_err(|_| "file content is not valid base64".to_string())?;
            String::from_utf8(bytes)
                .map_err(|_| "the program file is not UTF-8 text".to_string())?
        }
    };
    let mut extra = Vec::new();
    for (i, f) in files.enumerate() {
        let (content, encoding) = decode(&f)?;
        let path = f.name.clone().unwrap_or_else(|| format!("file{}", i + 1));
        extra.push(InputFile {
            path,
            content,
            encoding,
        });
    }
    let limits = RequestLimits {
        timeout_ms: timeout_limit("run_timeout", p.run_timeout, bounds.timeout_ms)?,
        memory_mb: memory_limit("run_memory_limit", p.run_memory_limit, bounds.memory_mb)?,
        compile_timeout_ms: timeout_limit(
            "compile_timeout",
            p.compile_timeout,
            bounds.compile_timeout_ms,
        )?,
        compile_memory_mb: memory_limit(
            "compile_memory_limit",
            p.compile_memory_limit,
            bounds.compile_memory_mb,
        )?,
        ..RequestLimits::default()
    };
    Ok(ExecuteRequest {
        language: lang.name.clone(),
        code,
        stdin: Some(piston_stdin(p.stdin)),
        args: p.args,
        env: BTreeMap::new(),
        files: extra,
        limits,
        files_out: Vec::new(),
        tests: Vec::new(),
        network: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(lang: &str, version: Option<&str>, files: Vec<PistonFile>) -> PistonRequest {
        PistonRequest {
            language: lang.into(),
            version: version.map(Into::into),
            files,
            ..Default::default()
        }
    }

    fn file(content: &str, encoding: Option<&str>) -> PistonFile {
        PistonFile {
            name: None,
            content: content.into(),
            encoding: encoding.map(Into::into),
        }
    }

    fn translate(p: PistonRequest) -> Result<ExecuteRequest, String> {
        to_request(p, LanguageTable::builtin(), &LimitBounds::default())
    }

    #[test]
    fn versions() {
        assert!(version_matches(Some("*"), "3.11"));
        assert!(version_matches(None, "3.11"));
        assert!(version_matches(Some("3.11.2"), "3.11"));
        assert!(version_matches(Some("3.11.0"), "3.11"));
        assert!(version_matches(Some("3"), "3.11"));
        assert!(version_matches(Some("3.x"), "3.11"));
        assert!(version_matches(Some("12.0.0"), "12"));
        assert!(!version_matches(Some("3.10"), "3.11"));
        assert!(!version_matches(Some("3.1"), "3.11"));
        assert!(!version_matches(Some("2.7"), "3.11"));
    }

    #[test]
    fn translation() {
        let mut p = req(
            "py",
            Some("3.11"),
            vec![
                file("print(1)", None),
                PistonFile {
                    name: Some("d.txt".into()),
                    content: "6869".into(),
                    encoding: Some("hex".into()),
                },
            ],
        );
        p.run_timeout = Some(2500.0);
        p.run_memory_limit = Some(100_000_000.0);
        p.compile_timeout = Some(10_000.0);
        p.compile_memory_limit = Some(200_000_000.0);
        let r = translate(p).unwrap();
        assert_eq!(r.language, "python");
        assert_eq!(r.code, "print(1)");
        assert_eq!(r.stdin.as_deref(), Some("\n"));
        assert_eq!(r.files[0].path, "d.txt");
        assert_eq!(r.files[0].content, "aGk=");
        assert_eq!(r.limits.timeout_ms, Some(2500));
        assert_eq!(r.limits.memory_mb, Some(96));
        assert_eq!(r.limits.compile_timeout_ms, Some(10_000));
        assert_eq!(r.limits.compile_memory_mb, Some(191));
        // -1 ("no limit"), 0 and absent take the defaults, as in Piston.
        let defaults = PistonRequest {
            run_memory_limit: Some(-1.0),
            compile_memory_limit: Some(-1.0),
            run_timeout: Some(0.0),
            compile_timeout: None,
            ..req("c++", Some("*"), vec![file("int main(){}", None)])
        };
        let r = translate(defaults).unwrap();
        assert_eq!(r.language, "cpp");
        assert_eq!(r.limits, RequestLimits::default());
    }

    #[test]
    fn limits_out_of_range() {
        let b = LimitBounds::default();
        let with = |f: &dyn Fn(&mut PistonRequest)| {
            let mut p = req("c", None, vec![file("x", None)]);
            f(&mut p);
            translate(p).unwrap_err()
        };
        assert_eq!(
            with(&|p| p.compile_timeout = Some((b.compile_timeout_ms.max + 1) as f64)),
            format!(
                "compile_timeout cannot exceed the configured limit of {}",
                b.compile_timeout_ms.max
            )
        );
        assert_eq!(
            with(&|p| p.compile_timeout = Some(-5.0)),
            "compile_timeout must be non-negative"
        );
        assert!(with(&|p| p.compile_timeout = Some(1.0)).contains("at least"));
        assert_eq!(
            with(&|p| p.compile_memory_limit = Some(((b.compile_memory_mb.max + 1) << 20) as f64)),
            format!(
                "compile_memory_limit cannot exceed the configured limit of {}",
                b.compile_memory_mb.max << 20
            )
        );
        assert!(with(&|p| p.run_memory_limit = Some(1000.0)).starts_with("run_memory_limit"));
        assert!(with(&|p| p.run_timeout = Some(1e9)).starts_with("run_timeout cannot exceed"));
    }

    #[test]
    fn refusals() {
        assert_eq!(
            translate(req("cobol", Some("1"), vec![file("x", None)])).unwrap_err(),
            "cobol-1 runtime is unknown"
        );
        assert!(translate(req("python", Some("2.7"), vec![file("x", None)]))
            .unwrap_err()
            .contains("runtime is unknown"));
        assert!(translate(req("python", None, vec![])).is_err());
        assert!(
            translate(req("python", None, vec![file("x", Some("rot13"))]))
                .unwrap_err()
                .contains("encoding")
        );
        assert!(translate(req("python", None, vec![file("zz", Some("hex"))])).is_err());
        assert!(translate(req("python", None, vec![file("!!", Some("base64"))])).is_err());
    }
}
