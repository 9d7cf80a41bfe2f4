"""Where ``jobgate ops`` connects, as whom: flags, then environment, then a named profile.

Profiles live in ``$XDG_CONFIG_HOME/jobgate/ops.toml`` (``~/.config/jobgate/ops.toml``)::

    [profiles.prod]
    url = "https://jobgate.example.com"
    tenant = "acme"
    token_file = "~/.config/jobgate/prod.token"
    project = "billing"          # optional

The token comes from ``--token-file``, else ``JOBGATE_TOKEN``, else the profile's ``token_file``;
it is never taken on the command line and never printed.
"""

from __future__ import annotations

import base64
import json
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_URL = "http://127.0.0.1:8080"


class UsageProblem(Exception):
    """The command cannot run as given (exit 2)."""


@dataclass(frozen=True)
class Target:
    url: str
    tenant: str | None
    project: str | None
    token: str = field(repr=False)
    profile: str | None = None

    def claims(self) -> dict[str, Any]:
        return token_claims(self.token)


def config_file(environ: Mapping[str, str]) -> Path:
    base = environ.get("XDG_CONFIG_HOME") or str(Path(environ.get("HOME") or Path.home()) / ".config")
    return Path(base) / "jobgate" / "ops.toml"


def load_profile(name: str, environ: Mapping[str, str]) -> dict[str, Any]:
    path = config_file(environ)
    try:
        document = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise UsageProblem(f"profile {name!r}: no configuration file at {path}") from None
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise UsageProblem(f"cannot read {path}: {exc}") from None
    profiles = document.get("profiles", {})
    profile = profiles.get(name) if isinstance(profiles, dict) else None
    if not isinstance(profile, dict):
        known = ", ".join(sorted(profiles)) if isinstance(profiles, dict) and profiles else "none"
        raise UsageProblem(f"no profile {name!r} in {path} (profiles: {known})")
    unknown = sorted(set(profile) - {"url", "tenant", "token_file", "project"})
    if unknown:
        raise UsageProblem(f"profile {name!r} in {path}: unknown keys {', '.join(unknown)}")
    return profile


def read_token_file(path: str) -> str:
    file = Path(path).expanduser()
    try:
        token = file.read_text().strip()
    except OSError as exc:
        raise UsageProblem(f"cannot read the token file {file}: {exc.strerror or exc}") from None
    if not token:
        raise UsageProblem(f"the token file {file} is empty")
    return token


def resolve(
    *,
    url: str | None,
    tenant: str | None,
    project: str | None,
    token_file: str | None,
    profile: str | None,
    environ: Mapping[str, str] | None = None,
) -> Target:
    """The target of one command. ``url``, ``tenant`` already hold a flag or its environment
    variable (click reads both); a profile fills in what they leave open."""
    environ = os.environ if environ is None else environ
    settings: dict[str, Any] = load_profile(profile, environ) if profile else {}
    if token_file:
        token = read_token_file(token_file)
    elif environ.get("JOBGATE_TOKEN", "").strip():
        token = environ["JOBGATE_TOKEN"].strip()
    elif settings.get("token_file"):
        token = read_token_file(str(settings["token_file"]))
    else:
        raise UsageProblem(
            "no token: set JOBGATE_TOKEN, pass --token-file FILE, or use a --profile with a token_file"
        )
    chosen_tenant = tenant or settings.get("tenant") or _single_granted_tenant(token)
    return Target(
        url=(url or settings.get("url") or DEFAULT_URL).rstrip("/"),
        tenant=chosen_tenant,
        project=project or settings.get("project"),
        token=token,
        profile=profile,
    )


def token_claims(token: str) -> dict[str, Any]:
    """The claims of a JWT, decoded locally without verifying it (the gateway verifies)."""
    parts = token.split(".")
    if len(parts) != 3:
        raise UsageProblem("the token is not a JWT (three dot-separated parts)")
    try:
        padded = parts[1] + "=" * (-len(parts[1]) % 4)
        claims = json.loads(base64.urlsafe_b64decode(padded))
    except ValueError:
        raise UsageProblem("the token's claims cannot be decoded") from None
    if not isinstance(claims, dict):
        raise UsageProblem("the token's claims are not a JSON object")
    return claims


def granted_tenants(claims: Mapping[str, Any]) -> list[str]:
    tenant = claims.get("tenant")
    if isinstance(tenant, str):
        return [tenant]
    if isinstance(tenant, list):
        return [t for t in tenant if isinstance(t, str)]
    return []


def _single_granted_tenant(token: str) -> str | None:
    try:
        tenants = granted_tenants(token_claims(token))
    except UsageProblem:
        return None
    return tenants[0] if len(tenants) == 1 else None
