"""HTTP conventions: paging, continuation tokens, caching, problem details, settings."""
