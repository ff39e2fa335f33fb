"""Failing an operation with one of the contract's `provider-error` variants.

Each helper returns an exception to ``raise`` from a provider method; componentize-py
turns it into the `err` of the operation's result. What the host does with each
variant is documented in ``wit/types.wit``:

=================  ==========================================  ======================
helper             when                                        the host
=================  ==========================================  ======================
``rejected``       the service refused the credential          no retry, alerts
``unavailable``    timeout, 5xx, 429, network, bad response    retries with backoff
``denied``         the host refused an HTTP authority or SQL   no retry, audits
``unsupported``    operation or kind not implemented           configuration error
``invalid_config`` a config field is missing or malformed      configuration error
=================  ==========================================  ======================

Messages must never contain a secret: the host logs them.

    from latchkey_sdk import errors
    raise errors.unavailable("token service answered 503")
"""

from componentize_py_types import Err
from wit_world.imports.latchkey_provider_types import (
    ProviderError_Denied,
    ProviderError_InvalidConfig,
    ProviderError_Rejected,
    ProviderError_Unavailable,
    ProviderError_Unsupported,
)

__all__ = [
    "rejected",
    "unavailable",
    "denied",
    "unsupported",
    "invalid_config",
    "from_status",
    "variant_name",
]


def rejected(message: str) -> Err:
    """The service refused the credential (bad key, revoked, wrong password)."""
    return Err(ProviderError_Rejected(message))


def unavailable(message: str) -> Err:
    """A transient failure: the host retries with backoff and keeps the credential."""
    return Err(ProviderError_Unavailable(message))


def denied(message: str) -> Err:
    """The host refused a capability (an HTTP authority or SQL connection)."""
    return Err(ProviderError_Denied(message))


def unsupported(message: str) -> Err:
    """The operation or credential kind is not implemented by this provider."""
    return Err(ProviderError_Unsupported(message))


def invalid_config(message: str) -> Err:
    """A provider config field is missing or malformed; name the field."""
    return Err(ProviderError_InvalidConfig(message))


def from_status(status: int, what: str = "service") -> Err:
    """The error for a non-success HTTP status: 408, 429 and 5xx are transient
    (``unavailable``), any other status is ``rejected``."""
    message = f"{what} answered {status}"
    if status in (408, 429) or 500 <= status <= 599:
        return unavailable(message)
    return rejected(message)


_NAMES = {
    ProviderError_Rejected: "rejected",
    ProviderError_Unavailable: "unavailable",
    ProviderError_Denied: "denied",
    ProviderError_Unsupported: "unsupported",
    ProviderError_InvalidConfig: "invalid-config",
}


def variant_name(error: Err) -> str:
    """The WIT name of the variant an error carries (``"unavailable"``…), for tests."""
    return _NAMES.get(type(error.value), "unknown")
