"""Blocking HTTP over wasi:http, with JSON, headers, timeouts and bodies of any size.

Requests go through the host, which lets a plugin reach only the authorities granted
to it in the agent's configuration; anything else fails with ``denied`` (and the host
audits it). The host also bounds each call with a deadline and caps response bodies.

    from latchkey_sdk import http
    res = http.get(f"{base}/v1/me").bearer(token).timeout(5).send()
    if res.status in (401, 403):
        ...                                   # an answer about the credential
    me = res.error_for_status().json()        # 429/5xx -> unavailable, other -> rejected

What this module does so that a provider need not:

- request bodies are written in chunks of at most 4096 bytes (the most one
  ``blocking-write-and-flush`` accepts) with ``content-length`` set, so the body never
  goes out chunked;
- the response body is read whole;
- every wasi:http resource is released child first (headers, streams, bodies,
  response, future), which the host requires: dropping a parent first traps;
- one deadline (``timeout``, 30 s by default) covers connecting, the response head and
  the whole body; the SDK polls the host's monotonic clock beside each wait.

Every failure is an :class:`HttpError`, which is also the right ``provider-error``:
raising it out of a provider method (or letting it propagate) answers ``denied``,
``unavailable`` or ``rejected`` as the table in :mod:`latchkey_sdk.errors` says.
"""

import json as _json
from typing import Any, Dict, List, Optional, Tuple, Union
from urllib.parse import quote, urlencode

from componentize_py_types import Err
from wit_world.imports import monotonic_clock, outgoing_handler, poll
from wit_world.imports import wasi_http_types as wh
from wit_world.imports.latchkey_provider_types import (
    ProviderError_Denied,
    ProviderError_InvalidConfig,
    ProviderError_Rejected,
    ProviderError_Unavailable,
)
from wit_world.imports.streams import StreamError_Closed

__all__ = [
    "Request",
    "Response",
    "HttpError",
    "failure_kind",
    "get",
    "post",
    "put",
    "patch",
    "delete",
    "request",
    "urlencode_component",
    "CHUNK",
    "DEFAULT_TIMEOUT",
]

#: The most bytes one ``blocking-write-and-flush`` may carry (wasi:io 0.2).
CHUNK = 4096
#: Seconds a request may take, connect to last body byte, unless ``timeout`` says.
DEFAULT_TIMEOUT = 30.0
_READ = 64 * 1024
_NS = 1_000_000_000


def HttpError(kind: str, message: str, status: Optional[int] = None) -> Err:  # noqa: N802
    """The failure of a request: an ``Err`` carrying the matching ``provider-error``,
    with ``kind``, ``message`` and ``status`` attributes; raise it (or let it
    propagate) to answer that variant.

    ``kind`` is one of ``"denied"`` (the host refused the destination),
    ``"timeout"``, ``"transport"`` (connection, TLS, protocol), ``"status"`` (from
    :meth:`Response.error_for_status`; ``status`` holds the code), ``"json"`` (the
    body was not the JSON expected) or ``"invalid-request"`` (a bad URL or header).
    ``message`` never holds a header value or body. It is a plain ``Err`` because
    componentize-py accepts exactly that type as an operation's error; catch it with
    ``except Err as e`` and read :func:`failure_kind`.
    """
    if kind == "denied":
        value: Any = ProviderError_Denied(f"http request denied by the host: {message}")
    elif kind == "status" and status is not None:
        transient = status in (408, 429) or 500 <= status <= 599
        value = (ProviderError_Unavailable if transient else ProviderError_Rejected)(message)
    elif kind == "invalid-request":
        value = ProviderError_InvalidConfig(message)
    else:
        value = ProviderError_Unavailable(message)
    err = Err(value)
    # `Err` is a frozen dataclass: attributes beyond `value` go in through object.
    object.__setattr__(err, "kind", kind)
    object.__setattr__(err, "message", message)
    object.__setattr__(err, "status", status)
    return err


def failure_kind(error: BaseException) -> Optional[str]:
    """The ``kind`` of a request failure raised by this module, else ``None``."""
    return getattr(error, "kind", None)


_METHODS = {
    "GET": wh.Method_Get,
    "HEAD": wh.Method_Head,
    "POST": wh.Method_Post,
    "PUT": wh.Method_Put,
    "DELETE": wh.Method_Delete,
    "PATCH": wh.Method_Patch,
    "OPTIONS": wh.Method_Options,
}


def split_url(url: str) -> Tuple[str, str, str]:
    """``(scheme, authority, path_with_query)`` of an ``http://`` or ``https://`` URL."""
    for scheme in ("https", "http"):
        prefix = scheme + "://"
        if url[: len(prefix)].lower() == prefix:
            rest = url[len(prefix) :]
            break
    else:
        raise HttpError("invalid-request", "url must start with http:// or https://")
    cut = len(rest)
    for sep in "/?#":
        i = rest.find(sep)
        if i != -1:
            cut = min(cut, i)
    authority, path = rest[:cut], rest[cut:]
    path = path.split("#", 1)[0]
    if not authority or "@" in authority:
        raise HttpError("invalid-request", "url has no host (or has user info)")
    if not path:
        path = "/"
    elif path.startswith("?"):
        path = "/" + path
    return scheme, authority, path


def urlencode_component(text: str) -> str:
    """Percent-encodes everything but RFC 3986's unreserved characters."""
    return quote(text, safe="-._~")


class Response:
    """A complete response: ``status``, ``headers`` (names lowercase, values bytes)
    and the whole ``body``."""

    def __init__(self, status: int, headers: List[Tuple[str, bytes]], body: bytes):
        self.status = status
        self.headers = headers
        self.body = body

    def __repr__(self) -> str:
        return f"Response(status={self.status}, {len(self.body)} bytes)"

    @property
    def ok(self) -> bool:
        """Whether the status is 2xx."""
        return 200 <= self.status < 300

    def header(self, name: str) -> Optional[str]:
        """The first value of header ``name`` (case-insensitive), as text."""
        name = name.lower()
        for k, v in self.headers:
            if k.lower() == name:
                return v.decode("utf-8", "replace")
        return None

    def text(self) -> str:
        """The body as text (invalid UTF-8 replaced)."""
        return self.body.decode("utf-8", "replace")

    def json(self) -> Any:
        """The body parsed as JSON; raises ``HttpError("json")`` (``unavailable``)."""
        try:
            return _json.loads(self.body)
        except ValueError as e:
            raise HttpError("json", f"response is not JSON: {e.__class__.__name__}") from None

    def error_for_status(self, what: str = "service") -> "Response":
        """Itself if 2xx, else raises ``HttpError("status")``: 408, 429 and 5xx answer
        ``unavailable``, other statuses ``rejected``."""
        if not self.ok:
            raise HttpError("status", f"{what} answered {self.status}", self.status)
        return self


class Request:
    """An HTTP request being built; :meth:`send` sends it and reads the response."""

    def __init__(self, method: str, url: str):
        self.method = method.upper()
        self.url = url
        self.headers: List[Tuple[str, bytes]] = []
        self.body = b""
        self.timeout_s = DEFAULT_TIMEOUT

    def __repr__(self) -> str:
        # Never the headers: they hold credentials.
        return f"Request({self.method} {self.url.split('?', 1)[0]})"

    def header(self, name: str, value: Union[str, bytes]) -> "Request":
        """Adds a header (repeatable)."""
        raw = value.encode() if isinstance(value, str) else bytes(value)
        self.headers.append((name.lower(), raw))
        return self

    def headers_from(self, headers: Dict[str, str]) -> "Request":
        """Adds every header of a dict."""
        for k, v in headers.items():
            self.header(k, v)
        return self

    def bearer(self, token: str) -> "Request":
        """Adds ``authorization: Bearer <token>``."""
        return self.header("authorization", "Bearer " + token)

    def basic(self, user: str, password: str) -> "Request":
        """Adds ``authorization: Basic …`` (RFC 7617)."""
        import base64

        pair = f"{user}:{password}".encode()
        return self.header("authorization", "Basic " + base64.b64encode(pair).decode())

    def query(self, **params: str) -> "Request":
        """Appends ``?k=v&…`` (percent-encoded) to the URL."""
        if params:
            sep = "&" if "?" in self.url else "?"
            self.url += sep + "&".join(
                f"{urlencode_component(k)}={urlencode_component(str(v))}" for k, v in params.items()
            )
        return self

    def timeout(self, seconds: float) -> "Request":
        """Bounds the whole exchange (connect, head, body); past it the request fails
        with ``HttpError("timeout")`` (``unavailable``). The host's per-call deadline
        still applies on top."""
        self.timeout_s = float(seconds)
        return self

    def data(self, body: Union[str, bytes], content_type: Optional[str] = None) -> "Request":
        """Sets a raw body (any size)."""
        self.body = body.encode() if isinstance(body, str) else bytes(body)
        if content_type is not None:
            self.header("content-type", content_type)
        return self

    def json(self, value: Any) -> "Request":
        """Sets a JSON body and ``content-type: application/json``."""
        return self.data(_json.dumps(value, separators=(",", ":")), "application/json")

    def form(self, pairs: Union[Dict[str, str], List[Tuple[str, str]]]) -> "Request":
        """Sets an ``application/x-www-form-urlencoded`` body (RFC 6749 style)."""
        items = list(pairs.items()) if isinstance(pairs, dict) else list(pairs)
        return self.data(urlencode(items), "application/x-www-form-urlencoded")

    def send(self) -> Response:
        """Sends the request and reads the whole response. Raises :class:`HttpError`."""
        scheme, authority, path = split_url(self.url)
        method = _METHODS.get(self.method)
        deadline = monotonic_clock.now() + int(self.timeout_s * _NS)
        entries = [(k, v) for k, v in self.headers if k != "content-length"]
        if self.body or self.method in ("POST", "PUT", "PATCH"):
            entries.append(("content-length", str(len(self.body)).encode()))
        try:
            fields = wh.Fields.from_list(entries)
        except Err as e:
            raise HttpError("invalid-request", f"header refused: {type(e.value).__name__}") from None
        # `OutgoingRequest` takes ownership of `fields`.
        req = wh.OutgoingRequest(fields)
        try:
            req.set_method(method() if method is not None else wh.Method_Other(self.method))
            req.set_scheme(wh.Scheme_Https() if scheme == "https" else wh.Scheme_Http())
            req.set_authority(authority)
            req.set_path_with_query(path)
        except Err:
            req.__exit__(None, None, None)
            raise HttpError("invalid-request", f"invalid request to {authority}") from None
        out_body = req.body()
        options = wh.RequestOptions()
        try:
            options.set_connect_timeout(int(self.timeout_s * _NS))
            options.set_first_byte_timeout(int(self.timeout_s * _NS))
        except Err:
            pass  # a host that does not support them: the SDK's own deadline still holds
        try:
            future = outgoing_handler.handle(req, options)
        except Err as e:
            out_body.__exit__(None, None, None)
            raise _transport(e.value, authority) from None
        with future:
            try:
                _write_body(out_body, self.body, deadline, authority)
            except BaseException:
                out_body.__exit__(None, None, None)  # dropped unfinished: the request aborts
                raise
            try:
                wh.OutgoingBody.finish(out_body, None)
            except Err as e:
                raise _transport(e.value, authority) from None
            with _await_response(future, deadline, authority) as response:
                status = response.status()
                with response.headers() as h:
                    headers = h.entries()
                body = _read_body(response, deadline, authority)
        return Response(status, headers, body)


def _transport(code: Any, authority: str) -> HttpError:
    name = type(code).__name__.replace("ErrorCode_", "")
    if name in ("HttpRequestDenied", "DestinationIpProhibited"):
        return HttpError("denied", f"{authority} ({name})")
    if name in ("ConnectionTimeout", "ConnectionReadTimeout", "HttpResponseTimeout", "DnsTimeout"):
        return HttpError("timeout", f"request to {authority} timed out ({name})")
    return HttpError("transport", f"request to {authority} failed ({name})")


def _wait(pollable: poll.Pollable, deadline: int, authority: str) -> None:
    """Blocks until ``pollable`` is ready or raises a timeout at ``deadline``."""
    with pollable:
        remaining = deadline - monotonic_clock.now()
        if remaining <= 0:
            raise HttpError("timeout", f"request to {authority} timed out")
        with monotonic_clock.subscribe_duration(remaining) as timer:
            ready = poll.poll([pollable, timer])
        if 0 not in ready:
            raise HttpError("timeout", f"request to {authority} timed out")


def _write_body(out_body: wh.OutgoingBody, data: bytes, deadline: int, authority: str) -> None:
    if not data:
        return
    with out_body.write() as stream:
        view = memoryview(data)
        while view:
            try:
                room = stream.check_write()
            except Err:
                raise HttpError("transport", f"request to {authority}: body stream closed") from None
            if room == 0:
                _wait(stream.subscribe(), deadline, authority)
                continue
            n = min(room, CHUNK, len(view))
            try:
                stream.write(bytes(view[:n]))
            except Err:
                raise HttpError("transport", f"request to {authority}: body stream closed") from None
            view = view[n:]
        # Everything is written. The service may answer (and close) before reading it
        # all: a failure to flush is then the response's to report, not the body's.
        try:
            stream.flush()
            while stream.check_write() == 0:
                _wait(stream.subscribe(), deadline, authority)
        except Err as e:
            if failure_kind(e) == "timeout":
                raise


def _await_response(future: wh.FutureIncomingResponse, deadline: int, authority: str) -> wh.IncomingResponse:
    while True:
        got = future.get()
        if got is not None:
            break
        _wait(future.subscribe(), deadline, authority)
    # option<result<result<incoming-response, error-code>>>: outer err = taken twice.
    if isinstance(got, Err):
        raise HttpError("transport", f"request to {authority}: response taken twice")
    inner = got.value
    if isinstance(inner, Err):
        raise _transport(inner.value, authority)
    return inner.value


def _read_body(response: wh.IncomingResponse, deadline: int, authority: str) -> bytes:
    chunks: List[bytes] = []
    try:
        incoming = response.consume()
    except Err:
        raise HttpError("transport", f"response of {authority}: body taken twice") from None
    try:
        with incoming.stream() as stream:
            while True:
                try:
                    chunk = stream.read(_READ)
                except Err as e:
                    if isinstance(e.value, StreamError_Closed):
                        break
                    raise HttpError("transport", f"reading the response of {authority} failed") from None
                if chunk:
                    chunks.append(chunk)
                else:
                    _wait(stream.subscribe(), deadline, authority)
    except BaseException:
        incoming.__exit__(None, None, None)  # the stream is gone: the body may go now
        raise
    wh.IncomingBody.finish(incoming).__exit__(None, None, None)
    return b"".join(chunks)


def request(method: str, url: str) -> Request:
    """A request with any method."""
    return Request(method, url)


def get(url: str) -> Request:
    """``GET url``."""
    return Request("GET", url)


def post(url: str) -> Request:
    """``POST url``."""
    return Request("POST", url)


def put(url: str) -> Request:
    """``PUT url``."""
    return Request("PUT", url)


def patch(url: str) -> Request:
    """``PATCH url``."""
    return Request("PATCH", url)


def delete(url: str) -> Request:
    """``DELETE url``."""
    return Request("DELETE", url)
