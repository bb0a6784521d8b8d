"""Drives the official Python SDKs (openai, anthropic, google-genai) through the gateway — a
plain and a streaming chat each — changing only their base URL and key, and checks the content.
Usage: sdk_clients.py BASE_URL API_KEY. Prints a JSON summary; exits non-zero on a mismatch."""
import json
import sys

import anthropic
import openai
from google import genai
from google.genai import types

base, key = sys.argv[1].rstrip("/"), sys.argv[2]
expect = lambda prompt: f"Mock reply to: {prompt}"
done = {}

oa = openai.OpenAI(base_url=f"{base}/openai/v1", api_key=key, max_retries=0)
r = oa.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hello openai"}])
assert r.choices[0].message.content == expect("hello openai"), r
assert r.usage.prompt_tokens == 2 and r.usage.completion_tokens == 5, r.usage
done["openai"] = True
chunks = oa.chat.completions.create(
    model="gpt-4o-mini",
    messages=[{"role": "user", "content": "stream openai"}],
    stream=True,
    stream_options={"include_usage": True},
)
text, usage = "", None
for c in chunks:
    if c.choices and c.choices[0].delta.content:
        text += c.choices[0].delta.content
    if c.usage:
        usage = c.usage
assert text == expect("stream openai"), text
assert usage.prompt_tokens == 2, usage
done["openai_stream"] = True

an = anthropic.Anthropic(base_url=f"{base}/anthropic", api_key=key, max_retries=0)
m = an.messages.create(model="claude-3-5-haiku", max_tokens=64, messages=[{"role": "user", "content": "hello claude"}])
assert m.content[0].text == expect("hello claude"), m
assert m.usage.input_tokens == 2 and m.usage.output_tokens == 5, m.usage
done["anthropic"] = True
with an.messages.stream(model="claude-3-5-haiku", max_tokens=64, messages=[{"role": "user", "content": "stream claude"}]) as s:
    text = s.get_final_text()
    final = s.get_final_message()
assert text == expect("stream claude"), text
assert final.usage.output_tokens == 5, final.usage
done["anthropic_stream"] = True

g = genai.Client(api_key=key, http_options=types.HttpOptions(base_url=f"{base}/google/", api_version="v1beta"))
r = g.models.generate_content(model="gemini-2.0-flash", contents="hello gemini")
assert r.text == expect("hello gemini"), r
assert r.usage_metadata.prompt_token_count == 2, r.usage_metadata
done["google"] = True
text = "".join(c.text or "" for c in g.models.generate_content_stream(model="gemini-2.0-flash", contents="stream gemini"))
assert text == expect("stream gemini"), text
done["google_stream"] = True

print(json.dumps(done))
