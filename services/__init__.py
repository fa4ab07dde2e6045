"""The three Quorum services."""
