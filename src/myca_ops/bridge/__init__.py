"""The PersonaPlex bridge: the browser's websocket /api/chat relayed to Moshi (port 8999)."""
