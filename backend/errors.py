"""The backend's errors, and Label Studio API errors as one line a user can act on."""
from __future__ import annotations

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


def describe_api_error(exc: ApiError) -> str:
    """A Label Studio API error as one line a user can act on."""
    body = exc.body
    if isinstance(body, dict):
        body = body.get("detail") or body.get("validation_errors") or body
    if exc.status_code in (401, 403):
        return (f"Label Studio refused the backend's API key (HTTP {exc.status_code}: {body}): set "
                "LABEL_STUDIO_API_KEY to a valid legacy token or personal access token of a project member")
    if exc.status_code == 404:
        return f"Label Studio answered HTTP 404 ({body}): the project may have been deleted"
    return f"Label Studio API error HTTP {exc.status_code}: {body}"
