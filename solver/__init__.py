"""The LLB solver: load a definition, schedule its vertices, run ops, cache results."""

from buildkitpy.solver.loader import LoadedGraph, Vertex, load_definition
from buildkitpy.solver.solver import Job, Result, Solver

__all__ = ["Job", "LoadedGraph", "Result", "Solver", "Vertex", "load_definition"]
