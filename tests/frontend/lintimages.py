"""The images the registry lint cases (``lint_cases_registry``) use, pushed to a loopback registry by
the tests and by ``hack/record-subrequests --registry`` alike: one layer each, an amd64 and an
arm64-only image (``InvalidBaseImagePlatform``), the fixture's config (``PATH=/bin``)."""

from __future__ import annotations

from tests.image.registryfixture import Registry, TarBuilder

PLACEHOLDER = "{registry}"


def push_lint_images(reg: Registry) -> None:
    layer = TarBuilder().add("hello.txt", data=b"hi\n").bytes()
    reg.push_image("lint/amd64", "latest", [(layer, "gzip")])
    reg.push_image("lint/arm64", "latest", [(layer, "gzip")], arch="arm64")
