"""HTTP conventions built once: problem details, paging, caching."""
