"""Shared test machinery: databases, settings, live servers and external services."""
