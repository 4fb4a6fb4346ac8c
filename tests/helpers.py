"""Test data: re-exported from the built-in demo so tests and demo use the same sources."""

from bundler.demo import Image, make_demo_sources, sha, tar_bytes

__all__ = ["Image", "make_demo_sources", "sha", "tar_bytes"]
