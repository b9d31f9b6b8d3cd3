"""The installed distribution's version (``splice --version``, the OpenAPI document, /v1/health)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("splice-assistant")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
