"""Exceptions that name the input and the cause."""

from __future__ import annotations


class BitstreamError(ValueError):
    """A file is truncated, corrupt, foreign, or needs other weights than those at hand."""


class ImageInputError(ValueError):
    """An input could not be used as an image (not an image, too large, unreadable)."""
