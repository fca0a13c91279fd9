//! A small code lexer shared by every language srcode handles, with the normalisation the
//! repair-reference reward aligns on: variable names become `ID`, literals `STR` / `NUM`, while
//! keywords, operators, called functions and member names stay, so the pattern (`strncpy(ID,
//! ID, sizeof(ID))`, `execute(STR, (ID,))`) survives renamed variables and reformatting.

use srcode_core::Language;

/// Lexeme classes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Ident,
    Keyword,
    Number,
    String,
    Punct,
}

/// One lexeme: its byte range and its normalised form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lexeme {
    pub start: usize,
    pub end: usize,
    pub kind: Kind,
    pub norm: String,
}

const C_KEYWORDS: &[&str] = &[
    "if", "else", "for", "while", "do", "return", "break", "continue", "switch", "case", "default",
    "goto", "sizeof", "struct", "union", "enum", "typedef", "const", "static", "unsigned",
    "signed", "int", "char", "long", "short", "void", "float", "double", "size_t", "ssize_t",
    "NULL", "nullptr", "new", "delete", "true", "false", "bool", "auto", "class", "public",
    "private", "try", "catch", "throw", "uint8_t", "uint16_t", "uint32_t", "uint64_t", "int32_t",
    "int64_t", "SIZE_MAX", "INT_MAX", "UINT_MAX", "std",
];
const PY_KEYWORDS: &[&str] = &[
    "if", "elif", "else", "for", "while", "return", "def", "class", "import", "from", "as", "in",
    "not", "and", "or", "is", "None", "True", "False", "with", "try", "except", "finally", "raise",
    "lambda", "yield", "pass", "break", "continue", "self", "global", "assert",
];
const JAVA_JS_KEYWORDS: &[&str] = &[
    "if",
    "else",
    "for",
    "while",
    "do",
    "return",
    "break",
    "continue",
    "switch",
    "case",
    "new",
    "class",
    "public",
    "private",
    "protected",
    "static",
    "final",
    "void",
    "int",
    "long",
    "boolean",
    "String",
    "null",
    "true",
    "false",
    "this",
    "try",
    "catch",
    "finally",
    "throw",
    "throws",
    "function",
    "const",
    "let",
    "var",
    "async",
    "await",
    "typeof",
    "instanceof",
    "undefined",
];

fn is_keyword(lang: Language, w: &str) -> bool {
    match lang {
        Language::C | Language::Cpp => C_KEYWORDS.contains(&w),
        Language::Python => PY_KEYWORDS.contains(&w),
        Language::Java | Language::JavaScript => JAVA_JS_KEYWORDS.contains(&w),
    }
}

/// Multi-character operators, longest first.
const OPS: &[&str] = &[
    "<<=", ">>=", "...", "->", "++", "--", "<<", ">>", "<=", ">=", "==", "!=", "&&", "||", "+=",
    "-=", "*=", "/=", "%=", "&=", "|=", "^=", "::", "**", "//", "=>",
];

/// Lexes `code` (comments and whitespace dropped). Never fails: unknown bytes become one-byte
/// punctuation.
pub fn lex(code: &[u8], lang: Language) -> Vec<Lexeme> {
    let hash_comments = lang == Language::Python;
    let mut out = Vec::with_capacity(code.len() / 3);
    let mut i = 0;
    let n = code.len();
    while i < n {
        let c = code[i];
        if c.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        // Comments.
        if hash_comments && c == b'#' {
            while i < n && code[i] != b'\n' {
                i += 1;
            }
            continue;
        }
        if !hash_comments && c == b'/' && i + 1 < n && code[i + 1] == b'/' {
            while i < n && code[i] != b'\n' {
                i += 1;
            }
            continue;
        }
        if !hash_comments && c == b'/' && i + 1 < n && code[i + 1] == b'*' {
            i += 2;
            while i + 1 < n && !(code[i] == b'*' && code[i + 1] == b'/') {
                i += 1;
            }
            i = (i + 2).min(n);
            continue;
        }
        let start = i;
        // Identifiers (with Python string prefixes such as f"..", b'..').
        if c.is_ascii_alphabetic() || c == b'_' || c >= 0x80 {
            while i < n && (code[i].is_ascii_alphanumeric() || code[i] == b'_' || code[i] >= 0x80) {
                i += 1;
            }
            let word = String::from_utf8_lossy(&code[start..i]).into_owned();
            let is_prefix = lang == Language::Python
                && i < n
                && (code[i] == b'"' || code[i] == b'\'')
                && word.len() <= 3
                && word.chars().all(|c| "rRbBfFuU".contains(c));
            if is_prefix {
                i = skip_string(code, i, lang);
                let norm = if word.to_ascii_lowercase().contains('f') {
                    "FSTR"
                } else {
                    "STR"
                };
                out.push(Lexeme {
                    start,
                    end: i,
                    kind: Kind::String,
                    norm: norm.into(),
                });
                continue;
            }
            let kind = if is_keyword(lang, &word) {
                Kind::Keyword
            } else {
                Kind::Ident
            };
            out.push(Lexeme {
                start,
                end: i,
                kind,
                norm: word,
            });
            continue;
        }
        if c.is_ascii_digit() {
            while i < n && (code[i].is_ascii_alphanumeric() || code[i] == b'.' || code[i] == b'_') {
                i += 1;
            }
            let text = &code[start..i];
            let norm = if text == b"0" || text == b"1" {
                String::from_utf8_lossy(text).into_owned()
            } else {
                "NUM".into()
            };
            out.push(Lexeme {
                start,
                end: i,
                kind: Kind::Number,
                norm,
            });
            continue;
        }
        if c == b'"' || c == b'\'' || (c == b'`' && lang == Language::JavaScript) {
            i = skip_string(code, i, lang);
            let norm = if c == b'`' && code[start..i].windows(2).any(|w| w == b"${") {
                "FSTR"
            } else {
                "STR"
            };
            out.push(Lexeme {
                start,
                end: i,
                kind: Kind::String,
                norm: norm.into(),
            });
            continue;
        }
        let op = OPS.iter().find(|op| code[i..].starts_with(op.as_bytes()));
        let len = op.map_or(1, |op| op.len());
        i += len;
        out.push(Lexeme {
            start,
            end: i,
            kind: Kind::Punct,
            norm: String::from_utf8_lossy(&code[start..i]).into_owned(),
        });
    }
    normalise_identifiers(&mut out);
    out
}

/// End of the string literal starting at `i` (the quote), tolerating truncation.
fn skip_string(code: &[u8], mut i: usize, lang: Language) -> usize {
    let n = code.len();
    let q = code[i];
    let triple = lang == Language::Python && code[i..].starts_with(&[q, q, q]);
    if triple {
        i += 3;
        while i < n && !code[i..].starts_with(&[q, q, q]) {
            i += if code[i] == b'\\' { 2 } else { 1 };
        }
        return (i + 3).min(n);
    }
    i += 1;
    while i < n && code[i] != q {
        if code[i] == b'\\' {
            i += 1;
        } else if code[i] == b'\n' && q != b'`' {
            return i;
        }
        i += 1;
    }
    (i + 1).min(n)
}

/// Variable names become `ID`; names that are called (`f(`), accessed as members (`.f`,
/// `->f`) or qualified (`ns::f`) keep their text: they carry the API the pattern is about.
fn normalise_identifiers(lx: &mut [Lexeme]) {
    for k in 0..lx.len() {
        if lx[k].kind != Kind::Ident {
            continue;
        }
        let next_call = lx.get(k + 1).is_some_and(|n| n.norm == "(");
        let member = k > 0 && matches!(lx[k - 1].norm.as_str(), "." | "->" | "::");
        let kw_arg = lx.get(k + 1).is_some_and(|n| n.norm == "=")
            && lx.get(k + 2).is_some_and(|n| n.norm != "=")
            && k > 0
            && matches!(lx[k - 1].norm.as_str(), "(" | ",");
        if !(next_call || member || kw_arg) {
            lx[k].norm = "ID".into();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norms(code: &str, lang: Language) -> Vec<String> {
        lex(code.as_bytes(), lang)
            .into_iter()
            .map(|l| l.norm)
            .collect()
    }

    #[test]
    fn renamed_variables_and_spacing_normalise_alike() {
        let a = norms("strncpy(dst, src, sizeof(dst));", Language::C);
        let b = norms("strncpy( out,in , sizeof (out) ) ;", Language::C);
        assert_eq!(a, b);
        assert_eq!(
            a,
            ["strncpy", "(", "ID", ",", "ID", ",", "sizeof", "(", "ID", ")", ")", ";"]
        );
    }

    #[test]
    fn python_strings_calls_members_and_comments() {
        let n = norms(
            "cur.execute(f\"SELECT {x}\")  # run it\nq = 'a' % (u,)",
            Language::Python,
        );
        assert_eq!(
            n,
            ["ID", ".", "execute", "(", "FSTR", ")", "ID", "=", "STR", "%", "(", "ID", ",", ")"]
        );
        let k = norms("subprocess.run(cmd, shell=True)", Language::Python);
        assert!(k.contains(&"shell".to_string()) && k.contains(&"True".to_string()));
    }

    #[test]
    fn truncated_and_binary_input_lexes() {
        assert!(!lex(b"printf(\"abc", Language::C).is_empty());
        assert!(!lex(b"\xff\xfe/*", Language::C).is_empty());
        assert!(lex(b"", Language::Python).is_empty());
    }
}
