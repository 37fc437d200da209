"""shoal: a distributed task-computing service for Python."""

__version__ = "0.1.0"
