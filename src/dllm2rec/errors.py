"""User-facing errors. The CLI prints these as one line (no traceback) and exits with status 2."""


class Dllm2recError(Exception):
    """Base class: a problem with the user's input or environment, reported as one line."""


class DataError(Dllm2recError):
    """Bad or inconsistent data; the message names the file and the field."""


class ConfigError(Dllm2recError):
    """Bad configuration (YAML or override)."""


class ArtifactError(Dllm2recError):
    """Teacher artifacts that do not match the dataset or are malformed."""


class MissingDependencyError(Dllm2recError):
    """An optional extra is needed; the message says what to install."""
