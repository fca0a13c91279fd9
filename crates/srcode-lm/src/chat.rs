//! Chat prompts in each model's own format.
//!
//! Instruction-tuned models learn one exact conversation layout, which their authors ship as a
//! Jinja template (GGUF key `tokenizer.chat_template`, or `chat_template` in
//! `tokenizer_config.json`). [`ChatTemplate`] renders that template with minijinja, set up to
//! behave like Hugging Face `transformers`' `apply_chat_template`: `trim_blocks` and
//! `lstrip_blocks` on, `{% break %}`/`{% continue %}`, Python string and dict methods
//! (`.strip()`, `.split()`, `.items()`, … from `minijinja-contrib`), `raise_exception`,
//! `strftime_now`, a `tojson` filter that writes JSON the way Python's `json.dumps` does, the
//! `{% generation %}` marker tag, and `bos_token`/`eos_token`/`tools`/`add_generation_prompt`
//! in the context. Models without a template get [`ChatTemplate::chatml_fallback`].

use std::path::Path;

use candle_core::quantized::gguf_file::{Content, Value as GgufValue};
use minijinja::value::{Kwargs, Value, ValueKind};
use minijinja::{Environment, Error, ErrorKind};
use serde::{Deserialize, Serialize};

use crate::error::{LmError, Result};
use crate::tokenizer::Tokenizer;

/// Name the template is stored under in its environment (it shows in error messages).
const TEMPLATE_NAME: &str = "chat_template";

/// ChatML, the layout SmolLM2 and Qwen use, for models that ship no template.
const CHATML: &str = "{%- for message in messages %}\
{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}\
{%- endfor %}\
{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}";

/// Deepest nesting `tojson` follows before giving up.
const MAX_JSON_DEPTH: usize = 128;

/// One turn of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant` (or `tool`, for templates that know it).
    pub role: String,
    /// The text of the turn.
    pub content: String,
}

impl ChatMessage {
    /// A message with any role.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }

    /// A `system` message.
    pub fn system(content: impl Into<String>) -> Self {
        Self::new("system", content)
    }

    /// A `user` message.
    pub fn user(content: impl Into<String>) -> Self {
        Self::new("user", content)
    }

    /// An `assistant` message.
    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new("assistant", content)
    }
}

/// Everything [`ChatTemplate::render_with`] passes to a template besides the messages.
#[derive(Debug, Clone, Default)]
pub struct RenderOptions {
    /// End with the header of an assistant turn, so the model writes the reply.
    pub add_generation_prompt: bool,
    /// Tool (function) schemas, as `transformers` passes them; `None` renders as `none`.
    pub tools: Option<Vec<serde_json::Value>>,
    /// Further template variables (e.g. `enable_thinking`); they cannot replace `messages`,
    /// `tools` or `add_generation_prompt`, but can replace `bos_token`/`eos_token`.
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// A compiled chat template plus the BOS/EOS token texts it may refer to.
#[derive(Clone)]
pub struct ChatTemplate {
    env: Environment<'static>,
    source: String,
    bos_token: Option<String>,
    eos_token: Option<String>,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("source", &self.source)
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .finish_non_exhaustive()
    }
}

/// The error text of a minijinja error, with its causes.
fn describe(e: &Error) -> String {
    let mut msg = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    msg
}

impl ChatTemplate {
    /// Compiles a Jinja chat template. `bos_token`/`eos_token` are the texts the template sees
    /// as `bos_token`/`eos_token` (left undefined when `None`). Errors name the syntax problem
    /// and its line.
    pub fn new(
        source: impl Into<String>,
        bos_token: Option<String>,
        eos_token: Option<String>,
    ) -> Result<Self> {
        let source = source.into();
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", tojson);
        env.add_template_owned(TEMPLATE_NAME, rewrite_generation_tags(&source))
            .map_err(|e| {
                LmError::ChatTemplate(format!("cannot compile the template: {}", describe(&e)))
            })?;
        Ok(Self {
            env,
            source,
            bos_token,
            eos_token,
        })
    }

    /// A plain ChatML template (`<|im_start|>role\ncontent<|im_end|>\n`), for models that
    /// ship none.
    pub fn chatml_fallback() -> Self {
        // The template is a constant that the tests compile; failing here is a bug in srcode.
        Self::new(CHATML, None, None).expect("the built-in ChatML template compiles")
    }

    /// The template in a GGUF file's `tokenizer.chat_template`, with the BOS/EOS texts of
    /// `tokenizer`; `Ok(None)` when the file has no template.
    pub fn from_gguf(content: &Content, tokenizer: &Tokenizer) -> Result<Option<Self>> {
        let key = "tokenizer.chat_template";
        match content.metadata.get(key) {
            None => Ok(None),
            Some(GgufValue::String(s)) => {
                Self::new(s.as_str(), tokenizer.bos_token(), tokenizer.eos_token()).map(Some)
            }
            Some(v) => Err(LmError::Metadata {
                key: key.to_string(),
                reason: format!("expected a string, found {:?}", v.value_type()),
            }),
        }
    }

    /// The template of a Hugging Face model directory's `tokenizer_config.json`: its
    /// `chat_template` (a string, or the entry named `default` of a list of named templates),
    /// else a `chat_template.jinja` file next to it; BOS/EOS texts from its `bos_token` and
    /// `eos_token`. `Ok(None)` when there is no template.
    pub fn from_tokenizer_config(path: impl AsRef<Path>) -> Result<Option<Self>> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| LmError::io(path, e))?;
        let config: serde_json::Value =
            serde_json::from_str(&text).map_err(|source| LmError::Json {
                context: path.display().to_string(),
                source,
            })?;
        let token = |key: &str| match config.get(key) {
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            Some(serde_json::Value::Object(m)) => m
                .get("content")
                .and_then(|c| c.as_str())
                .map(str::to_string),
            _ => None,
        };
        let source = match config.get("chat_template") {
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            Some(serde_json::Value::Array(named)) => named
                .iter()
                .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
                .and_then(|t| t.get("template"))
                .and_then(|t| t.as_str())
                .map(str::to_string),
            Some(serde_json::Value::Null) | None => None,
            Some(_) => {
                return Err(LmError::ChatTemplate(format!(
                    "`chat_template` in {} is neither a string nor a list of named templates",
                    path.display()
                )))
            }
        };
        let source = match source {
            Some(s) => s,
            None => {
                let jinja = path
                    .parent()
                    .unwrap_or_else(|| Path::new("."))
                    .join("chat_template.jinja");
                if jinja.is_file() {
                    std::fs::read_to_string(&jinja).map_err(|e| LmError::io(&jinja, e))?
                } else {
                    return Ok(None);
                }
            }
        };
        Self::new(source, token("bos_token"), token("eos_token")).map(Some)
    }

    /// The template text as given.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Renders `messages`; with `add_generation_prompt` the prompt ends with the header of an
    /// assistant turn.
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        self.render_with(
            messages,
            &RenderOptions {
                add_generation_prompt,
                ..RenderOptions::default()
            },
        )
    }

    /// Renders `messages` with tools and extra variables. Errors (including a template's
    /// `raise_exception`) carry the template's message and line.
    pub fn render_with(&self, messages: &[ChatMessage], opts: &RenderOptions) -> Result<String> {
        let mut ctx: std::collections::BTreeMap<String, Value> = Default::default();
        if let Some(b) = &self.bos_token {
            ctx.insert("bos_token".into(), Value::from(b.as_str()));
        }
        if let Some(e) = &self.eos_token {
            ctx.insert("eos_token".into(), Value::from(e.as_str()));
        }
        for (k, v) in &opts.extra {
            ctx.insert(k.clone(), Value::from_serialize(v));
        }
        ctx.insert("messages".into(), Value::from_serialize(messages));
        ctx.insert(
            "tools".into(),
            opts.tools
                .as_ref()
                .map_or(Value::from(()), Value::from_serialize),
        );
        ctx.insert(
            "add_generation_prompt".into(),
            Value::from(opts.add_generation_prompt),
        );
        let tmpl = self.env.get_template(TEMPLATE_NAME).map_err(|e| {
            LmError::ChatTemplate(format!("cannot load the template: {}", describe(&e)))
        })?;
        tmpl.render(ctx).map_err(|e| {
            LmError::ChatTemplate(format!("cannot render the template: {}", describe(&e)))
        })
    }
}

/// `raise_exception(message)`: templates call it to reject a conversation.
fn raise_exception(message: String) -> std::result::Result<Value, Error> {
    Err(Error::new(
        ErrorKind::InvalidOperation,
        format!("the template raised an exception: {message}"),
    ))
}

/// `{% generation %}` … `{% endgeneration %}` mark assistant text for `transformers`' masks;
/// minijinja has no such tag, so they become `{% if true %}` … `{% endif %}`, keeping any
/// `-`/`+` whitespace control.
fn rewrite_generation_tags(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(start) = rest.find("{%") {
        let Some(len) = rest[start..].find("%}") else {
            break;
        };
        let end = start + len + 2;
        let inner = &rest[start + 2..end - 2];
        let body = inner.trim_start_matches(['-', '+']);
        let lead = &inner[..inner.len() - body.len()];
        let body = body.trim_end_matches(['-', '+']);
        let trail = &inner[lead.len() + body.len()..];
        let replacement = match body.trim() {
            "generation" => Some("if true"),
            "endgeneration" => Some("endif"),
            _ => None,
        };
        out.push_str(&rest[..start]);
        match replacement {
            Some(r) => {
                out.push_str("{%");
                out.push_str(lead);
                out.push(' ');
                out.push_str(r);
                out.push(' ');
                out.push_str(trail);
                out.push_str("%}");
            }
            None => out.push_str(&rest[start..end]),
        }
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

// ---------------------------------------------------------------------------------------------
// strftime_now
// ---------------------------------------------------------------------------------------------

/// `strftime_now(format)`: the current UTC time in `format` (see [`format_utc`]).
fn strftime_now(format: String) -> std::result::Result<Value, Error> {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    format_utc(&format, secs).map(Value::from)
}

/// Civil date (year, month 1-12, day 1-31) of a day count since 1970-01-01.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Formats a Unix time (UTC) with the C `strftime` directives chat templates use:
/// `%Y %y %m %d %e %B %b %h %A %a %H %I %M %S %p %j %%`. Others are an error.
fn format_utc(format: &str, unix_secs: i64) -> std::result::Result<String, Error> {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    const DAYS: [&str; 7] = [
        "Monday",
        "Tuesday",
        "Wednesday",
        "Thursday",
        "Friday",
        "Saturday",
        "Sunday",
    ];
    let days = unix_secs.div_euclid(86_400);
    let secs = unix_secs.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    let (hour, minute, second) = (secs / 3600, secs / 60 % 60, secs % 60);
    // 1970-01-01 was a Thursday (index 3 from Monday).
    let weekday = (days + 3).rem_euclid(7) as usize;
    let month_name = MONTHS[(month as usize).saturating_sub(1).min(11)];
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let cumulative = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];
    let yday =
        cumulative[(month as usize).saturating_sub(1).min(11)] + day + u32::from(leap && month > 2);

    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let Some(d) = chars.next() else {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                "strftime_now: format ends with a lone `%`",
            ));
        };
        match d {
            'Y' => out.push_str(&year.to_string()),
            'y' => out.push_str(&format!("{:02}", year.rem_euclid(100))),
            'm' => out.push_str(&format!("{month:02}")),
            'd' => out.push_str(&format!("{day:02}")),
            'e' => out.push_str(&format!("{day:>2}")),
            'B' => out.push_str(month_name),
            'b' | 'h' => out.push_str(&month_name[..3]),
            'A' => out.push_str(DAYS[weekday]),
            'a' => out.push_str(&DAYS[weekday][..3]),
            'H' => out.push_str(&format!("{hour:02}")),
            'I' => out.push_str(&format!("{:02}", (hour + 11) % 12 + 1)),
            'M' => out.push_str(&format!("{minute:02}")),
            'S' => out.push_str(&format!("{second:02}")),
            'p' => out.push_str(if hour < 12 { "AM" } else { "PM" }),
            'j' => out.push_str(&format!("{yday:03}")),
            '%' => out.push('%'),
            other => {
                return Err(Error::new(
                    ErrorKind::InvalidOperation,
                    format!("strftime_now: unsupported directive `%{other}`"),
                ))
            }
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// tojson, as transformers defines it: json.dumps(x, ensure_ascii=False, indent=None,
// separators=None, sort_keys=False)
// ---------------------------------------------------------------------------------------------

struct JsonStyle {
    indent: Option<String>,
    item_sep: String,
    key_sep: String,
    sort_keys: bool,
    ensure_ascii: bool,
}

/// The `tojson` filter: Python `json.dumps` output (`", "`/`": "` separators, non-ASCII kept),
/// with `indent`, `sort_keys`, `ensure_ascii` and `separators` keyword arguments. Map keys come
/// out in the value's own order.
fn tojson(value: &Value, kwargs: Kwargs) -> std::result::Result<Value, Error> {
    let indent = match kwargs.get::<Option<Value>>("indent")? {
        None => None,
        Some(v) if v.is_none() => None,
        Some(v) => match (v.as_i64(), v.as_str()) {
            (Some(n), _) => Some(" ".repeat(usize::try_from(n).unwrap_or(0))),
            (None, Some(s)) => Some(s.to_string()),
            _ => {
                return Err(Error::new(
                    ErrorKind::InvalidOperation,
                    "tojson: indent must be an integer or a string",
                ))
            }
        },
    };
    let (mut item_sep, mut key_sep) = if indent.is_some() {
        (",".to_string(), ": ".to_string())
    } else {
        (", ".to_string(), ": ".to_string())
    };
    if let Some(seps) = kwargs.get::<Option<Vec<String>>>("separators")? {
        match <[String; 2]>::try_from(seps) {
            Ok([i, k]) => (item_sep, key_sep) = (i, k),
            Err(_) => {
                return Err(Error::new(
                    ErrorKind::InvalidOperation,
                    "tojson: separators must be two strings",
                ))
            }
        }
    }
    let style = JsonStyle {
        indent,
        item_sep,
        key_sep,
        sort_keys: kwargs.get::<Option<bool>>("sort_keys")?.unwrap_or(false),
        ensure_ascii: kwargs.get::<Option<bool>>("ensure_ascii")?.unwrap_or(false),
    };
    kwargs.assert_all_used()?;
    let mut out = String::new();
    write_json(&mut out, value, &style, 0)?;
    Ok(Value::from_safe_string(out))
}

fn json_error(msg: impl Into<std::borrow::Cow<'static, str>>) -> Error {
    Error::new(ErrorKind::InvalidOperation, msg)
}

fn write_json_string(out: &mut String, s: &str, ensure_ascii: bool) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || (ensure_ascii && !c.is_ascii()) => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// A float as Python's `repr` writes it (`1.0`, `1e-05`, `1e+16`, `NaN`, `Infinity`).
fn python_float(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "Infinity" } else { "-Infinity" }.into();
    }
    let abs = f.abs();
    if abs != 0.0 && !(1e-4..1e16).contains(&abs) {
        // Scientific: shortest mantissa, exponent with a sign and at least two digits.
        let s = format!("{f:e}");
        if let Some((mantissa, exp)) = s.split_once('e') {
            let (sign, digits) = match exp.strip_prefix('-') {
                Some(d) => ('-', d),
                None => ('+', exp),
            };
            return format!("{mantissa}e{sign}{digits:0>2}");
        }
        return s;
    }
    let s = format!("{f}");
    if s.contains('.') {
        s
    } else {
        format!("{s}.0")
    }
}

fn newline_indent(out: &mut String, style: &JsonStyle, depth: usize) {
    if let Some(unit) = &style.indent {
        out.push('\n');
        for _ in 0..depth {
            out.push_str(unit);
        }
    }
}

fn write_json(
    out: &mut String,
    value: &Value,
    style: &JsonStyle,
    depth: usize,
) -> std::result::Result<(), Error> {
    if depth > MAX_JSON_DEPTH {
        return Err(json_error("tojson: value is nested too deeply"));
    }
    match value.kind() {
        ValueKind::Undefined => return Err(json_error("tojson: value is undefined")),
        ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if value.is_true() { "true" } else { "false" }),
        ValueKind::Number => {
            if value.is_integer() {
                out.push_str(&value.to_string());
            } else {
                let f = f64::try_from(value.clone())
                    .map_err(|_| json_error("tojson: number is not representable"))?;
                out.push_str(&python_float(f));
            }
        }
        ValueKind::String => {
            write_json_string(out, value.as_str().unwrap_or(""), style.ensure_ascii)
        }
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = value.try_iter()?.collect();
            if items.is_empty() {
                out.push_str("[]");
                return Ok(());
            }
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(&style.item_sep);
                }
                newline_indent(out, style, depth + 1);
                write_json(out, item, style, depth + 1)?;
            }
            newline_indent(out, style, depth);
            out.push(']');
        }
        ValueKind::Map => {
            let mut entries = Vec::new();
            for key in value.try_iter()? {
                let item = value.get_item(&key)?;
                let key = match key.kind() {
                    ValueKind::String => key.as_str().unwrap_or("").to_string(),
                    ValueKind::None => "null".to_string(),
                    ValueKind::Bool => (if key.is_true() { "true" } else { "false" }).to_string(),
                    ValueKind::Number => {
                        let mut s = String::new();
                        write_json(&mut s, &key, style, depth + 1)?;
                        s
                    }
                    other => {
                        return Err(json_error(format!(
                            "tojson: map keys must be strings, found a {other}"
                        )))
                    }
                };
                entries.push((key, item));
            }
            if style.sort_keys {
                entries.sort_by(|a, b| a.0.cmp(&b.0));
            }
            if entries.is_empty() {
                out.push_str("{}");
                return Ok(());
            }
            out.push('{');
            for (i, (key, item)) in entries.iter().enumerate() {
                if i > 0 {
                    out.push_str(&style.item_sep);
                }
                newline_indent(out, style, depth + 1);
                write_json_string(out, key, style.ensure_ascii);
                out.push_str(&style.key_sep);
                write_json(out, item, style, depth + 1)?;
            }
            newline_indent(out, style, depth);
            out.push('}');
        }
        other => {
            return Err(json_error(format!(
                "tojson: cannot write a {other} value as JSON"
            )))
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokenizer::default_test_gguf;

    fn conversation() -> Vec<ChatMessage> {
        vec![
            ChatMessage::system("You are a careful C programmer."),
            ChatMessage::user("Copy a string safely."),
        ]
    }

    #[test]
    fn smollm2_template_from_gguf() {
        let Some(path) = default_test_gguf() else {
            return;
        };
        let mut f = std::fs::File::open(&path).unwrap();
        let content = Content::read(&mut f).unwrap();
        let tok = Tokenizer::from_gguf(&content).unwrap();
        let tmpl = ChatTemplate::from_gguf(&content, &tok).unwrap().unwrap();
        assert_eq!(
            tmpl.render(&conversation(), true).unwrap(),
            "<|im_start|>system\nYou are a careful C programmer.<|im_end|>\n\
             <|im_start|>user\nCopy a string safely.<|im_end|>\n\
             <|im_start|>assistant\n"
        );
        // Without a system turn the template adds its own.
        assert_eq!(
            tmpl.render(&[ChatMessage::user("hi")], false).unwrap(),
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by \
             Hugging Face<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n"
        );
        // The rendered prompt tokenises with the chat tokens as single ids.
        let ids = tok
            .encode(&tmpl.render(&conversation(), true).unwrap(), false)
            .unwrap();
        assert_eq!(ids[..2], [1, 9690]);
    }

    #[test]
    fn chatml_fallback_renders() {
        let tmpl = ChatTemplate::chatml_fallback();
        assert_eq!(
            tmpl.render(&conversation(), true).unwrap(),
            "<|im_start|>system\nYou are a careful C programmer.<|im_end|>\n\
             <|im_start|>user\nCopy a string safely.<|im_end|>\n<|im_start|>assistant\n"
        );
        assert_eq!(tmpl.render(&[], false).unwrap(), "");
    }

    /// Qwen2.5-Instruct's chat template, as published in its tokenizer_config.json.
    const QWEN25: &str = r#"{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}
    {%- else %}
        {{- '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\n<tool_call>\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' }}
        {{- message.content }}
        {{- '\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}
"#;

    // Expected outputs below were produced by Python jinja2 3.1.6 configured as transformers
    // does (trim_blocks, lstrip_blocks, loopcontrols, its `tojson` and `raise_exception`).
    #[test]
    fn qwen25_template_plain_and_with_tools() {
        let tmpl = ChatTemplate::new(QWEN25, None, Some("<|im_end|>".to_string())).unwrap();
        let mut messages = vec![ChatMessage::user("Write strcpy safely.")];
        assert_eq!(
            tmpl.render(&messages, true).unwrap(),
            "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful \
             assistant.<|im_end|>\n<|im_start|>user\nWrite strcpy safely.<|im_end|>\n\
             <|im_start|>assistant\n"
        );
        messages.push(ChatMessage::assistant("Use strlcpy."));
        messages.push(ChatMessage::new("tool", "{\"ok\": true}"));
        let tools: serde_json::Value = serde_json::json!([{
            "type": "function",
            "function": {
                "name": "compile",
                "description": "Compile C code — returns \"errors\"",
                "parameters": {"type": "object", "properties": {"code": {"type": "string"}}}
            }
        }]);
        let opts = RenderOptions {
            add_generation_prompt: true,
            tools: tools.as_array().cloned(),
            ..RenderOptions::default()
        };
        assert_eq!(
            tmpl.render_with(&messages, &opts).unwrap(),
            QWEN25_TOOLS_EXPECTED
        );
    }

    const QWEN25_TOOLS_EXPECTED: &str = "<|im_start|>system\nYou are Qwen, created by Alibaba \
Cloud. You are a helpful assistant.\n\n# Tools\n\nYou may call one or more functions to assist \
with the user query.\n\nYou are provided with function signatures within <tools></tools> XML \
tags:\n<tools>\n{\"function\": {\"description\": \"Compile C code — returns \\\"errors\\\"\", \
\"name\": \"compile\", \"parameters\": {\"properties\": {\"code\": {\"type\": \"string\"}}, \
\"type\": \"object\"}}, \"type\": \"function\"}\n</tools>\n\nFor each function call, return a \
json object with function name and arguments within <tool_call></tool_call> XML tags:\n\
<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call>\
<|im_end|>\n<|im_start|>user\nWrite strcpy safely.<|im_end|>\n<|im_start|>assistant\nUse \
strlcpy.<|im_end|>\n<|im_start|>user\n<tool_response>\n{\"ok\": true}\n</tool_response>\
<|im_end|>\n<|im_start|>assistant\n";

    /// Meta-Llama-3-8B-Instruct's chat template.
    const LLAMA3: &str = "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}";

    #[test]
    fn llama3_template() {
        let tmpl = ChatTemplate::new(
            LLAMA3,
            Some("<|begin_of_text|>".into()),
            Some("<|eot_id|>".into()),
        )
        .unwrap();
        let messages = vec![
            ChatMessage::system("  Be brief.\n"),
            ChatMessage::user("Hi"),
        ];
        assert_eq!(
            tmpl.render(&messages, true).unwrap(),
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe \
             brief.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>\
             <|start_header_id|>assistant<|end_header_id|>\n\n"
        );
    }

    #[test]
    fn python_methods_and_helpers() {
        let src = "{{ messages[0].content.strip() }}|{{ messages[0].content.split(',') | length }}\
|{% for k, v in {'b': 1, 'a': [1.5, none, true]}.items() %}{{ k }}={{ v | tojson }};{% endfor %}\
|{{ {'name': 'f', 'arguments': {'x': 'ü\\n'}} | tojson }}\
|{{ [1, {'k': 2}] | tojson(indent=2) }}\
|{% for m in messages %}{% if loop.index > 1 %}{% break %}{% endif %}{{ m.role }}{% endfor %}\
|{% generation %}kept{% endgeneration %}\
|{{ strftime_now('%Y') | length }}";
        let tmpl = ChatTemplate::new(src, None, None).unwrap();
        let out = tmpl
            .render(
                &[ChatMessage::user("  a,b,c  "), ChatMessage::user("x")],
                false,
            )
            .unwrap();
        assert_eq!(
            out,
            "a,b,c|3|b=1;a=[1.5, null, true];\
|{\"name\": \"f\", \"arguments\": {\"x\": \"ü\\n\"}}\
|[\n  1,\n  {\n    \"k\": 2\n  }\n]|user|kept|4"
        );
    }

    #[test]
    fn errors_name_the_problem() {
        let err =
            ChatTemplate::new("{% for m in messages %}{{ m.content }}", None, None).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, LmError::ChatTemplate(_)), "{msg}");
        assert!(
            msg.contains("endfor") || msg.contains("end of input"),
            "{msg}"
        );

        let tmpl = ChatTemplate::new(
            "{% if messages[0].role != 'system' %}{{ raise_exception('System message required') }}{% endif %}",
            None,
            None,
        )
        .unwrap();
        let msg = tmpl
            .render(&[ChatMessage::user("x")], false)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("System message required"), "{msg}");

        let tmpl = ChatTemplate::new("{{ messages | no_such_filter }}", None, None);
        let msg = match tmpl {
            Err(e) => e.to_string(),
            Ok(t) => t.render(&[], false).unwrap_err().to_string(),
        };
        assert!(msg.contains("no_such_filter"), "{msg}");

        let tmpl = ChatTemplate::new("{{ strftime_now('%Q') }}", None, None).unwrap();
        let msg = tmpl.render(&[], false).unwrap_err().to_string();
        assert!(msg.contains("%Q"), "{msg}");
    }

    #[test]
    fn utc_formatting() {
        // 2024-07-26 00:05:09 UTC, a Friday (expected text from Python's time.strftime).
        let t = 1_721_952_309;
        let s = format_utc("%d %b %Y|%A %a|%H:%M:%S|%I%p|%j|%y%m%e|%B|%%", t).unwrap();
        assert_eq!(s, "26 Jul 2024|Friday Fri|00:05:09|12AM|208|240726|July|%");
        assert_eq!(format_utc("%Y-%m-%d", 0).unwrap(), "1970-01-01");
        assert_eq!(format_utc("%Y-%m-%d", 951_782_400).unwrap(), "2000-02-29");
    }

    #[test]
    fn python_float_repr() {
        assert_eq!(python_float(1.0), "1.0");
        assert_eq!(python_float(0.1), "0.1");
        assert_eq!(python_float(1e-5), "1e-05");
        assert_eq!(python_float(1.5e16), "1.5e+16");
        assert_eq!(python_float(-2.5), "-2.5");
    }

    #[test]
    fn tokenizer_config_templates() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("tokenizer_config.json");
        std::fs::write(
            &cfg,
            r#"{"bos_token": {"content": "<s>"}, "eos_token": "</s>",
                "chat_template": [{"name": "tool_use", "template": "T"},
                                  {"name": "default", "template": "{{ bos_token }}{{ messages[0].content }}{{ eos_token }}"}]}"#,
        )
        .unwrap();
        let tmpl = ChatTemplate::from_tokenizer_config(&cfg).unwrap().unwrap();
        assert_eq!(
            tmpl.render(&[ChatMessage::user("x")], false).unwrap(),
            "<s>x</s>"
        );

        std::fs::write(&cfg, r#"{"eos_token": "</s>"}"#).unwrap();
        assert!(ChatTemplate::from_tokenizer_config(&cfg).unwrap().is_none());
        std::fs::write(dir.path().join("chat_template.jinja"), "J{{ eos_token }}").unwrap();
        let tmpl = ChatTemplate::from_tokenizer_config(&cfg).unwrap().unwrap();
        assert_eq!(tmpl.render(&[], false).unwrap(), "J</s>");

        let missing = ChatTemplate::from_tokenizer_config(dir.path().join("nope.json"));
        assert!(matches!(missing, Err(LmError::Io { .. })));
    }
}
