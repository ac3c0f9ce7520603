"""kubernetes_asyncio's credentials loader, imported without its generated API client.

The operator uses one part of kubernetes_asyncio: the config loader (merged kubeconfigs,
contexts, exec plugins, in-cluster tokens), a maintained loader rather than one of our own.
Requests go through our own client. But the package's ``__init__`` imports all of it: about 900
generated model classes and every API group. Measured by the peak RSS after importing the
operator and kopf, that is 83 MB with them and 49 MB without, kept for the life of the process:
nearly a fifth of the operator's peak at 5,000 namespaces, and none of it was used.
kopf imports the models too, for an optional ``isinstance`` check that we never need.

:func:`install` registers ``kubernetes_asyncio`` and ``kubernetes_asyncio.client`` as bare
package modules. Their real directories are on ``__path__``, so submodules still import from
the installed files, but the two ``__init__`` files never run. The client module serves, when
first asked, the one class the loader uses, ``Configuration``; ``ApiClient``, which the loader
names only in helpers we never call, is a placeholder that refuses to be built. Any other name
raises ImportError, as it would for a library without it: kopf takes that to mean its optional
client is absent. Nothing is imported until asked for, so the render workers (which import the
package but never load credentials) stay as small as they were.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
import types
from pathlib import Path
from typing import Any

PACKAGE = "kubernetes_asyncio"


class ApiClientUnavailable:
    """Stands in for ``kubernetes_asyncio.client.ApiClient``, which is never loaded here."""

    def __init__(self, *_args: Any, **_kwargs: Any) -> None:
        raise RuntimeError(
            "kubernetes_asyncio's generated API client is not loaded by default-policy-operator "
            "(see default_policy_operator.kube.lean_import); use the operator's own client"
        )


def install() -> bool:
    """Register the bare modules; False (and nothing changed) if the package is imported already."""
    if PACKAGE in sys.modules:
        return False
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"{PACKAGE} is not installed")
    root = Path(next(iter(spec.submodule_search_locations)))
    package = _bare_package(PACKAGE, root)
    client = _bare_package(f"{PACKAGE}.client", root / "client")
    package.__dict__["client"] = client
    client.__dict__["__getattr__"] = _client_attribute
    return True


def _client_attribute(name: str) -> Any:
    """``kubernetes_asyncio.client``'s names, loaded when first asked for (PEP 562), so that a
    process that never loads credentials (a render worker) imports nothing of the library."""
    if name == "Configuration":
        from kubernetes_asyncio.client.configuration import Configuration

        return Configuration
    if name == "ApiClient":
        return ApiClientUnavailable
    raise AttributeError(f"module '{PACKAGE}.client' has no attribute {name!r} (not loaded here)")


def _bare_package(name: str, directory: Path) -> types.ModuleType:
    """A package module for ``name`` whose submodules load from ``directory``; no ``__init__``."""
    spec = importlib.machinery.ModuleSpec(name, None, is_package=True)
    spec.submodule_search_locations = [str(directory)]
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    return module
