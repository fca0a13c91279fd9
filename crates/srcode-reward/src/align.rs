//! Byte spans ↔ tokens. A tokenizer gives each token a byte range in the completion text; a
//! span (a finding, a hunk) covers the tokens whose ranges overlap it. Tokens that straddle a
//! span's edge are covered; so are the partial tokens of a multi-byte character split by a
//! byte-level vocabulary.

use similar::{capture_diff_slices, Algorithm, DiffOp};
use srcode_core::Span;

/// Byte range of one token in the completion text (`start == end` for tokens with no text,
/// e.g. special tokens).
pub type TokenSpan = (usize, usize);

/// Indices of the tokens overlapping `span`, as a range into `tokens` (which must be sorted by
/// start, as tokenizers produce them). Empty when nothing overlaps.
pub fn tokens_covering(tokens: &[TokenSpan], span: Span) -> std::ops::Range<usize> {
    if span.is_empty() {
        return 0..0;
    }
    // First token ending after span.start, last token starting before span.end.
    let first = tokens.partition_point(|&(_, e)| e <= span.start);
    let mut last = first;
    while last < tokens.len() && tokens[last].0 < span.end {
        last += 1;
    }
    // Zero-width tokens inside the range carry no text; they stay covered only if surrounded.
    first..last.max(first)
}

/// Byte ranges of tokens in `text` when the text is not simply the concatenation of the
/// tokens' bytes (SentencePiece `▁` for spaces, replacement characters from lossy decoding,
/// stripped special tokens...). The concatenation is aligned to the text with a byte diff, and
/// each token gets the text bytes its own bytes were aligned with (inserted text goes to the
/// token before it).
pub fn align_token_bytes(text: &[u8], tokens: &[&[u8]]) -> Vec<TokenSpan> {
    let joined: Vec<u8> = tokens.iter().flat_map(|t| t.iter().copied()).collect();
    if joined == text {
        let mut pos = 0;
        return tokens
            .iter()
            .map(|t| {
                let s = pos;
                pos += t.len();
                (s, pos)
            })
            .collect();
    }
    // map[i] = text offset aligned with joined byte i; map[len] = text.len().
    let mut map = vec![0usize; joined.len() + 1];
    for op in capture_diff_slices(Algorithm::Myers, &joined, text) {
        match op {
            DiffOp::Equal {
                old_index,
                new_index,
                len,
            } => {
                for k in 0..len {
                    map[old_index + k] = new_index + k;
                }
            }
            DiffOp::Delete {
                old_index,
                old_len,
                new_index,
            } => {
                for k in 0..old_len {
                    map[old_index + k] = new_index;
                }
            }
            DiffOp::Insert { .. } => {}
            DiffOp::Replace {
                old_index,
                old_len,
                new_index,
                new_len,
            } => {
                for k in 0..old_len {
                    map[old_index + k] = new_index + k * new_len / old_len.max(1);
                }
            }
        }
    }
    map[joined.len()] = text.len();
    let mut out = Vec::with_capacity(tokens.len());
    let mut pos = 0;
    for (i, t) in tokens.iter().enumerate() {
        let s = map[pos];
        pos += t.len();
        // The token's text runs to where the next token's text starts.
        let e = if i + 1 == tokens.len() {
            text.len()
        } else {
            map[pos]
        };
        out.push((s.min(e), e.max(s)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_cover_straddling_tokens() {
        // "strcpy(b, s);" as tokens: "str" "cpy" "(b" "," " s" ");"
        let toks = [(0, 3), (3, 6), (6, 8), (8, 9), (9, 11), (11, 13)];
        assert_eq!(tokens_covering(&toks, Span::new(0, 6)), 0..2);
        assert_eq!(tokens_covering(&toks, Span::new(4, 7)), 1..3);
        assert_eq!(tokens_covering(&toks, Span::new(12, 13)), 5..6);
        assert_eq!(tokens_covering(&toks, Span::new(13, 20)), 6..6);
        assert_eq!(tokens_covering(&toks, Span::new(5, 5)), 0..0);
    }

    #[test]
    fn multibyte_characters_split_across_tokens_are_covered_by_both_parts() {
        // "é" is two bytes; a byte-level tokenizer may split it.
        let text = "aé=1";
        let toks = [(0, 1), (1, 2), (2, 3), (3, 4), (4, 5)];
        assert_eq!(tokens_covering(&toks, Span::new(1, 3)), 1..3);
        assert_eq!(text.len(), 5);
    }

    #[test]
    fn alignment_survives_a_text_that_differs_from_the_tokens() {
        // SentencePiece-style tokens: "▁" stands for a space in the decoded text.
        let text = "int x = 1;";
        let toks: Vec<&[u8]> = vec![
            b"int",
            "▁x".as_bytes(),
            "▁=".as_bytes(),
            "▁1".as_bytes(),
            b";",
        ];
        let spans = align_token_bytes(text.as_bytes(), &toks);
        let words: Vec<&str> = spans.iter().map(|&(s, e)| text[s..e].trim()).collect();
        assert_eq!(words, ["int", "x", "=", "1", ";"]);
        // Identical text: exact offsets.
        let spans = align_token_bytes(b"ab", &[b"a", b"b"]);
        assert_eq!(spans, vec![(0, 1), (1, 2)]);
    }
}
