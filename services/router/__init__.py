"""The Quorum router service."""
