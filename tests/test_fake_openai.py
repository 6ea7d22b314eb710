"""The fake OpenAI-compatible server itself: responses leave in one piece.

Written as two pieces (headers, then body) without TCP_NODELAY, Nagle's algorithm
held the body until the client acknowledged the headers, which clients delay: about
40 ms per request, which every throughput figure measured against the fake server
carried. ``benchmarks/fake_endpoint.py`` measures the time; these tests pin the cause.
"""

from __future__ import annotations

import json
import socket

from tests.fake_openai import FakeOpenAI, answer, proposal


def _request(path: str, body: dict, host: str) -> bytes:
    data = json.dumps(body).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\n\r\n"
    )
    return head.encode() + data


def _first_read(sock: socket.socket) -> bytes:
    """What one recv() returns: everything the server had sent in one go."""
    return sock.recv(1 << 20)


def test_every_response_arrives_whole_in_the_first_read():
    body = {"model": "m", "messages": [{"role": "user", "content": "we run it every day"}]}
    with FakeOpenAI() as fake:
        fake.script(*(answer(proposal("X", "every day")) for _ in range(3)))
        host = f"127.0.0.1:{fake.port}"
        with socket.create_connection(("127.0.0.1", fake.port), timeout=5) as sock:
            for _ in range(3):  # keep-alive: the same connection, one request after another
                sock.sendall(_request("/v1/chat/completions", body, host))
                raw = _first_read(sock)
                head, _, payload = raw.partition(b"\r\n\r\n")
                length = next(
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                assert head.startswith(b"HTTP/1.1 200")
                assert len(payload) == length, "the body came in a later segment"
                message = json.loads(payload)["choices"][0]["message"]
                assert "every day" in message["content"]
        assert fake.chat_count == 3


def test_server_sockets_have_nagle_disabled():
    with FakeOpenAI() as fake:
        seen: list[int] = []
        original = fake._server.RequestHandlerClass.setup  # type: ignore[union-attr]

        def setup(handler):  # the accepted socket, as the handler configures it
            original(handler)
            seen.append(handler.connection.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))

        fake._server.RequestHandlerClass.setup = setup  # type: ignore[union-attr]
        with socket.create_connection(("127.0.0.1", fake.port), timeout=5) as sock:
            sock.sendall(b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n")
            assert b"fake-model" in _first_read(sock)
        assert seen and all(seen)
