"""The official provider SDKs as real clients of majordomo (in front of the mock provider).

Every call carries `X-Majordomo-Test-Case: <uuid>`; the request-log row is found by that
metadata (and, where the SDK exposes response headers, checked against
`X-Majordomo-Request-Id`). Each test runs once per store (SQLite, PostgreSQL).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from decimal import Decimal

import anthropic
import openai
import pytest
from google import genai
from google.genai import errors as genai_errors
from google.genai import types as genai_types

from conftest import REPO, Gateway

MOCK_RS = REPO / "tests" / "common" / "mock_upstream.rs"
PRICES_JSON = REPO / "conf" / "prices.json"

TEXT = 'Hello from the "mock" upstream \u2713'
# the mock's canned::TEXT_PIECES: one stream event (one Gemini chunk) each
C_TEXT_PIECES = ["Hello", " from", ' the "mock"', " upstream", " \u2713"]
assert "".join(C_TEXT_PIECES) == TEXT
INVALID_KEY = "mdm_sk_" + "0" * 40
INVALID_KEY_MESSAGE = "Invalid X-Majordomo-Key"

CHAT_MODEL = "gpt-4o-mini"
RESPONSES_MODEL = "gpt-5-mini"
EMBEDDING_MODEL = "text-embedding-3-small"  # not in the price table
ANTHROPIC_MODEL = "claude-sonnet-5"
GEMINI_MODEL = "gemini-2.5-flash"


# ---------------------------------------------------------------------------------------------
# What the mock sends (read from its source, so the numbers cannot drift) and what it costs
# ---------------------------------------------------------------------------------------------


def _canned() -> dict[str, int]:
    src = MOCK_RS.read_text()
    consts = {m[0]: int(m[1]) for m in re.findall(r"pub const (\w+): (?:u64|usize) = (\d+);", src)}
    assert "OPENAI_CHAT_PROMPT_TOKENS" in consts, f"no canned constants found in {MOCK_RS}"
    assert 'pub const TEXT: &str = "Hello from the \\"mock\\" upstream \\u{2713}";' in src, (
        "the mock's canned TEXT changed; update TEXT here"
    )
    return consts


C = _canned()


@dataclass(frozen=True)
class Tokens:
    input: int
    cached: int
    cache_creation: int
    output: int
    reasoning: int


OPENAI_CHAT = Tokens(
    C["OPENAI_CHAT_PROMPT_TOKENS"], C["OPENAI_CHAT_CACHED_TOKENS"], 0,
    C["OPENAI_CHAT_COMPLETION_TOKENS"], C["OPENAI_CHAT_REASONING_TOKENS"],
)
OPENAI_RESPONSES = Tokens(
    C["OPENAI_RESPONSES_INPUT_TOKENS"], C["OPENAI_RESPONSES_CACHED_TOKENS"], 0,
    C["OPENAI_RESPONSES_OUTPUT_TOKENS"], C["OPENAI_RESPONSES_REASONING_TOKENS"],
)
OPENAI_EMBEDDINGS = Tokens(C["OPENAI_EMBEDDINGS_PROMPT_TOKENS"], 0, 0, 0, 0)
ANTHROPIC_CACHE_CREATION = (
    C["ANTHROPIC_CACHE_CREATION_5M_TOKENS"] + C["ANTHROPIC_CACHE_CREATION_1H_TOKENS"]
)
ANTHROPIC = Tokens(
    C["ANTHROPIC_RAW_INPUT_TOKENS"] + C["ANTHROPIC_CACHE_READ_TOKENS"] + ANTHROPIC_CACHE_CREATION,
    C["ANTHROPIC_CACHE_READ_TOKENS"], ANTHROPIC_CACHE_CREATION,
    C["ANTHROPIC_OUTPUT_TOKENS"], 0,
)
GEMINI = Tokens(
    C["GEMINI_PROMPT_TOKEN_COUNT"] + C["GEMINI_TOOL_USE_PROMPT_TOKEN_COUNT"],
    C["GEMINI_CACHED_CONTENT_TOKEN_COUNT"], 0,
    C["GEMINI_CANDIDATES_TOKEN_COUNT"] + C["GEMINI_THOUGHTS_TOKEN_COUNT"],
    C["GEMINI_THOUGHTS_TOKEN_COUNT"],
)


def _price(price_id: str) -> tuple[Decimal, Decimal, Decimal | None]:
    for m in json.loads(PRICES_JSON.read_text())["models"]:
        if m["id"] == price_id:
            cached = m.get("input_cached")
            return Decimal(m["input"]), Decimal(m["output"]), (
                None if cached is None else Decimal(cached)
            )
    raise AssertionError(f"{price_id} is not in {PRICES_JSON}")


Q10 = Decimal("1e-10")  # the cost columns are NUMERIC(20,10)


def expected_cost(provider: str, price_id: str, t: Tokens) -> tuple[Decimal, Decimal, Decimal]:
    """SPEC §5, computed independently: (input_cost, output_cost, total_cost) in USD."""
    inp, out, cached = _price(price_id)
    million = Decimal(1_000_000)
    if cached is None:
        cached = inp * Decimal("0.1") if provider == "anthropic" else inp
    uncached = t.input - t.cached - t.cache_creation
    input_amount = uncached * inp + t.cached * cached
    if provider == "anthropic":
        w1h = C["ANTHROPIC_CACHE_CREATION_1H_TOKENS"] if t.cache_creation else 0
        w5m = t.cache_creation - w1h
        input_amount += w5m * inp * Decimal("1.25") + w1h * inp * 2
    else:
        input_amount += t.cache_creation * inp
    ic = (input_amount / million).quantize(Q10)
    oc = (t.output * out / million).quantize(Q10)
    return ic, oc, ic + oc


# ---------------------------------------------------------------------------------------------
# Row assertions
# ---------------------------------------------------------------------------------------------


def assert_row(
    row: dict,
    *,
    provider: str,
    model: str,
    tokens: Tokens,
    test_case: str,
    price_id: str | None,
    path: str | None = None,
) -> None:
    got = Tokens(
        row["input_tokens"], row["cached_tokens"], row["cache_creation_tokens"],
        row["output_tokens"], row["reasoning_tokens"],
    )
    assert got == tokens, f"tokens in the row: {row}"
    assert row["provider"] == provider, row
    assert row["model"] == model, row
    assert row["status_code"] == 200, row
    assert row["usage_complete"] is True, row
    assert row["error_message"] in (None, ""), row
    assert row["raw_metadata"] == {"test-case": test_case}, row
    if path is not None:
        assert row["request_path"] == path, row
    if price_id is None:
        assert row["price_found"] is False, row
        for col in ("input_cost", "output_cost", "total_cost"):
            assert row[col] is None or Decimal(row[col]) == 0, row
    else:
        assert row["price_found"] is True, row
        ic, oc, tc = expected_cost(provider, price_id, tokens)
        assert (Decimal(row["input_cost"]), Decimal(row["output_cost"]), Decimal(row["total_cost"])) == (
            ic, oc, tc
        ), f"costs in the row vs expected {(ic, oc, tc)}: {row}"


def md_headers(gw: Gateway, test_case: str, key: str | None = None) -> dict[str, str]:
    return {"X-Majordomo-Key": key or gw.key, "X-Majordomo-Test-Case": test_case}


# ---------------------------------------------------------------------------------------------
# Clients
# ---------------------------------------------------------------------------------------------


def openai_client(gw: Gateway, test_case: str, key: str | None = None) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{gw.url}/v1",
        api_key="sk-test",
        default_headers=md_headers(gw, test_case, key),
        max_retries=0,
        timeout=30,
    )


def anthropic_client(gw: Gateway, test_case: str, key: str | None = None) -> anthropic.Anthropic:
    return anthropic.Anthropic(
        base_url=gw.url,
        api_key="sk-ant-test",
        default_headers=md_headers(gw, test_case, key),
        max_retries=0,
        timeout=30,
    )


def genai_client(
    gw: Gateway, test_case: str, key: str | None = None, api_version: str | None = None
) -> genai.Client:
    return genai.Client(
        api_key="gm-test",
        http_options=genai_types.HttpOptions(
            base_url=gw.url, headers=md_headers(gw, test_case, key), timeout=30_000,
            api_version=api_version,
        ),
    )


MESSAGES = [{"role": "user", "content": "Say hello."}]


# ---------------------------------------------------------------------------------------------
# OpenAI
# ---------------------------------------------------------------------------------------------


def test_openai_chat_completion(gateway: Gateway, test_case: str):
    client = openai_client(gateway, test_case)
    raw = client.chat.completions.with_raw_response.create(model=CHAT_MODEL, messages=MESSAGES)
    completion = raw.parse()
    assert completion.choices[0].message.content == TEXT
    assert completion.usage.prompt_tokens == OPENAI_CHAT.input
    assert completion.usage.completion_tokens == OPENAI_CHAT.output
    request_id = raw.headers["x-majordomo-request-id"]
    row = gateway.row_for(test_case)
    assert row["id"] == request_id
    assert_row(row, provider="openai", model=CHAT_MODEL, tokens=OPENAI_CHAT,
               test_case=test_case, price_id="gpt-4o-mini", path="/v1/chat/completions")


def test_openai_chat_stream_with_include_usage(gateway: Gateway, test_case: str):
    client = openai_client(gateway, test_case)
    raw = client.chat.completions.with_raw_response.create(
        model=CHAT_MODEL, messages=MESSAGES, stream=True,
        stream_options={"include_usage": True},
    )
    request_id = raw.headers["x-majordomo-request-id"]
    text, usage_chunks = "", []
    for chunk in raw.parse():
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
        elif chunk.usage is not None:
            usage_chunks.append(chunk.usage)
    assert text == TEXT
    # the client asked for usage: it gets the usage chunk, unchanged
    assert len(usage_chunks) == 1
    assert usage_chunks[0].prompt_tokens == OPENAI_CHAT.input
    assert usage_chunks[0].completion_tokens == OPENAI_CHAT.output
    assert usage_chunks[0].prompt_tokens_details.cached_tokens == OPENAI_CHAT.cached
    row = gateway.row_for(test_case)
    assert row["id"] == request_id
    assert_row(row, provider="openai", model=CHAT_MODEL, tokens=OPENAI_CHAT,
               test_case=test_case, price_id="gpt-4o-mini")


def test_openai_chat_stream_without_include_usage(gateway: Gateway, test_case: str):
    """The gateway injects include_usage upstream and hides the usage chunk from the client."""
    client = openai_client(gateway, test_case)
    stream = client.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES, stream=True)
    text, chunks = "", []
    for chunk in stream:
        chunks.append(chunk)
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
    assert text == TEXT
    assert chunks, "no chunks"
    usage_only = [c for c in chunks if not c.choices]
    assert usage_only == [], f"the SDK saw chunks it did not ask for: {usage_only}"
    assert all(c.usage is None for c in chunks), "a chunk carried usage the client did not ask for"
    assert chunks[-1].choices[0].finish_reason == "stop"
    # ... and yet the log has the exact usage
    row = gateway.row_for(test_case)
    assert_row(row, provider="openai", model=CHAT_MODEL, tokens=OPENAI_CHAT,
               test_case=test_case, price_id="gpt-4o-mini")


def test_openai_chat_stream_helper(gateway: Gateway, test_case: str):
    """`client.chat.completions.stream(...)` (the SDK's event helper), no usage asked for."""
    client = openai_client(gateway, test_case)
    with client.chat.completions.stream(model=CHAT_MODEL, messages=MESSAGES) as stream:
        deltas = [e.delta for e in stream if e.type == "content.delta"]
        final = stream.get_final_completion()
    assert "".join(deltas) == TEXT
    assert final.choices[0].message.content == TEXT
    assert final.usage is None
    row = gateway.row_for(test_case)
    assert_row(row, provider="openai", model=CHAT_MODEL, tokens=OPENAI_CHAT,
               test_case=test_case, price_id="gpt-4o-mini")


def test_openai_responses(gateway: Gateway, test_case: str):
    client = openai_client(gateway, test_case)
    raw = client.responses.with_raw_response.create(model=RESPONSES_MODEL, input="Say hello.")
    response = raw.parse()
    assert response.output_text == TEXT
    assert response.usage.input_tokens == OPENAI_RESPONSES.input
    row = gateway.row_for(test_case)
    assert row["id"] == raw.headers["x-majordomo-request-id"]
    assert_row(row, provider="openai", model=RESPONSES_MODEL, tokens=OPENAI_RESPONSES,
               test_case=test_case, price_id="gpt-5-mini", path="/v1/responses")


def test_openai_responses_stream(gateway: Gateway, test_case: str):
    client = openai_client(gateway, test_case)
    stream = client.responses.create(model=RESPONSES_MODEL, input="Say hello.", stream=True)
    text, completed = "", None
    for event in stream:
        if event.type == "response.output_text.delta":
            text += event.delta
        elif event.type == "response.completed":
            completed = event.response
    assert text == TEXT
    assert completed is not None and completed.output_text == TEXT
    assert completed.usage.output_tokens == OPENAI_RESPONSES.output
    row = gateway.row_for(test_case)
    assert_row(row, provider="openai", model=RESPONSES_MODEL, tokens=OPENAI_RESPONSES,
               test_case=test_case, price_id="gpt-5-mini")


def test_openai_responses_stream_helper(gateway: Gateway, test_case: str):
    client = openai_client(gateway, test_case)
    with client.responses.stream(model=RESPONSES_MODEL, input="Say hello.") as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(deltas) == TEXT
    assert final.output_text == TEXT
    row = gateway.row_for(test_case)
    assert_row(row, provider="openai", model=RESPONSES_MODEL, tokens=OPENAI_RESPONSES,
               test_case=test_case, price_id="gpt-5-mini")


def test_openai_embeddings(gateway: Gateway, test_case: str):
    client = openai_client(gateway, test_case)
    # the SDK asks for base64 by default and decodes it
    raw = client.embeddings.with_raw_response.create(model=EMBEDDING_MODEL, input="hello")
    result = raw.parse()
    assert len(result.data) == 1
    assert len(result.data[0].embedding) == C["DEFAULT_EMBEDDING_DIMENSIONS"]
    assert all(isinstance(x, float) for x in result.data[0].embedding)
    assert result.usage.prompt_tokens == OPENAI_EMBEDDINGS.input
    row = gateway.row_for(test_case)
    assert row["id"] == raw.headers["x-majordomo-request-id"]
    assert_row(row, provider="openai", model=EMBEDDING_MODEL, tokens=OPENAI_EMBEDDINGS,
               test_case=test_case, price_id=None, path="/v1/embeddings")


def test_openai_invalid_key(gateway: Gateway, test_case: str):
    client = openai_client(gateway, test_case, key=INVALID_KEY)
    with pytest.raises(openai.AuthenticationError) as exc:
        client.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES)
    e = exc.value
    assert e.status_code == 401
    assert INVALID_KEY_MESSAGE in e.message, e.message
    assert e.code == "invalid_majordomo_key"
    assert e.response.headers.get("x-majordomo-request-id")
    with pytest.raises(openai.AuthenticationError) as exc:
        client.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES, stream=True)
    assert INVALID_KEY_MESSAGE in exc.value.message


# ---------------------------------------------------------------------------------------------
# Anthropic
# ---------------------------------------------------------------------------------------------


def test_anthropic_messages(gateway: Gateway, test_case: str):
    client = anthropic_client(gateway, test_case)
    raw = client.messages.with_raw_response.create(
        model=ANTHROPIC_MODEL, max_tokens=256, messages=MESSAGES
    )
    message = raw.parse()
    assert message.content[0].text == TEXT
    assert message.usage.input_tokens == C["ANTHROPIC_RAW_INPUT_TOKENS"]
    assert message.usage.cache_read_input_tokens == ANTHROPIC.cached
    row = gateway.row_for(test_case)
    assert row["id"] == raw.headers["x-majordomo-request-id"]
    assert_row(row, provider="anthropic", model=ANTHROPIC_MODEL, tokens=ANTHROPIC,
               test_case=test_case, price_id="claude-sonnet-5", path="/v1/messages")


def test_anthropic_messages_stream_helper(gateway: Gateway, test_case: str):
    client = anthropic_client(gateway, test_case)
    with client.messages.stream(model=ANTHROPIC_MODEL, max_tokens=256, messages=MESSAGES) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == TEXT
    assert final.content[0].text == TEXT
    assert final.usage.output_tokens == ANTHROPIC.output
    assert final.stop_reason == "end_turn"
    row = gateway.row_for(test_case)
    assert_row(row, provider="anthropic", model=ANTHROPIC_MODEL, tokens=ANTHROPIC,
               test_case=test_case, price_id="claude-sonnet-5")


def test_anthropic_messages_create_stream(gateway: Gateway, test_case: str):
    client = anthropic_client(gateway, test_case)
    raw = client.messages.with_raw_response.create(
        model=ANTHROPIC_MODEL, max_tokens=256, messages=MESSAGES, stream=True
    )
    request_id = raw.headers["x-majordomo-request-id"]
    text, types_seen = "", []
    for event in raw.parse():
        types_seen.append(event.type)
        if event.type == "content_block_delta" and event.delta.type == "text_delta":
            text += event.delta.text
    assert text == TEXT
    assert types_seen[0] == "message_start" and types_seen[-1] == "message_stop", types_seen
    row = gateway.row_for(test_case)
    assert row["id"] == request_id
    assert_row(row, provider="anthropic", model=ANTHROPIC_MODEL, tokens=ANTHROPIC,
               test_case=test_case, price_id="claude-sonnet-5")


def test_anthropic_invalid_key(gateway: Gateway, test_case: str):
    client = anthropic_client(gateway, test_case, key=INVALID_KEY)
    with pytest.raises(anthropic.AuthenticationError) as exc:
        client.messages.create(model=ANTHROPIC_MODEL, max_tokens=256, messages=MESSAGES)
    e = exc.value
    assert e.status_code == 401
    assert INVALID_KEY_MESSAGE in e.message, e.message
    assert e.body["error"]["type"] == "authentication_error", e.body
    with pytest.raises(anthropic.AuthenticationError) as exc:
        with client.messages.stream(model=ANTHROPIC_MODEL, max_tokens=256, messages=MESSAGES) as s:
            s.until_done()
    assert INVALID_KEY_MESSAGE in exc.value.message


# ---------------------------------------------------------------------------------------------
# Google Gemini (google-genai)
# ---------------------------------------------------------------------------------------------


def _genai_request_id(resp) -> str:
    """google-genai exposes the HTTP headers as `sdk_http_response.headers`."""
    headers = resp.sdk_http_response.headers or {}
    request_id = {k.lower(): v for k, v in headers.items()}.get("x-majordomo-request-id")
    assert request_id, f"no X-Majordomo-Request-Id in {headers}"
    return request_id


# None = the SDK's default API version (v1 in google-genai 3.x); v1beta is what most apps pin.
GEMINI_API_VERSIONS = [None, "v1beta"]


def _gemini_path(api_version: str | None, method: str) -> str:
    return f"/{api_version or 'v1'}/models/{GEMINI_MODEL}:{method}"


@pytest.mark.parametrize("api_version", GEMINI_API_VERSIONS, ids=["default", "v1beta"])
def test_gemini_generate_content(gateway: Gateway, test_case: str, api_version):
    client = genai_client(gateway, test_case, api_version=api_version)
    resp = client.models.generate_content(model=GEMINI_MODEL, contents="Say hello.")
    assert resp.text == TEXT
    assert resp.usage_metadata.prompt_token_count == C["GEMINI_PROMPT_TOKEN_COUNT"]
    assert resp.usage_metadata.thoughts_token_count == GEMINI.reasoning
    row = gateway.row_for(test_case)
    assert row["id"] == _genai_request_id(resp)
    assert_row(row, provider="gemini", model=GEMINI_MODEL, tokens=GEMINI, test_case=test_case,
               price_id="gemini-2.5-flash", path=_gemini_path(api_version, "generateContent"))


@pytest.mark.parametrize("api_version", GEMINI_API_VERSIONS, ids=["default", "v1beta"])
def test_gemini_generate_content_stream(gateway: Gateway, test_case: str, api_version):
    client = genai_client(gateway, test_case, api_version=api_version)
    chunks = list(client.models.generate_content_stream(model=GEMINI_MODEL, contents="Say hello."))
    assert "".join(c.text or "" for c in chunks) == TEXT
    assert len(chunks) == len(C_TEXT_PIECES)
    assert chunks[-1].usage_metadata.candidates_token_count == C["GEMINI_CANDIDATES_TOKEN_COUNT"]
    row = gateway.row_for(test_case)
    assert row["id"] == _genai_request_id(chunks[0]) == _genai_request_id(chunks[-1])
    assert_row(row, provider="gemini", model=GEMINI_MODEL, tokens=GEMINI, test_case=test_case,
               price_id="gemini-2.5-flash",
               path=_gemini_path(api_version, "streamGenerateContent"))


def test_gemini_invalid_key(gateway: Gateway, test_case: str):
    client = genai_client(gateway, test_case, key=INVALID_KEY)
    with pytest.raises(genai_errors.ClientError) as exc:
        client.models.generate_content(model=GEMINI_MODEL, contents="Say hello.")
    e = exc.value
    assert e.code == 401
    assert e.status == "UNAUTHENTICATED"
    assert INVALID_KEY_MESSAGE in (e.message or ""), e.message
    with pytest.raises(genai_errors.ClientError) as exc:
        list(client.models.generate_content_stream(model=GEMINI_MODEL, contents="Say hello."))
    assert exc.value.code == 401
    assert INVALID_KEY_MESSAGE in (exc.value.message or "")

