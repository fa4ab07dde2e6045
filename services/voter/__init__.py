"""The Quorum voter service."""
