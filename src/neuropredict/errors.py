"""Errors a user can act on: the CLI prints them as one line naming the problem and the fix."""


class NeuropredictError(Exception):
    """Base class: the message says what went wrong and what to do."""


class ConfigError(NeuropredictError):
    """params.yaml or an environment variable is missing, unknown or out of range."""


class DataSourceError(NeuropredictError):
    """No price data could be obtained from the requested source."""


class DataValidationError(NeuropredictError):
    """Raw prices failed the great-expectations suite."""


class ModelNotFoundError(NeuropredictError):
    """The registry has no such model, version or alias."""


class ServiceError(NeuropredictError):
    """An embedded service (broker, MLflow UI) could not start, or is not reachable."""
