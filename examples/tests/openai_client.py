"""serve_openai through the official `openai` Python SDK: what a real client sees.

    python openai_client.py BASE_URL MODEL [ADAPTER ADAPTER]

Chat and text completions, streamed and not; `n`, stop strings, logprobs; `parse()` with a
pydantic model; a tool call, whole and streamed; malformed and oversized requests.
BASE_URL is the server's `http://HOST:PORT/v1`, MODEL a name `/v1/models` lists. Each check
prints one line; the first failure raises (exit status 1). Run by
`examples/tests/it/serve_openai.rs` with the venv `scripts/openai-venv` makes.
"""

import json
import sys
import threading
import urllib.error
import urllib.request

import openai
import pydantic
from openai import OpenAI

BASE, MODEL, ADAPTERS = sys.argv[1], sys.argv[2], sys.argv[3:]
client = OpenAI(base_url=BASE, api_key="unused", max_retries=0, timeout=300)
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def check(condition, what):
    if not condition:
        raise AssertionError(what)
    print(f"ok: {what}")


# --- models ----------------------------------------------------------------------------------
ids = [m.id for m in client.models.list().data]
check(MODEL in ids, f"/v1/models lists {MODEL}: {ids}")

# --- chat, whole and streamed ----------------------------------------------------------------
whole = client.chat.completions.create(
    model=MODEL, messages=QUESTION, temperature=0, max_tokens=24
)
text = whole.choices[0].message.content
check(whole.object == "chat.completion" and text, f"chat completion: {text!r}")
check(whole.choices[0].finish_reason in ("stop", "length"), "chat finish_reason")
usage = whole.usage
check(
    usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    and usage.completion_tokens > 0,
    f"chat usage {usage}",
)
check(usage.prompt_tokens_details.cached_tokens is not None, "usage has cached_tokens")

chunks = list(
    client.chat.completions.create(
        model=MODEL,
        messages=QUESTION,
        temperature=0,
        max_tokens=24,
        stream=True,
        stream_options={"include_usage": True},
    )
)
streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
check(streamed == text, "streamed chat text equals the whole response's")
check(chunks[0].choices[0].delta.role == "assistant", "the first chunk carries the role")
check(
    not chunks[-1].choices and chunks[-1].usage.completion_tokens == usage.completion_tokens,
    "the last chunk carries usage and no choices",
)
check(all(c.usage is None for c in chunks[:-1]), "earlier chunks carry usage null")
plain = list(
    client.chat.completions.create(
        model=MODEL, messages=QUESTION, temperature=0, max_tokens=4, stream=True
    )
)
check(all(c.usage is None for c in plain), "no usage without stream_options")

# --- text completions ------------------------------------------------------------------------
done = client.completions.create(
    model=MODEL, prompt="The capital of France is", temperature=0, max_tokens=16
)
full = done.choices[0].text
check(done.object == "text_completion" and full, f"text completion: {full!r}")
pieces = client.completions.create(
    model=MODEL, prompt="The capital of France is", temperature=0, max_tokens=16, stream=True
)
check("".join(p.choices[0].text for p in pieces if p.choices) == full, "streamed completion")

# --- n, stop strings, logprobs ---------------------------------------------------------------
two = client.chat.completions.create(
    model=MODEL, messages=QUESTION, n=2, seed=5, max_tokens=8, temperature=1.0
)
check(sorted(c.index for c in two.choices) == [0, 1], "n=2 gives choices 0 and 1")
again = client.chat.completions.create(
    model=MODEL, messages=QUESTION, n=2, seed=5, max_tokens=8, temperature=1.0
)
check(
    [c.message.content for c in two.choices] == [c.message.content for c in again.choices],
    "a seed makes n=2 reproducible",
)

stop = full[3:9]
cut = client.completions.create(
    model=MODEL,
    prompt="The capital of France is",
    temperature=0,
    max_tokens=16,
    stop=[stop],
)
check(
    cut.choices[0].text == full[: full.index(stop)] and cut.choices[0].finish_reason == "stop",
    f"stop {stop!r} cuts {full!r} to {cut.choices[0].text!r}",
)
cut_stream = client.completions.create(
    model=MODEL,
    prompt="The capital of France is",
    temperature=0,
    max_tokens=16,
    stop=[stop],
    stream=True,
)
check(
    "".join(p.choices[0].text for p in cut_stream if p.choices) == full[: full.index(stop)],
    "a streamed stop string never reaches the client",
)

lp = client.chat.completions.create(
    model=MODEL, messages=QUESTION, max_tokens=6, logprobs=True, top_logprobs=3, temperature=0
)
content = lp.choices[0].logprobs.content
check(len(content) == lp.usage.completion_tokens, "one logprobs entry per token")
check(
    all(
        len(t.top_logprobs) == 3
        and abs(t.logprob - t.top_logprobs[0].logprob) < 1e-5  # greedy: the top one
        and t.top_logprobs[0].logprob >= t.top_logprobs[1].logprob
        for t in content
    ),
    "greedy tokens are their top logprob, alternatives sorted",
)
check(
    "".join(t.token for t in content).startswith(lp.choices[0].message.content),
    "the logprobs' tokens spell the content",
)
legacy = client.completions.create(
    model=MODEL, prompt="The capital of France is", max_tokens=4, logprobs=2, temperature=0
)
check(len(legacy.choices[0].logprobs.tokens) == 4, "completion logprobs, legacy format")


# --- structured outputs and tools ------------------------------------------------------------
class Person(pydantic.BaseModel):
    name: str
    age: int


parsed = client.chat.completions.parse(
    model=MODEL,
    messages=[{"role": "user", "content": "Describe a person."}],
    response_format=Person,
    max_tokens=80,
    seed=1,
)
person = parsed.choices[0].message.parsed
check(isinstance(person, Person), f"parse() with a pydantic model: {person!r}")

weather = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}
called = client.chat.completions.create(
    model=MODEL,
    messages=[{"role": "user", "content": "What is the weather in Paris?"}],
    tools=[weather],
    tool_choice="required",
    max_tokens=60,
    temperature=0,
)
call = called.choices[0].message.tool_calls[0]
check(
    called.choices[0].finish_reason == "tool_calls"
    and call.function.name == "get_weather"
    and isinstance(json.loads(call.function.arguments)["city"], str),
    f"a required tool call: {call.function.name}({call.function.arguments})",
)
deltas = [
    c.choices[0].delta.tool_calls[0]
    for c in client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "What is the weather in Paris?"}],
        tools=[weather],
        tool_choice="required",
        max_tokens=60,
        temperature=0,
        stream=True,
    )
    if c.choices and c.choices[0].delta.tool_calls
]
check(
    deltas[0].function.name == "get_weather"
    and "".join(d.function.arguments or "" for d in deltas) == call.function.arguments,
    f"the streamed call's {len(deltas)} argument deltas add up to the same call",
)

# --- adapters --------------------------------------------------------------------------------
if ADAPTERS:
    listed = {m.id: m for m in client.models.list().data}
    check(all(a in listed for a in ADAPTERS), f"/v1/models lists the adapters {ADAPTERS}")
    answers = {}

    def ask(model):
        answers[model] = client.completions.create(
            model=model, prompt="The capital of France is", temperature=0, max_tokens=12
        ).choices[0].text

    threads = [threading.Thread(target=ask, args=(m,)) for m in [MODEL, *ADAPTERS]]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    check(
        len(answers) == 1 + len(ADAPTERS) and len(set(answers.values())) == len(answers),
        f"requests on two adapters and the base model at once: {answers}",
    )

# --- errors ----------------------------------------------------------------------------------
def status_of(call):
    try:
        call()
    except openai.APIStatusError as error:
        body = error.body if isinstance(error.body, dict) else {}
        return error.status_code, body
    raise AssertionError("no error")


status, body = status_of(
    lambda: client.chat.completions.create(model=MODEL, messages=QUESTION, n=0)
)
check(status == 400 and body.get("param") == "n", f"n=0 is a 400 naming n: {body}")
status, body = status_of(
    lambda: client.chat.completions.create(model="no-such-model", messages=QUESTION)
)
check(status == 404 and body.get("code") == "model_not_found", "an unknown model is a 404")
status, body = status_of(
    lambda: client.completions.create(model=MODEL, prompt="hi", max_tokens=1_000_000)
)
check(
    status == 400 and body.get("code") == "context_length_exceeded",
    f"a completion past the context is a 400: {body.get('message')}",
)
status, body = status_of(
    lambda: client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "x" * (5 << 20)}]
    )
)
check(status == 413, f"an oversized body is a 413: {body}")
malformed = urllib.request.Request(
    f"{BASE}/chat/completions",
    data=b'{"model": "' + MODEL.encode() + b'", "messages": [',
    headers={"content-type": "application/json"},
)
try:
    urllib.request.urlopen(malformed, timeout=60)
    raise AssertionError("malformed JSON was accepted")
except urllib.error.HTTPError as error:
    raw_status, raw_body = error.code, json.loads(error.read())
check(
    raw_status == 400 and set(raw_body["error"]) == {"message", "type", "param", "code"},
    "malformed JSON is a 400 with OpenAI's error object",
)
after = client.completions.create(model=MODEL, prompt="hi", max_tokens=2)
check(after.choices[0].text is not None, "the server still serves after the errors")
print("all checks passed")
