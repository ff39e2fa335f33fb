"""Logging into the agent's log, tagged with the plugin's name.

Never log credential values: the host cannot tell a secret from other text. Log field
names, lengths, statuses and counts instead.

    from latchkey_sdk import log
    log.info("token refreshed")
"""

from wit_world.imports import log as _host

__all__ = ["trace", "debug", "info", "warn", "error"]


def trace(message: str) -> None:
    """Very detailed tracing."""
    _host.log(_host.Level.TRACE, message)


def debug(message: str) -> None:
    """Diagnostic detail."""
    _host.log(_host.Level.DEBUG, message)


def info(message: str) -> None:
    """Normal progress."""
    _host.log(_host.Level.INFO, message)


def warn(message: str) -> None:
    """Something degraded."""
    _host.log(_host.Level.WARN, message)


def error(message: str) -> None:
    """An operator should look."""
    _host.log(_host.Level.ERROR, message)
