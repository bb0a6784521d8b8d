//! Locating the text to inspect inside provider request and response bodies.
//!
//! The walkers return `&mut String` slots pointing into the parsed [`Value`], so the engine can
//! rewrite matches in place and re-serialize with every other field (and key order) intact.

use serde_json::Value;

/// The wire format of a body. Azure OpenAI and OpenAI-compatible providers speak [`Format::OpenAi`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// OpenAI chat completions, legacy completions, embeddings and the Responses API.
    OpenAi,
    /// Anthropic Messages.
    Anthropic,
    /// Google Gemini `generateContent`.
    Google,
}

/// The strings `field` picks from each field of a JSON object body, in document order.
fn from_fields<'a>(
    body: &'a mut Value,
    field: impl Fn(&str, &'a mut Value, &mut Vec<&'a mut String>),
) -> Vec<&'a mut String> {
    let mut out = Vec::new();
    if let Value::Object(obj) = body {
        for (k, v) in obj.iter_mut() {
            field(k, v, &mut out);
        }
    }
    out
}

/// The inspectable strings of a request body, in document order.
pub fn request_texts(format: Format, body: &mut Value) -> Vec<&mut String> {
    from_fields(body, |k, v, out| match (format, k) {
        (Format::OpenAi, "messages") => each(v, openai_message, out),
        // Legacy completions `prompt`, embeddings `input` (strings or arrays of them; token-id
        // arrays hold no strings) and Responses API `input` (items too) / `instructions`.
        (Format::OpenAi, "prompt" | "instructions") => strings_shallow(v, out),
        (Format::OpenAi, "input") => string_or_each(
            v,
            |item, out| match item {
                Value::Object(_) => responses_item(item, out),
                item => string(item, out),
            },
            out,
        ),
        (Format::Anthropic, "system") => anthropic_content(v, out),
        (Format::Anthropic, "messages") => each(
            v,
            |m, out| {
                if let Some(c) = m.get_mut("content") {
                    anthropic_content(c, out)
                }
            },
            out,
        ),
        (Format::Google, "contents") => each(v, gemini_content, out),
        (Format::Google, "systemInstruction" | "system_instruction") => gemini_content(v, out),
        _ => {}
    })
}

/// The inspectable strings of a (non-streamed) response body, in document order.
pub fn response_texts(format: Format, body: &mut Value) -> Vec<&mut String> {
    from_fields(body, |k, v, out| match (format, k) {
        (Format::OpenAi, "choices") => each(v, openai_choice, out),
        (Format::OpenAi, "output") => each(v, responses_item, out),
        (Format::Anthropic, "content") => anthropic_content(v, out),
        (Format::Google, "candidates") => each(
            v,
            |candidate, out| {
                if let Some(content) = candidate.get_mut("content") {
                    gemini_content(content, out)
                }
            },
            out,
        ),
        _ => {}
    })
}

/// An OpenAI choice: its `message` (chat) or `text` (legacy completions).
fn openai_choice<'a>(c: &'a mut Value, out: &mut Vec<&'a mut String>) {
    let Value::Object(c) = c else { return };
    for (k, v) in c.iter_mut() {
        match k.as_str() {
            "message" => openai_message(v, out),
            "text" => strings_shallow(v, out),
            _ => {}
        }
    }
}

/// The output-token cap a request asks for, if it names one.
pub fn requested_max_tokens(format: Format, body: &Value) -> Option<u64> {
    let num = |v: Option<&Value>| -> Option<u64> {
        let v = v?;
        v.as_u64()
            .or_else(|| v.as_f64().filter(|f| *f >= 0.0).map(|f| f.ceil() as u64))
    };
    match format {
        Format::OpenAi => ["max_tokens", "max_completion_tokens", "max_output_tokens"]
            .iter()
            .filter_map(|k| num(body.get(*k)))
            .max(),
        Format::Anthropic => num(body.get("max_tokens")),
        Format::Google => {
            let gc = body
                .get("generationConfig")
                .or_else(|| body.get("generation_config"))?;
            num(gc
                .get("maxOutputTokens")
                .or_else(|| gc.get("max_output_tokens")))
        }
    }
}

/// The text one server-sent event of a streamed response adds (`data` payload only).
/// `[DONE]`, non-JSON and events that add no text give `None`.
pub fn stream_delta_text(format: Format, event_data: &[u8]) -> Option<String> {
    let data = trim_ascii(event_data);
    if data.is_empty() || data == b"[DONE]" {
        return None;
    }
    let v: Value = serde_json::from_slice(data).ok()?;
    let mut out = String::new();
    match format {
        Format::OpenAi => {
            match v.get("type").and_then(Value::as_str) {
                Some("response.output_text.delta")
                | Some("response.function_call_arguments.delta")
                | Some("response.refusal.delta") => {
                    if let Some(d) = v.get("delta").and_then(Value::as_str) {
                        out.push_str(d);
                    }
                }
                _ => {}
            }
            for c in v
                .get("choices")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if let Some(t) = c.get("text").and_then(Value::as_str) {
                    out.push_str(t);
                }
                let Some(d) = c.get("delta") else { continue };
                if let Some(t) = d.get("content").and_then(Value::as_str) {
                    out.push_str(t);
                }
                for tc in d
                    .get("tool_calls")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    if let Some(a) = tc
                        .get("function")
                        .and_then(|f| f.get("arguments"))
                        .and_then(Value::as_str)
                    {
                        out.push_str(a);
                    }
                }
            }
        }
        Format::Anthropic => {
            if v.get("type").and_then(Value::as_str) == Some("content_block_delta") {
                let d = v.get("delta")?;
                for k in ["text", "partial_json"] {
                    if let Some(t) = d.get(k).and_then(Value::as_str) {
                        out.push_str(t);
                    }
                }
            }
        }
        Format::Google => {
            let cands = v.get("candidates").and_then(Value::as_array);
            for c in cands.into_iter().flatten() {
                let parts = c
                    .get("content")
                    .and_then(|c| c.get("parts"))
                    .and_then(Value::as_array);
                for p in parts.into_iter().flatten() {
                    if let Some(t) = p.get("text").and_then(Value::as_str) {
                        out.push_str(t);
                    }
                    if let Some(args) = p.get("functionCall").and_then(|f| f.get("args")) {
                        let mut strs = Vec::new();
                        collect_strings_ref(args, &mut strs);
                        for s in strs {
                            if !out.is_empty() {
                                out.push(' ');
                            }
                            out.push_str(s);
                        }
                    }
                }
            }
        }
    }
    (!out.is_empty()).then_some(out)
}

fn trim_ascii(b: &[u8]) -> &[u8] {
    let start = b
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(b.len());
    let end = b
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &b[start..end]
}

fn collect_strings_ref<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
    match v {
        Value::String(s) => out.push(s),
        Value::Array(a) => a.iter().for_each(|x| collect_strings_ref(x, out)),
        Value::Object(m) => m.values().for_each(|x| collect_strings_ref(x, out)),
        _ => {}
    }
}

/// Applies `f` to each element of an array value.
fn each<'a>(
    v: &'a mut Value,
    f: impl Fn(&'a mut Value, &mut Vec<&'a mut String>),
    out: &mut Vec<&'a mut String>,
) {
    if let Value::Array(a) = v {
        for x in a.iter_mut() {
            f(x, out);
        }
    }
}

/// Every string inside `v`, recursively (tool inputs, function-call args).
fn all_strings<'a>(v: &'a mut Value, out: &mut Vec<&'a mut String>) {
    match v {
        Value::String(s) => out.push(s),
        Value::Array(a) => a.iter_mut().for_each(|x| all_strings(x, out)),
        Value::Object(m) => m.values_mut().for_each(|x| all_strings(x, out)),
        _ => {}
    }
}

/// `v`, if it is a string.
fn string<'a>(v: &'a mut Value, out: &mut Vec<&'a mut String>) {
    if let Value::String(s) = v {
        out.push(s)
    }
}

/// `v` if it is a string, else each element of an array given to `item`.
fn string_or_each<'a>(
    v: &'a mut Value,
    item: impl Fn(&'a mut Value, &mut Vec<&'a mut String>),
    out: &mut Vec<&'a mut String>,
) {
    match v {
        Value::String(s) => out.push(s),
        Value::Array(a) => a.iter_mut().for_each(|x| item(x, out)),
        _ => {}
    }
}

/// A string, or the strings directly inside an array.
fn strings_shallow<'a>(v: &'a mut Value, out: &mut Vec<&'a mut String>) {
    string_or_each(v, string, out)
}

/// `content` as a string or an array of parts; `text`-bearing parts contribute their text.
fn text_parts<'a>(v: &'a mut Value, out: &mut Vec<&'a mut String>) {
    string_or_each(
        v,
        |p, out| match p {
            Value::Object(m) => {
                if let Some(t) = m.get_mut("text") {
                    string(t, out)
                }
            }
            p => string(p, out),
        },
        out,
    )
}

/// An OpenAI chat message (request or response): `content`, `refusal` and tool-call arguments.
fn openai_message<'a>(m: &'a mut Value, out: &mut Vec<&'a mut String>) {
    let Value::Object(m) = m else { return };
    for (k, v) in m.iter_mut() {
        match k.as_str() {
            "content" | "refusal" => text_parts(v, out),
            "tool_calls" => each(
                v,
                |tc, out| {
                    if let Some(Value::String(a)) =
                        tc.get_mut("function").and_then(|f| f.get_mut("arguments"))
                    {
                        out.push(a)
                    }
                },
                out,
            ),
            "function_call" => {
                if let Some(Value::String(a)) = v.get_mut("arguments") {
                    out.push(a)
                }
            }
            _ => {}
        }
    }
}

/// A Responses API input/output item: a message with `content` (string or parts with
/// `text`), a function call with `arguments`, or a function call output with `output`.
fn responses_item<'a>(item: &'a mut Value, out: &mut Vec<&'a mut String>) {
    let Value::Object(m) = item else { return };
    for (k, v) in m.iter_mut() {
        match k.as_str() {
            "content" => text_parts(v, out),
            "arguments" | "output" => string(v, out),
            _ => {}
        }
    }
}

/// Anthropic `system` or message `content`: a string or blocks (`text`, `tool_use.input`
/// recursively, `tool_result.content`).
fn anthropic_content<'a>(v: &'a mut Value, out: &mut Vec<&'a mut String>) {
    string_or_each(v, anthropic_block, out)
}

fn anthropic_block<'a>(b: &'a mut Value, out: &mut Vec<&'a mut String>) {
    let Value::Object(m) = b else { return };
    let ty = match m.get("type").and_then(Value::as_str) {
        Some("tool_use") | Some("server_tool_use") => 1,
        Some("tool_result") => 2,
        _ => 0,
    };
    for (k, v) in m.iter_mut() {
        match (ty, k.as_str()) {
            (0, "text") | (_, "thinking") => string(v, out),
            (1, "input") => all_strings(v, out),
            (2, "content") => anthropic_content(v, out),
            _ => {}
        }
    }
}

/// A Gemini `Content`: `parts[].text` and `parts[].functionCall.args` (every string).
fn gemini_content<'a>(v: &'a mut Value, out: &mut Vec<&'a mut String>) {
    let Some(parts) = v.get_mut("parts") else {
        return;
    };
    each(
        parts,
        |p, out| {
            let Value::Object(m) = p else { return };
            for (k, v) in m.iter_mut() {
                match k.as_str() {
                    "text" => string(v, out),
                    "functionCall" | "function_call" => {
                        if let Some(args) = v.get_mut("args") {
                            all_strings(args, out)
                        }
                    }
                    _ => {}
                }
            }
        },
        out,
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn req(format: Format, mut v: Value) -> Vec<String> {
        request_texts(format, &mut v)
            .into_iter()
            .map(|s| s.clone())
            .collect()
    }

    fn resp(format: Format, mut v: Value) -> Vec<String> {
        response_texts(format, &mut v)
            .into_iter()
            .map(|s| s.clone())
            .collect()
    }

    #[test]
    fn openai_chat_request() {
        let v = json!({
            "model": "gpt-4o",
            "messages": [
                {"role": "system", "content": "sys"},
                {"role": "user", "name": "alice", "content": [
                    {"type": "text", "text": "part1"},
                    {"type": "image_url", "image_url": {"url": "https://x/y.png"}}
                ]},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{\"a\":1}"}}
                ]},
                {"role": "tool", "tool_call_id": "c1", "content": "tool out"}
            ]
        });
        assert_eq!(
            req(Format::OpenAi, v),
            ["sys", "part1", "{\"a\":1}", "tool out"]
        );
    }

    #[test]
    fn openai_legacy_embeddings_and_responses() {
        assert_eq!(
            req(Format::OpenAi, json!({"prompt": ["a", "b"]})),
            ["a", "b"]
        );
        assert_eq!(req(Format::OpenAi, json!({"input": "emb"})), ["emb"]);
        assert_eq!(req(Format::OpenAi, json!({"input": [[1, 2], "x"]})), ["x"]);
        let v = json!({
            "instructions": "be nice",
            "input": [
                {"role": "user", "content": "hi"},
                {"role": "user", "content": [{"type": "input_text", "text": "there"}]},
                {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{\"q\":\"z\"}"},
                {"type": "function_call_output", "call_id": "c", "output": "result"}
            ]
        });
        assert_eq!(
            req(Format::OpenAi, v),
            ["be nice", "hi", "there", "{\"q\":\"z\"}", "result"]
        );
    }

    #[test]
    fn anthropic_request() {
        let v = json!({
            "system": [{"type": "text", "text": "sys"}],
            "messages": [
                {"role": "user", "content": "hello"},
                {"role": "assistant", "content": [
                    {"type": "text", "text": "calling"},
                    {"type": "tool_use", "id": "t", "name": "lookup", "input": {"q": "deep", "n": 1, "l": ["x"]}}
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "t", "content": [{"type": "text", "text": "res"}]},
                    {"type": "tool_result", "tool_use_id": "t", "content": "res2"}
                ]}
            ]
        });
        assert_eq!(
            req(Format::Anthropic, v),
            ["sys", "hello", "calling", "deep", "x", "res", "res2"]
        );
        assert_eq!(req(Format::Anthropic, json!({"system": "s"})), ["s"]);
    }

    #[test]
    fn gemini_request() {
        let v = json!({
            "systemInstruction": {"parts": [{"text": "sys"}]},
            "contents": [
                {"role": "user", "parts": [{"text": "a"}, {"inlineData": {"data": "AAAA"}}]},
                {"role": "model", "parts": [{"functionCall": {"name": "f", "args": {"k": "v"}}}]}
            ]
        });
        assert_eq!(req(Format::Google, v), ["sys", "a", "v"]);
        assert_eq!(
            req(
                Format::Google,
                json!({"system_instruction": {"parts": [{"text": "s"}]}})
            ),
            ["s"]
        );
    }

    #[test]
    fn responses() {
        let chat = json!({"choices": [{"message": {"role": "assistant", "content": "answer",
            "tool_calls": [{"function": {"name": "f", "arguments": "{}"}}]}}]});
        assert_eq!(resp(Format::OpenAi, chat), ["answer", "{}"]);
        assert_eq!(
            resp(Format::OpenAi, json!({"choices": [{"text": "legacy"}]})),
            ["legacy"]
        );
        let r = json!({"output": [
            {"type": "message", "content": [{"type": "output_text", "text": "out"}]},
            {"type": "function_call", "arguments": "{\"a\":\"b\"}"}
        ]});
        assert_eq!(resp(Format::OpenAi, r), ["out", "{\"a\":\"b\"}"]);
        let a = json!({"content": [{"type": "text", "text": "t"}, {"type": "tool_use", "input": {"x": "y"}}]});
        assert_eq!(resp(Format::Anthropic, a), ["t", "y"]);
        let g = json!({"candidates": [{"content": {"parts": [{"text": "g"}, {"functionCall": {"args": {"a": "b"}}}]}}]});
        assert_eq!(resp(Format::Google, g), ["g", "b"]);
        // Requests fields are not response fields.
        assert!(resp(Format::OpenAi, json!({"messages": [{"content": "x"}]})).is_empty());
    }

    #[test]
    fn max_tokens_per_format() {
        assert_eq!(
            requested_max_tokens(Format::OpenAi, &json!({"max_tokens": 10})),
            Some(10)
        );
        assert_eq!(
            requested_max_tokens(Format::OpenAi, &json!({"max_completion_tokens": 20})),
            Some(20)
        );
        assert_eq!(
            requested_max_tokens(Format::OpenAi, &json!({"max_output_tokens": 30})),
            Some(30)
        );
        assert_eq!(
            requested_max_tokens(Format::OpenAi, &json!({"model": "x"})),
            None
        );
        assert_eq!(
            requested_max_tokens(Format::Anthropic, &json!({"max_tokens": 1024})),
            Some(1024)
        );
        assert_eq!(
            requested_max_tokens(Format::Anthropic, &json!({"max_output_tokens": 1024})),
            None
        );
        assert_eq!(
            requested_max_tokens(
                Format::Google,
                &json!({"generationConfig": {"maxOutputTokens": 99}})
            ),
            Some(99)
        );
        assert_eq!(
            requested_max_tokens(Format::Google, &json!({"max_tokens": 99})),
            None
        );
    }

    #[test]
    fn stream_deltas() {
        let d = |f, s: &str| stream_delta_text(f, s.as_bytes());
        assert_eq!(
            d(
                Format::OpenAi,
                r#"{"choices":[{"delta":{"content":"Hel"}}]}"#
            )
            .as_deref(),
            Some("Hel")
        );
        assert_eq!(
            d(Format::OpenAi, r#"{"choices":[{"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"a"}}]}}]}"#).as_deref(),
            Some("{\"a")
        );
        assert_eq!(
            d(
                Format::OpenAi,
                r#"{"type":"response.output_text.delta","delta":"xy"}"#
            )
            .as_deref(),
            Some("xy")
        );
        assert_eq!(
            d(
                Format::OpenAi,
                r#"{"type":"response.completed","response":{}}"#
            ),
            None
        );
        assert_eq!(d(Format::OpenAi, " [DONE] "), None);
        assert_eq!(d(Format::OpenAi, "not json"), None);
        assert_eq!(
            d(
                Format::OpenAi,
                r#"{"choices":[{"delta":{"role":"assistant"}}]}"#
            ),
            None
        );
        assert_eq!(
            d(Format::Anthropic, r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"hi"}}"#).as_deref(),
            Some("hi")
        );
        assert_eq!(
            d(Format::Anthropic, r#"{"type":"content_block_delta","delta":{"type":"input_json_delta","partial_json":"{\"q"}}"#).as_deref(),
            Some("{\"q")
        );
        assert_eq!(d(Format::Anthropic, r#"{"type":"message_stop"}"#), None);
        assert_eq!(
            d(
                Format::Google,
                r#"{"candidates":[{"content":{"parts":[{"text":"gem"}]}}]}"#
            )
            .as_deref(),
            Some("gem")
        );
    }
}
