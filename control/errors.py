"""Domain errors. Each carries the gRPC status name it maps to and a message a
person can act on; the servicer layer is the only place that turns them into
gRPC statuses (this module does not import grpc)."""


class DomainError(Exception):
    """A refused request: `code` is the gRPC status name, str(self) the message."""

    code = "INTERNAL"


class InvalidArgument(DomainError):
    code = "INVALID_ARGUMENT"


class NotFound(DomainError):
    code = "NOT_FOUND"


class AlreadyExists(DomainError):
    code = "ALREADY_EXISTS"


class FailedPrecondition(DomainError):
    code = "FAILED_PRECONDITION"


class Unauthenticated(DomainError):
    code = "UNAUTHENTICATED"


class PermissionDenied(DomainError):
    code = "PERMISSION_DENIED"


class Unavailable(DomainError):
    code = "UNAVAILABLE"
