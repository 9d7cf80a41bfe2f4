"""Framework-free definitions shared by every layer above: errors with stable codes, continuation
tokens, the caller a request acts as, views built by name. Nothing here imports Litestar, the
storage layer or a domain."""
