"""Who is calling: API keys, JWT bearer tokens and the middleware that checks them."""
