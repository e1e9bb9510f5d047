"""One tree of domain errors. They carry no HTTP codes: the gateway and worker map them in one table."""

from __future__ import annotations


class ModelfleetError(Exception):
    """Base of every error modelfleet raises on purpose."""


class ConfigError(ModelfleetError):
    """Raised when fleet configuration is invalid; the message names the field and the reason."""


class ModelNotFound(ModelfleetError):
    """Raised when a request names a model (or model version) that is not served here."""


class PipelineNotFound(ModelfleetError):
    """Raised when a request names a pipeline the fleet does not define."""


class RunNotFound(ModelfleetError):
    """Raised when a stored pipeline run with the given id does not exist."""


class InvalidInput(ModelfleetError):
    """Raised when a request body has the wrong shape or types for the model it targets."""

    def __init__(self, message: str, details: list[dict[str, object]] | None = None) -> None:
        super().__init__(message)
        self.details = details or []


class MalformedRequest(ModelfleetError):
    """Raised when a request body cannot be parsed at all (not JSON, not the protocol's envelope)."""


class DeadlineExceeded(ModelfleetError):
    """Raised when a request's deadline passes before a result is ready."""


class ModelNotReady(ModelfleetError):
    """Raised when a model is known but not loaded (yet, or any more)."""


class PredictionFailed(ModelfleetError):
    """Raised when a model's predict raised; the original error is chained."""


class UpstreamUnavailable(ModelfleetError):
    """Raised when no healthy replica of a service could take a request."""


class Conflict(ModelfleetError):
    """Raised when a request is well-formed but clashes with the current state (a version still in use)."""


class VersionNotFound(ModelfleetError):
    """Raised when the model registry has no such model, or the model no such version."""


class AliasNotFound(ModelfleetError):
    """Raised when a registered model has no alias of the given name."""


class TrainingJobNotFound(ModelfleetError):
    """Raised when a training job with the given id does not exist."""


class DatasetNotFound(ModelfleetError):
    """Raised when the lake has no dataset of the given name, or the dataset no such version."""


class DatasetRejected(ModelfleetError):
    """Raised when a file cannot become a dataset version; ``reasons`` names every problem found."""

    def __init__(self, reasons: list[str] | str) -> None:
        self.reasons = [reasons] if isinstance(reasons, str) else list(reasons)
        super().__init__("; ".join(self.reasons))


class ArtifactNotFound(ModelfleetError):
    """Raised when no complete model artifact is stored at the given URI."""


class ArtifactExists(Conflict):
    """Raised when a model version's artifact is already stored: stored artifacts are never replaced."""
