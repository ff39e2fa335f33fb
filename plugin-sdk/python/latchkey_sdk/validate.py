"""Building ``validate`` answers, and checking an API key with one request.

Most services validate a key with their cheapest authenticated call and answer in one
of three ways. :func:`check` sends such a request and sorts the answer:

===================================  =============================================
the service answers                  ``check`` gives
===================================  =============================================
2xx                                  ``Answer(accepted=True, response=…)``
401, 403 (or what ``refuses`` says)  ``Answer(accepted=False, reason=…)``: answer
                                     ``invalid(…)``, a validation, not an error
408, 429, 5xx, network, timeout      raises ``unavailable``
the host refused the destination     raises ``denied``
any other status                     raises ``rejected``
===================================  =============================================

Service text (error messages) can echo the key, whole or masked (``sk-abc***xyz``):
every reason and error built here goes through :func:`redact` first.

    key = validate.api_key(cred)
    answer = validate.check(http.get(f"{base}/v1/me").bearer(key), secrets=[key])
    if not answer.accepted:
        return validate.invalid(f"Example refused the key: {answer.reason}")
    return validate.valid("key accepted", permissions={"read": True})
"""

import json as _json
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

from componentize_py_types import Err
from wit_world.imports.latchkey_provider_types import (
    Credential,
    Field,
    Permission,
    Validation,
)

from . import config, errors
from .http import Request, Response
from .redact import redact

__all__ = [
    "Answer",
    "check",
    "sort",
    "status_error",
    "error_message",
    "redact",
    "valid",
    "invalid",
    "permissions",
    "api_key",
    "require_kind",
    "base_url",
]

class Answer:
    """What the service said about a credential it was willing to talk about."""

    def __init__(self, accepted: bool, response: Optional[Response] = None, reason: str = ""):
        self.accepted = accepted
        self.response = response
        self.reason = reason

    def __repr__(self) -> str:
        return f"Answer(accepted={self.accepted}, reason={self.reason!r})"


def check(
    request: Request,
    secrets: Sequence[str] = (),
    refuses: Optional[Callable[[Response], bool]] = None,
) -> Answer:
    """Sends ``request`` (which already carries the credential) and sorts the answer
    as the module table says. ``secrets`` are redacted from any service text kept."""
    return sort(request.send(), secrets, refuses)


def sort(
    response: Response,
    secrets: Sequence[str] = (),
    refuses: Optional[Callable[[Response], bool]] = None,
) -> Answer:
    """The decision behind :func:`check`, for a response already received."""
    if response.ok:
        return Answer(True, response=response)
    if (refuses is not None and refuses(response)) or response.status in (401, 403):
        said = error_message(response)
        reason = str(response.status) + (f": {redact(said, secrets)}" if said else "")
        return Answer(False, response=response, reason=reason)
    raise status_error(response, secrets)


def status_error(response: Response, secrets: Sequence[str] = ()) -> Err:
    """The error for a non-2xx answer to any call: ``unavailable`` for 408/429/5xx,
    ``rejected`` otherwise, with the service's message redacted of ``secrets``."""
    said = error_message(response)
    err = errors.from_status(response.status)
    message = f"service answered {response.status}" + (f": {redact(said, secrets)}" if said else "")
    return type(err)(type(err.value)(message))


def error_message(response: Response) -> Optional[str]:
    """The service's own words from a JSON error body: ``{"error": {"message", "code"
    | "type" | "status"}}``, ``{"message": …}`` or ``{"error": "…"}``. Not redacted."""
    try:
        body = _json.loads(response.body)
    except ValueError:
        return None
    if not isinstance(body, dict):
        return None
    err = body.get("error")
    message = code = None
    if isinstance(err, str):
        message = err
    elif isinstance(err, dict):
        message = err.get("message") if isinstance(err.get("message"), str) else None
        for k in ("code", "type", "status"):
            if isinstance(err.get(k), str):
                code = err[k]
                break
    elif isinstance(body.get("message"), str):
        message = body["message"]
    if isinstance(body.get("error_description"), str) and message is not None:
        message = f"{message}: {body['error_description']}"  # RFC 6749 §5.2
    if code and message:
        return f"{code}: {message}"
    return message or code


PermissionsLike = Union[Dict[str, bool], Iterable[Tuple[str, bool]], None]


def permissions(granted: PermissionsLike) -> List[Permission]:
    """``{"read": True, "withdraw": False}`` (or pairs) as validation permissions."""
    if granted is None:
        return []
    items = granted.items() if isinstance(granted, dict) else granted
    return [Permission(name=n, granted=bool(g)) for n, g in items]


def valid(detail: str, permissions: PermissionsLike = None, expires_at: Optional[int] = None) -> Validation:
    """The answer for a credential the service accepted."""
    return Validation(valid=True, detail=detail, permissions=_perms(permissions), expires_at=expires_at)


def invalid(detail: str, permissions: PermissionsLike = None) -> Validation:
    """The answer for a credential the service refused (``valid: false``)."""
    return Validation(valid=False, detail=detail, permissions=_perms(permissions), expires_at=None)


_perms = permissions


def api_key(cred: Credential) -> str:
    """The key of an API-key credential: field ``api-key``, or its alias ``key``.
    Missing or empty is ``invalid-config`` (naming the field, never a value)."""
    key = config.field(cred, "api-key")
    if key is None:
        key = config.field(cred, "key")
    if key is None:
        raise errors.invalid_config("credential has no field api-key (or key)")
    if not key.strip():
        raise errors.invalid_config("credential field api-key is empty")
    return key


def require_kind(cred: Credential, kinds: Sequence[str]) -> None:
    """``unsupported`` unless the credential's kind is one of ``kinds``."""
    if cred.kind not in kinds:
        raise errors.unsupported(f"credential kind {cred.kind!r} (this provider handles {', '.join(kinds)})")


def base_url(cfg: List[Field], default: Optional[str] = None) -> str:
    """Config ``base-url`` without trailing slashes (``default`` when unset); missing,
    or not an ``http://``/``https://`` URL, is ``invalid-config``."""
    url = (config.get(cfg, "base-url") or default or "").strip()
    if not url:
        raise errors.invalid_config("missing config base-url")
    if not (url.startswith("https://") or url.startswith("http://")):
        raise errors.invalid_config("config base-url must start with https:// or http://")
    return url.rstrip("/")
