"""``jobgate ops``: the operator's command line, a client of the published HTTP contract only.

It never imports the database, storage, domain or engine layers (``tests/test_architecture.py``
holds that): everything it knows of the gateway comes over HTTP.

- ``target.py`` — where to connect (flags, environment, ``~/.config/jobgate/ops.toml`` profiles)
  and the token, which is never printed;
- ``client.py`` — requests with the envelope headers, bounded retries, problem+json, pages;
- ``render.py`` — tables (rich), JSON and NDJSON output, the problem block;
- ``follow.py`` — following an operation run (change feed, else polling with ETags);
- ``commands.py`` — the click commands.
"""
