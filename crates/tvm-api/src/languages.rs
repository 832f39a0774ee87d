//! The language table (`guest/languages.toml`), shared by the image recipe and the API.

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
    /// Command line; `{file}` is replaced with the code file's path.
    pub command: Vec<String>,
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
            if !lang.command.iter().any(|a| a.contains("{file}")) {
                return Err(LanguageError::Invalid(format!(
                    "{}: command lacks {{file}}",
                    lang.name
                )));
            }
            if !lang.command.first().is_some_and(|p| p.starts_with('/')) {
                return Err(LanguageError::Invalid(format!(
                    "{}: program must be an absolute path",
                    lang.name
                )));
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
    /// The argv for a code file at `path`, followed by the user's arguments.
    pub fn argv(&self, path: &str, args: &[String]) -> Vec<String> {
        self.command
            .iter()
            .map(|a| a.replace("{file}", path))
            .chain(args.iter().cloned())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_table_is_valid_and_has_the_three_languages() {
        let t = LanguageTable::parse(LANGUAGES_TOML).unwrap();
        for name in ["python", "javascript", "bash"] {
            assert!(t.get(name).is_some(), "{name}");
        }
        assert_eq!(t.get("PY").unwrap().name, "python");
        assert_eq!(t.get("node").unwrap().name, "javascript");
        assert_eq!(t.by_extension("sh").unwrap().name, "bash");
        assert!(t.get("cobol").is_none());
        assert!(t.packages().contains(&"python3".to_string()));
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
