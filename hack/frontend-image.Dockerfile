# buildkitpy's Dockerfile frontend as a frontend image, from the published python base image.
# Build it from the repository root, e.g.:
#   docker buildx build -f hack/frontend-image.Dockerfile -t REGISTRY/buildkitpy/dockerfile --push .
# and use it with `# syntax=REGISTRY/buildkitpy/dockerfile` (or `--frontend gateway.v0 --opt
# source=REGISTRY/buildkitpy/dockerfile`). hack/frontend-image assembles the same frontend from the
# Python runtime of this machine instead (offline).
FROM python:3.11-slim
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY buildkitpy ./buildkitpy
COPY solver ./solver
COPY frontend ./frontend
RUN pip install --no-cache-dir . && rm -rf /src
WORKDIR /
LABEL moby.buildkit.frontend.network.none="true"
LABEL moby.buildkit.frontend.caps="moby.buildkit.frontend.inputs,moby.buildkit.frontend.subrequests,moby.buildkit.frontend.contexts,moby.buildkit.frontend.gitquerystring"
ENTRYPOINT ["python", "-m", "buildkitpy.frontend.dockerfile"]
