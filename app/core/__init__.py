"""Shared vocabulary of every layer: checksums, the metadata codec, the clock, file names
and the caller's identity. Imports nothing of Ferry but its errors."""
