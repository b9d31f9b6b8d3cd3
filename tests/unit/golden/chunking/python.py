"""A module docstring."""
from __future__ import annotations

import os.path as osp
import sys
from ..models import Request as Req, Response
from . import *

try:
    import ujson as json
except ImportError:
    import json

MAX_RETRIES: int = 3
first, second = 1, 2


# The client.
@dataclass
class Client(Base):
    """Sends requests."""

    timeout = 5.0

    def send(self, request: Req) -> Response:
        for attempt in range(MAX_RETRIES):
            pass
        return Response()

    @property
    def name(self) -> str: return "client"

    class Options:
        verbose = False


async def fetch(
    url: str,
    *,
    retries: int = MAX_RETRIES,
) -> bytes:
    from .transport import open_connection

    return await open_connection(url)


if __name__ == "__main__":
    fetch(sys.argv[1])
