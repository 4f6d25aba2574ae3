"""Asking the hub, or not: where it cannot be reached, the libraries read their local caches at once instead of
retrying (about 23 s per file, a log line per try, before t2t's one line)."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import urllib.parse
from collections.abc import Iterator

HUB_LIBRARIES = ("datasets", "huggingface_hub", "transformers")


def hub_unreachable(timeout: float = 3.0) -> str | None:
    """Why the hub cannot be asked from here (switched off, or its host does not answer a TCP connection within
    `timeout` seconds), or None where it can."""
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        if os.environ.get(name, "").lower() in ("1", "true", "yes", "on"):
            return f"{name} is set"
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    url = urllib.parse.urlsplit(endpoint)
    try:
        socket.create_connection((url.hostname or "", url.port or 443), timeout=timeout).close()
    except OSError as exc:
        return f"the hub at {endpoint} cannot be reached from here ({exc.strerror or type(exc).__name__})"
    return None


@contextlib.contextmanager
def _offline(offline: bool):
    """datasets, huggingface_hub and transformers (which asks huggingface_hub) in offline mode for the block: they
    read HF_HUB_OFFLINE once, at import, and consult these flags at each call."""
    import datasets.config
    import huggingface_hub.constants

    saved = (datasets.config.HF_HUB_OFFLINE, huggingface_hub.constants.HF_HUB_OFFLINE)
    if offline:
        datasets.config.HF_HUB_OFFLINE = huggingface_hub.constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, huggingface_hub.constants.HF_HUB_OFFLINE = saved


@contextlib.contextmanager
def hub_or_cache(ask: bool = True) -> Iterator[str | None]:
    """A block that may load from the hub: yields why the hub cannot be asked from here (None where it can, or
    where `ask` is False: the path is local), and where it cannot, runs the block in offline mode, so that a
    cached copy loads at once and a missing one fails at once. The libraries' log lines are silenced for the block:
    t2t's one line carries the reason."""
    unreachable = hub_unreachable() if ask else None
    libraries = [logging.getLogger(name) for name in HUB_LIBRARIES]
    levels = [library.level for library in libraries]
    for library in libraries:
        library.setLevel(logging.CRITICAL)
    try:
        with _offline(unreachable is not None):
            yield unreachable
    finally:
        for library, level in zip(libraries, levels, strict=True):
            library.setLevel(level)
