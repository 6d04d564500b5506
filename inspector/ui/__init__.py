"""The operator page: Starlette on uvicorn behind its own guard, and the page's own assets (no CDN)."""
