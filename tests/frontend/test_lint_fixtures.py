"""Subrequests (``frontend.lint``, ``frontend.outline``, ``frontend.targets``) answered by our daemon
equal what real BuildKit answered for the same Dockerfiles (``lint_cases/*/expected``, recorded with
``hack/record-subrequests`` against buildkitd v0.2x).

Compared: the whole ``result.json`` (rule names, descriptions, URLs, details, locations, source data
and build errors) except the LLB definition of the Dockerfile's source (it holds a session id), the
``result.txt`` BuildKit prints, and the status code; or the error message when BuildKit failed.
"""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import pytest

from buildkitpy.client import BuildkitError, Client, SolveOpt
from buildkitpy.client.solve import build

CASES = Path(__file__).parent / "lint_cases"
REGISTRY_CASES = Path(__file__).parent / "lint_cases_registry"


def _recorded(root: Path) -> list[tuple[str, str]]:
    return sorted((c.name, f.stem) for c in root.iterdir() if c.is_dir()
                  for f in (c / "expected").glob("*.json"))


RECORDED = _recorded(CASES)
RECORDED_REGISTRY = _recorded(REGISTRY_CASES)


def _opts(case: Path, registry: str = "") -> dict[str, str]:
    f = case / "opts"
    if not f.exists():
        return {}
    return dict(line.replace("{registry}", registry).split("=", 1)
                for line in f.read_text().splitlines() if line.strip())


async def _ask(addr: str, case: Path, request: str, registry: str = "") -> dict:
    opt = SolveOpt(frontend="dockerfile.v0", frontend_attrs={**_opts(case, registry), "requestid": request},
                   local_dirs={"context": case, "dockerfile": case})
    async with Client.connect(addr) as client:
        try:
            res = await build(client, opt)
        except BuildkitError as e:
            return {"error": str(e)}
    md = res.gateway_metadata
    out: dict = {}
    if "result.json" in md:
        out["json"] = json.loads(md["result.json"])
    if "result.txt" in md:
        out["txt"] = md["result.txt"].decode()
    if "result.statuscode" in md:
        out["statuscode"] = md["result.statuscode"].decode()
    return out


def _normalized(answer: dict) -> dict:
    result = answer.get("json")
    for src in (result.get("sources") or [] if isinstance(result, dict) else []):
        if isinstance(src, dict):
            src.pop("definition", None)
    return answer


@pytest.mark.parametrize("case,request_name", RECORDED, ids=[f"{c}-{r}" for c, r in RECORDED])
def test_subrequest_matches_buildkit(daemon, case: str, request_name: str) -> None:
    expected = json.loads((CASES / case / "expected" / f"{request_name}.json").read_text())
    got = asyncio.run(_ask(daemon.unix_addr, CASES / case, "frontend." + request_name))
    assert _normalized(got) == _normalized(expected)


@pytest.fixture(scope="module")
def lint_registry(tmp_path_factory):  # noqa: ANN201
    from tests.frontend.lintimages import push_lint_images
    from tests.image.conftest import _need_registry
    from tests.image.registryfixture import start_registry

    _need_registry()
    reg = start_registry(tmp_path_factory.mktemp("lint-registry"))
    push_lint_images(reg)
    yield reg
    reg.stop()


@pytest.mark.parametrize("case,request_name", RECORDED_REGISTRY,
                         ids=[f"{c}-{r}" for c, r in RECORDED_REGISTRY])
def test_subrequest_with_registry_images_matches_buildkit(daemon, lint_registry, case: str,
                                                          request_name: str) -> None:
    """Base images from a loopback registry: their config's platform and environment count. The
    registry's address was recorded as ``{registry}``; ``result.txt`` columns are compared with runs
    of blanks collapsed (their width follows the address)."""
    host = lint_registry.host
    text = (REGISTRY_CASES / case / "expected" / f"{request_name}.json").read_text()
    expected = json.loads(text.replace("{registry}", host))
    got = asyncio.run(_ask(daemon.unix_addr, REGISTRY_CASES / case, "frontend." + request_name, host))
    for answer in (expected, got):
        if "txt" in answer:
            answer["txt"] = re.sub(" +", " ", answer["txt"])
    assert _normalized(got) == _normalized(expected)


def test_every_rule_is_covered_by_a_fixture() -> None:
    """Each rule of BuildKit's checker fires in some fixture."""
    from buildkitpy.frontend.dockerfile import lint

    fired = set()
    for f in [*CASES.glob("*/expected/lint.json"), *REGISTRY_CASES.glob("*/expected/lint.json")]:
        for w in json.loads(f.read_text()).get("json", {}).get("warnings") or []:
            fired.add(w["ruleName"])
    assert {r.name for r in lint.RULES} - fired == set()
