//! Languages as tree-sitter sees them: grammars, node kinds the rule engine cares about, and
//! language detection for files and snippets.

use srcode_core::Language;
use std::path::Path;

/// The tree-sitter grammar of a language.
pub fn grammar(lang: Language) -> tree_sitter::Language {
    match lang {
        Language::C => tree_sitter_c::LANGUAGE.into(),
        Language::Cpp => tree_sitter_cpp::LANGUAGE.into(),
        Language::Python => tree_sitter_python::LANGUAGE.into(),
        Language::Java => tree_sitter_java::LANGUAGE.into(),
        Language::JavaScript => tree_sitter_javascript::LANGUAGE.into(),
    }
}

/// Position of a language in [`Language::ALL`] (for per-language tables).
pub fn index(lang: Language) -> usize {
    match lang {
        Language::C => 0,
        Language::Cpp => 1,
        Language::Python => 2,
        Language::Java => 3,
        Language::JavaScript => 4,
    }
}

/// Node kinds that delimit a function body (the scope of a rule's `unless` search).
pub fn is_function(lang: Language, kind: &str) -> bool {
    match lang {
        Language::C | Language::Cpp => matches!(kind, "function_definition" | "lambda_expression"),
        Language::Python => matches!(kind, "function_definition" | "lambda"),
        Language::Java => matches!(
            kind,
            "method_declaration" | "constructor_declaration" | "lambda_expression"
        ),
        Language::JavaScript => matches!(
            kind,
            "function_declaration"
                | "function_expression"
                | "function"
                | "arrow_function"
                | "method_definition"
                | "generator_function_declaration"
        ),
    }
}

/// Comment node kinds (`comment` everywhere; Java splits line and block comments).
pub fn is_comment(kind: &str) -> bool {
    matches!(kind, "comment" | "line_comment" | "block_comment")
}

/// Whether `node` is a string literal whose value is fixed in the source: no interpolation,
/// no concatenation with anything but other constant strings.
pub fn is_constant_string(lang: Language, node: tree_sitter::Node<'_>) -> bool {
    let kind = node.kind();
    match lang {
        Language::C | Language::Cpp => match kind {
            "string_literal" | "raw_string_literal" | "char_literal" => true,
            // An identifier beside a string literal can only be a macro that expands to a
            // string literal (`KERN_INFO "..."`, `"%" PRId64`): the whole is still constant.
            "concatenated_string" => all_children(node, |c| {
                is_constant_string(lang, c) || matches!(c.kind(), "identifier" | "comment")
            }),
            _ => false,
        },
        Language::Python => match kind {
            "string" => !has_descendant(node, "interpolation"),
            "concatenated_string" => all_children(node, |c| is_constant_string(lang, c)),
            _ => false,
        },
        Language::Java => matches!(kind, "string_literal" | "text_block" | "character_literal"),
        Language::JavaScript => match kind {
            "string" => true,
            "template_string" => !has_descendant(node, "template_substitution"),
            _ => false,
        },
    }
}

fn all_children(node: tree_sitter::Node<'_>, f: impl Fn(tree_sitter::Node<'_>) -> bool) -> bool {
    let mut cur = node.walk();
    let ok = node.named_children(&mut cur).all(f);
    ok
}

fn has_descendant(node: tree_sitter::Node<'_>, kind: &str) -> bool {
    let mut cur = node.walk();
    let mut stack = vec![node];
    while let Some(n) = stack.pop() {
        if n.kind() == kind {
            return true;
        }
        stack.extend(n.named_children(&mut cur));
    }
    false
}

/// Language of a file from its extension.
pub fn from_path(path: &Path) -> Option<Language> {
    path.extension()
        .and_then(|e| e.to_str())
        .and_then(Language::from_extension)
}

/// Language named by a Markdown fence's info string (` ```python `, ` ```c++ `, ...).
pub fn from_fence_tag(tag: &str) -> Option<Language> {
    let word = tag
        .split(|c: char| c.is_whitespace() || c == '{' || c == ',')
        .next()
        .unwrap_or("")
        .trim_start_matches('.')
        .to_ascii_lowercase();
    match word.as_str() {
        "c" | "h" => Some(Language::C),
        "cpp" | "c++" | "cc" | "cxx" | "hpp" | "cplusplus" => Some(Language::Cpp),
        "python" | "py" | "python3" | "py3" => Some(Language::Python),
        "java" => Some(Language::Java),
        "javascript" | "js" | "jsx" | "node" | "nodejs" | "mjs" => Some(Language::JavaScript),
        _ => None,
    }
}

/// Guesses the language of a snippet without a file name, from tell-tale tokens. Returns `None`
/// when nothing is recognisable.
pub fn guess(text: &[u8]) -> Option<Language> {
    let head = &text[..text.len().min(16 * 1024)];
    let s = String::from_utf8_lossy(head);
    let score = |pats: &[&str]| pats.iter().filter(|p| s.contains(*p)).count();
    let scores = [
        (
            Language::Cpp,
            score(&[
                "std::",
                "#include <iostream>",
                "template<",
                "template <",
                "nullptr",
                "cout <<",
                "namespace ",
            ]),
        ),
        (
            Language::C,
            score(&[
                "#include",
                "int main(",
                "printf(",
                "malloc(",
                "->",
                "char *",
                "size_t",
            ]),
        ),
        (
            Language::Python,
            score(&["def ", "import ", "self", "elif ", "print(", "None", "):\n"]),
        ),
        (
            Language::Java,
            score(&[
                "public class",
                "public static",
                "System.out",
                "import java.",
                "private ",
                "String[]",
                "@Override",
            ]),
        ),
        (
            Language::JavaScript,
            score(&[
                "function ",
                "const ",
                "let ",
                "=>",
                "require(",
                "console.log",
                "document.",
            ]),
        ),
    ];
    let (lang, best) = scores.iter().copied().max_by_key(|&(_, n)| n)?;
    if best == 0 {
        return None;
    }
    // C++ tokens on top of C ones make it C++; C tokens alone make it C.
    if lang == Language::C && scores[0].1 > 0 {
        return Some(Language::Cpp);
    }
    Some(lang)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fence_tags_and_guesses() {
        assert_eq!(from_fence_tag("python"), Some(Language::Python));
        assert_eq!(from_fence_tag("C++ {.numberLines}"), Some(Language::Cpp));
        assert_eq!(from_fence_tag("rust"), None);
        assert_eq!(guess(b"def f(x):\n    import os\n"), Some(Language::Python));
        assert_eq!(
            guess(b"#include <stdio.h>\nint main(){printf(\"x\");}"),
            Some(Language::C)
        );
        assert_eq!(
            guess(b"#include <vector>\nstd::vector<int> v;"),
            Some(Language::Cpp)
        );
        assert_eq!(
            guess(b"public class A { public static void main(String[] a){} }"),
            Some(Language::Java)
        );
        assert_eq!(
            guess(b"const x = require('fs');"),
            Some(Language::JavaScript)
        );
        assert_eq!(guess(b"\x00\x01\x02"), None);
    }
}
