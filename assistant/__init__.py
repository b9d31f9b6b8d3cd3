"""The service: FastAPI app, CLI, settings, scheduling and telemetry. Nothing imports this package."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("splice-assistant")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
