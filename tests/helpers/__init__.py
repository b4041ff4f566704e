"""Shared builders and waits for the tests (importable as ``helpers``: pytest puts tests/ on the path)."""
