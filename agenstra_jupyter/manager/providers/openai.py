"""Any OpenAI-compatible chat-completions endpoint (OpenAI, Ollama, vLLM, llama.cpp server).

Streams the answer (server-sent events), sends the agent's stored conversation as context
(bounded by turns and characters), retries 408/409/429/5xx and lost connections with
backoff (honouring retry-after) as long as nothing has been streamed yet.
"""

from __future__ import annotations

import asyncio
import json
import random
from typing import Any

import httpx

from .base import Provider, ProviderError, Turn, TurnRecorder, TurnResult
from .common import check_program_config, manager_variable, program_environment, short_error

DEFAULT_BASE_URL = "https://api.openai.com/v1"
RETRYABLE = {408, 409, 429, 500, 502, 503, 504}
MAX_SERVER_DELAY = 60.0


def _number(config: dict[str, Any], key: str, minimum: float, integer: bool = False) -> None:
    value = config.get(key)
    if value is None:
        return
    kinds = (int,) if integer else (int, float)
    if not isinstance(value, kinds) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"config.{key} must be a number >= {minimum}")


class _Retry(Exception):
    def __init__(self, delay: float | None, message: str) -> None:
        super().__init__(message)
        self.delay = delay
        self.message = message


class OpenAIProvider(Provider):
    name = "openai"
    description = "An OpenAI-compatible chat-completions API (streamed); config.model, baseUrl."
    capabilities = frozenset({"streaming", "cancel", "history"})
    changes_files = False  # a model behind an HTTP API: it runs nothing here
    needs_network = True
    # The key is read from the manager's variable `apiKeyEnv` names (or config.env).
    example = {"model": "gpt-4o-mini", "baseUrl": DEFAULT_BASE_URL, "apiKeyEnv": "OPENAI_API_KEY"}

    @classmethod
    def validate_config(cls, config: dict[str, Any]) -> None:
        if not isinstance(config.get("model"), str) or not config["model"]:
            raise ValueError("config.model is required")
        for key in ("baseUrl", "system", "apiKeyEnv"):
            if key in config and not isinstance(config[key], str):
                raise ValueError(f"config.{key} must be a string")
        base = config.get("baseUrl", DEFAULT_BASE_URL)
        if not base.startswith(("http://", "https://")):
            raise ValueError("config.baseUrl must be an http(s) URL")
        _number(config, "historyTurns", 0, integer=True)
        _number(config, "historyChars", 0, integer=True)
        _number(config, "maxRetries", 0, integer=True)
        _number(config, "timeout", 1)
        _number(config, "temperature", 0)
        check_program_config(config)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        timeout = float(self.agent.config.get("timeout", 120))
        self._http = httpx.AsyncClient(timeout=httpx.Timeout(timeout, connect=10.0))

    async def close(self) -> None:
        await self._http.aclose()

    def _api_key(self) -> str | None:
        name = self.agent.config.get("apiKeyEnv", "OPENAI_API_KEY")
        return program_environment(self.agent.config).get(name) or manager_variable(name)

    async def run_turn(self, turn: Turn) -> TurnResult:
        config = self.agent.config
        body: dict[str, Any] = {
            "model": config["model"],
            "messages": await self._conversation(turn),
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if "temperature" in config:
            body["temperature"] = config["temperature"]
        recorder = TurnRecorder(turn)
        retries, attempt = int(config.get("maxRetries", 2)), 0
        while True:
            try:
                usage = await self._stream(body, recorder)
                return recorder.result(**({"usage": usage} if usage else {}))
            except _Retry as retry:
                if attempt >= retries or recorder.text:  # never repeat text already streamed
                    raise ProviderError(short_error(retry.message)) from None
                await recorder.status(f"retrying ({retry.message})")
                await asyncio.sleep(_backoff(attempt) if retry.delay is None else retry.delay)
                attempt += 1

    async def _stream(self, body: dict[str, Any], recorder: TurnRecorder) -> dict | None:
        base = self.agent.config.get("baseUrl", DEFAULT_BASE_URL).rstrip("/")
        headers = {"Accept": "text/event-stream"}
        if key := self._api_key():
            headers["Authorization"] = f"Bearer {key}"
        tools: dict[int, dict[str, Any]] = {}
        usage = None
        try:
            async with self._http.stream("POST", f"{base}/chat/completions", json=body,
                                         headers=headers) as response:
                if response.status_code != 200:
                    await self._refuse(response)
                async for data in _sse_data(response):
                    if data == "[DONE]":
                        break
                    chunk = json.loads(data)
                    if "error" in chunk:
                        raise ProviderError(short_error(_error_text(chunk)))
                    usage = chunk.get("usage") or usage
                    for choice in chunk.get("choices") or []:
                        delta = choice.get("delta") or {}
                        await recorder.delta(delta.get("content") or "")
                        _gather_tool_calls(tools, delta.get("tool_calls") or [])
        except (httpx.TransportError, httpx.StreamError) as exc:
            raise _Retry(None, f"connection to the model lost ({type(exc).__name__})") from None
        except ValueError:
            raise ProviderError("The model sent a malformed stream") from None
        for call in tools.values():
            await recorder.tool_call(call["id"], call["name"], call["arguments"], "requested")
        return usage

    async def _refuse(self, response: httpx.Response) -> None:
        body = (await response.aread()).decode(errors="replace")
        try:
            message = _error_text(json.loads(body))
        except ValueError:
            message = body[:200] or response.reason_phrase
        status = response.status_code
        if status in RETRYABLE and response.headers.get("x-should-retry") != "false":
            raise _Retry(_retry_after(response), f"HTTP {status}: {message}")
        if status == 401:
            raise ProviderError("The model API rejected the API key")
        raise ProviderError(short_error(f"The model API answered {status}: {message}"))

    async def _conversation(self, turn: Turn) -> list[dict[str, str]]:
        """System prompt, then the stored conversation up to this turn, within the budget."""
        config = self.agent.config
        turns = int(config.get("historyTurns", 20))
        budget = int(config.get("historyChars", 48_000))
        stored = await self.history(2 * turns + 64)
        mine = next((i for i, m in enumerate(stored) if m["from"] == "user"
                     and m["correlationId"] == turn.correlation_id), len(stored))
        messages: list[dict[str, str]] = []
        for message in stored[:mine]:
            if message["from"] == "user":
                messages.append({"role": "user", "content": message["text"]})
            elif (message.get("response") or {}).get("type") == "text":
                messages.append({"role": "assistant", "content": message["response"]["result"]})
        messages = messages[-2 * turns:] if turns else []
        while messages and sum(len(m["content"]) for m in messages) > budget:
            messages.pop(0)
        messages.append({"role": "user", "content": turn.message})
        if config.get("system"):
            messages.insert(0, {"role": "system", "content": config["system"]})
        return messages


async def _sse_data(response: httpx.Response) -> Any:
    """The `data:` payloads of a server-sent event stream (comments and fields skipped)."""
    async for line in response.aiter_lines():
        if line.startswith("data:"):
            yield line[5:].strip()


def _gather_tool_calls(tools: dict[int, dict[str, Any]], fragments: list[dict]) -> None:
    for fragment in fragments:
        call = tools.setdefault(fragment.get("index", 0), {"id": "", "name": "", "arguments": ""})
        call["id"] = fragment.get("id") or call["id"]
        function = fragment.get("function") or {}
        call["name"] = function.get("name") or call["name"]
        call["arguments"] += function.get("arguments") or ""


def _error_text(body: Any) -> str:
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        return str(error.get("message") or error)
    return str(error or body)


def _retry_after(response: httpx.Response) -> float | None:
    for header, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = response.headers.get(header)
        try:
            delay = float(value) * scale if value is not None else None
        except ValueError:
            delay = None
        if delay is not None and 0 <= delay <= MAX_SERVER_DELAY:
            return delay
    return None


def _backoff(attempt: int) -> float:
    return min(8.0, 0.5 * 2**attempt) * random.uniform(0.75, 1.0)  # noqa: S311 (jitter)
