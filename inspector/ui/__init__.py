"""The operator page: a small HTTP server and the page's own assets (no CDN)."""
