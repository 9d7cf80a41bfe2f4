"""The change feed as event streams: ``GET /jobengine/events`` and the lifecycle routes' stream form."""
