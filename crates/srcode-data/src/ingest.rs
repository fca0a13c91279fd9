//! Ingest: vulnerability-fix datasets in their published formats, normalised to [`VulnRecord`].
//!
//! Formats (detected per line with [`Format::Auto`], or forced):
//!
//! - **PrimeVul** (`func`, `target`, `cwe` list, `cve`, `project`, `commit_id`, `idx`, optional
//!   `file_name`): `target = 1` is a vulnerable function; in the paired split its patched version
//!   (`target = 0`, same `commit_id` and function name) is in the same file and becomes `fixed`.
//!   Patched functions without a vulnerable partner are not vulnerability records and are counted
//!   as skipped.
//! - **SVEN** and **SafeCoder** (`func_src_before`, `func_src_after`, `vul_type`, `file_name`,
//!   optional `func_name`, `commit_link`, `lang`).
//! - **Generic** JSONL: `vulnerable` and `language` required; `fixed`, `cwe`, `id`, `func_name`,
//!   `description`, `cve`, `commit`, `project` optional.
//!
//! A malformed line is reported with its file, line and reason and skipped; one bad line never
//! aborts a large file.

use crate::error::{DataError, Result};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use srcode_core::{Cwe, Language};
use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

/// One vulnerable function, with its real fix where the dataset has one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VulnRecord {
    /// Stable identifier (the dataset's own where it has one).
    pub id: String,
    pub language: Language,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwe: Option<Cwe>,
    pub vulnerable: String,
    /// The real fix (the function after the fixing commit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fixed: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub func_name: Option<String>,
    /// What the function does, where the dataset says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cve: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    /// Where the record came from: `format:file:line`.
    pub source: String,
}

/// Input formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Auto,
    PrimeVul,
    Sven,
    SafeCoder,
    Generic,
}

impl std::str::FromStr for Format {
    type Err = DataError;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(Format::Auto),
            "primevul" => Ok(Format::PrimeVul),
            "sven" => Ok(Format::Sven),
            "safecoder" => Ok(Format::SafeCoder),
            "generic" | "jsonl" => Ok(Format::Generic),
            other => Err(DataError::Config(format!(
                "unknown input format `{other}` (expected auto, primevul, sven, safecoder or generic)"
            ))),
        }
    }
}

/// A line that could not be ingested.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BadLine {
    pub path: PathBuf,
    pub line: usize,
    pub reason: String,
}

impl std::fmt::Display for BadLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}: {}", self.path.display(), self.line, self.reason)
    }
}

/// What ingesting produced: the records, the bad lines, and why good lines were skipped.
#[derive(Debug, Default)]
pub struct Ingested {
    pub records: Vec<VulnRecord>,
    pub bad: Vec<BadLine>,
    /// Reason → count, for well-formed lines that are not usable records (a patched function
    /// alone, a language srcode does not analyse, a duplicate).
    pub skipped: BTreeMap<String, usize>,
}

impl Ingested {
    fn skip(&mut self, why: impl Into<String>) {
        *self.skipped.entry(why.into()).or_default() += 1;
    }
}

/// Ingests a file, or every `*.jsonl` / `*.json` file of a directory (sorted by name).
pub fn ingest(path: &Path, format: Format) -> Result<Ingested> {
    let mut out = Ingested::default();
    let files = if path.is_dir() {
        let mut v: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(|e| DataError::io(path, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "jsonl" || e == "json"))
            .collect();
        v.sort();
        if v.is_empty() {
            return Err(DataError::Input(format!(
                "{}: directory holds no .jsonl or .json file",
                path.display()
            )));
        }
        v
    } else {
        vec![path.to_path_buf()]
    };
    for f in files {
        ingest_file(&f, format, &mut out)?;
    }
    let mut seen = std::collections::HashSet::new();
    let before = out.records.len();
    out.records.retain(|r| seen.insert(r.id.clone()));
    let dups = before - out.records.len();
    if dups > 0 {
        *out.skipped.entry("duplicate id".into()).or_default() += dups;
    }
    Ok(out)
}

/// A PrimeVul function waiting for its partner.
struct PrimeVulFn {
    order: usize,
    rec: VulnRecord,
}

fn ingest_file(path: &Path, format: Format, out: &mut Ingested) -> Result<()> {
    let f = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
    let stem = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("input")
        .to_string();
    // PrimeVul: vulnerable functions by (commit, name), and patched versions by the same key.
    let mut pv_vuln: Vec<PrimeVulFn> = Vec::new();
    let mut pv_fixed: HashMap<(String, String), String> = HashMap::new();
    for (i, line) in BufReader::new(f).lines().enumerate() {
        let line_no = i + 1;
        let line = match line {
            Ok(l) => l,
            Err(e) => {
                out.bad.push(BadLine {
                    path: path.into(),
                    line: line_no,
                    reason: format!("unreadable line: {e}"),
                });
                continue;
            }
        };
        let t = line.trim();
        if t.is_empty() {
            continue;
        }
        let bad = |reason: String| BadLine {
            path: path.into(),
            line: line_no,
            reason,
        };
        let v: Value = match serde_json::from_str(t) {
            Ok(v) => v,
            Err(e) => {
                out.bad.push(bad(format!("not JSON: {e}")));
                continue;
            }
        };
        let Value::Object(obj) = v else {
            out.bad.push(bad("not a JSON object".into()));
            continue;
        };
        let fmt = match format {
            Format::Auto => match detect(&obj) {
                Some(f) => f,
                None => {
                    out.bad.push(bad("unrecognised record: expected PrimeVul (`func`, `target`), SVEN/SafeCoder (`func_src_before`, `func_src_after`) or generic (`vulnerable`, `language`) fields".into()));
                    continue;
                }
            },
            f => f,
        };
        let src = format!("{}:{}:{}", fmt_name(fmt), path.display(), line_no);
        let parsed = match fmt {
            Format::PrimeVul => primevul(&obj, &stem, src).map(|p| match p {
                PrimeVulLine::Vulnerable(rec) => {
                    pv_vuln.push(PrimeVulFn {
                        order: line_no,
                        rec,
                    });
                    None
                }
                PrimeVulLine::Patched(key, func) => {
                    pv_fixed.insert(key, func);
                    None
                }
            }),
            Format::Sven | Format::SafeCoder => sven(&obj, &stem, line_no, src).map(Some),
            Format::Generic | Format::Auto => generic(&obj, &stem, line_no, src).map(Some),
        };
        match parsed {
            Ok(Some(Some(rec))) => out.records.push(rec),
            Ok(Some(None)) => out.skip("language srcode does not analyse"),
            Ok(None) => {}
            Err(reason) => out.bad.push(bad(reason)),
        }
    }
    pv_vuln.sort_by_key(|p| p.order);
    for PrimeVulFn { mut rec, .. } in pv_vuln {
        let key = (
            rec.commit.clone().unwrap_or_default(),
            rec.func_name.clone().unwrap_or_default(),
        );
        rec.fixed = pv_fixed.remove(&key);
        out.records.push(rec);
    }
    for _ in pv_fixed {
        out.skip("PrimeVul patched function without its vulnerable version");
    }
    Ok(())
}

fn fmt_name(f: Format) -> &'static str {
    match f {
        Format::Auto | Format::Generic => "generic",
        Format::PrimeVul => "primevul",
        Format::Sven => "sven",
        Format::SafeCoder => "safecoder",
    }
}

fn detect(obj: &Map<String, Value>) -> Option<Format> {
    if obj.contains_key("func_src_before") {
        Some(Format::Sven)
    } else if obj.contains_key("func") && obj.contains_key("target") {
        Some(Format::PrimeVul)
    } else if obj.contains_key("vulnerable") {
        Some(Format::Generic)
    } else {
        None
    }
}

fn str_field<'a>(obj: &'a Map<String, Value>, key: &str) -> std::result::Result<&'a str, String> {
    match obj.get(key) {
        Some(Value::String(s)) => Ok(s),
        Some(other) => Err(format!("`{key}` must be a string, found {}", kind(other))),
        None => Err(format!("missing `{key}`")),
    }
}

fn opt_str(obj: &Map<String, Value>, key: &str) -> std::result::Result<Option<String>, String> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Number(n)) => Ok(Some(n.to_string())),
        Some(other) => Err(format!("`{key}` must be a string, found {}", kind(other))),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn non_empty(code: &str, key: &str) -> std::result::Result<(), String> {
    if code.trim().is_empty() {
        Err(format!("`{key}` is empty"))
    } else {
        Ok(())
    }
}

/// A CWE from a string (`CWE-787`, `cwe-078`, `787`), a number, or a list (first parseable
/// entry; PrimeVul's `["NVD-CWE-Other"]` and `[]` give none).
fn cwe_of(v: Option<&Value>) -> std::result::Result<Option<Cwe>, String> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
        Some(Value::String(s)) => s.parse::<Cwe>().map(Some).or_else(|e| {
            if s.contains("NVD-CWE") {
                Ok(None)
            } else {
                Err(e.to_string())
            }
        }),
        Some(Value::Number(n)) => n
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .map(|n| Some(Cwe(n)))
            .ok_or_else(|| format!("`cwe` {n} is not a CWE number")),
        Some(Value::Array(a)) => Ok(a
            .iter()
            .filter_map(|x| x.as_str().and_then(|s| s.parse::<Cwe>().ok()))
            .next()),
        Some(other) => Err(format!(
            "`cwe` must be a string or a list, found {}",
            kind(other)
        )),
    }
}

fn language_of(
    obj: &Map<String, Value>,
    file_key: &str,
) -> std::result::Result<Option<Language>, String> {
    for key in ["language", "lang"] {
        if let Some(s) = opt_str(obj, key)? {
            let l = s.to_ascii_lowercase();
            return match l.as_str() {
                "c" => Ok(Some(Language::C)),
                "cpp" | "c++" | "cxx" => Ok(Some(Language::Cpp)),
                "python" | "py" => Ok(Some(Language::Python)),
                "java" => Ok(Some(Language::Java)),
                "javascript" | "js" => Ok(Some(Language::JavaScript)),
                _ => Ok(None),
            };
        }
    }
    if let Some(f) = opt_str(obj, file_key)? {
        let ext = Path::new(&f)
            .extension()
            .and_then(|e| e.to_str())
            .unwrap_or("");
        return Ok(Language::from_extension(ext));
    }
    Err(format!(
        "missing `language` (or a `{file_key}` with a known extension)"
    ))
}

enum PrimeVulLine {
    Vulnerable(VulnRecord),
    Patched((String, String), String),
}

fn primevul(
    obj: &Map<String, Value>,
    stem: &str,
    source: String,
) -> std::result::Result<PrimeVulLine, String> {
    let func = str_field(obj, "func")?;
    non_empty(func, "func")?;
    let target = match obj.get("target") {
        Some(Value::Number(n)) => n.as_i64().unwrap_or(-1),
        Some(Value::Bool(b)) => i64::from(*b),
        Some(Value::String(s)) => s.trim().parse().unwrap_or(-1),
        _ => -1,
    };
    if target != 0 && target != 1 {
        return Err("`target` must be 0 (patched) or 1 (vulnerable)".into());
    }
    let commit = opt_str(obj, "commit_id")?.unwrap_or_default();
    let name = c_function_name(func).unwrap_or_default();
    if target == 0 {
        return Ok(PrimeVulLine::Patched((commit, name), func.to_string()));
    }
    let language = match opt_str(obj, "file_name")? {
        Some(f) => Path::new(&f)
            .extension()
            .and_then(|e| e.to_str())
            .and_then(Language::from_extension)
            .unwrap_or(Language::C),
        None => Language::C,
    };
    let id = match opt_str(obj, "idx")? {
        Some(i) => format!("primevul:{i}"),
        None => format!("{stem}:{}", source.rsplit(':').next().unwrap_or("0")),
    };
    Ok(PrimeVulLine::Vulnerable(VulnRecord {
        id,
        language,
        cwe: cwe_of(obj.get("cwe"))?,
        vulnerable: func.to_string(),
        fixed: None,
        func_name: (!name.is_empty()).then_some(name),
        description: None,
        cve: opt_str(obj, "cve")?,
        commit: (!commit.is_empty()).then_some(commit),
        project: opt_str(obj, "project")?,
        source,
    }))
}

fn sven(
    obj: &Map<String, Value>,
    stem: &str,
    line: usize,
    source: String,
) -> std::result::Result<Option<VulnRecord>, String> {
    let before = str_field(obj, "func_src_before")?;
    let after = str_field(obj, "func_src_after")?;
    non_empty(before, "func_src_before")?;
    let Some(language) = language_of(obj, "file_name")? else {
        return Ok(None);
    };
    let cwe = cwe_of(obj.get("vul_type").or_else(|| obj.get("cwe")))?;
    let commit = opt_str(obj, "commit_link")?;
    Ok(Some(VulnRecord {
        id: format!("{stem}:{line}"),
        language,
        cwe,
        vulnerable: before.to_string(),
        fixed: (!after.trim().is_empty() && after != before).then(|| after.to_string()),
        func_name: opt_str(obj, "func_name")?,
        description: None,
        cve: opt_str(obj, "cve")?,
        project: commit.as_deref().and_then(github_project),
        commit,
        source,
    }))
}

fn generic(
    obj: &Map<String, Value>,
    stem: &str,
    line: usize,
    source: String,
) -> std::result::Result<Option<VulnRecord>, String> {
    let vulnerable = str_field(obj, "vulnerable")?;
    non_empty(vulnerable, "vulnerable")?;
    let Some(language) = language_of(obj, "file_name")? else {
        return Ok(None);
    };
    let fixed = opt_str(obj, "fixed")?.filter(|f| f != vulnerable);
    Ok(Some(VulnRecord {
        id: opt_str(obj, "id")?.unwrap_or_else(|| format!("{stem}:{line}")),
        language,
        cwe: cwe_of(obj.get("cwe"))?,
        vulnerable: vulnerable.to_string(),
        fixed,
        func_name: opt_str(obj, "func_name")?,
        description: opt_str(obj, "description")?,
        cve: opt_str(obj, "cve")?,
        commit: opt_str(obj, "commit")?,
        project: opt_str(obj, "project")?,
        source,
    }))
}

/// `owner/name` of a GitHub commit URL.
fn github_project(url: &str) -> Option<String> {
    let rest = url.split("github.com/").nth(1)?;
    let mut parts = rest.split('/');
    let (o, n) = (parts.next()?, parts.next()?);
    Some(format!("{o}/{n}"))
}

/// The name of the function a C/C++ definition defines: the identifier before the first `(` of
/// its header (the text before the body's `{`).
pub fn c_function_name(src: &str) -> Option<String> {
    let header = src.split('{').next()?;
    let paren = header.find('(')?;
    let before = header[..paren].trim_end();
    let name: String = before
        .chars()
        .rev()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':' || *c == '~')
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    let name = name.rsplit("::").next().unwrap_or(&name).to_string();
    (!name.is_empty()).then_some(name)
}

/// The name of the function `src` defines, by language.
pub fn function_name(src: &str, lang: Language) -> Option<String> {
    match lang {
        Language::Python => {
            let i = src.find("def ")?;
            let rest = &src[i + 4..];
            let name: String = rest
                .trim_start()
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            (!name.is_empty()).then_some(name)
        }
        _ => c_function_name(src),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn c_names() {
        assert_eq!(
            c_function_name("static int\nfoo_bar (char *s)\n{ return 0; }").as_deref(),
            Some("foo_bar")
        );
        assert_eq!(
            c_function_name("void Klass::method(int x) { }").as_deref(),
            Some("method")
        );
        assert_eq!(c_function_name("no function here"), None);
        assert_eq!(
            function_name("async def  run_it(x):\n  pass", Language::Python).as_deref(),
            Some("run_it")
        );
    }
}
