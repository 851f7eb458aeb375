"""Ferry: resumable uploads over tus 1.0, staged on disk, stored locally or in S3."""

__version__ = "0.1.0"
