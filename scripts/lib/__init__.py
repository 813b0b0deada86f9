"""Helpers shared by the verbs. git, wheel and venv helpers know nothing of the series."""
