"""A latchkey provider in Python for a token service, written with the latchkey SDK.

The service (any server with this shape; the tests start one on loopback):

- ``GET {base-url}/v1/token/introspect`` with ``authorization: Bearer <access-token>``
  answers 200 ``{"account": "…", "scopes": ["read", …], "expires_at": "<RFC 3339>"}``
  for a working token, 401 or 403 for a refused one;
- ``POST {base-url}/v1/token/refresh`` with JSON ``{"refresh_token": "…"}`` answers
  200 ``{"access_token": "…", "refresh_token": "…", "expires_in": 3600}``.

Credential kind ``access-token`` with fields ``access-token`` and ``refresh-token``.
Config: ``base-url`` (required), ``timeout`` (seconds per request, default 10).

Every contract answer is reachable: ``valid``/``invalid`` from ``validate``;
``unavailable`` for 408/429/5xx, timeouts and network failures; ``rejected`` for a
refused refresh token; ``denied`` when the host refuses the destination;
``invalid-config`` for a missing ``base-url`` or credential field; ``unsupported``
for rotation, which this service does not offer.
"""

from typing import List

from latchkey_sdk import clock, config, errors, http, info, log, validate
from latchkey_sdk import Credential, Field, ProviderInfo, Validation
from wit_world import exports

KIND = "access-token"


def _settings(cfg: List[Field]):
    base = validate.base_url(cfg)
    raw = config.get(cfg, "timeout", "10")
    try:
        timeout = float(raw)
    except ValueError:
        raise errors.invalid_config("config timeout must be a number of seconds") from None
    if not 0 < timeout <= 300:
        raise errors.invalid_config("config timeout must be between 0 and 300 seconds")
    return base, timeout


class Provider(exports.Provider):
    def info(self) -> ProviderInfo:
        return info(
            name="example-python",
            version="0.2.0",
            kinds=[KIND],
            operations=["validate", "refresh"],
        )

    def validate(self, cfg: List[Field], cred: Credential) -> Validation:
        validate.require_kind(cred, [KIND])
        base, timeout = _settings(cfg)
        token = config.require_field(cred, "access-token")
        req = http.get(f"{base}/v1/token/introspect").bearer(token).timeout(timeout)
        answer = validate.check(req, secrets=[token])
        if not answer.accepted:
            return validate.invalid(f"token service refused the token: {answer.reason}")
        body = answer.response.json()
        if not isinstance(body, dict):
            raise errors.unavailable("token service sent an unexpected introspection answer")
        scopes = [s for s in body.get("scopes", []) if isinstance(s, str)]
        expires = body.get("expires_at")
        expires_at = clock.parse_rfc3339(expires) if isinstance(expires, str) else None
        log.debug(f"token introspected: {len(scopes)} scopes, {len(answer.response.body)} bytes")
        account = body.get("account") if isinstance(body.get("account"), str) else "unknown"
        return validate.valid(
            f"token accepted for account {validate.redact(account, [token])}",
            permissions={s: True for s in scopes},
            expires_at=expires_at,
        )

    def create_pending(self, cfg: List[Field], current: Credential) -> Credential:
        raise errors.unsupported("create-pending: the token service issues tokens only by refresh")

    def retire(self, cfg: List[Field], previous: Credential) -> None:
        raise errors.unsupported("retire: the token service has no revocation endpoint")

    def refresh(self, cfg: List[Field], cred: Credential) -> Credential:
        validate.require_kind(cred, [KIND])
        base, timeout = _settings(cfg)
        refresh_token = config.require_field(cred, "refresh-token")
        res = (
            http.post(f"{base}/v1/token/refresh")
            .json({"refresh_token": refresh_token})
            .timeout(timeout)
            .send()
        )
        if not res.ok:
            # 400/401: the refresh token is refused (the host marks the credential
            # reauth-required); 408/429/5xx: retried with backoff.
            raise validate.status_error(res, secrets=[refresh_token])
        body = res.json()
        access = body.get("access_token") if isinstance(body, dict) else None
        if not isinstance(access, str) or not access:
            raise errors.unavailable("token service answered a refresh without access_token")
        fields = {"access-token": access}
        if isinstance(body.get("refresh_token"), str):
            fields["refresh-token"] = body["refresh_token"]  # else the host keeps the old one
        expires_in = body.get("expires_in")
        expires_at = None
        if isinstance(expires_in, int) and expires_in > 0:
            expires_at = clock.now_secs() + expires_in
        log.info("token refreshed")
        return Credential(
            kind=KIND,
            fields=[Field(name=k, value=v) for k, v in fields.items()],
            expires_at=expires_at,
        )
