"""Package discovery only; everything else is in pyproject.toml.

`solver/` and `frontend/` sit at the top of the repository but are installed as `buildkitpy.solver`
and `buildkitpy.frontend` (see `[tool.setuptools.package-dir]`), so their subpackages are listed here
under that prefix.
"""

from setuptools import find_packages, setup

packages = find_packages(include=["buildkitpy", "buildkitpy.*"])
for root in ("solver", "frontend"):
    packages += [f"buildkitpy.{name}" for name in find_packages(include=[root, f"{root}.*"])]

setup(packages=packages)
