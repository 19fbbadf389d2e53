"""The control plane and the gateway run on a host without MLX: with `mlx` and `mlx_lm` unimportable,
`strata coordinator` and `strata gateway` start, and with a shard server elsewhere (it has MLX) the
cluster answers a completion."""

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from services.kernel.settings import home_sharing_models
from services.models.embedded_model import EMBEDDED_MODEL_ID
from tests.processes import ServiceProcess, free_port, start_coordinator, start_strata, wait_for_http_ok

pytestmark = [pytest.mark.process, pytest.mark.model, pytest.mark.timeout(300)]

BLOCKED_PACKAGES = ("mlx", "mlx_lm")


def _environment_without_mlx(tmp_path: Path) -> dict[str, str]:
    """PYTHONPATH first holds packages named mlx and mlx_lm whose import fails, as on a host without them."""
    blocker = tmp_path / "no-mlx"
    for package in BLOCKED_PACKAGES:
        (blocker / package).mkdir(parents=True, exist_ok=True)
        (blocker / package / "__init__.py").write_text(
            f"raise ModuleNotFoundError('{package} is not installed on this host (blocked by the test)')\n"
        )
    inherited = os.environ.get("PYTHONPATH")
    return {"PYTHONPATH": str(blocker) if not inherited else f"{blocker}{os.pathsep}{inherited}"}


def test_the_blocker_really_blocks_mlx(tmp_path: Path) -> None:
    environment = {**os.environ, **_environment_without_mlx(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-c", "import mlx.core"],
        check=False,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "blocked by the test" in result.stderr


def test_coordinator_and_gateway_modules_import_no_mlx(tmp_path: Path) -> None:
    environment = {**os.environ, **_environment_without_mlx(tmp_path)}
    program = (
        "import sys, coordinator.main, gateway.main, services.app.cli\n"
        "loaded = sorted(name for name in sys.modules if name.split('.')[0] in ('mlx', 'mlx_lm'))\n"
        "assert not loaded, loaded\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", program], check=False, env=environment, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr


def test_a_cluster_whose_coordinator_and_gateway_lack_mlx_serves_a_completion(
    embedded_home: Path, tmp_path: Path
) -> None:
    # A private home: the session's `strata run` cluster may be serving, and coordinators keep state there.
    with home_sharing_models(embedded_home) as home:
        _serve_a_completion_without_mlx(home, tmp_path)


def _serve_a_completion_without_mlx(home: Path, tmp_path: Path) -> None:
    without_mlx = _environment_without_mlx(tmp_path)
    logs = tmp_path / "logs"
    processes: list[ServiceProcess] = []
    try:
        coordinator = start_coordinator(
            processes, home, logs, ["--model", EMBEDDED_MODEL_ID], extra_environment=without_mlx
        )
        shard_port = free_port()
        shard_command = ["shard", "--no-mdns", "--coordinator", coordinator, "--port", str(shard_port)]
        processes.append(start_strata("shard", shard_command, home, logs))
        gateway_port = free_port()
        gateway_command = ["gateway", "--no-mdns", "--coordinator", coordinator, "--port", str(gateway_port)]
        processes.append(start_strata("gateway", gateway_command, home, logs, extra_environment=without_mlx))
        gateway_url = f"http://127.0.0.1:{gateway_port}"
        wait_for_http_ok(processes[-1], f"{gateway_url}/health", timeout_seconds=180)
        reply = httpx.post(
            f"{gateway_url}/v1/completions",
            json={"model": EMBEDDED_MODEL_ID, "prompt": "The capital of France is", "max_tokens": 4, "temperature": 0},
            timeout=120,
        )
        assert reply.status_code == 200, reply.text
        assert reply.json()["usage"]["completion_tokens"] == 4
        for service in (processes[0], processes[2]):
            assert "blocked by the test" not in service.log_tail()
    finally:
        for service in reversed(processes):
            service.stop()
