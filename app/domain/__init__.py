"""One package per domain: routes, payload Structs, service and queries together."""
