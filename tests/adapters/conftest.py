"""Fixtures of the adapter tests (the helpers themselves live in ``adapter_helpers``)."""

from adapter_helpers import controller

__all__ = ["controller"]
