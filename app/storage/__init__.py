"""Bytes: the local staging area, the storage backends and content sniffing."""
