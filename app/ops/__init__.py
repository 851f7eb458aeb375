"""Running Ferry in production: metrics, logs, health, limits, hooks, webhooks, shutdown."""
