"""Atomic commit, checksums and manifests."""
