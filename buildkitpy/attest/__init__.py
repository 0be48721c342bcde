"""Build attestations: SLSA provenance and SBOMs as BuildKit writes them.

- ``options``: the ``attest:*`` frontend attributes (and ``BUILDKIT_ATTEST_*`` build args);
- ``capture``: what a build used (sources with their digests, secrets, ssh, network), collected
  per build from the solver's vertex observer and the frontend's image resolutions;
- ``gojson``: LLB ops in the JSON form BuildKit's ``buildConfig`` uses;
- ``provenance``: the SLSA v1 / v0.2 predicate;
- ``manifest``: in-toto statements and the attestation manifests exporters put in the index;
- ``sbom``: ``attest:sbom`` and the scanner step the Dockerfile frontend adds per platform;
- ``bundle``: the frontend's attestations (the scanners' output) as in-toto statements.
"""
