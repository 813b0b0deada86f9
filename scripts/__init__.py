"""Tooling that fetches the pinned upstream sglang, applies the series, rebuilds and tests it."""
