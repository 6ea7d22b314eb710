"""A fake OpenAI-compatible HTTP server for tests and benchmarks (no real model, ever).

A real threaded HTTP server on 127.0.0.1 (stdlib ``http.server``) implementing
``POST /v1/chat/completions``, ``GET /v1/models`` and ``POST /v1/embeddings``. It
answers chat requests from a queue of scripted items, records every request, and
injects faults. Answers are wrapped the way the request asks for them: a tool call
when the request has ``tools`` (LangChain ``function_calling``), JSON message
content otherwise (``json_mode``/``json_schema``).

Usage (pytest fixture ``fake_openai``, registered in ``tests/conftest.py``)::

    def test_x(fake_openai, settings):
        fake_openai.script(
            answer(proposal("01.use.daily", "we run it every day")),   # valid answer
            Fault(429, headers={"Retry-After": "1"}),                  # rate limited
            Fault(500),                                                # server error
            Hang(5.0),                                                 # past the timeout
            Raw('{"codes": [ '),                                       # malformed JSON
            Raw(""),                                                   # empty answer
        )
        coder = LLMCoder(base_url=fake_openai.base_url, api_key="k", model="fake", ...)
        ...
        assert fake_openai.chat_count == 3
        fake_openai.chat_requests[0]["messages"]   # what was sent

Items (``script(*items)`` appends to the queue; first in, first out):

- ``answer(*proposals, usage=(p, c))``: ``{"codes": [...]}`` for a one-passage call;
  ``batch({"P1": [proposal(...)], "P2": []})`` for a batched call.
- ``proposal(code, evidence, rationale="...", confidence=0.8)``: one proposed code
  (any field may be wrong on purpose: unknown code, invented evidence, ...).
- ``Raw(text)``: the tool-call arguments / content exactly as given (malformed JSON).
- ``Empty()``: an empty message, no content and no tool call (an empty answer).
- ``Fault(status, body=..., headers=...)``: an HTTP error (429 with Retry-After, 500).
- ``Hang(seconds)``: sleep before answering (make the client time out); the
  answer after the sleep is the default one.
- ``BadBody(text)``: a 200 response whose body is not JSON at all.

When the queue is empty the ``responder`` is asked (default: "no code applies").
``fake.rules(text -> answer)`` answers by passage content instead of by order
(useful with concurrency): ``fake.when("daily", answer(...))``. ``fake.latency``
adds a delay to every chat request (benchmarks). Token usage defaults to
len(prompt)//4 and len(answer)//4 unless an item sets ``usage``.

Inspection: ``requests`` (all, with ``path``), ``chat_requests`` (bodies of chat
calls), ``chat_count``, ``user_messages()`` and ``reset()``.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

# --------------------------------------------------------------------------- items


@dataclass
class Answer:
    payload: Any
    usage: tuple[int, int] | None = None


@dataclass
class Raw:
    text: str
    usage: tuple[int, int] | None = None


@dataclass
class Fault:
    status: int = 500
    body: dict | None = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Hang:
    seconds: float


@dataclass
class Empty:
    """An assistant message with empty content and no tool call."""

    usage: tuple[int, int] | None = None


@dataclass
class BadBody:
    text: str = "this is not json"


Item = Answer | Raw | Empty | Fault | Hang | BadBody


def proposal(
    code: str,
    quotes: str | list[str],
    rationale: str = "The excerpt says so.",
    confidence: float = 0.8,
) -> dict:
    """One code with its verbatim quote(s), as the answer schema asks for them."""
    quotes = [quotes] if isinstance(quotes, str) else list(quotes)
    return {"code": code, "quotes": quotes, "rationale": rationale, "confidence": confidence}


def answer(*proposals: dict, usage: tuple[int, int] | None = None) -> Answer:
    """A one-excerpt answer: ``{"codes": [...]}`` (no proposals = no code applies)."""
    return Answer({"codes": list(proposals)}, usage)


def batch(per_excerpt: dict[str, list[dict]], usage: tuple[int, int] | None = None) -> Answer:
    """A batched answer: ``{"excerpts": [{"excerpt_id": "C1", "codes": [...]}, ...]}``."""
    return Answer(
        {"excerpts": [{"excerpt_id": k, "codes": v} for k, v in per_excerpt.items()]}, usage
    )


# --------------------------------------------------------------------------- server


class FakeOpenAI:
    """The server; start with ``start()`` (or use as a context manager)."""

    def __init__(self, latency: float = 0.0):
        self.latency = latency
        self.requests: list[dict] = []
        self._queue: deque[Item] = deque()
        self._rules: list[tuple[str, Item]] = []
        self._lock = threading.Lock()
        self.responder: Callable[[dict], Item] = lambda _req: answer()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ control

    def start(self) -> FakeOpenAI:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Each response goes out as one write with TCP_NODELAY: written as two
            # pieces (headers, then body), Nagle's algorithm held the body until the
            # client acknowledged the headers, which it delays: ~40 ms per request.
            disable_nagle_algorithm = True
            wbufsize = 1 << 20  # buffered: headers and body leave in one send

            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                fake._record(self.path, None)
                if self.path.rstrip("/").endswith("/models"):
                    self._json(
                        200, {"object": "list", "data": [{"id": "fake-model", "object": "model"}]}
                    )
                else:
                    self._json(404, {"error": {"message": "not found"}})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw or b"{}")
                except ValueError:
                    self._json(400, {"error": {"message": "request body is not JSON"}})
                    return
                fake._record(self.path, body)
                if self.path.endswith("/chat/completions"):
                    fake._chat(self, body)
                elif self.path.endswith("/embeddings"):
                    self._json(200, _embeddings(body))
                else:
                    self._json(404, {"error": {"message": "not found"}})

            def _json(self, status: int, payload: Any, headers: dict | None = None) -> None:
                self._send(status, json.dumps(payload).encode(), headers)

            def _send(self, status: int, data: bytes, headers: dict | None = None) -> None:
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for k, v in (headers or {}).items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(data)
                    self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout): fine

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FakeOpenAI:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def port(self) -> int:
        assert self._server is not None, "server not started"
        return self._server.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def script(self, *items: Item) -> FakeOpenAI:
        with self._lock:
            self._queue.extend(items)
        return self

    def when(self, text: str, item: Item) -> FakeOpenAI:
        """Answer any chat request whose user messages contain ``text`` with ``item``
        (checked after the queue is empty, first matching rule wins; rules stay)."""
        with self._lock:
            self._rules.append((text, item))
        return self

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()
            self._queue.clear()
            self._rules.clear()

    # ------------------------------------------------------------------ inspection

    @property
    def chat_requests(self) -> list[dict]:
        with self._lock:
            return [r["body"] for r in self.requests if r["path"].endswith("/chat/completions")]

    @property
    def chat_count(self) -> int:
        return len(self.chat_requests)

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._queue)

    def user_messages(self, index: int = -1) -> list[str]:
        """Text of the user messages of chat request ``index``."""
        msgs = self.chat_requests[index]["messages"]
        return [_text(m) for m in msgs if m.get("role") == "user"]

    # ------------------------------------------------------------------ serving

    def _record(self, path: str, body: Any) -> None:
        with self._lock:
            self.requests.append({"path": path, "body": body, "time": time.monotonic()})

    def _next(self, body: dict) -> Item:
        with self._lock:
            if self._queue:
                return self._queue.popleft()
            users = "\n".join(_text(m) for m in body.get("messages", []) if m.get("role") == "user")
            for text, item in self._rules:
                if text in users:
                    return item
        return self.responder(body)

    def _chat(self, handler: Any, body: dict) -> None:
        if self.latency:
            time.sleep(self.latency)
        item = self._next(body)
        if isinstance(item, Hang):
            time.sleep(item.seconds)
            item = self.responder(body)
        if isinstance(item, Fault):
            payload = item.body or {
                "error": {"message": f"injected {item.status}", "type": "fault"}
            }
            handler._json(item.status, payload, item.headers)
            return
        if isinstance(item, BadBody):
            handler._send(200, item.text.encode())
            return
        if isinstance(item, Empty):
            text = ""
        else:
            text = item.text if isinstance(item, Raw) else json.dumps(item.payload)
        prompt_chars = sum(len(_text(m)) for m in body.get("messages", []))
        usage = item.usage or (max(1, prompt_chars // 4), max(1, len(text) // 4))
        handler._json(200, _completion(body, text, usage, tool=not isinstance(item, Empty)))


def _text(message: dict) -> str:
    content = message.get("content") or ""
    if isinstance(content, list):
        return "".join(c.get("text", "") for c in content if isinstance(c, dict))
    return str(content)


def _completion(body: dict, text: str, usage: tuple[int, int], tool: bool = True) -> dict:
    tools = body.get("tools") or []
    if tools and tool:
        name = tools[0]["function"]["name"]
        message = {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_" + hashlib.sha1(text.encode()).hexdigest()[:8],
                    "type": "function",
                    "function": {"name": name, "arguments": text},
                }
            ],
        }
        finish = "tool_calls"
    else:
        message = {"role": "assistant", "content": text}
        finish = "stop"
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model", "fake-model"),
        "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}],
        "usage": {
            "prompt_tokens": usage[0],
            "completion_tokens": usage[1],
            "total_tokens": usage[0] + usage[1],
        },
    }


def _embeddings(body: dict) -> dict:
    """Deterministic 16-dimensional vectors from a hash of the text (cheap, not semantic)."""
    inputs = body.get("input", [])
    if isinstance(inputs, str):
        inputs = [inputs]
    data = []
    for i, text in enumerate(inputs):
        digest = hashlib.sha256(str(text).encode()).digest()
        vec = [(b - 127.5) / 127.5 for b in digest[:16]]
        norm = sum(v * v for v in vec) ** 0.5 or 1.0
        data.append({"object": "embedding", "index": i, "embedding": [v / norm for v in vec]})
    return {
        "object": "list",
        "data": data,
        "model": body.get("model", "fake-embedding"),
        "usage": {"prompt_tokens": 0, "total_tokens": 0},
    }


@pytest.fixture
def fake_openai():
    """A started ``FakeOpenAI`` on 127.0.0.1 (closed after the test)."""
    with FakeOpenAI() as server:
        yield server


def main(argv: list[str] | None = None) -> None:
    """Serve in its own process (benchmarks): prints the base URL, then serves until killed.

    ``python -m tests.fake_openai --latency 0.5 --code 01.use.daily --evidence "every day"``
    answers every request with that one proposal (``--batch N``: for P1..PN).
    """
    import argparse
    import sys

    ap = argparse.ArgumentParser()
    ap.add_argument("--latency", type=float, default=0.0)
    ap.add_argument("--code", default=None)
    ap.add_argument("--evidence", default="")
    ap.add_argument("--batch", type=int, default=1)
    args = ap.parse_args(argv)
    props = [proposal(args.code, args.evidence)] if args.code else []
    if args.batch > 1:
        reply = batch({f"C{i + 1}": props for i in range(args.batch)})
    else:
        reply = answer(*props)
    server = FakeOpenAI(latency=args.latency).start()
    server.responder = lambda _body: reply
    print(server.base_url, flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
        sys.stdout.flush()


if __name__ == "__main__":
    main()
