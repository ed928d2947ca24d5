"""Serving: the versioned HTTP API, its request micro-batcher, the page to draw on."""
