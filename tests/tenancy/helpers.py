"""Two tenants for the tenancy tests: private names, a shared department name and a shared alias."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from service.tenancy import Principal

BASE = "base-model"
BOOTSTRAP = "sk-bootstrap-0123456789abcdef"

TENANTS_YAML = """\
tenants:
  acme:
    default_department: it
    max_tokens: 256
    adapters: [acme-extra, shared-faq]
    variables: {company: ACME}
    departments:
      it: {adapter: acme-it, template: acme/it, variables: {tool: Jira}}
      hr: {template: acme/hr}
      finance: {adapter: acme-finance}
  globex:
    default_department: legal
    adapters: [shared-faq]
    departments:
      legal: {adapter: globex-legal, template: globex/legal}
      hr: {adapter: globex-hr, template: globex/hr}
      research:
"""

SPEC: dict[str, Any] = yaml.safe_load(TENANTS_YAML)["tenants"]
PrincipalFactory = Callable[..., Principal]  # principal("acme", "hr"): a new key, authenticated


def departments_of(tenant: str) -> set[str]:
    return set(SPEC[tenant]["departments"])


def adapters_of(tenant: str) -> set[str]:
    spec = SPEC[tenant]
    return set(spec.get("adapters", [])) | {
        d["adapter"] for d in spec["departments"].values() if d and d.get("adapter")
    }


def write(path: Path, text: str) -> Path:
    """Writes ``text`` as a later edit: the modification time moves a second on, as a real edit's would."""
    before = path.stat().st_mtime_ns if path.exists() else 0
    path.write_text(text)
    later = max(path.stat().st_mtime_ns, before + 1_000_000_000)
    os.utime(path, ns=(later, later))
    return path
