"""LLM providers: scripted determinism, and the OpenAI-compatible and Anthropic providers
driven over real HTTP against the fake server in tests/fake_llm.py (official SDKs)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from enginex.llm.base import CompletionRequest, LLMError, Message, ToolCall, ToolSpec
from enginex.llm.providers import AnthropicProvider, OpenAICompatibleProvider, ScriptedProvider
from tests.fake_llm import FakeLLM, FakeReply

KEY = "sk-test-7Hq2xLm9Vb4Rt6Yz"
TOOLS = (ToolSpec("http_request", "Send a request", {"type": "object", "properties": {
    "url": {"type": "string"}}, "required": ["url"]}),
    ToolSpec("mcp.files.read", "Read a file", {"type": "object", "properties": {}}))


def run(coro: Any) -> Any:
    return asyncio.run(coro)


@pytest.fixture
def fake() -> Iterator[FakeLLM]:
    with FakeLLM() as server:
        yield server


CLIENT_TIMEOUT = 60.0  # the fake server answers at once; the machine may be busy


def openai_provider(fake: FakeLLM, key: str | None = KEY, **kw: Any) -> OpenAICompatibleProvider:
    kw.setdefault("allow_private_network", True)
    kw.setdefault("max_retries", 0)
    kw.setdefault("timeout", CLIENT_TIMEOUT)
    return OpenAICompatibleProvider(fake.openai_base_url, key, "gpt-fake", **kw)


def anthropic_provider(fake: FakeLLM, key: str | None = KEY, **kw: Any) -> AnthropicProvider:
    kw.setdefault("allow_private_network", True)
    kw.setdefault("max_retries", 0)
    kw.setdefault("timeout", CLIENT_TIMEOUT)
    return AnthropicProvider(key, fake.base_url, "claude-fake", **kw)


def first_turn() -> CompletionRequest:
    return CompletionRequest(
        messages=(Message("system", "You fetch pages."), Message("user", "Fetch example.org")),
        tools=TOOLS, model="default", node_id="fetch")


def second_turn(call_id: str) -> CompletionRequest:
    call = ToolCall(id=call_id, name="mcp.files.read", arguments={"path": "a.txt"})
    return CompletionRequest(
        messages=(Message("system", "You fetch pages."), Message("user", "Fetch example.org"),
                  Message("assistant", "Reading.", tool_calls=(call,)),
                  Message("tool", '{"text": "hello"}', tool_call_id=call_id,
                          name="mcp.files.read")),
        tools=TOOLS, model="gpt-explicit", node_id="fetch", temperature=0.2, max_tokens=99)


# --- scripted ------------------------------------------------------------------------------


def test_scripted_replies_are_stateless_and_deterministic() -> None:
    replies = {"summarise": [
        {"text": "Let me set it.", "tool_calls": [
            {"name": "set_output", "arguments": {"key": "summary", "value": "3h"}},
            {"name": "set_output", "arguments": {"key": "total", "value": 3}}]},
        "All done.",
    ]}
    provider = ScriptedProvider(replies)
    request = CompletionRequest(messages=(Message("system", "Summarise the hours please"),
                                          Message("user", "alice 3h")),
                                tools=(), model="default", node_id="summarise")
    first = run(provider.complete(request))
    again = run(ScriptedProvider(replies).complete(request))  # another process, same answer
    assert first == again
    assert first.text == "Let me set it."
    assert [c.id for c in first.tool_calls] == ["call_summarise_0_0", "call_summarise_0_1"]
    assert first.tool_calls[0].arguments == {"key": "summary", "value": "3h"}
    assert first.usage.prompt_tokens == 6 and first.usage.completion_tokens > 0
    # A resumed run (one assistant message already in the history) gets the second reply.
    resumed = CompletionRequest(
        messages=(*request.messages, Message("assistant", first.text,
                                             tool_calls=first.tool_calls),
                  Message("tool", "ok", tool_call_id="call_summarise_0_0")),
        tools=(), model="default", node_id="summarise")
    second = run(provider.complete(resumed))
    assert second.text == "All done." and second.tool_calls == ()
    assert run(provider.complete(resumed)) == second


def test_scripted_errors_are_clear() -> None:
    provider = ScriptedProvider({"a": ["only one"], "bad": [{"tool_calls": "nope"}]})
    two_turns = CompletionRequest(messages=(Message("user", "x"), Message("assistant", "y")),
                                  tools=(), model="", node_id="a")
    with pytest.raises(LLMError, match="ran out of replies for node 'a': it has 1"):
        run(provider.complete(two_turns))
    with pytest.raises(LLMError, match="no replies for node 'missing'"):
        run(provider.complete(CompletionRequest(messages=(), tools=(), model="",
                                                node_id="missing")))
    with pytest.raises(LLMError, match=r"scripted_replies.bad\[0\]"):
        run(provider.complete(CompletionRequest(messages=(), tools=(), model="",
                                                node_id="bad")))
    with pytest.raises(LLMError, match="no replies"):
        run(ScriptedProvider(None).complete(two_turns))


# --- OpenAI-compatible ---------------------------------------------------------------------


def test_openai_round_trip_with_tool_call_and_usage(fake: FakeLLM) -> None:
    fake.queue(FakeReply(text=None, tool_calls=[("mcp_files_read", {"path": "a.txt"})],
                         usage=(42, 9)),
               FakeReply(text="The file says hello.", usage=(60, 5)))
    provider = openai_provider(fake)
    response = run(provider.complete(first_turn()))
    assert response.text == ""
    assert response.tool_calls == (ToolCall(id="call_fake_0", name="mcp.files.read",
                                            arguments={"path": "a.txt"}),)
    assert (response.usage.prompt_tokens, response.usage.completion_tokens) == (42, 9)
    assert response.model == "gpt-fake"

    sent = fake.requests[0]
    assert sent.path == "/v1/chat/completions"
    assert sent.headers["authorization"] == f"Bearer {KEY}"
    assert sent.body["model"] == "gpt-fake"  # "default" means the provider's default model
    assert sent.body["messages"] == [{"role": "system", "content": "You fetch pages."},
                                     {"role": "user", "content": "Fetch example.org"}]
    functions = [t["function"] for t in sent.body["tools"]]
    assert [f["name"] for f in functions] == ["http_request", "mcp_files_read"]
    assert functions[0]["parameters"]["required"] == ["url"]
    assert "temperature" not in sent.body

    final = run(provider.complete(second_turn("call_fake_0")))
    assert final.text == "The file says hello." and final.tool_calls == ()
    body = fake.requests[1].body
    assert body["model"] == "gpt-explicit"
    assert body["temperature"] == 0.2 and body["max_tokens"] == 99
    assert body["messages"][2] == {"role": "assistant", "content": "Reading.", "tool_calls": [
        {"id": "call_fake_0", "type": "function",
         "function": {"name": "mcp_files_read", "arguments": '{"path": "a.txt"}'}}]}
    assert body["messages"][3] == {"role": "tool", "tool_call_id": "call_fake_0",
                                   "content": '{"text": "hello"}'}


def test_openai_settings_defaults_apply(fake: FakeLLM) -> None:
    provider = openai_provider(fake, temperature=0.7, max_tokens=256)
    run(provider.complete(first_turn()))
    assert fake.requests[0].body["temperature"] == 0.7
    assert fake.requests[0].body["max_tokens"] == 256


def test_openai_never_uses_the_platform_environment(fake: FakeLLM,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A tenant without a key must not borrow the platform's OPENAI_* settings."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-platform-secret")
    monkeypatch.setenv("OPENAI_ORG_ID", "org-platform")
    monkeypatch.setenv("OPENAI_PROJECT_ID", "proj-platform")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    response = run(openai_provider(fake, key=None).complete(first_turn()))
    assert response.text == "ok"
    headers = fake.requests[0].headers
    assert "authorization" not in headers
    assert "openai-organization" not in headers and "openai-project" not in headers
    assert "platform" not in str(headers)


def test_anthropic_never_uses_the_platform_environment(fake: FakeLLM,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-platform-secret")
    with pytest.raises(LLMError, match="needs an API key"):
        run(anthropic_provider(fake, key=None).complete(first_turn()))
    assert fake.requests == []


# --- Anthropic -----------------------------------------------------------------------------


def test_anthropic_round_trip_with_tool_use_and_usage(fake: FakeLLM) -> None:
    fake.queue(FakeReply(text="Let me read it.", tool_calls=[("mcp_files_read", {"path": "a"})],
                         usage=(31, 12)),
               FakeReply(text="Done.", usage=(50, 2)))
    provider = anthropic_provider(fake, temperature=0.3)
    response = run(provider.complete(first_turn()))
    assert response.text == "Let me read it."
    assert response.tool_calls == (ToolCall(id="toolu_fake_0", name="mcp.files.read",
                                            arguments={"path": "a"}),)
    assert (response.usage.prompt_tokens, response.usage.completion_tokens) == (31, 12)

    sent = fake.requests[0]
    assert sent.path == "/v1/messages"
    assert KEY in (sent.headers.get("x-api-key", ""), sent.headers.get("authorization", "")
                   .removeprefix("Bearer "))
    assert sent.body["system"] == "You fetch pages."
    assert sent.body["model"] == "claude-fake"
    assert sent.body["max_tokens"] == 4096 and sent.body["temperature"] == 0.3
    assert sent.body["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "Fetch example.org"}]}]
    assert [t["name"] for t in sent.body["tools"]] == ["http_request", "mcp_files_read"]
    assert sent.body["tools"][0]["input_schema"]["required"] == ["url"]

    final = run(provider.complete(second_turn("toolu_fake_0")))
    assert final.text == "Done."
    body = fake.requests[1].body
    assert body["model"] == "gpt-explicit" and body["max_tokens"] == 99
    assert body["messages"][1] == {"role": "assistant", "content": [
        {"type": "text", "text": "Reading."},
        {"type": "tool_use", "id": "toolu_fake_0", "name": "mcp_files_read",
         "input": {"path": "a.txt"}}]}
    assert body["messages"][2] == {"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "toolu_fake_0",
         "content": '{"text": "hello"}'}]}


# --- errors --------------------------------------------------------------------------------

FAILURES = {
    "http 500 echoing the key": (FakeReply(status=500, echo_key=True), "HTTP 500"),
    "http 401 echoing the key": (FakeReply(status=401, echo_key=True), "Check the API key"),
    "garbage json": (FakeReply(raw=b"{not json at all"), "could not be understood"),
    "json of the wrong shape": (FakeReply(raw=b'{"unexpected": true}'),
                                "could not be understood"),
    "timeout": (FakeReply(delay=1.5), "did not answer within 0.5 s"),
}


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
@pytest.mark.parametrize("failure", list(FAILURES))
def test_failures_become_llm_errors_without_the_key(fake: FakeLLM, kind: str,
                                                    failure: str) -> None:
    reply, expected = FAILURES[failure]
    fake.queue(reply)
    make = openai_provider if kind == "openai" else anthropic_provider
    # Only the timeout case races the clock: on a busy machine a 0.5 s bound would turn the
    # others' answers into timeouts too.
    timeout = 0.5 if failure == "timeout" else CLIENT_TIMEOUT
    with pytest.raises(LLMError) as caught:
        run(make(fake, timeout=timeout).complete(first_turn()))
    message = str(caught.value)
    assert expected in message
    assert KEY not in message and KEY not in repr(caught.value)
    assert caught.value.__cause__ is None  # no SDK exception (with request details) attached
    if reply.echo_key:
        assert "[redacted]" in message


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
def test_egress_guard_refuses_private_base_url_at_connect_time(fake: FakeLLM,
                                                               kind: str) -> None:
    make = openai_provider if kind == "openai" else anthropic_provider
    with pytest.raises(LLMError, match=r"not reachable: 127\.0\.0\.1 is not a public address "
                                       r"\(loopback\)"):
        run(make(fake, allow_private_network=False).complete(first_turn()))
    assert fake.requests == []


def test_connection_refused_is_an_llm_error() -> None:
    with FakeLLM() as gone:
        url = gone.openai_base_url
    provider = OpenAICompatibleProvider(url, KEY, "m", timeout=2, allow_private_network=True,
                                        max_retries=0)
    with pytest.raises(LLMError, match="could not connect"):
        run(provider.complete(first_turn()))
