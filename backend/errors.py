"""Every error the backend raises on purpose, under the engine's one base class (isal_core.errors.IsalError).

So the job scheduler catches one type (IsalError: the message is for the user, no
traceback) and imports no task type, client or store to do it. Each also derives from the
builtin a caller would expect (ValueError for bad input, LookupError for an unknown
project, RuntimeError for a job that cannot go on).
"""
from __future__ import annotations

import re

import httpx
from label_studio_sdk.core.api_error import ApiError

from isal_core.errors import IsalError


class JobError(IsalError, RuntimeError):
    """A job cannot go on; the message is what the user reads in /status and the log."""


class SimulationError(IsalError, RuntimeError):
    """The Label Studio simulation cannot go on; the message says why and what to check."""


class ApiProblem(IsalError):
    """A request the backend refuses: HTTP `status` with `message` for the user."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


class UnknownProject(IsalError, LookupError):
    """A project that never called /setup on this backend (nothing to predict or train with)."""


class UnsupportedConfig(IsalError, ValueError):
    """The labeling config is not one the backend can learn from; the message says why and what works."""


class LabelError(IsalError, ValueError):
    """An annotation does not fit the labeling config (e.g. a choice the config does not list)."""


class MissingMedia(IsalError, ValueError):
    """A task has no usable media URL under the object tag's data key."""


class DownloadError(IsalError, RuntimeError):
    """A task file could not be fetched; `status` is the HTTP status, or None (timeout, network, refused)."""

    def __init__(self, url: str, status: int | None = None, reason: str = "", from_label_studio: bool = False):
        self.url = url
        self.status = status
        self.from_label_studio = from_label_studio  # a 401/403 from Label Studio itself is a key problem
        self.refused = reason.startswith("refused")  # by the download policy or the size cap: never fetched
        what = f"HTTP {status}" if status is not None else "no response"
        super().__init__(f"cannot download {url}: {what}" + (f" ({reason})" if reason else ""))


class DownloadRefused(IsalError, ValueError):
    """The download policy does not allow this URL; the message says why and which setting changes it."""


def describe_api_error(exc: ApiError) -> str:
    """A Label Studio API error as one line a user can act on."""
    body = exc.body
    if isinstance(body, dict):
        body = body.get("detail") or body.get("validation_errors") or body
    elif isinstance(body, str) and "<html" in body[:500].lower():  # Django's error page: its title says enough
        title = re.search(r"<title>(.*?)</title>", body, re.S | re.I)
        body = f"an HTML page{': ' + ' '.join(title.group(1).split()) if title else ''}"
    if exc.status_code in (401, 403):
        return (f"Label Studio refused the backend's API key (HTTP {exc.status_code}: {body}): set "
                "LABEL_STUDIO_API_KEY to a valid legacy token or personal access token of a project member")
    if exc.status_code == 404:
        return f"Label Studio answered HTTP 404 ({body}): the project may have been deleted"
    if isinstance(exc.status_code, int) and exc.status_code >= 500:  # e.g. its database is down
        return (f"Label Studio failed (HTTP {exc.status_code}: {str(body)[:300]}); check its log and its database. "
                "The next job starts afresh")
    return f"Label Studio API error HTTP {exc.status_code}: {str(body)[:300]}"


def describe_transport_error(exc: httpx.TransportError) -> str:
    """A request to Label Studio that got no answer (timeout, refused connection) as one line."""
    try:
        where = f" to {exc.request.method} {exc.request.url.copy_with(query=None)}"
    except RuntimeError:  # no request attached
        where = ""
    if isinstance(exc, httpx.TimeoutException):
        return (f"Label Studio did not answer{where} in time ({type(exc).__name__}; LABEL_STUDIO_TIMEOUT sets the "
                "seconds per request); the next job starts afresh")
    return f"cannot reach Label Studio{where} ({type(exc).__name__}: {exc}); the next job starts afresh"
