"""Build attestations: SLSA provenance as BuildKit writes it.

- ``options``: the ``attest:*`` frontend attributes (and ``BUILDKIT_ATTEST_*`` build args);
- ``capture``: what a build used (sources with their digests, secrets, ssh, network), collected
  per build from the solver's vertex observer and the frontend's image resolutions;
- ``gojson``: LLB ops in the JSON form BuildKit's ``buildConfig`` uses;
- ``provenance``: the SLSA v1 / v0.2 predicate;
- ``manifest``: in-toto statements and the attestation manifests exporters put in the index.
"""
