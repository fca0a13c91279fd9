//! Code extraction from LLM answers: Markdown fences, with byte offsets into the answer so that
//! findings land on the answer's own tokens.

use crate::lang;
use srcode_core::{Language, Span};

/// One fenced block of an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodeBlock {
    /// The code inside the fence (between the opening line and the closing fence).
    pub span: Span,
    /// The info string after the opening fence (`python`, `c++`, empty).
    pub tag: String,
    /// The language the tag names, if any.
    pub lang: Option<Language>,
    /// Whether the closing fence is missing (a truncated answer): the block runs to the end.
    pub unterminated: bool,
}

/// Fenced code blocks (```` ``` ```` or `~~~`, three or more, indented up to three spaces), in
/// order. Works on bytes, so answers that are not valid UTF-8 are fine.
pub fn fenced_blocks(text: &[u8]) -> Vec<CodeBlock> {
    let mut blocks = Vec::new();
    let mut pos = 0;
    // (fence char, fence length, tag, code start)
    let mut open: Option<(u8, usize, String, usize)> = None;
    while pos < text.len() {
        let end = text[pos..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(text.len(), |i| pos + i + 1);
        let line = &text[pos..end];
        let indent = line.iter().take_while(|&&b| b == b' ').count();
        if indent <= 3 {
            let body = &line[indent..];
            let ch = body.first().copied().unwrap_or(0);
            if ch == b'`' || ch == b'~' {
                let n = body.iter().take_while(|&&b| b == ch).count();
                if n >= 3 {
                    let rest = String::from_utf8_lossy(&body[n..]).trim().to_string();
                    match &open {
                        Some((oc, on, tag, start)) if *oc == ch && n >= *on && rest.is_empty() => {
                            blocks.push(CodeBlock {
                                span: Span::new(*start, pos),
                                lang: lang::from_fence_tag(tag),
                                tag: tag.clone(),
                                unterminated: false,
                            });
                            open = None;
                        }
                        None if !(ch == b'`' && rest.contains('`')) => {
                            open = Some((ch, n, rest, end));
                        }
                        _ => {}
                    }
                }
            }
        }
        pos = end;
    }
    if let Some((_, _, tag, start)) = open {
        blocks.push(CodeBlock {
            span: Span::new(start.min(text.len()), text.len()),
            lang: lang::from_fence_tag(&tag),
            tag,
            unterminated: true,
        });
    }
    blocks
}

/// The parts of an answer to analyse as `lang` code: the fenced blocks tagged with that language
/// (C code is accepted in a C++ fence and the reverse); failing that, untagged blocks; failing
/// that, when the answer has no fence at all, the whole answer. Blocks in other languages are
/// never scanned as `lang`.
pub fn code_spans(text: &[u8], lang: Language) -> Vec<Span> {
    let blocks = fenced_blocks(text);
    if blocks.is_empty() {
        return vec![Span::new(0, text.len())];
    }
    let same = |l: Language| {
        l == lang
            || matches!(
                (l, lang),
                (Language::C, Language::Cpp) | (Language::Cpp, Language::C)
            )
    };
    let tagged: Vec<Span> = blocks
        .iter()
        .filter(|b| b.lang.is_some_and(same))
        .map(|b| b.span)
        .collect();
    if !tagged.is_empty() {
        return tagged;
    }
    blocks
        .iter()
        .filter(|b| b.tag.is_empty())
        .map(|b| b.span)
        .collect()
}

/// The language an answer's code is in, from its first tagged fence, else a guess from the text.
pub fn answer_language(text: &[u8]) -> Option<Language> {
    let blocks = fenced_blocks(text);
    if let Some(l) = blocks.iter().find_map(|b| b.lang) {
        return Some(l);
    }
    match blocks.first() {
        Some(b) => lang::guess(&text[b.span.start..b.span.end]),
        None => lang::guess(text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_block_in_the_target_language_with_offsets_into_the_answer() {
        let a = "Here:\n```bash\nls\n```\n\n```python\nimport os\nos.system(x)\n```\nDone.";
        let spans = code_spans(a.as_bytes(), Language::Python);
        assert_eq!(spans.len(), 1);
        assert_eq!(spans[0].slice(a), Some("import os\nos.system(x)\n"));
        // No fence: the whole answer.
        assert_eq!(
            code_spans(b"x = 1", Language::Python),
            vec![Span::new(0, 5)]
        );
        // Only an untagged fence: used.
        let u = "```\nint a;\n```";
        assert_eq!(
            code_spans(u.as_bytes(), Language::C)[0].slice(u),
            Some("int a;\n")
        );
        // Only a fence in another language: nothing to scan.
        assert!(code_spans(b"```java\nclass A{}\n```", Language::Python).is_empty());
    }

    #[test]
    fn truncated_answers_and_odd_fences() {
        let a = "```c\nchar b[4];\nstrcpy(b, s";
        let bl = fenced_blocks(a.as_bytes());
        assert_eq!(bl.len(), 1);
        assert!(bl[0].unterminated);
        assert_eq!(bl[0].span.slice(a), Some("char b[4];\nstrcpy(b, s"));
        // A longer closing fence closes; a tilde fence is not closed by backticks.
        let b = "~~~~py\nx=1\n```\ny=2\n~~~~~\n";
        let bl = fenced_blocks(b.as_bytes());
        assert_eq!(bl[0].span.slice(b), Some("x=1\n```\ny=2\n"));
        assert_eq!(bl[0].lang, Some(Language::Python));
        assert_eq!(
            answer_language(b"```js\nlet a\n```"),
            Some(Language::JavaScript)
        );
        // Invalid UTF-8 does not matter.
        let c = b"```c\n\xff\xfe gets(b);\n```";
        assert_eq!(fenced_blocks(c).len(), 1);
    }
}
