//! The language table (`guest/languages.toml`), shared by the image recipe and the API.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The table as committed; the image build and the server read the same bytes.
pub const LANGUAGES_TOML: &str = include_str!("../../../guest/languages.toml");

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Language {
    pub name: String,
    /// Version prefix the installed package must match.
    pub version: String,
    pub aliases: Vec<String>,
    /// File extensions `tvm run` maps to this language.
    pub extensions: Vec<String>,
    /// Name of the code file in the work dir.
    pub file_name: String,
    /// Compiler command line, run before `command` (placeholders as in `command`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compile: Option<Vec<String>>,
    /// Command line; `{file}` is replaced with the code file's path, `{dir}` with
    /// the work dir, `{stem}` with the code file's name without its extension.
    pub command: Vec<String>,
    /// Environment both stages get (the request's `env` overrides it).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// The code file is named after its top-level public class (Java).
    #[serde(default)]
    pub public_class_file: bool,
    /// A shell script run inside the new root filesystem at image build, after
    /// the packages are installed (e.g. a class-data archive that makes javac start
    /// faster). Part of the rootfs recipe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub setup: Option<String>,
    /// Fixed commands a snapshot template runs to warm this language's files.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warm: Vec<Vec<String>>,
    /// Debian packages the rootfs needs for this language.
    pub packages: Vec<String>,
    /// The package whose version is checked against `version`.
    pub version_package: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LanguageTable {
    #[serde(rename = "language")]
    languages: Vec<Language>,
}

#[derive(Debug, thiserror::Error)]
pub enum LanguageError {
    #[error("language table is not valid TOML")]
    Parse(#[from] toml::de::Error),
    #[error("language table: {0}")]
    Invalid(String),
}

impl LanguageTable {
    /// The table built into this binary.
    pub fn builtin() -> &'static LanguageTable {
        static TABLE: std::sync::OnceLock<LanguageTable> = std::sync::OnceLock::new();
        TABLE.get_or_init(|| {
            // The committed table is checked by a unit test, so this cannot fail at run time.
            #[allow(clippy::expect_used)]
            Self::parse(LANGUAGES_TOML).expect("guest/languages.toml is valid")
        })
    }

    /// Parses and checks a table: unique names/aliases, `{file}` in every command.
    pub fn parse(text: &str) -> Result<Self, LanguageError> {
        let table: LanguageTable = toml::from_str(text)?;
        let mut seen = std::collections::HashSet::new();
        for lang in &table.languages {
            for key in std::iter::once(&lang.name).chain(&lang.aliases) {
                if !seen.insert(key.to_ascii_lowercase()) {
                    return Err(LanguageError::Invalid(format!(
                        "name or alias {key:?} is used twice"
                    )));
                }
            }
            let stages = std::iter::once(&lang.command).chain(lang.compile.as_ref());
            if !stages.clone().flatten().any(|a| a.contains("{file}")) {
                return Err(LanguageError::Invalid(format!(
                    "{}: neither compile nor command has {{file}}",
                    lang.name
                )));
            }
            for argv in stages {
                if !argv
                    .first()
                    .is_some_and(|p| p.starts_with('/') || p.starts_with("{dir}/"))
                {
                    return Err(LanguageError::Invalid(format!(
                        "{}: program must be an absolute path",
                        lang.name
                    )));
                }
            }
            tvm_proto::check_relative_path(&lang.file_name)
                .map_err(|e| LanguageError::Invalid(format!("{}: file_name: {e}", lang.name)))?;
        }
        Ok(table)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Language> {
        self.languages.iter()
    }

    /// Finds a language by name or alias, case-insensitively.
    pub fn get(&self, name_or_alias: &str) -> Option<&Language> {
        self.languages.iter().find(|l| {
            l.name.eq_ignore_ascii_case(name_or_alias)
                || l.aliases
                    .iter()
                    .any(|a| a.eq_ignore_ascii_case(name_or_alias))
        })
    }

    /// Finds a language by file extension (without the dot).
    pub fn by_extension(&self, ext: &str) -> Option<&Language> {
        self.languages
            .iter()
            .find(|l| l.extensions.iter().any(|e| e.eq_ignore_ascii_case(ext)))
    }

    /// Every Debian package the rootfs needs, sorted and unique.
    pub fn packages(&self) -> Vec<String> {
        let mut p: Vec<String> = self
            .languages
            .iter()
            .flat_map(|l| l.packages.clone())
            .collect();
        p.sort();
        p.dedup();
        p
    }
}

impl Language {
    /// Whether a compile stage runs before the program.
    pub fn compiles(&self) -> bool {
        self.compile.is_some()
    }

    /// The code file's name for this code: `file_name`, or for a language with
    /// `public_class_file`, `<Class>.<ext>` when the code declares a top-level public
    /// class (javac insists that the two match).
    pub fn code_file_for(&self, code: &str) -> String {
        if self.public_class_file {
            if let Some(class) = public_class(code) {
                let ext = self.file_name.rsplit_once('.').map_or("", |(_, e)| e);
                return format!("{class}.{ext}");
            }
        }
        self.file_name.clone()
    }

    /// The compiler's argv for a code file at `path` (absolute, in `dir`), if the
    /// language compiles.
    pub fn compile_argv(&self, path: &str) -> Option<Vec<String>> {
        self.compile
            .as_ref()
            .map(|c| c.iter().map(|a| substitute(a, path)).collect())
    }

    /// The argv for a code file at `path` (absolute), followed by the user's arguments.
    pub fn argv(&self, path: &str, args: &[String]) -> Vec<String> {
        self.command
            .iter()
            .map(|a| substitute(a, path))
            .chain(args.iter().cloned())
            .collect()
    }
}

/// Replaces `{file}`, `{dir}` and `{stem}` for a code file at the absolute `path`.
fn substitute(arg: &str, path: &str) -> String {
    let (dir, name) = path.rsplit_once('/').unwrap_or(("", path));
    let stem = name.rsplit_once('.').map_or(name, |(s, _)| s);
    arg.replace("{file}", path)
        .replace("{dir}", if dir.is_empty() { "/" } else { dir })
        .replace("{stem}", stem)
}

/// The name of the first top-level `public` class, interface, enum or record of a
/// Java source, skipping comments, string and character literals. Only plain ASCII
/// identifiers are taken (the name becomes a file name).
pub fn public_class(code: &str) -> Option<String> {
    let b = code.as_bytes();
    let (mut i, mut depth) = (0usize, 0usize);
    let mut words: Vec<&str> = Vec::new();
    while i < b.len() {
        let c = b[i];
        if c == b'/' && b.get(i + 1) == Some(&b'/') {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if c == b'/' && b.get(i + 1) == Some(&b'*') {
            i += 2;
            while i + 1 < b.len() && !(b[i] == b'*' && b[i + 1] == b'/') {
                i += 1;
            }
            i += 2;
        } else if c == b'"' || c == b'\'' {
            // A text block ("""...""") or a plain literal; escapes skip a byte.
            let block = c == b'"' && b[i..].starts_with(b"\"\"\"");
            i += if block { 3 } else { 1 };
            while i < b.len() {
                if b[i] == b'\\' {
                    i += 2;
                } else if block && b[i..].starts_with(b"\"\"\"") {
                    i += 3;
                    break;
                } else if !block && (b[i] == c || b[i] == b'\n') {
                    i += 1;
                    break;
                } else {
                    i += 1;
                }
            }
            words.clear();
        } else if c == b'{' {
            depth += 1;
            words.clear();
            i += 1;
        } else if c == b'}' {
            depth = depth.saturating_sub(1);
            words.clear();
            i += 1;
        } else if c.is_ascii_alphabetic() || c == b'_' || c == b'$' || c >= 0x80 {
            // Non-ASCII bytes are part of identifiers, so a slice never splits a char.
            let ident = |x: u8| x.is_ascii_alphanumeric() || x == b'_' || x == b'$' || x >= 0x80;
            let start = i;
            while i < b.len() && ident(b[i]) {
                i += 1;
            }
            if depth == 0 {
                let w = &code[start..i];
                let public = words.iter().rposition(|w| *w == "public");
                if let Some((p, kind)) = public
                    .zip(words.last())
                    .filter(|(p, _)| p + 1 < words.len())
                {
                    let modifiers = ["final", "abstract", "static", "sealed", "strictfp"];
                    let mods = &words[p + 1..words.len() - 1];
                    if ["class", "interface", "enum", "record"].contains(kind)
                        && mods.iter().all(|m| modifiers.contains(m))
                        && w.is_ascii()
                        && w.len() <= 200
                    {
                        return Some(w.to_string());
                    }
                }
                words.push(w);
            }
        } else {
            if c == b';' || c == b'@' || c == b'(' {
                words.clear();
            }
            i += 1;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_table_is_valid_and_has_every_language() {
        let t = LanguageTable::parse(LANGUAGES_TOML).unwrap();
        for name in [
            "python",
            "javascript",
            "bash",
            "c",
            "cpp",
            "rust",
            "go",
            "java",
            "typescript",
            "ruby",
            "php",
            "perl",
            "lua",
        ] {
            assert!(t.get(name).is_some(), "{name}");
        }
        assert_eq!(t.get("PY").unwrap().name, "python");
        assert_eq!(t.get("node").unwrap().name, "javascript");
        assert_eq!(t.by_extension("sh").unwrap().name, "bash");
        assert!(t.get("cobol").is_none());
        assert!(t.packages().contains(&"python3".to_string()));
    }

    #[test]
    fn every_language_has_a_warm_up_and_compiled_ones_build_into_the_work_dir() {
        let t = LanguageTable::builtin();
        for l in t.iter() {
            assert!(!l.warm.is_empty(), "{}", l.name);
            if let Some(c) = l.compile_argv("/work/main.x") {
                assert!(c.iter().any(|a| a.contains("/work")), "{}: {c:?}", l.name);
            }
        }
        for (alias, name) in [
            ("c++", "cpp"),
            ("rs", "rust"),
            ("golang", "go"),
            ("ts", "typescript"),
            ("rb", "ruby"),
        ] {
            assert_eq!(t.get(alias).map(|l| l.name.as_str()), Some(name), "{alias}");
        }
        assert!(t.get("c").unwrap().compiles());
        assert!(!t.get("python").unwrap().compiles());
    }

    #[test]
    fn placeholders_are_substituted_in_both_stages() {
        let t = LanguageTable::builtin();
        let java = t.get("java").unwrap();
        let compile = java.compile_argv("/work/Hello.java").unwrap();
        assert_eq!(compile.last().unwrap(), "/work/Hello.java");
        assert!(compile.contains(&"/work".to_string()));
        let run = java.argv("/work/Hello.java", &["x".into()]);
        assert_eq!(&run[run.len() - 2..], ["Hello", "x"]);
        let c = t.get("c").unwrap();
        assert_eq!(c.argv("/work/main.c", &[]), ["/work/main"]);
        let ts = t.get("ts").unwrap();
        assert_eq!(
            ts.argv("/work/.tvm-exec-main.ts", &[]),
            ["/usr/bin/node", "/work/.tvm-exec-main.js"]
        );
    }

    #[test]
    fn java_file_is_named_after_its_public_class() {
        let java = LanguageTable::builtin().get("java").unwrap();
        assert_eq!(java.code_file_for("class Main { }"), "Main.java");
        assert_eq!(
            java.code_file_for("import java.util.*;\npublic final class Solver { public static void main(String[] a) {} }"),
            "Solver.java"
        );
        // Comments, strings and nested classes are not the file's public class.
        let tricky = r#"
// public class Comment {}
/* public class Block {} */
class Helper { public class Inner {} String s = "public class Str {}"; }
@Deprecated
public class Real { char q = '"'; }
"#;
        assert_eq!(public_class(tricky).as_deref(), Some("Real"));
        assert_eq!(
            public_class("public interface Shape {}").as_deref(),
            Some("Shape")
        );
        assert_eq!(public_class("public static void main"), None);
        assert_eq!(public_class("class A {}"), None);
        // Only ASCII identifiers: a file name never gets anything else.
        assert_eq!(public_class("public class Ünï {}"), None);
        // Not Java: the table's file name stays.
        let py = LanguageTable::builtin().get("python").unwrap();
        assert_eq!(py.code_file_for("public class X {}"), "main.py");
    }

    #[test]
    fn argv_substitutes_file_and_appends_args() {
        let t = LanguageTable::builtin();
        let py = t.get("python").unwrap();
        assert_eq!(
            py.argv("/work/main.py", &["--flag".into()]),
            vec!["/usr/bin/python3", "/work/main.py", "--flag"]
        );
    }

    #[test]
    fn rejects_duplicate_names_and_missing_placeholder() {
        let dup = r#"
[[language]]
name = "a"
version = "1"
aliases = ["b"]
extensions = []
file_name = "m"
command = ["/x", "{file}"]
packages = []
version_package = "x"
[[language]]
name = "b"
version = "1"
aliases = []
extensions = []
file_name = "m"
command = ["/x", "{file}"]
packages = []
version_package = "x"
"#;
        assert!(matches!(
            LanguageTable::parse(dup),
            Err(LanguageError::Invalid(_))
        ));
        let nofile = dup.replacen("[\"/x\", \"{file}\"]", "[\"/x\"]", 1);
        assert!(matches!(
            LanguageTable::parse(&nofile),
            Err(LanguageError::Invalid(_))
        ));
        let unknown = dup.replacen("version = \"1\"", "version = \"1\"\ncolour = 1", 1);
        assert!(matches!(
            LanguageTable::parse(&unknown),
            Err(LanguageError::Parse(_))
        ));
    }
}
