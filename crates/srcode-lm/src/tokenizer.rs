//! Text ⇄ token ids for the code models srcode trains.
//!
//! [`Tokenizer`] wraps a Hugging Face [`tokenizers::Tokenizer`] and adds what the rest of
//! srcode needs on top of it: the exact raw bytes every token stands for
//! ([`Tokenizer::token_bytes`]), byte offsets of tokens in the encoded text
//! ([`Tokenizer::encode_with_offsets`]) and in decoded completions
//! ([`Tokenizer::token_offsets_in_decoded`], used by the reward engine to map findings on
//! generated code back to tokens), the ids that end a chat turn
//! ([`Tokenizer::eos_token_ids`]) and an incremental detokeniser ([`StreamDecoder`]) for
//! streaming and stop strings.
//!
//! A tokenizer is built either from a `tokenizer.json` ([`Tokenizer::from_file`]) or from the
//! metadata of a GGUF model file ([`Tokenizer::from_gguf`]). GGUF support covers byte-level BPE
//! vocabularies (`tokenizer.ggml.model = "gpt2"`), with the pre-tokenizers listed at
//! [`Tokenizer::from_gguf`]; SentencePiece (`"llama"`) and other vocabularies are rejected with
//! [`LmError::Unsupported`].

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use candle_core::quantized::gguf_file::{Content, Value};
use tokenizers::decoders::DecoderWrapper;
use tokenizers::models::bpe::{Merges, Vocab, BPE};
use tokenizers::normalizers::NFC;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{AddedToken, Model, SplitDelimiterBehavior};

use crate::error::{LmError, Result};

/// GGUF `tokenizer.ggml.token_type` of a control (special) token, as llama.cpp defines it.
const TOKEN_TYPE_CONTROL: i64 = 3;
/// GGUF `tokenizer.ggml.token_type` of a user-defined token: matched whole in text, not special.
const TOKEN_TYPE_USER_DEFINED: i64 = 4;

/// Names of special tokens that end a chat turn or a document in the model families srcode
/// uses; each one present in the vocabulary as a special token joins [`Tokenizer::eos_token_ids`].
const KNOWN_STOP_TOKENS: &[&str] = &[
    "<|im_end|>",
    "<|endoftext|>",
    "<|eot_id|>",
    "<|eom_id|>",
    "<|end_of_text|>",
    "<end_of_turn>",
    "<|end|>",
    "</s>",
];

/// Split regex of Llama 3 (`tokenizer.ggml.pre = "llama-bpe"`), as in its `tokenizer.json`.
const LLAMA3_SPLIT_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Split regex of Qwen2 / Qwen2.5 (`tokenizer.ggml.pre = "qwen2"`): Llama 3's with single digits.
const QWEN2_SPLIT_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// A half-open byte range `start..end`, as `(start, end)`.
pub type ByteSpan = (usize, usize);

/// Per-id data shared by a [`Tokenizer`] and its [`StreamDecoder`]s.
#[derive(Debug)]
struct TokenTable {
    /// Raw bytes of every id; empty for ids that name no token.
    bytes: Vec<Box<[u8]>>,
    /// The token's string in the vocabulary (byte-level form for BPE tokens).
    strings: Vec<Option<String>>,
    /// Whether the id is a special (control) token, skipped by `skip_special` decoding.
    special: Vec<bool>,
}

impl TokenTable {
    fn len(&self) -> usize {
        self.bytes.len()
    }

    fn bytes_of(&self, id: u32) -> &[u8] {
        self.bytes.get(id as usize).map_or(&[][..], |b| &b[..])
    }

    fn is_special(&self, id: u32) -> bool {
        self.special.get(id as usize).copied().unwrap_or(false)
    }

    fn check_id(&self, id: u32) -> Result<()> {
        if (id as usize) < self.len() {
            Ok(())
        } else {
            Err(LmError::Tokenizer(format!(
                "token id {id} is out of range (the vocabulary has {} ids)",
                self.len()
            )))
        }
    }
}

/// A tokenizer for one model: encoding, decoding, token bytes and offsets.
///
/// Cheap to clone (the per-token tables are shared). Thread-safe.
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    table: Arc<TokenTable>,
    /// Tokens are byte-level BPE tokens: `token_bytes` concatenated is exactly the text, and
    /// decoding is done from `token_bytes`.
    byte_level: bool,
    bos: Option<u32>,
    eos: Option<u32>,
    pad: Option<u32>,
    unk: Option<u32>,
    stop_ids: Vec<u32>,
    /// Prepend `bos` / append `eos` when `add_special_tokens` (GGUF tokenizers only; a
    /// `tokenizer.json` does this with its own post-processor).
    add_bos: bool,
    add_eos: bool,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("byte_level", &self.byte_level)
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("stop_ids", &self.stop_ids)
            .finish_non_exhaustive()
    }
}

/// The GPT-2 byte-to-unicode table: byte `b` is written as `BYTE_CHARS[b]` in byte-level BPE
/// vocabularies (printable bytes stand for themselves, the rest are shifted above U+0100).
fn byte_chars() -> &'static [char; 256] {
    static TABLE: OnceLock<[char; 256]> = OnceLock::new();
    TABLE.get_or_init(|| {
        let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        let mut table = ['\0'; 256];
        let mut shifted = 0u32;
        for b in 0..=255u8 {
            table[b as usize] = if printable(b) {
                char::from(b)
            } else {
                let c = char::from_u32(256 + shifted).unwrap_or('\u{FFFD}');
                shifted += 1;
                c
            };
        }
        table
    })
}

/// Inverse of [`byte_chars`]: the byte a byte-level character stands for.
fn char_byte(c: char) -> Option<u8> {
    static INVERSE: OnceLock<HashMap<char, u8>> = OnceLock::new();
    INVERSE
        .get_or_init(|| {
            byte_chars()
                .iter()
                .enumerate()
                .map(|(b, &c)| (c, b as u8))
                .collect()
        })
        .get(&c)
        .copied()
}

/// Raw bytes of a byte-level BPE token string. A string with a character outside the
/// byte-level alphabet is taken as literal text, as the `ByteLevel` decoder of `tokenizers` does.
fn byte_level_token_bytes(token: &str) -> Vec<u8> {
    token
        .chars()
        .map(char_byte)
        .collect::<Option<Vec<u8>>>()
        .unwrap_or_else(|| token.as_bytes().to_vec())
}

/// Raw bytes of a token of a non-byte-level vocabulary (SentencePiece style): `<0xNN>` byte
/// tokens are that byte, `▁` is a space, anything else is its UTF-8 text.
fn sentencepiece_token_bytes(token: &str) -> Vec<u8> {
    if let Some(hex) = token
        .strip_prefix("<0x")
        .and_then(|rest| rest.strip_suffix('>'))
    {
        if hex.len() == 2 {
            if let Ok(b) = u8::from_str_radix(hex, 16) {
                return vec![b];
            }
        }
    }
    token.replace('\u{2581}', " ").into_bytes()
}

fn tok_err(context: &str, e: impl std::fmt::Display) -> LmError {
    LmError::Tokenizer(format!("{context}: {e}"))
}

// ---------------------------------------------------------------------------------------------
// GGUF metadata access
// ---------------------------------------------------------------------------------------------

fn meta_err(key: &str, reason: impl Into<String>) -> LmError {
    LmError::Metadata {
        key: key.to_string(),
        reason: reason.into(),
    }
}

fn value_kind(v: &Value) -> String {
    format!("{:?}", v.value_type())
}

fn meta_str<'a>(c: &'a Content, key: &str) -> Result<Option<&'a str>> {
    match c.metadata.get(key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(v) => Err(meta_err(
            key,
            format!("expected a string, found {}", value_kind(v)),
        )),
    }
}

fn value_as_i64(v: &Value) -> Option<i64> {
    match *v {
        Value::U8(x) => Some(x.into()),
        Value::I8(x) => Some(x.into()),
        Value::U16(x) => Some(x.into()),
        Value::I16(x) => Some(x.into()),
        Value::U32(x) => Some(x.into()),
        Value::I32(x) => Some(x.into()),
        Value::U64(x) => i64::try_from(x).ok(),
        Value::I64(x) => Some(x),
        _ => None,
    }
}

fn meta_u32(c: &Content, key: &str) -> Result<Option<u32>> {
    match c.metadata.get(key) {
        None => Ok(None),
        Some(v) => value_as_i64(v)
            .and_then(|x| u32::try_from(x).ok())
            .map(Some)
            .ok_or_else(|| {
                meta_err(
                    key,
                    format!("expected a non-negative 32-bit integer, found {v:?}"),
                )
            }),
    }
}

fn meta_bool(c: &Content, key: &str) -> Result<Option<bool>> {
    match c.metadata.get(key) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(v) => Err(meta_err(
            key,
            format!("expected a bool, found {}", value_kind(v)),
        )),
    }
}

fn meta_str_array<'a>(c: &'a Content, key: &str) -> Result<Option<Vec<&'a str>>> {
    match c.metadata.get(key) {
        None => Ok(None),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::String(s) => Ok(s.as_str()),
                other => Err(meta_err(
                    key,
                    format!(
                        "expected an array of strings, element {i} is {}",
                        value_kind(other)
                    ),
                )),
            })
            .collect::<Result<Vec<_>>>()
            .map(Some),
        Some(v) => Err(meta_err(
            key,
            format!("expected an array of strings, found {}", value_kind(v)),
        )),
    }
}

fn meta_int_array(c: &Content, key: &str) -> Result<Option<Vec<i64>>> {
    match c.metadata.get(key) {
        None => Ok(None),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, v)| {
                value_as_i64(v).ok_or_else(|| {
                    meta_err(
                        key,
                        format!(
                            "expected an array of integers, element {i} is {}",
                            value_kind(v)
                        ),
                    )
                })
            })
            .collect::<Result<Vec<_>>>()
            .map(Some),
        Some(v) => Err(meta_err(
            key,
            format!("expected an array of integers, found {}", value_kind(v)),
        )),
    }
}

/// Pre-tokenizer (and normaliser) of a byte-level BPE GGUF vocabulary, by `tokenizer.ggml.pre`.
struct PreTokenization {
    pre_tokenizer: PreTokenizerWrapper,
    nfc: bool,
    ignore_merges: bool,
}

fn split_then_byte_level(regex: &str, trim_offsets: bool) -> Result<PreTokenizerWrapper> {
    let split = Split::new(
        SplitPattern::Regex(regex.to_string()),
        SplitDelimiterBehavior::Isolated,
        false,
    )
    .map_err(|e| tok_err("cannot compile the pre-tokenizer regex", e))?;
    Ok(PreTokenizerWrapper::Sequence(Sequence::new(vec![
        PreTokenizerWrapper::Split(split),
        PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, trim_offsets, false)),
    ])))
}

fn pre_tokenization(pre: &str) -> Result<PreTokenization> {
    let gpt2 = || PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, true));
    Ok(match pre {
        // StarCoder-family vocabularies: every digit alone, then the GPT-2 split.
        "smollm" | "starcoder" | "refact" => PreTokenization {
            pre_tokenizer: PreTokenizerWrapper::Sequence(Sequence::new(vec![
                PreTokenizerWrapper::Digits(Digits::new(true)),
                gpt2(),
            ])),
            nfc: false,
            ignore_merges: false,
        },
        "gpt2" | "default" => PreTokenization {
            pre_tokenizer: gpt2(),
            nfc: false,
            ignore_merges: false,
        },
        "llama-bpe" => PreTokenization {
            pre_tokenizer: split_then_byte_level(LLAMA3_SPLIT_REGEX, true)?,
            nfc: false,
            ignore_merges: true,
        },
        "qwen2" | "deepseek-r1-qwen" => PreTokenization {
            pre_tokenizer: split_then_byte_level(QWEN2_SPLIT_REGEX, false)?,
            nfc: true,
            ignore_merges: false,
        },
        other => {
            return Err(LmError::Unsupported(format!(
                "GGUF pre-tokenizer `tokenizer.ggml.pre = {other:?}` is not supported \
                 (supported: smollm, starcoder, refact, gpt2, default, llama-bpe, qwen2, \
                 deepseek-r1-qwen)"
            )))
        }
    })
}

/// Reads `bos_token`-style entries of a `tokenizer_config.json`: a string or `{"content": ..}`.
fn config_token(config: &serde_json::Value, key: &str) -> Option<String> {
    match config.get(key)? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Object(m) => m.get("content")?.as_str().map(str::to_string),
        _ => None,
    }
}

fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).map_err(|e| LmError::io(path, e))?;
    serde_json::from_str(&text).map_err(|source| LmError::Json {
        context: path.display().to_string(),
        source,
    })
}

impl Tokenizer {
    /// Loads a Hugging Face `tokenizer.json`.
    ///
    /// Hugging Face keeps the names of the BOS/EOS tokens in `tokenizer_config.json`; when that
    /// file sits next to `path` its `bos_token`, `eos_token`, `pad_token` and `unk_token` are
    /// read, and so are the `eos_token_id`s of a neighbouring `generation_config.json` (they
    /// join [`Tokenizer::eos_token_ids`]). BOS insertion on `add_special_tokens` is left to the
    /// file's own post-processor.
    ///
    /// Token bytes: vocabularies with a `ByteLevel` decoder are exact. For other vocabularies
    /// the bytes are a best effort (`<0xNN>` byte tokens are that byte, `▁` is a space), so
    /// offsets fall back to what `tokenizers` reports and decoding to its decoder.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| LmError::io(path, e))?;
        let inner: tokenizers::Tokenizer = text
            .parse()
            .map_err(|e| tok_err(&format!("cannot load {}", path.display()), e))?;

        let byte_level = match inner.get_decoder() {
            Some(DecoderWrapper::ByteLevel(_)) => true,
            Some(decoder) => serde_json::to_string(decoder)
                .map(|s| s.contains(r#""type":"ByteLevel""#))
                .unwrap_or(false),
            None => false,
        };

        let dir = path.parent().unwrap_or_else(|| Path::new("."));
        let config_path = dir.join("tokenizer_config.json");
        let config = if config_path.is_file() {
            Some(read_json(&config_path)?)
        } else {
            None
        };
        let id_of = |key: &str| {
            config
                .as_ref()
                .and_then(|c| config_token(c, key))
                .and_then(|t| inner.token_to_id(&t))
        };
        let (bos, eos, pad, unk) = (
            id_of("bos_token"),
            id_of("eos_token"),
            id_of("pad_token"),
            id_of("unk_token"),
        );

        let mut extra_stops = Vec::new();
        let gen_path = dir.join("generation_config.json");
        if gen_path.is_file() {
            let gen = read_json(&gen_path)?;
            match gen.get("eos_token_id") {
                Some(serde_json::Value::Array(ids)) => extra_stops.extend(
                    ids.iter()
                        .filter_map(|v| v.as_u64().and_then(|x| u32::try_from(x).ok())),
                ),
                Some(v) => {
                    extra_stops.extend(v.as_u64().and_then(|x| u32::try_from(x).ok()));
                }
                None => {}
            }
        }

        let table = Self::table_from_inner(&inner, byte_level);
        Ok(Self::assemble(
            inner,
            table,
            byte_level,
            (bos, eos, pad, unk),
            extra_stops,
            (false, false),
        ))
    }

    fn table_from_inner(inner: &tokenizers::Tokenizer, byte_level: bool) -> TokenTable {
        let added = inner.get_added_tokens_decoder();
        let max_added = added.keys().copied().max().map_or(0, |m| m as usize + 1);
        let len = inner.get_vocab_size(false).max(max_added);
        let mut table = TokenTable {
            bytes: Vec::with_capacity(len),
            strings: Vec::with_capacity(len),
            special: Vec::with_capacity(len),
        };
        for id in 0..len {
            let id = id as u32;
            let (bytes, string, special) = if let Some(tok) = added.get(&id) {
                (
                    tok.content.as_bytes().to_vec(),
                    Some(tok.content.clone()),
                    tok.special,
                )
            } else if let Some(s) = inner.get_model().id_to_token(id) {
                let bytes = if byte_level {
                    byte_level_token_bytes(&s)
                } else {
                    sentencepiece_token_bytes(&s)
                };
                (bytes, Some(s), false)
            } else {
                (Vec::new(), None, false)
            };
            table.bytes.push(bytes.into_boxed_slice());
            table.strings.push(string);
            table.special.push(special);
        }
        table
    }

    /// Builds the tokenizer stored in a GGUF model file's metadata.
    ///
    /// Reads `tokenizer.ggml.model` (must be `"gpt2"`, i.e. byte-level BPE; SentencePiece
    /// `"llama"` vocabularies are not supported yet), `tokenizer.ggml.tokens`,
    /// `tokenizer.ggml.merges`, `tokenizer.ggml.token_type` (type 3, control, becomes a special
    /// token; type 4, user-defined, a non-special added token; both are recognised whole in
    /// text), `tokenizer.ggml.{bos,eos,padding,unknown}_token_id`,
    /// `tokenizer.ggml.{eot,eom}_token_id` (stop ids) and `tokenizer.ggml.add_{bos,eos}_token`.
    ///
    /// `tokenizer.ggml.pre` picks the pre-tokenizer, following each model's `tokenizer.json`:
    /// - `smollm`, `starcoder`, `refact`: single digits, then GPT-2's byte-level split
    ///   (no prefix space);
    /// - `gpt2`, and `default` or a missing key: GPT-2's byte-level split (for `default` this
    ///   approximates llama.cpp's generic BPE split);
    /// - `llama-bpe` (Llama 3): Llama 3's split regex (digits in groups of up to three), then
    ///   byte-level; whole-word vocabulary hits skip the merges as in its `tokenizer.json`;
    /// - `qwen2`, `deepseek-r1-qwen`: NFC normalisation, Qwen2's split regex (single digits),
    ///   then byte-level.
    ///
    /// Any other value is an [`LmError::Unsupported`] error rather than a silently wrong
    /// tokenisation.
    pub fn from_gguf(content: &Content) -> Result<Self> {
        let model_key = "tokenizer.ggml.model";
        let model = meta_str(content, model_key)?
            .ok_or_else(|| meta_err(model_key, "missing: the file has no tokenizer"))?;
        match model {
            "gpt2" => {}
            "llama" => {
                return Err(LmError::Unsupported(
                    "SentencePiece tokenizers (GGUF `tokenizer.ggml.model = \"llama\"`) are not \
                     supported yet; only byte-level BPE (`\"gpt2\"`) GGUF tokenizers are"
                        .to_string(),
                ))
            }
            other => {
                return Err(LmError::Unsupported(format!(
                    "GGUF tokenizer model {other:?} is not supported; only byte-level BPE \
                     (`tokenizer.ggml.model = \"gpt2\"`) is"
                )))
            }
        }

        let tokens_key = "tokenizer.ggml.tokens";
        let tokens =
            meta_str_array(content, tokens_key)?.ok_or_else(|| meta_err(tokens_key, "missing"))?;
        if tokens.is_empty() {
            return Err(meta_err(tokens_key, "the vocabulary is empty"));
        }
        if u32::try_from(tokens.len()).is_err() {
            return Err(meta_err(tokens_key, "more than 2^32 tokens"));
        }
        let merges_key = "tokenizer.ggml.merges";
        let merge_strings = meta_str_array(content, merges_key)?
            .ok_or_else(|| meta_err(merges_key, "missing (required for a BPE vocabulary)"))?;
        let types_key = "tokenizer.ggml.token_type";
        let types = meta_int_array(content, types_key)?;
        if let Some(t) = &types {
            if t.len() != tokens.len() {
                return Err(meta_err(
                    types_key,
                    format!(
                        "has {} entries but the vocabulary has {} tokens",
                        t.len(),
                        tokens.len()
                    ),
                ));
            }
        }

        let n = tokens.len();
        let id_key = |name: &str| -> Result<Option<u32>> {
            let key = format!("tokenizer.ggml.{name}_token_id");
            match meta_u32(content, &key)? {
                Some(id) if id as usize >= n => Err(meta_err(
                    &key,
                    format!("id {id} is outside the vocabulary of {n} tokens"),
                )),
                other => Ok(other),
            }
        };
        let bos = id_key("bos")?;
        let eos = id_key("eos")?;
        let pad = id_key("padding")?;
        let unk = id_key("unknown")?;
        let eot = id_key("eot")?;
        let eom = id_key("eom")?;
        let add_bos = meta_bool(content, "tokenizer.ggml.add_bos_token")?.unwrap_or(false);
        let add_eos = meta_bool(content, "tokenizer.ggml.add_eos_token")?.unwrap_or(false);
        let pre = meta_str(content, "tokenizer.ggml.pre")?.unwrap_or("default");
        let pre = pre_tokenization(pre)?;

        // Vocabulary: the first id wins when a string appears twice.
        let mut vocab = Vocab::default();
        for (id, tok) in tokens.iter().enumerate() {
            vocab.entry((*tok).to_string()).or_insert(id as u32);
        }
        let mut merges: Merges = Vec::with_capacity(merge_strings.len());
        for (i, m) in merge_strings.iter().enumerate() {
            let (a, b) = m.split_once(' ').ok_or_else(|| {
                meta_err(
                    merges_key,
                    format!("merge {i} ({m:?}) is not two tokens separated by a space"),
                )
            })?;
            merges.push((a.to_string(), b.to_string()));
        }
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .ignore_merges(pre.ignore_merges)
            .build()
            .map_err(|e| tok_err("cannot build the BPE model from the GGUF vocabulary", e))?;

        let mut inner = tokenizers::Tokenizer::new(bpe);
        if pre.nfc {
            inner
                .with_normalizer(Some(NFC))
                .map_err(|e| tok_err("cannot set the NFC normaliser", e))?;
        }
        inner.with_pre_tokenizer(Some(pre.pre_tokenizer));
        inner.with_decoder(Some(ByteLevel::default()));

        // Special and user-defined tokens, matched whole in text.
        let mut special_ids: HashSet<u32> = HashSet::new();
        let mut added_special = Vec::new();
        let mut added_plain = Vec::new();
        for (id, tok) in tokens.iter().enumerate() {
            let ty = types.as_ref().map_or(1, |t| t[id]);
            let is_control =
                ty == TOKEN_TYPE_CONTROL || Some(id as u32) == bos || Some(id as u32) == eos;
            if tok.is_empty() {
                continue;
            }
            if is_control {
                special_ids.insert(id as u32);
                added_special.push(AddedToken::from(*tok, true));
            } else if ty == TOKEN_TYPE_USER_DEFINED {
                added_plain.push(AddedToken::from(*tok, false).normalized(false));
            }
        }
        inner
            .add_special_tokens(added_special)
            .map_err(|e| tok_err("cannot add the special tokens", e))?;
        inner
            .add_tokens(added_plain)
            .map_err(|e| tok_err("cannot add the user-defined tokens", e))?;

        let mut table = TokenTable {
            bytes: Vec::with_capacity(n),
            strings: Vec::with_capacity(n),
            special: Vec::with_capacity(n),
        };
        for (id, tok) in tokens.iter().enumerate() {
            let ty = types.as_ref().map_or(1, |t| t[id]);
            let special = special_ids.contains(&(id as u32));
            let bytes = if special || ty == TOKEN_TYPE_USER_DEFINED {
                tok.as_bytes().to_vec()
            } else {
                byte_level_token_bytes(tok)
            };
            table.bytes.push(bytes.into_boxed_slice());
            table.strings.push(Some((*tok).to_string()));
            table.special.push(special);
        }

        let extra_stops: Vec<u32> = eot.into_iter().chain(eom).collect();
        Ok(Self::assemble(
            inner,
            table,
            true,
            (bos, eos, pad, unk),
            extra_stops,
            (add_bos, add_eos),
        ))
    }

    fn assemble(
        inner: tokenizers::Tokenizer,
        table: TokenTable,
        byte_level: bool,
        (bos, eos, pad, unk): (Option<u32>, Option<u32>, Option<u32>, Option<u32>),
        extra_stops: Vec<u32>,
        (add_bos, add_eos): (bool, bool),
    ) -> Self {
        let mut stop_ids: Vec<u32> = Vec::new();
        let mut push = |id: u32| {
            if (id as usize) < table.len() && !stop_ids.contains(&id) {
                stop_ids.push(id);
            }
        };
        eos.into_iter().chain(extra_stops).for_each(&mut push);
        for name in KNOWN_STOP_TOKENS {
            if let Some(id) = inner.token_to_id(name) {
                if table.is_special(id) {
                    push(id);
                }
            }
        }
        Self {
            inner,
            table: Arc::new(table),
            byte_level,
            bos,
            eos,
            pad,
            unk,
            stop_ids,
            add_bos,
            add_eos,
        }
    }

    /// Encodes `text` to token ids. Special tokens written in the text (such as
    /// `<|im_start|>`) are always recognised as single tokens; `add_special_tokens` adds the
    /// BOS/EOS the model wants around a sequence (GGUF `add_bos_token`/`add_eos_token`, or the
    /// `tokenizer.json` post-processor).
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode_fast(text, add_special_tokens)
            .map_err(|e| tok_err("cannot encode text", e))?;
        let mut ids = enc.get_ids().to_vec();
        if add_special_tokens {
            if let (true, Some(bos)) = (self.add_bos, self.bos) {
                ids.insert(0, bos);
            }
            if let (true, Some(eos)) = (self.add_eos, self.eos) {
                ids.push(eos);
            }
        }
        Ok(ids)
    }

    /// Encodes `text` (without adding BOS/EOS) and returns, for every token, its byte range
    /// `start..end` in `text`.
    ///
    /// For byte-level vocabularies the ranges tile `text` exactly: the first starts at 0, each
    /// starts where the previous one ended, the last ends at `text.len()`, and
    /// `&text.as_bytes()[start..end] == token_bytes(id)`. A token holding only part of a
    /// multi-byte UTF-8 character (byte-level BPE splits rare characters into bytes) gets
    /// exactly the bytes it holds, so its range may start or end inside a character: slice
    /// `text.as_bytes()`, not `text`, or widen the range with [`widen_to_char_boundaries`].
    ///
    /// If the tokens' bytes do not spell `text` (a normaliser changed it, or a non-byte-level
    /// vocabulary), the offsets `tokenizers` reports are returned instead; those are
    /// character-aligned and may overlap or leave gaps.
    pub fn encode_with_offsets(&self, text: &str) -> Result<(Vec<u32>, Vec<ByteSpan>)> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| tok_err("cannot encode text", e))?;
        let ids = enc.get_ids().to_vec();
        let offsets = self.token_offsets_in_decoded(&ids);
        let bytes = text.as_bytes();
        let spells_text = offsets.last().map_or(0, |o| o.1) == bytes.len()
            && ids
                .iter()
                .zip(&offsets)
                .all(|(&id, &(s, e))| &bytes[s..e] == self.token_bytes(id));
        if spells_text {
            Ok((ids, offsets))
        } else {
            Ok((ids, enc.get_offsets().to_vec()))
        }
    }

    /// Decodes ids to text. With `skip_special`, special tokens are left out; otherwise they
    /// appear as their text. Byte sequences that are not valid UTF-8 (a completion cut inside a
    /// character) become U+FFFD. Errors on ids outside the vocabulary.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        for &id in ids {
            self.table.check_id(id)?;
        }
        if self.byte_level {
            Ok(String::from_utf8_lossy(&self.decode_bytes(ids, skip_special)).into_owned())
        } else {
            self.inner
                .decode(ids, skip_special)
                .map_err(|e| tok_err("cannot decode ids", e))
        }
    }

    /// The raw bytes of `ids` concatenated (special tokens as their text unless
    /// `skip_special`). Ids outside the vocabulary contribute nothing.
    pub fn decode_bytes(&self, ids: &[u32], skip_special: bool) -> Vec<u8> {
        let mut out = Vec::new();
        for &id in ids {
            if !(skip_special && self.table.is_special(id)) {
                out.extend_from_slice(self.table.bytes_of(id));
            }
        }
        out
    }

    /// The exact raw bytes token `id` stands for (byte-level mapping undone); a special or
    /// added token stands for its text. Empty for ids outside the vocabulary.
    pub fn token_bytes(&self, id: u32) -> &[u8] {
        self.table.bytes_of(id)
    }

    /// Byte range of each token in the concatenation of their [`Tokenizer::token_bytes`]
    /// (special tokens included, as their text). For a byte-level vocabulary that
    /// concatenation is what `decode(ids, false)` returns whenever it is valid UTF-8. Ids
    /// outside the vocabulary get an empty range.
    pub fn token_offsets_in_decoded(&self, ids: &[u32]) -> Vec<ByteSpan> {
        let mut pos = 0usize;
        ids.iter()
            .map(|&id| {
                let start = pos;
                pos += self.table.bytes_of(id).len();
                (start, pos)
            })
            .collect()
    }

    /// Number of ids: one more than the largest id of the vocabulary, added tokens included.
    /// (The model's embedding matrix may have more rows.)
    pub fn vocab_size(&self) -> usize {
        self.table.len()
    }

    /// The vocabulary string of `id` (byte-level form, e.g. `Ġworld`, for BPE tokens; the text
    /// for special tokens).
    pub fn id_to_token(&self, id: u32) -> Option<&str> {
        self.table
            .strings
            .get(id as usize)
            .and_then(|s| s.as_deref())
    }

    /// The id of a vocabulary string (byte-level form) or of a special/added token's text.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Whether `id` is a special (control) token.
    pub fn is_special(&self, id: u32) -> bool {
        self.table.is_special(id)
    }

    /// Id of the beginning-of-sequence token, if the model has one.
    pub fn bos_token_id(&self) -> Option<u32> {
        self.bos
    }

    /// Id of the end-of-sequence token the model metadata names, if any.
    pub fn eos_token_id(&self) -> Option<u32> {
        self.eos
    }

    /// Id of the padding token, if the model names one.
    pub fn pad_token_id(&self) -> Option<u32> {
        self.pad
    }

    /// Id of the unknown token, if the model names one.
    pub fn unk_token_id(&self) -> Option<u32> {
        self.unk
    }

    /// Ids that end generation: the EOS, GGUF `eot`/`eom` ids or `generation_config.json`
    /// EOS ids, and the special tokens among `<|im_end|>`, `<|endoftext|>`, `<|eot_id|>`,
    /// `<|eom_id|>`, `<|end_of_text|>`, `<end_of_turn>`, `<|end|>`, `</s>` that the vocabulary
    /// has. EOS first, no duplicates.
    pub fn eos_token_ids(&self) -> Vec<u32> {
        self.stop_ids.clone()
    }

    /// Text of the BOS token (what chat templates call `bos_token`).
    pub fn bos_token(&self) -> Option<String> {
        self.bos
            .and_then(|id| self.id_to_token(id))
            .map(str::to_string)
    }

    /// Text of the EOS token (what chat templates call `eos_token`).
    pub fn eos_token(&self) -> Option<String> {
        self.eos
            .and_then(|id| self.id_to_token(id))
            .map(str::to_string)
    }

    /// A fresh incremental detokeniser over this vocabulary.
    pub fn stream_decoder(&self, skip_special: bool) -> StreamDecoder {
        StreamDecoder {
            table: Arc::clone(&self.table),
            skip_special,
            pending: Vec::new(),
        }
    }

    /// The wrapped `tokenizers` tokenizer.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
}

/// Widens a byte range of `text` to the enclosing character boundaries, so that
/// `&text[start..end]` is valid. Ranges past the end are clamped to `text.len()`.
pub fn widen_to_char_boundaries(text: &str, (start, end): ByteSpan) -> ByteSpan {
    let mut s = start.min(text.len());
    let mut e = end.clamp(s, text.len());
    while !text.is_char_boundary(s) {
        s -= 1;
    }
    while !text.is_char_boundary(e) {
        e += 1;
    }
    (s, e)
}

/// Turns token ids, given one at a time, into text as soon as it is complete UTF-8.
///
/// Bytes of a multi-byte character split over several tokens are held back until the
/// character is complete; byte sequences that can never become valid UTF-8 are emitted as
/// U+FFFD. The concatenation of everything [`StreamDecoder::push`] and
/// [`StreamDecoder::flush`] return equals `String::from_utf8_lossy` of all the tokens' bytes,
/// which for byte-level vocabularies is [`Tokenizer::decode`].
#[derive(Debug, Clone)]
pub struct StreamDecoder {
    table: Arc<TokenTable>,
    skip_special: bool,
    pending: Vec<u8>,
}

impl StreamDecoder {
    /// Adds one token and returns the text it completes (possibly empty). Errors on ids
    /// outside the vocabulary, leaving the decoder unchanged.
    pub fn push(&mut self, id: u32) -> Result<String> {
        self.table.check_id(id)?;
        if self.skip_special && self.table.is_special(id) {
            return Ok(String::new());
        }
        self.pending.extend_from_slice(self.table.bytes_of(id));
        let mut out = String::new();
        loop {
            match std::str::from_utf8(&self.pending) {
                Ok(s) => {
                    out.push_str(s);
                    self.pending.clear();
                    break;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    // `valid` bytes were just checked to be UTF-8.
                    out.push_str(&String::from_utf8_lossy(&self.pending[..valid]));
                    match e.error_len() {
                        // Incomplete character at the end: keep it for the next token.
                        None => {
                            self.pending.drain(..valid);
                            break;
                        }
                        Some(bad) => {
                            out.push('\u{FFFD}');
                            self.pending.drain(..valid + bad);
                        }
                    }
                }
            }
        }
        Ok(out)
    }

    /// Returns what is still held back (an incomplete character, as U+FFFD) and resets.
    pub fn flush(&mut self) -> String {
        let out = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        out
    }

    /// Bytes held back waiting for the rest of a character.
    pub fn pending_bytes(&self) -> &[u8] {
        &self.pending
    }
}

/// The GGUF model used by tests: `$SRCODE_TEST_GGUF`, else
/// `$SRCODE_HOME/models/SmolLM2-135M-Instruct.Q4_1.gguf` (`SRCODE_HOME` defaults to
/// `~/.cache/srcode`). Returns `None`, after printing why the caller should skip, when the
/// file is not there.
#[doc(hidden)]
pub fn default_test_gguf() -> Option<PathBuf> {
    let path = if let Some(p) = std::env::var_os("SRCODE_TEST_GGUF") {
        PathBuf::from(p)
    } else {
        let home = match std::env::var_os("SRCODE_HOME") {
            Some(h) => PathBuf::from(h),
            None => match std::env::var_os("HOME") {
                Some(h) => PathBuf::from(h).join(".cache").join("srcode"),
                None => {
                    eprintln!(
                        "skipping: no test GGUF (set SRCODE_TEST_GGUF to \
                         SmolLM2-135M-Instruct.Q4_1.gguf; neither SRCODE_HOME nor HOME is set)"
                    );
                    return None;
                }
            },
        };
        home.join("models").join("SmolLM2-135M-Instruct.Q4_1.gguf")
    };
    if path.is_file() {
        Some(path)
    } else {
        eprintln!(
            "skipping: test GGUF {} not found (set SRCODE_TEST_GGUF to the path of \
             SmolLM2-135M-Instruct.Q4_1.gguf, or put it under $SRCODE_HOME/models/)",
            path.display()
        );
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::gguf_file::VersionedMagic;

    /// The SmolLM2 tokenizer from the test GGUF, loaded once.
    fn smollm2() -> Option<&'static Tokenizer> {
        static TOK: OnceLock<Option<Tokenizer>> = OnceLock::new();
        let path = default_test_gguf()?;
        TOK.get_or_init(|| {
            let mut f = std::fs::File::open(&path).expect("open test GGUF");
            let content = Content::read(&mut f).expect("read GGUF metadata");
            Some(Tokenizer::from_gguf(&content).expect("tokenizer from GGUF"))
        })
        .as_ref()
    }

    fn check_offsets_tile(tok: &Tokenizer, text: &str) {
        let (ids, offsets) = tok.encode_with_offsets(text).unwrap();
        assert_eq!(ids.len(), offsets.len());
        let mut pos = 0;
        for (&id, &(s, e)) in ids.iter().zip(&offsets) {
            assert_eq!(s, pos, "offsets must be contiguous for {text:?}");
            assert_eq!(&text.as_bytes()[s..e], tok.token_bytes(id));
            pos = e;
        }
        assert_eq!(pos, text.len(), "offsets must cover {text:?}");
        assert_eq!(ids, tok.encode(text, false).unwrap());
        assert_eq!(offsets, tok.token_offsets_in_decoded(&ids));
    }

    // Ids below were cross-checked with the Python `tokenizers` 0.23.3 package, building the
    // SmolLM2 tokenizer.json pipeline (BPE + Digits(individual) + ByteLevel) from this GGUF's
    // vocabulary and merges; `<|im_start|>system` = [1, 9690] is also documented in
    // RUNTIME-NOTES.md.
    #[test]
    fn smollm2_known_ids() {
        let Some(tok) = smollm2() else { return };
        assert_eq!(tok.encode("<|im_start|>system", false).unwrap(), [1, 9690]);
        assert_eq!(tok.encode("<|im_start|>system", true).unwrap(), [1, 9690]);
        assert_eq!(tok.encode("Hello world", false).unwrap(), HELLO_WORLD);
        assert_eq!(tok.encode("x = 12345", false).unwrap(), X_EQ_DIGITS);
        assert_eq!(tok.encode(CODE, false).unwrap(), CODE_IDS);
        assert_eq!(tok.encode(UNICODE, false).unwrap(), UNICODE_IDS);
        // Tokens inside 日 (bytes e6 97 a5, after the space at byte 10) get its bytes exactly.
        let (_, offsets) = tok.encode_with_offsets(UNICODE).unwrap();
        assert_eq!(&offsets[3..6], [(10, 12), (12, 13), (13, 14)]);
        assert_eq!(tok.token_bytes(17097), b" \xE6");
        assert_eq!(tok.vocab_size(), 49152);
        assert_eq!(tok.bos_token_id(), Some(1));
        assert_eq!(tok.bos_token().as_deref(), Some("<|im_start|>"));
        assert_eq!(tok.eos_token().as_deref(), Some("<|im_end|>"));
        assert_eq!(tok.eos_token_ids(), [2, 0]);
        assert_eq!(tok.id_to_token(9690), Some("system"));
        assert_eq!(tok.token_to_id("<|im_end|>"), Some(2));
        assert!(tok.is_special(2) && !tok.is_special(9690));
        assert_eq!(tok.token_bytes(1), b"<|im_start|>");
    }

    const HELLO_WORLD: [u32; 2] = [19556, 905];
    const X_EQ_DIGITS: [u32; 8] = [104, 446, 216, 33, 34, 35, 36, 37];
    const CODE: &str = "int main(void) {\n\tchar buf[16];\n\treturn 0;\n}\n";
    const CODE_IDS: [u32; 23] = [
        591, 1085, 24, 32439, 25, 1662, 198, 197, 9061, 27396, 75, 33, 38, 26695, 198, 197, 5406,
        216, 32, 43, 198, 109, 198,
    ];
    const UNICODE: &str = "naïve — 日本語 🙂";
    /// `na`, `ïve`, ` —`, ` ` + first byte of 日, its 2nd byte, its 3rd byte, `本`, the three
    /// bytes of 語, ` 🙂`.
    const UNICODE_IDS: [u32; 11] = [
        3546, 46494, 1841, 17097, 241, 115, 40993, 179, 120, 248, 47526,
    ];

    #[test]
    fn smollm2_round_trip_and_offsets() {
        let Some(tok) = smollm2() else { return };
        for text in [
            "Hello world",
            "x = 12345",
            CODE,
            "def f(a,\tb):\n    return a  +  b\r\n\n\n  # done  ",
            UNICODE,
            "<|im_start|>user\nhi<|im_end|>\n",
            "",
        ] {
            let ids = tok.encode(text, false).unwrap();
            assert_eq!(tok.decode(&ids, false).unwrap(), text);
            check_offsets_tile(tok, text);
            let mut stream = tok.stream_decoder(false);
            let mut streamed = String::new();
            for &id in &ids {
                streamed.push_str(&stream.push(id).unwrap());
            }
            streamed.push_str(&stream.flush());
            assert_eq!(streamed, text);
        }
        let ids = tok.encode("<|im_start|>user\nhi<|im_end|>", false).unwrap();
        assert_eq!(tok.decode(&ids, true).unwrap(), "user\nhi");
        assert!(tok.decode(&[49152], false).is_err());
    }

    // ---- tiny synthetic GGUF vocabulary: works without the model file ----

    fn string_array(items: &[&str]) -> Value {
        Value::Array(items.iter().map(|s| Value::String(s.to_string())).collect())
    }

    /// A byte-level vocabulary: the 256 byte characters, a few merges, two control tokens.
    fn toy_content(pre: &str) -> Content {
        let mut tokens: Vec<String> = byte_chars().iter().map(|c| c.to_string()).collect();
        let mut types = vec![Value::I32(1); 256];
        for special in ["<|im_start|>", "<|im_end|>"] {
            tokens.push(special.to_string());
            types.push(Value::I32(TOKEN_TYPE_CONTROL as i32));
        }
        let merges = ["h e", "l l", "he ll", "hell o", "Ġ w"];
        for m in merges {
            tokens.push(m.replace(' ', ""));
            types.push(Value::I32(1));
        }
        let mut metadata = HashMap::new();
        metadata.insert(
            "tokenizer.ggml.model".to_string(),
            Value::String("gpt2".into()),
        );
        metadata.insert("tokenizer.ggml.pre".to_string(), Value::String(pre.into()));
        let token_refs: Vec<&str> = tokens.iter().map(String::as_str).collect();
        metadata.insert(
            "tokenizer.ggml.tokens".to_string(),
            string_array(&token_refs),
        );
        metadata.insert("tokenizer.ggml.merges".to_string(), string_array(&merges));
        metadata.insert("tokenizer.ggml.token_type".to_string(), Value::Array(types));
        metadata.insert("tokenizer.ggml.bos_token_id".to_string(), Value::U32(256));
        metadata.insert("tokenizer.ggml.eos_token_id".to_string(), Value::U32(257));
        Content {
            magic: VersionedMagic::GgufV3,
            metadata,
            tensor_infos: HashMap::new(),
            tensor_data_offset: 0,
        }
    }

    #[test]
    fn toy_vocab_encodes_and_splits_multibyte_chars() {
        let tok = Tokenizer::from_gguf(&toy_content("smollm")).unwrap();
        let hello = tok.encode("hello", false).unwrap();
        assert_eq!(hello, [tok.token_to_id("hello").unwrap()]);
        assert_eq!(
            tok.encode("<|im_start|>hello<|im_end|>", false).unwrap(),
            [256, hello[0], 257]
        );
        assert_eq!(tok.eos_token_ids(), [257]);
        // "日" is three bytes, three tokens: offsets split inside the character.
        let text = "a日b";
        let (ids, offsets) = tok.encode_with_offsets(text).unwrap();
        assert_eq!(ids.len(), 5);
        assert_eq!(offsets, [(0, 1), (1, 2), (2, 3), (3, 4), (4, 5)]);
        assert_eq!(widen_to_char_boundaries(text, offsets[2]), (1, 4));
        assert_eq!(tok.decode(&ids, false).unwrap(), text);
        // Cutting inside the character decodes lossily.
        assert_eq!(tok.decode(&ids[..2], false).unwrap(), "a\u{FFFD}");
    }

    #[test]
    fn stream_decoder_holds_back_partial_characters() {
        let tok = Tokenizer::from_gguf(&toy_content("gpt2")).unwrap();
        let ids = tok.encode("日x🙂", false).unwrap();
        assert_eq!(ids.len(), 8);
        let mut s = tok.stream_decoder(false);
        let outs: Vec<String> = ids.iter().map(|&id| s.push(id).unwrap()).collect();
        assert_eq!(outs, ["", "", "日", "x", "", "", "", "🙂"]);
        assert!(s.pending_bytes().is_empty());
        // An invalid byte is replaced, an unfinished character is held then flushed.
        let e6 = tok.token_to_id(&byte_chars()[0xE6].to_string()).unwrap();
        let ff = tok.token_to_id(&byte_chars()[0xFF].to_string()).unwrap();
        assert_eq!(s.push(ff).unwrap(), "\u{FFFD}");
        assert_eq!(s.push(e6).unwrap(), "");
        assert_eq!(s.pending_bytes(), [0xE6]);
        assert_eq!(s.flush(), "\u{FFFD}");
        assert!(s.push(100_000).is_err());
        // Special tokens can be skipped.
        let mut s = tok.stream_decoder(true);
        assert_eq!(s.push(256).unwrap(), "");
    }

    #[test]
    fn gguf_errors_are_typed() {
        let mut c = toy_content("smollm");
        c.metadata
            .insert("tokenizer.ggml.model".into(), Value::String("llama".into()));
        let err = Tokenizer::from_gguf(&c).unwrap_err();
        assert!(matches!(err, LmError::Unsupported(_)), "{err}");
        assert!(err.to_string().contains("SentencePiece"), "{err}");

        let c = toy_content("tekken-9000");
        let err = Tokenizer::from_gguf(&c).unwrap_err();
        assert!(err.to_string().contains("tekken-9000"), "{err}");

        let mut c = toy_content("smollm");
        c.metadata.remove("tokenizer.ggml.merges");
        let err = Tokenizer::from_gguf(&c).unwrap_err();
        assert!(
            matches!(&err, LmError::Metadata { key, .. } if key == "tokenizer.ggml.merges"),
            "{err}"
        );

        let mut c = toy_content("smollm");
        c.metadata
            .insert("tokenizer.ggml.eos_token_id".into(), Value::U32(1_000_000));
        assert!(matches!(
            Tokenizer::from_gguf(&c).unwrap_err(),
            LmError::Metadata { .. }
        ));

        let mut c = toy_content("smollm");
        c.metadata
            .insert("tokenizer.ggml.token_type".into(), Value::Array(vec![]));
        assert!(matches!(
            Tokenizer::from_gguf(&c).unwrap_err(),
            LmError::Metadata { .. }
        ));
    }

    #[test]
    fn from_file_matches_gguf() {
        let gguf_tok = Tokenizer::from_gguf(&toy_content("smollm")).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let json = dir.path().join("tokenizer.json");
        std::fs::write(&json, gguf_tok.inner().to_string(false).unwrap()).unwrap();
        std::fs::write(
            dir.path().join("tokenizer_config.json"),
            r#"{"bos_token": "<|im_start|>", "eos_token": {"content": "<|im_end|>"}}"#,
        )
        .unwrap();
        std::fs::write(
            dir.path().join("generation_config.json"),
            r#"{"eos_token_id": [257, 104]}"#,
        )
        .unwrap();
        let tok = Tokenizer::from_file(&json).unwrap();
        let text = "<|im_start|>hello wörld 42<|im_end|>";
        assert_eq!(
            tok.encode(text, false).unwrap(),
            gguf_tok.encode(text, false).unwrap()
        );
        assert_eq!(tok.vocab_size(), gguf_tok.vocab_size());
        assert_eq!(tok.bos_token_id(), Some(256));
        assert_eq!(tok.eos_token().as_deref(), Some("<|im_end|>"));
        assert_eq!(tok.eos_token_ids(), [257, 104]);
        check_offsets_tile(&tok, text);
        let ids = tok.encode(text, false).unwrap();
        assert_eq!(tok.decode(&ids, true).unwrap(), "hello wörld 42");

        let err = Tokenizer::from_file(dir.path().join("missing.json")).unwrap_err();
        assert!(matches!(err, LmError::Io { .. }), "{err}");
        std::fs::write(&json, "{").unwrap();
        let err = Tokenizer::from_file(&json).unwrap_err();
        assert!(matches!(err, LmError::Tokenizer(_)), "{err}");
    }

    #[test]
    fn other_pre_tokenizers_build() {
        for pre in ["llama-bpe", "qwen2", "default", "starcoder"] {
            let tok = Tokenizer::from_gguf(&toy_content(pre)).unwrap();
            let text = "hello world 2024\n\n\tx";
            let ids = tok.encode(text, false).unwrap();
            assert_eq!(tok.decode(&ids, false).unwrap(), text, "{pre}");
        }
    }

    #[test]
    fn byte_chars_is_the_gpt2_table() {
        let t = byte_chars();
        assert_eq!(t[b' ' as usize], 'Ġ');
        assert_eq!(t[b'\n' as usize], 'Ċ');
        assert_eq!(t[b'\t' as usize], 'ĉ');
        assert_eq!(t[b'a' as usize], 'a');
        assert_eq!(byte_level_token_bytes("Ġworld"), b" world");
        assert_eq!(sentencepiece_token_bytes("<0x0A>"), b"\n");
        assert_eq!(sentencepiece_token_bytes("\u{2581}the"), b" the");
        let distinct: HashSet<char> = t.iter().copied().collect();
        assert_eq!(distinct.len(), 256);
    }
}
