"""Completed files: downloads with HTTP range semantics, names and the file API."""
