"""Quorum: a gRPC mesh for multi-model LLM inference.

This package holds what the three services share: the model registry, the backend adapters,
errors and their gRPC mapping, deadlines, telemetry, the Triton launcher, the provider
simulator and the ``quorum`` CLI. The generated API lives in ``quorum.<service>.v1``.
"""

__version__ = "0.1.0"
