"""Canned S3 answers: the error document the proxy sends instead of forwarding a request,
and the codes and messages a real S3 uses for them."""

from __future__ import annotations

from dataclasses import dataclass
from email.utils import formatdate
from http import HTTPStatus
from xml.sax.saxutils import escape

DEFAULT_CODES = {
    400: "RequestTimeout", 403: "AccessDenied", 404: "NoSuchUpload", 409: "OperationAborted",
    429: "TooManyRequests", 500: "InternalError", 501: "NotImplemented", 502: "BadGateway",
    503: "ServiceUnavailable", 504: "GatewayTimeout",
}
"""The S3 error code ``Status`` answers when none is given."""

MESSAGES = {
    "RequestTimeout": "Your socket connection to the server was not read from or written to "
                      "within the timeout period.",
    "AccessDenied": "Access Denied",
    "ExpiredToken": "The provided token has expired.",
    "NoSuchUpload": "The specified upload does not exist. The upload ID may be invalid, or the "
                    "upload may have been aborted or completed.",
    "NoSuchKey": "The specified key does not exist.",
    "TooManyRequests": "Too many requests, please slow down.",
    "SlowDown": "Please reduce your request rate.",
    "InternalError": "We encountered an internal error. Please try again.",
    "ServiceUnavailable": "Service is unable to handle request.",
}


@dataclass(frozen=True)
class Answer:
    """An S3 error answer: status, code, message; ``Retry-After`` and ``Connection: close``
    if set."""

    status: int
    code: str
    message: str
    retry_after: float | None = None
    close: bool = False


def error_response(answer: Answer, method: str, path: str, request_id: str) -> bytes:
    """The whole HTTP/1.1 response (head and XML body; no body to a HEAD)."""
    status, code, message = answer.status, answer.code, answer.message
    xml = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{escape(code)}</Code><Message>{escape(message)}</Message>"
        f"<Resource>{escape(path)}</Resource><RequestId>{request_id}</RequestId></Error>"
    ).encode()
    body = b"" if method == "HEAD" else xml
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = "Error"
    lines = [
        f"HTTP/1.1 {status} {reason}",
        "Content-Type: application/xml",
        f"Content-Length: {len(body)}",
        f"Date: {formatdate(usegmt=True)}",
        f"x-amz-request-id: {request_id}",
        "Server: faultproxy",
    ]
    if answer.retry_after is not None:
        lines.append(f"Retry-After: {answer.retry_after:g}")
    if answer.close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
