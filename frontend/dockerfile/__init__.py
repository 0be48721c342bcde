"""The sans-I/O front half of the Dockerfile frontend.

``parser`` turns Dockerfile bytes into nodes, ``instructions`` turns nodes into typed instructions and
stages, ``shell`` performs BuildKit's word expansion and ``expand`` applies it to exactly the fields
BuildKit expands. Nothing here touches sockets, files or protobuf.
"""
