//! Code written the secure way must not be flagged: the RL reward penalises every token a
//! finding covers, so a rule that fires on the idiom it asks for (`if ((p = malloc(n)) ==
//! NULL)`, a copy into a buffer allocated for exactly that length, a format string built from
//! a macro and a literal) teaches the policy to avoid the fix. `tests/idioms/` holds such code
//! in C, Python, Java and JavaScript (bounded copies, NULL checks, parameterised SQL,
//! argument-list process calls, safe YAML, secure random tokens, SHA-256 and AES-GCM, path
//! checks, escaped HTML, allow-listed fetches and redirects).
//!
//! Known false positive, left out of the corpus: `read(fd, buf, cap - 1)` where the bound is a
//! size parameter that is never compared (c.copy-length-unchecked cannot tell a destination
//! size from an unchecked length; `strncpy(d, s, size - 1)` passes when `d[size - 1]` is then
//! terminated, the idiom).

use srcode_scan::{lang, Scanner};
use std::path::Path;

#[test]
fn secure_idioms_have_no_findings() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/idioms");
    let scanner = Scanner::builtin().unwrap();
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let mut scanned = 0;
    let mut report = Vec::new();
    for f in &files {
        let l = lang::from_path(f).unwrap();
        let code = std::fs::read(f).unwrap();
        let name = f.file_name().unwrap().to_string_lossy().to_string();
        for x in scanner.scan_code(&code, l, &name).unwrap() {
            let text = String::from_utf8_lossy(&code[x.byte_start..x.byte_end]).to_string();
            report.push(format!("{}:{} {}: {text}", x.file, x.line, x.rule_id));
        }
        scanned += 1;
    }
    assert!(
        scanned >= 3,
        "the idiom corpus is missing from {}",
        dir.display()
    );
    assert!(
        report.is_empty(),
        "secure code flagged:\n{}",
        report.join("\n")
    );
}
