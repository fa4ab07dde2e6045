"""Local models that run offline: pure, typed wrappers that tests import without Triton."""
