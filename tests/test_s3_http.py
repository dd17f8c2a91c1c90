"""chute's HTTP/1.1 connection pool (uploader/s3_http.py) against scripted servers on
loopback: how answers are framed, when a connection is reused, and which httpx error each
failure is (s3_wire.transport_failure decides from it whether the store may have acted)."""

from __future__ import annotations

import socket
import ssl
import struct
from collections.abc import Awaitable, Callable
from functools import partial

import httpx
import pytest
import trio

from chute.uploader.s3_http import HEAD_MAX, ConnectionPool

Script = Callable[[trio.SocketStream, int], Awaitable[None]]
"""Serves one connection (its number given); reads requests with read_request."""


async def read_request(stream: trio.SocketStream, buffer: bytearray) -> bytes:
    """One request (head and Content-Length body) from ``stream``; b"" at EOF."""
    while b"\r\n\r\n" not in buffer:
        data = await stream.receive_some(65536)
        if not data:
            return b""
        buffer += data
    end = buffer.index(b"\r\n\r\n") + 4
    head = bytes(buffer[:end])
    length = 0
    for line in head.decode().split("\r\n"):
        if line.lower().startswith("content-length:"):
            length = int(line.split(":")[1])
    while len(buffer) < end + length:
        buffer += await stream.receive_some(65536)
    request = bytes(buffer[:end + length])
    del buffer[:end + length]
    return request


class Server:
    """A loopback server running ``script`` for each connection; counts connections."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.connections = 0
        self.requests: list[bytes] = []
        self.url = ""

    async def handler(self, stream: trio.SocketStream) -> None:
        number = self.connections
        self.connections += 1
        try:
            await self.script(stream, number)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await stream.aclose()


@pytest.fixture
async def serve(nursery: trio.Nursery) -> Callable[[Script], Awaitable[Server]]:
    async def start(script: Script) -> Server:
        server = Server(script)
        listeners = await nursery.start(partial(trio.serve_tcp, server.handler, 0,
                                                host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        server.url = f"http://127.0.0.1:{port}"
        return server
    return start


def answering(*answers: bytes, keep: bool = True) -> Script:
    """A script answering each request on a connection with the next of ``answers``."""
    async def script(stream: trio.SocketStream, number: int) -> None:
        buffer = bytearray()
        for answer in answers:
            if not await read_request(stream, buffer):
                return
            await stream.send_all(answer)
        if keep:
            await trio.sleep_forever()
    return script


async def call(pool: ConnectionPool, url: str, method: str = "PUT", body: bytes = b"x",
               read: float = 5.0) -> tuple[int, dict[str, str], bytes]:
    response = await pool.request(method, url, {"Content-Length": str(len(body))}, body,
                                  connect_timeout=5, write_timeout=5, read_timeout=read)
    try:
        data = b"".join([chunk async for chunk in response.stream])
    finally:
        await response.aclose()
    return response.status_code, response.headers, data


OK = b"HTTP/1.1 200 OK\r\nETag: \"abc\"\r\nContent-Length: 0\r\n\r\n"


async def test_a_kept_alive_connection_carries_request_after_request(serve) -> None:
    server = await serve(answering(OK, b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
                                   OK))
    pool = ConnectionPool(4)
    assert (await call(pool, server.url + "/b/k"))[:2] == (200, {"etag": '"abc"',
                                                                 "content-length": "0"})
    assert (await call(pool, server.url + "/b/k", "GET"))[2] == b"hello"
    assert (await call(pool, server.url + "/b/k"))[0] == 200
    assert server.connections == 1
    await pool.aclose()


async def test_the_request_goes_out_as_sent_with_its_host(serve) -> None:
    seen: list[bytes] = []

    async def script(stream: trio.SocketStream, number: int) -> None:
        seen.append(await read_request(stream, bytearray()))
        await stream.send_all(OK)
    server = await serve(script)
    pool = ConnectionPool(1)
    body = b"z" * 100_000
    await call(pool, server.url + "/b/a%20b?uploadId=1&partNumber=2", body=body)
    head, _, sent = seen[0].partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0] == "PUT /b/a%20b?uploadId=1&partNumber=2 HTTP/1.1"
    assert f"Host: {server.url.removeprefix('http://')}" in lines
    assert sent == body
    await pool.aclose()


@pytest.mark.parametrize("answer, body", [
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n"
     b"6\r\n world\r\n0\r\nTrailer: 1\r\n\r\n", b"hello world"),
    (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", b"ok"),
    (b"HTTP/1.1 204 No Content\r\n\r\n", b""),
])
async def test_answers_are_framed_and_the_connection_reused(serve, answer, body) -> None:
    server = await serve(answering(answer, OK))
    pool = ConnectionPool(2)
    assert (await call(pool, server.url + "/k", "GET"))[2] == body
    assert (await call(pool, server.url + "/k"))[0] == 200
    assert server.connections == 1
    await pool.aclose()


async def test_an_answer_without_body_is_read_to_its_end_with_its_head(serve) -> None:
    server = await serve(answering(b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n", OK, OK))
    pool = ConnectionPool(1)
    for method in ("HEAD", "PUT"):  # s3_wire reads no stream for HEAD; nobody needs to
        response = await pool.request(method, server.url + "/k", {}, b"", connect_timeout=5,
                                      write_timeout=5, read_timeout=5)
        await response.aclose()
    assert (await call(pool, server.url + "/k"))[0] == 200
    assert server.connections == 1
    await pool.aclose()


async def test_a_head_answer_has_no_body_whatever_its_length(serve) -> None:
    server = await serve(answering(b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n", OK))
    pool = ConnectionPool(2)
    assert await call(pool, server.url + "/k", "HEAD", b"") == (200, {"content-length": "1234"},
                                                                b"")
    assert (await call(pool, server.url + "/k"))[0] == 200
    assert server.connections == 1
    await pool.aclose()


@pytest.mark.parametrize("answer", [
    b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\nextra bytes",  # never read as an answer
], ids=["close", "http-1.0", "bytes-after-the-answer"])
async def test_a_connection_that_cannot_carry_another_answer_is_not_reused(serve, answer
                                                                           ) -> None:
    server = await serve(answering(answer, OK))
    pool = ConnectionPool(2)
    await call(pool, server.url + "/k")
    await trio.sleep(0.05)
    assert (await call(pool, server.url + "/k"))[0] == 200
    assert server.connections == 2
    await pool.aclose()


async def test_a_body_up_to_the_close_ends_the_connection(serve) -> None:
    async def script(stream: trio.SocketStream, number: int) -> None:
        await read_request(stream, bytearray())
        await stream.send_all(b"HTTP/1.1 200 OK\r\n\r\nall of it")
    server = await serve(script)
    pool = ConnectionPool(2)
    assert (await call(pool, server.url + "/k", "GET"))[2] == b"all of it"
    assert (await call(pool, server.url + "/k", "GET"))[2] == b"all of it"
    assert server.connections == 2
    await pool.aclose()


async def test_an_idle_connection_the_store_closed_is_not_used(serve) -> None:
    server = await serve(answering(OK, keep=False))  # answers once, then closes
    pool = ConnectionPool(2)
    await call(pool, server.url + "/k")
    await trio.sleep(0.05)  # the close has arrived
    assert (await call(pool, server.url + "/k"))[0] == 200
    assert server.connections == 2
    await pool.aclose()


async def test_a_partly_read_answer_closes_its_connection(serve) -> None:
    big = answering(b"HTTP/1.1 500 Oops\r\nContent-Length: 100000\r\n\r\n" + b"e" * 100000)

    async def script(stream: trio.SocketStream, number: int) -> None:
        await (big if number == 0 else answering(OK))(stream, number)
    server = await serve(script)
    pool = ConnectionPool(1)
    response = await pool.request("GET", server.url + "/k", {}, b"", connect_timeout=5,
                                  write_timeout=5, read_timeout=5)
    async for _ in response.stream:
        break
    await response.aclose()
    assert (await call(pool, server.url + "/k"))[0] == 200
    assert server.connections == 2
    await pool.aclose()



async def read_into(pool: ConnectionPool, url: str, size: int, read: float = 5.0
                    ) -> bytes | None:
    """A GET's body read into a buffer of ``size`` bytes, as s3_wire.read_body does."""
    response = await pool.request("GET", url, {}, b"", connect_timeout=5, write_timeout=5,
                                  read_timeout=read)
    buffer = bytearray(size)
    try:
        filled = await response.read_into(memoryview(buffer))
    finally:
        await response.aclose()
    return None if filled is None else bytes(buffer[:filled])


async def test_a_content_length_body_is_read_into_the_buffer_then_reused(serve) -> None:
    body = bytes(range(256)) * 4096  # 1 MiB: more than one receive
    server = await serve(answering(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n"
                                   % len(body) + body, OK, OK))
    pool = ConnectionPool(1)
    response = await pool.request("GET", server.url + "/k", {}, b"", connect_timeout=5,
                                  write_timeout=5, read_timeout=5)
    into = memoryview(bytearray(len(body) + 10))
    assert await response.read_into(into) == len(body)
    await response.aclose()
    assert into[:len(body)] == body and into[len(body):] == bytes(10)  # never past it
    assert (await call(pool, server.url + "/k"))[:2] == (200, {"etag": '"abc"',
                                                               "content-length": "0"})
    assert (await call(pool, server.url + "/k"))[0] == 200  # the fresh h11 cycles again
    assert server.connections == 1
    await pool.aclose()


async def test_a_body_split_across_many_receives_is_whole(serve) -> None:
    body = b"0123456789" * 5000

    async def script(stream: trio.SocketStream, number: int) -> None:
        buffer = bytearray()
        for _ in range(2):
            await read_request(stream, buffer)
            head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body)
            await stream.send_all(head + body[:3])  # some of it arrives with the head
            for at in range(3, len(body), 7000):
                await trio.sleep(0.002)
                await stream.send_all(body[at:at + 7000])
        await read_request(stream, buffer)
        await stream.send_all(OK)
        await trio.sleep_forever()
    server = await serve(script)
    pool = ConnectionPool(1)
    assert await read_into(pool, server.url + "/k", len(body)) == body
    assert (await call(pool, server.url + "/k", "GET"))[2] == body  # as pieces, no buffer
    assert (await call(pool, server.url + "/k"))[0] == 200
    assert server.connections == 1
    await pool.aclose()


async def test_bytes_past_the_body_received_with_the_head_end_the_connection(serve) -> None:
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello" + OK  # in one send
    server = await serve(answering(answer, OK))
    pool = ConnectionPool(1)
    response = await pool.request("GET", server.url + "/k", {}, b"", connect_timeout=5,
                                  write_timeout=5, read_timeout=5)
    into = memoryview(bytearray(5))
    assert await response.read_into(into) == 5 and into == b"hello"
    await response.aclose()
    assert (await call(pool, server.url + "/k"))[0] == 200  # the extra bytes never an answer
    assert server.connections == 2
    await pool.aclose()


async def test_a_body_not_fitting_or_chunked_is_left_to_the_stream(serve) -> None:
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"
    server = await serve(answering(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
                                   chunked, OK))
    pool = ConnectionPool(1)
    for size in (4, 10):
        response = await pool.request("GET", server.url + "/k", {}, b"", connect_timeout=5,
                                      write_timeout=5, read_timeout=5)
        assert await response.read_into(memoryview(bytearray(size))) is None
        assert b"".join([chunk async for chunk in response.stream]) in (b"hello", b"ok")
        await response.aclose()
    assert (await call(pool, server.url + "/k"))[0] == 200
    assert server.connections == 1
    await pool.aclose()


async def test_a_body_read_into_and_abandoned_closes_its_connection(serve) -> None:
    server = await serve(answering(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"))
    pool = ConnectionPool(1)
    with trio.move_on_after(0.2):
        await read_into(pool, server.url + "/k", 10)
    server.script = answering(OK)
    assert (await call(pool, server.url + "/k"))[0] == 200
    assert server.connections == 2
    await pool.aclose()

# -- failures ---------------------------------------------------------------------------------


async def test_no_server_is_a_connect_error() -> None:
    listener = trio.socket.socket()
    await listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.close()
    pool = ConnectionPool(1)
    with pytest.raises(httpx.ConnectError):
        await call(pool, f"http://127.0.0.1:{port}/k")


async def test_a_close_before_any_answer_is_a_protocol_error_after_sending(serve) -> None:
    async def script(stream: trio.SocketStream, number: int) -> None:
        await read_request(stream, bytearray())
    server = await serve(script)
    with pytest.raises(httpx.RemoteProtocolError, match="without sending a response"):
        await call(ConnectionPool(1), server.url + "/k")


@pytest.mark.parametrize("into", [False, True])
async def test_a_short_body_is_a_protocol_error(serve, into) -> None:
    async def script(stream: trio.SocketStream, number: int) -> None:
        await read_request(stream, bytearray())
        await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nab")
        await trio.sleep(0.01)
        await stream.send_all(b"c")  # one more receive, then the close
    server = await serve(script)
    with pytest.raises(httpx.RemoteProtocolError, match="received 3 bytes, expected 10"):
        if into:
            await read_into(ConnectionPool(1), server.url + "/k", 10)
        else:
            await call(ConnectionPool(1), server.url + "/k", "GET")


async def test_silence_is_a_read_timeout(serve, autojump_clock) -> None:
    server = await serve(answering())  # reads nothing, answers nothing
    with pytest.raises(httpx.ReadTimeout):
        await call(ConnectionPool(1), server.url + "/k", read=30)


@pytest.mark.parametrize("answer", [
    b"HTTP/2 200\r\n\r\n", b"hello\r\n\r\n", b"HTTP/1.1 200 OK\r\n bad: fold\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 1, 2\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nhello",
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n",  # none was asked for
    b"HTTP/1.1 200 OK\r\nX-Long: " + b"a" * (4 * HEAD_MAX) + b"\r\n\r\n",
])
async def test_a_garbled_answer_is_a_protocol_error(serve, answer) -> None:
    server = await serve(answering(answer))
    with pytest.raises(httpx.RemoteProtocolError):
        await call(ConnectionPool(1), server.url + "/k", "GET")


@pytest.mark.parametrize("headers", [{"x-amz-meta-a": "1\r\nInjected: yes"},
                                     {"x-amz-meta-a": "é"}, {"bad:name": "1"}])
async def test_a_header_that_cannot_be_sent_is_refused_before_sending(serve, headers) -> None:
    server = await serve(answering(OK))
    pool = ConnectionPool(1)
    with pytest.raises(httpx.LocalProtocolError):
        await pool.request("PUT", server.url + "/k", headers, b"", connect_timeout=5,
                           write_timeout=5, read_timeout=5)
    assert server.connections == 0
    assert (await call(pool, server.url + "/k"))[0] == 200  # the pool is whole


async def test_a_cancelled_request_gives_its_connection_back_closed(serve) -> None:
    server = await serve(answering())  # never answers
    pool = ConnectionPool(1)
    with trio.move_on_after(0.2):
        await call(pool, server.url + "/k")
    server.script = answering(OK)
    assert (await call(pool, server.url + "/k"))[0] == 200  # the one slot is free again
    assert server.connections == 2


async def test_https_goes_through_tls_with_the_host_checked(nursery, tmp_path) -> None:
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    await trio.run_process(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days",
                            "1", "-subj", "/CN=localhost", "-addext",
                            "subjectAltName=DNS:localhost", "-keyout", str(key), "-out",
                            str(cert)], capture_stdout=True, capture_stderr=True)
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)
    body = b"t" * 300_000  # a Content-Length body over TLS: received, then copied
    server = Server(answering(OK, b"HTTP/1.1 200 OK\r\nContent-Length: 300000\r\n\r\n" + body,
                              OK))
    listeners = await nursery.start(partial(trio.serve_ssl_over_tcp, server.handler, 0,
                                            server_context, host="127.0.0.1"))
    port = listeners[0].transport_listener.socket.getsockname()[1]
    trusting = ssl.create_default_context(cafile=str(cert))
    pool = ConnectionPool(1, ssl_context=trusting)
    assert (await call(pool, f"https://localhost:{port}/k"))[0] == 200
    assert await read_into(pool, f"https://localhost:{port}/k", len(body)) == body
    assert (await call(pool, f"https://localhost:{port}/k"))[0] == 200
    assert server.connections == 1
    with pytest.raises(httpx.ConnectError):  # not the name the certificate is for
        await call(ConnectionPool(1, ssl_context=trusting), f"https://127.0.0.1:{port}/k")
    await pool.aclose()


async def test_an_early_answer_to_a_body_the_store_would_not_take_is_reported(serve) -> None:
    async def script(stream: trio.SocketStream, number: int) -> None:
        await stream.receive_some(1000)  # the head only, then an answer, and no more reading
        await stream.send_all(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 6\r\n\r\ndenied")
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        await trio.sleep(0.1)  # the answer leaves; the close resets the connection
    server = await serve(script)
    pool = ConnectionPool(1)
    status, _, body = await call(pool, server.url + "/k", body=b"b" * 8_000_000)
    assert (status, body) == (403, b"denied")
    server.script = answering(OK)
    assert (await call(pool, server.url + "/k"))[0] == 200  # on a new connection
    assert server.connections == 2


async def test_a_reset_while_sending_without_an_answer_is_a_write_error(serve) -> None:
    async def script(stream: trio.SocketStream, number: int) -> None:
        await stream.receive_some(1000)
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    server = await serve(script)
    with pytest.raises(httpx.WriteError):  # not sent: the store cannot have acted on it
        await call(ConnectionPool(1), server.url + "/k", body=b"b" * 8_000_000)
