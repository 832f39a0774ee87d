//! `tvm languages`: the server's languages (`GET /v1/languages`) as an aligned table.

use std::process::ExitCode;

use tvm_api::LanguageInfo;

use crate::{client, exec};

pub fn run(server: &str, json: bool) -> anyhow::Result<ExitCode> {
    let (langs, raw) = match client::languages_raw(server)? {
        Ok(answer) => answer,
        Err((status, err)) => return Ok(exec::refused(status, &err)),
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&raw)?);
    } else {
        print!("{}", table(&langs));
    }
    Ok(ExitCode::SUCCESS)
}

/// One line per language under a header: name, version, whether it compiles,
/// aliases, extensions; columns padded to their widest cell.
pub fn table(langs: &[LanguageInfo]) -> String {
    let header = ["NAME", "VERSION", "COMPILED", "ALIASES", "EXTENSIONS"].map(String::from);
    let rows: Vec<[String; 5]> = std::iter::once(header)
        .chain(langs.iter().map(|l| {
            [
                l.name.clone(),
                l.version.clone(),
                if l.compiled { "yes" } else { "no" }.to_string(),
                l.aliases.join(","),
                l.extensions
                    .iter()
                    .map(|e| format!(".{e}"))
                    .collect::<Vec<_>>()
                    .join(","),
            ]
        }))
        .collect();
    let mut widths = [0usize; 5];
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in &rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            line.push_str(&format!("{cell:<w$}", w = widths[i]));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(
        name: &str,
        version: &str,
        compiled: bool,
        aliases: &[&str],
        ext: &[&str],
    ) -> LanguageInfo {
        LanguageInfo {
            name: name.into(),
            version: version.into(),
            file_name: String::new(),
            aliases: aliases.iter().map(|s| s.to_string()).collect(),
            extensions: ext.iter().map(|s| s.to_string()).collect(),
            compiled,
        }
    }

    #[test]
    fn columns_line_up() {
        let t = table(&[
            info("python", "3.11", false, &["py", "python3"], &["py"]),
            info("c", "12", true, &["gcc"], &["c"]),
            info("lua", "5.4", false, &[], &["lua"]),
        ]);
        assert_eq!(
            t,
            "NAME    VERSION  COMPILED  ALIASES     EXTENSIONS\n\
             python  3.11     no        py,python3  .py\n\
             c       12       yes       gcc         .c\n\
             lua     5.4      no                    .lua\n"
        );
    }
}
