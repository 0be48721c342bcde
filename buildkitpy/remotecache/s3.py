"""``type=s3``: the cache in an S3 bucket (placeholder until the backend lands)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from buildkitpy.errors import Unimplemented


@dataclass
class S3Options:
    bucket: str = ""

    @classmethod
    def from_attrs(cls, attrs: dict[str, str]) -> S3Options:
        raise Unimplemented("cache type=s3 is not supported yet")


async def export(blobs: Any, attrs: dict[str, str]) -> dict[str, str]:
    raise Unimplemented("cache type=s3 is not supported yet")


async def load(attrs: dict[str, str]) -> Any:
    raise Unimplemented("cache type=s3 is not supported yet")
