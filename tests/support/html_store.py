"""A server that is not S3 but answers everything with ``200 OK`` and an HTML page.

What a misconfigured endpoint looks like (a web server, a captive portal, a proxy's welcome
page): every request, whatever its method or path, gets 200 and HTML (no body for HEAD),
with an ETag header like a static file server sends. chute must never report a file stored
by such a server (issue 13 item 6).

Runs ``trio.run`` in a background thread on 127.0.0.1, like the fault proxy::

    with HtmlStore() as server:
        ... chute mount ... --endpoint-url server.url
        server.requests  # [(method, target), ...]
"""

from __future__ import annotations

import threading

import trio

PAGE = (b"<!DOCTYPE html>\n<html><head><title>Welcome</title></head>"
        b"<body><h1>It works!</h1></body></html>\n")


class HtmlStore:
    def __init__(self) -> None:
        self.port = 0
        self.requests: list[tuple[str, str]] = []
        self._ready = threading.Event()
        self._token: trio.lowlevel.TrioToken | None = None
        self._cancel: trio.CancelScope | None = None
        self._thread = threading.Thread(target=lambda: trio.run(self._main), daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> HtmlStore:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the HTML server did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._token is not None and self._cancel is not None:
            trio.from_thread.run_sync(self._cancel.cancel, trio_token=self._token)
        self._thread.join(10)

    async def _main(self) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        self._token = trio.lowlevel.current_trio_token()
        with trio.CancelScope() as self._cancel:
            self._ready.set()
            await trio.serve_listeners(self._serve, listeners)

    async def _serve(self, stream: trio.SocketStream) -> None:
        buffer = b""
        try:
            while True:
                while b"\r\n\r\n" not in buffer:
                    data = await stream.receive_some(65536)
                    if not data:
                        return
                    buffer += data
                head, _, buffer = buffer.partition(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, target = lines[0].split(" ")[:2]
                headers = {k.strip().lower(): v.strip() for k, _, v in
                           (line.partition(":") for line in lines[1:])}
                length = int(headers.get("content-length", "0"))
                while len(buffer) < length:
                    data = await stream.receive_some(65536)
                    if not data:
                        return
                    buffer += data
                buffer = buffer[length:]
                self.requests.append((method, target))
                answer = (b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n"
                          b'ETag: "5f3c-1a2b"\r\n'
                          b"Content-Length: %d\r\n\r\n" % len(PAGE))
                await stream.send_all(answer if method == "HEAD" else answer + PAGE)
        except (trio.BrokenResourceError, trio.ClosedResourceError, ValueError):
            return
