"""The HTTP edge: radbridge\x27s own web server (WADO-RS for vendors that pull)."""
