"""Remote cache: export a build's cache to, and import it from, places other daemons can read.

The format is BuildKit's ``application/vnd.buildkit.cacheconfig.v0`` (``cache/remotecache/v1``):
a config listing layer blobs (each on a parent layer) and records (a cache key digest, links to the
records of its inputs with selectors, and results as chains of layers). ``config`` reads and writes
it, ``keys`` describes a build's cache keys as BuildKit's ``CacheKey`` graph, ``chains`` turns key
graphs with results into a config and back into something the solver can query, and one module per
backend (``registry``, ``local``, ``inline``, ``s3``) moves the blobs. ``control`` is the glue the
Control service calls.
"""

CACHE_CONFIG_MEDIA_TYPE = "application/vnd.buildkit.cacheconfig.v0"
