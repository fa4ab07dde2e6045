"""The Quorum cost service."""
