"""The tus 1.0.0 protocol: header rules (protocol.py) and the HTTP controller."""
