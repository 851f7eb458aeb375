"""The HTTP layer: every route (tus, downloads, links, pages, the file API, simple
uploads) and the ASGI middleware. Handlers parse, call one domain service, shape the answer."""
