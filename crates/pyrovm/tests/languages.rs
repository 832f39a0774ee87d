//! Every language of the table, in real microVMs: stdin and args reach the program,
//! its output and a runtime error's exit code come back, and for compiled languages
//! a compile error and a compile past `compile_timeout_ms` are reported as such,
//! with nothing left behind.

mod common;

use common::TestServer;
use serde_json::{json, Value};

/// Each program reads one line: `fail` exits 3, anything else prints
/// `<line> <argc> <args joined by ,>`.
fn echo_program(lang: &str) -> &'static str {
    match lang {
        "python" => {
            "import sys\nline = sys.stdin.readline().strip()\nif line == 'fail':\n    sys.exit(3)\nprint(line, len(sys.argv) - 1, ','.join(sys.argv[1:]))\n"
        }
        "javascript" => {
            "const line = require('fs').readFileSync(0, 'utf8').split('\\n')[0].trim();\nif (line === 'fail') process.exit(3);\nconst a = process.argv.slice(2);\nconsole.log(line, a.length, a.join(','));\n"
        }
        "bash" => "read -r line\n[ \"$line\" = fail ] && exit 3\nIFS=,; echo \"$line $# $*\"\n",
        "c" => {
            r#"#include <stdio.h>
#include <string.h>
int main(int argc, char **argv) {
  char line[256] = "";
  if (!fgets(line, sizeof line, stdin)) line[0] = 0;
  line[strcspn(line, "\r\n")] = 0;
  if (strcmp(line, "fail") == 0) return 3;
  printf("%s %d ", line, argc - 1);
  for (int i = 1; i < argc; i++) printf(i > 1 ? ",%s" : "%s", argv[i]);
  printf("\n");
  return 0;
}
"#
        }
        "cpp" => {
            r#"#include <iostream>
#include <string>
int main(int argc, char **argv) {
  std::string line;
  std::getline(std::cin, line);
  if (line == "fail") return 3;
  std::cout << line << " " << argc - 1 << " ";
  for (int i = 1; i < argc; i++) std::cout << (i > 1 ? "," : "") << argv[i];
  std::cout << std::endl;
}
"#
        }
        "rust" => {
            r#"use std::io::BufRead;
fn main() {
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line).unwrap();
    let line = line.trim();
    if line == "fail" {
        std::process::exit(3);
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    println!("{} {} {}", line, args.len(), args.join(","));
}
"#
        }
        "go" => {
            r#"package main

import (
	"bufio"
	"fmt"
	"os"
	"strings"
)

func main() {
	line, _ := bufio.NewReader(os.Stdin).ReadString('\n')
	line = strings.TrimSpace(line)
	if line == "fail" {
		os.Exit(3)
	}
	a := os.Args[1:]
	fmt.Println(line, len(a), strings.Join(a, ","))
}
"#
        }
        // Not `Main`: the file must be named after the public class.
        "java" => {
            r#"import java.io.*;

public class Echo {
    public static void main(String[] args) throws IOException {
        String line = new BufferedReader(new InputStreamReader(System.in)).readLine();
        if (line == null) line = "";
        line = line.trim();
        if (line.equals("fail")) System.exit(3);
        System.out.println(line + " " + args.length + " " + String.join(",", args));
    }
}
"#
        }
        "typescript" => {
            r#"import * as fs from "fs";
const line: string = fs.readFileSync(0, "utf8").split("\n")[0].trim();
if (line === "fail") process.exit(3);
const a: string[] = process.argv.slice(2);
console.log(line, a.length, a.join(","));
"#
        }
        "ruby" => {
            "line = ($stdin.gets || '').strip\nexit 3 if line == 'fail'\nputs \"#{line} #{ARGV.length} #{ARGV.join(',')}\"\n"
        }
        "php" => {
            "<?php\n$line = trim(fgets(STDIN) ?: '');\nif ($line === 'fail') exit(3);\n$a = array_slice($argv, 1);\necho $line, ' ', count($a), ' ', implode(',', $a), \"\\n\";\n"
        }
        "perl" => {
            "my $line = <STDIN> // '';\n$line =~ s/\\s+$//;\nexit 3 if $line eq 'fail';\nprint \"$line \", scalar(@ARGV), ' ', join(',', @ARGV), \"\\n\";\n"
        }
        "lua" => {
            "local line = (io.read('l') or ''):gsub('%s+$', '')\nif line == 'fail' then os.exit(3) end\nprint(line .. ' ' .. #arg .. ' ' .. table.concat(arg, ','))\n"
        }
        other => panic!("no program for {other}"),
    }
}

/// A program the compiler rejects, and a word its message must contain.
fn compile_error(lang: &str) -> (&'static str, &'static str) {
    match lang {
        "c" => ("int main(void) { return missing_name; }\n", "missing_name"),
        "cpp" => ("int main() { undefined_fn(); }\n", "undefined_fn"),
        "rust" => ("fn main() { let x: u32 = \"no\"; }\n", "mismatched types"),
        "go" => (
            "package main\n\nfunc main() {\n\tunused := 1\n}\n",
            "unused",
        ),
        "java" => (
            "public class Main { static int f() { return \"s\"; } }\n",
            "incompatible types",
        ),
        "typescript" => ("let x: = 1;\n", "Unexpected"),
        other => panic!("{other} does not compile"),
    }
}

/// A program that takes a compiler far longer than 100 ms on any machine.
fn slow_to_compile(lang: &str) -> String {
    let nested_macros = |k: &str| {
        // 8^7 tokens after expansion.
        let mut s = String::from("#define L0 x\n");
        for i in 1..=7 {
            let p = format!("L{}", i - 1);
            s += &format!("#define L{i} ({p}+{p}+{p}+{p}+{p}+{p}+{p}+{p})\n");
        }
        s + &format!("int main() {{ {k} x = 1; return (int)L7; }}\n")
    };
    let many = |f: &dyn Fn(usize) -> String, n: usize| (0..n).map(f).collect::<String>();
    match lang {
        "c" | "cpp" => nested_macros("long"),
        "rust" => {
            many(
                &|i| {
                    format!("#[inline(never)] fn f{i}(a: u64) -> u64 {{ a.wrapping_mul({i}).rotate_left(3) ^ {i} }}\n")
                },
                3000,
            ) + "fn main() { let mut s = 0u64; "
                + &many(&|i| format!("s = f{i}(s); "), 3000)
                + "println!(\"{s}\"); }\n"
        }
        "go" => {
            "package main\n\nimport \"fmt\"\n\n".to_string()
                + &many(
                    &|i| format!("func f{i}(a uint64) uint64 {{ return a*{i} ^ (a >> 3) }}\n"),
                    3000,
                )
                + "func main() {\n\tvar s uint64\n"
                + &many(&|i| format!("\ts = f{i}(s)\n"), 3000)
                + "\tfmt.Println(s)\n}\n"
        }
        "java" => echo_program("java").to_string(),
        "typescript" => {
            many(
                &|i| {
                    format!("export function f{i}(a: number): number {{ return (a * {i}) ^ (a >> 3); }}\n")
                },
                8000,
            )
        }
        other => panic!("{other} does not compile"),
    }
}

async fn check_language(lang: &str) {
    let Some(srv) = TestServer::start(|_| {}).await else {
        return;
    };
    let (_, langs) = srv.get("/v1/languages").await;
    let langs: Value = serde_json::from_str(&langs).expect("languages JSON");
    let info = langs
        .as_array()
        .expect("an array")
        .iter()
        .find(|l| l["name"] == lang)
        .unwrap_or_else(|| panic!("{lang} not in /v1/languages: {langs}"))
        .clone();
    let compiled = info["compiled"].as_bool().expect("compiled");
    // Software emulation makes compilers slow: generous limits everywhere.
    let limits = json!({"timeout_ms": 30000, "compile_timeout_ms": 120000});

    // stdin and args reach the program; its stdout comes back.
    let (status, v) = srv
        .execute(json!({
            "language": lang, "code": echo_program(lang), "stdin": "hello\n",
            "args": ["a", "b c"], "limits": limits,
        }))
        .await;
    assert_eq!(status, 200, "{lang}: {v}");
    assert_eq!(v["status"], "completed", "{lang}: {v}");
    assert_eq!(v["stdout"], "hello 2 a,b c\n", "{lang}: {v}");
    assert_eq!(v["exit_code"], 0, "{lang}: {v}");
    assert_eq!(v["compile"].is_object(), compiled, "{lang}: {v}");
    if compiled {
        assert_eq!(v["compile"]["status"], "completed", "{lang}: {v}");
        assert_eq!(v["compile"]["exit_code"], 0, "{lang}: {v}");
    }
    srv.assert_no_vms().await;

    // The same program as two test cases: one compile, a verdict each; the
    // runtime error's exit code comes back.
    let (status, v) = srv
        .execute(json!({
            "language": lang, "code": echo_program(lang), "limits": limits,
            "tests": [
                {"stdin": "x\n", "args": ["1"], "expected_stdout": "x 1 1"},
                {"stdin": "fail\n"},
            ],
        }))
        .await;
    assert_eq!(status, 200, "{lang}: {v}");
    let cases = v["tests"]
        .as_array()
        .unwrap_or_else(|| panic!("{lang}: {v}"));
    assert_eq!(cases[0]["verdict"], "accepted", "{lang}: {v}");
    assert_eq!(cases[1]["verdict"], "runtime_error", "{lang}: {v}");
    assert_eq!(cases[1]["exit_code"], 3, "{lang}: {v}");
    assert_eq!(v["verdict"], "runtime_error", "{lang}: {v}");
    srv.assert_no_vms().await;

    if compiled {
        let (bad, marker) = compile_error(lang);
        let (status, v) = srv
            .execute(json!({"language": lang, "code": bad, "limits": limits}))
            .await;
        assert_eq!(status, 200, "{lang}: {v}");
        common::check_against_openapi("post", "/v1/execute", 200, &v);
        assert_eq!(v["status"], "compile_error", "{lang}: {v}");
        assert_eq!(v["compile"]["status"], "completed", "{lang}: {v}");
        assert_ne!(v["compile"]["exit_code"], 0, "{lang}: {v}");
        let said = format!("{}{}", v["compile"]["stderr"], v["compile"]["stdout"]);
        assert!(said.contains(marker), "{lang}: no {marker:?} in {v}");
        assert_eq!(v["stdout"], "", "the program must not run: {v}");
        assert!(v["exit_code"].is_null(), "{lang}: {v}");
        srv.assert_no_vms().await;

        let (status, v) = srv
            .execute(json!({
                "language": lang, "code": slow_to_compile(lang),
                "limits": {"compile_timeout_ms": 100},
            }))
            .await;
        assert_eq!(status, 200, "{lang}: {v}");
        assert_eq!(v["status"], "compile_error", "{lang}: {v}");
        assert_eq!(v["compile"]["status"], "timeout", "{lang}: {v}");
        assert_eq!(v["stdout"], "", "{lang}: {v}");
        srv.assert_no_vms().await;
    }
    srv.stop().await;
}

macro_rules! language_tests {
    ($($name:ident => $lang:literal),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $name() {
                check_language($lang).await;
            }
        )*
    };
}

language_tests! {
    python => "python",
    javascript => "javascript",
    bash => "bash",
    c => "c",
    cpp => "cpp",
    rust => "rust",
    go => "go",
    java => "java",
    typescript => "typescript",
    ruby => "ruby",
    php => "php",
    perl => "perl",
    lua => "lua",
}

#[tokio::test]
async fn every_table_language_has_a_test_here() {
    let here = include_str!("languages.rs");
    for l in tvm_api::LanguageTable::builtin().iter() {
        assert!(
            here.contains(&format!("{} => \"{}\"", l.name, l.name)),
            "{} has no integration test",
            l.name
        );
    }
}

#[tokio::test]
async fn compiled_languages_run_in_a_sandbox() {
    let Some(srv) = TestServer::start(|_| {}).await else {
        return;
    };
    let post = |path: String, body: Value| {
        let req = srv.client.post(format!("{}{path}", srv.base)).json(&body);
        async move {
            let resp = req.send().await.expect("request");
            let status = resp.status().as_u16();
            (status, resp.json::<Value>().await.expect("json"))
        }
    };
    let (status, sb) = post("/v1/sandboxes".into(), json!({})).await;
    assert_eq!(status, 201, "{sb}");
    let id = sb["id"].as_str().expect("id").to_string();
    let exec = format!("/v1/sandboxes/{id}/execute");
    let limits = json!({"compile_timeout_ms": 120000, "timeout_ms": 30000});

    // A file written by one exec is read by a compiled program of the next.
    let (status, v) = post(
        exec.clone(),
        json!({"language": "bash", "code": "echo 7 > n.txt"}),
    )
    .await;
    assert_eq!((status, &v["exit_code"]), (200, &json!(0)), "{v}");
    let c = "#include <stdio.h>\nint main(void){int n; FILE *f = fopen(\"n.txt\",\"r\"); fscanf(f,\"%d\",&n); printf(\"%d\\n\", n*6); return 0;}\n";
    let (status, v) = post(
        exec.clone(),
        json!({"language": "c", "code": c, "limits": limits}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["stdout"], "42\n", "{v}");
    assert_eq!(v["compile"]["status"], "completed", "{v}");

    // Java keeps its public class's file name in a sandbox too.
    let java =
        "public class Hi { public static void main(String[] a) { System.out.println(\"hi\"); } }";
    let (status, v) = post(
        exec.clone(),
        json!({"language": "java", "code": java, "limits": limits}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["stdout"], "hi\n", "{v}");

    // A compile error in a sandbox is a compile error, and the sandbox lives on.
    let (status, v) = post(
        exec.clone(),
        json!({"language": "c", "code": "int main( {", "limits": limits}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["status"], "compile_error", "{v}");
    let (status, v) = post(exec.clone(), json!({"language": "bash", "code": "ls"})).await;
    assert_eq!(status, 200, "{v}");
    // The code files are gone; the compiled outputs stay (documented).
    assert_eq!(v["stdout"], "Hi.class\nmain\nn.txt\n", "{v}");

    // Test cases are for one-shot executions.
    let (status, v) = post(
        exec.clone(),
        json!({"language": "c", "code": c, "tests": [{}]}),
    )
    .await;
    assert_eq!(status, 400, "{v}");
    let resp = srv
        .client
        .delete(format!("{}/v1/sandboxes/{id}", srv.base))
        .send()
        .await
        .expect("delete");
    assert!(resp.status().is_success());
    srv.stop().await;
}
