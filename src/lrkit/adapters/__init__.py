"""Adapters to other frameworks; each module imports its framework, so import on demand."""
