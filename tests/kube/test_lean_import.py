"""kubernetes_asyncio's loader without its generated client (kube/lean_import.py).

Each check runs in a fresh interpreter: the test process has imported the package already.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest


def run(code: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_the_operator_and_kopf_load_without_the_generated_models() -> None:
    out = run("""
        import sys
        import default_policy_operator  # first, as in every entry point of the operator
        import kopf
        from default_policy_operator.controller import runtime
        from default_policy_operator.kube import credentials
        from kopf._cogs.helpers import thirdparty
        loaded = sorted(m for m in sys.modules if m.startswith("kubernetes_asyncio.client."))
        print(loaded, thirdparty.V1ObjectMetaAsync)
    """)
    loaded = "['kubernetes_asyncio.client.configuration', 'kubernetes_asyncio.client.exceptions']"
    assert out == f"{loaded} None"


def test_the_loader_reads_a_kubeconfig_through_the_lean_modules(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "config"
    kubeconfig.write_text(
        textwrap.dedent("""
        apiVersion: v1
        kind: Config
        clusters: [{name: c, cluster: {server: "https://127.0.0.1:6443"}}]
        users: [{name: u, user: {token: secret-token}}]
        contexts: [{name: x, context: {cluster: c, user: u}}]
        current-context: x
    """)
    )
    out = run(f"""
        import asyncio, sys
        import default_policy_operator
        from kubernetes_asyncio.client import Configuration
        from kubernetes_asyncio.config import kube_config
        async def main():
            configuration = Configuration()
            await kube_config.load_kube_config({str(kubeconfig)!r},
                                               client_configuration=configuration)
            print(configuration.host, configuration.api_key)
        asyncio.run(main())
        print("kubernetes_asyncio.client.models" in sys.modules)
    """)
    assert out.splitlines() == [
        "https://127.0.0.1:6443 {'BearerToken': 'Bearer secret-token'}",
        "False",
    ]


def test_the_generated_client_refuses_to_be_built_instead_of_half_working() -> None:
    from default_policy_operator.kube.lean_import import ApiClientUnavailable

    with pytest.raises(RuntimeError, match="generated API client is not loaded"):
        ApiClientUnavailable(configuration=None)


def test_an_already_imported_package_is_left_alone() -> None:
    out = run("""
        import kubernetes_asyncio
        from default_policy_operator.kube.lean_import import install
        print(install(), hasattr(kubernetes_asyncio.client, "V1ObjectMeta"))
    """)
    assert out == "False True"


def test_a_render_worker_imports_nothing_of_the_library() -> None:
    """Workers import the package (which installs the bare modules) but never load credentials:
    they must not pay for the loader either."""
    out = run("""
        import sys
        import default_policy_operator.rendering.worker
        print(sorted(m for m in sys.modules if m.startswith("kubernetes_asyncio")))
    """)
    assert out == "['kubernetes_asyncio', 'kubernetes_asyncio.client']"
