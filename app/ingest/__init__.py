"""``ferry ingest``: push files and directory trees to a Ferry server over tus, resumably."""
