"""Refusals the domain makes. Services raise them; the API and the commands turn them into a
4xx in the standard error shape or a clear message, never a traceback."""


class ServiceError(Exception):
    """A request the domain refuses. ``code`` is the API's error code, ``fields`` points at inputs."""

    code = "invalid"
    http_status = 400

    def __init__(self, detail: str, *, fields: dict[str, list[str]] | None = None):
        super().__init__(detail)
        self.detail = detail
        self.fields = fields or {}


class InvalidState(ServiceError):
    """The object is not in a state that allows this (a finished validation, a blocked build...)."""

    code = "invalid_state"
    http_status = 409


class NotPermitted(ServiceError):
    """The actor may not do this (four-eyes rule, missing object permission...)."""

    code = "permission_denied"
    http_status = 403


class IdempotencyMismatch(ServiceError):
    """An Idempotency-Key reused with a different request."""

    code = "idempotency_key_reused"
    http_status = 422


class NotFound(ServiceError):
    """Something the request names does not exist (or is not visible to the caller)."""

    code = "not_found"
    http_status = 404
