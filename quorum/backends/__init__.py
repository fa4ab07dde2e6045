"""Backend adapters: the only code that speaks to model providers and to Triton.

Adapters take long-lived clients (:class:`~quorum.backends.transport.ProviderClient`,
Triton's aio client) from their
caller, take an explicit timeout on every call, and raise :mod:`quorum.errors` only.
"""
