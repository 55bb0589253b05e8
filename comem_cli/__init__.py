"""comem: a coding agent whose prompt stays short because a small memory model summarizes in the background."""

__version__ = "0.1.0"
