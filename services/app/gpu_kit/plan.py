"""The GPU run as a few prepared device calls: what each carries and the one command it runs.

`prepare` (here) packs the embedded model's config and tokenizer (`MODEL_FILES`, not its weights:
the device draws them, `services.app.gpu_run.random_model`) and the carried wheels
(`services.app.gpu_kit.wheels select`) into call folders, each sized so that it and the working tree
that travels with every call stay under a call's 64 MiB. `show` prints the calls for the device
tool's `run`: every call but the last stashes its parts (and probes the host); the last reassembles,
installs offline, runs the GPU exactness check and the GPU bench (`on_device.sh`), writing to $OUT.
The calls must follow each other within the machine's 30 s warm window. Standard library only.

    python -m services.app.gpu_kit.plan prepare [--kit .gpu-kit] [--model-files DIR]
    python -m services.app.gpu_kit.plan show [--kit .gpu-kit]
"""

import argparse
import json
import os
import subprocess
import sys
import tarfile
from dataclasses import asdict, dataclass
from pathlib import Path

from services.app.gpu_kit.parts import MIB, PartsError, split_into_calls

CALL_LIMIT_BYTES = 64 * MIB
"""What one device call carries: the working tree that travels (tracked and untracked-not-ignored
files) and the ignored paths it names."""
MARGIN_BYTES = 1 * MIB
"""Room for the manifest and for files the lead's checkout holds beyond the one measured."""
CARRIED_STUBS = "strata_wire"
"""The generated gRPC stubs (ignored, never committed), carried by every call."""
MODEL_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
)
"""What the kit carries of the embedded model: everything but its weights."""
MODEL_ARCHIVE = "model-files.tar.gz"
EMBEDDED_MODEL_DIR = "models/smollm2-135m-instruct"
SCRIPT = "services/app/gpu_kit/on_device.sh"
STASH_TIMEOUT_SECONDS = 120
FINISH_TIMEOUT_SECONDS = 570
"""Under the 10 minutes of one command: install ~1-2 min, exactness <= 240 s, bench <= 200 s."""


class PlanError(Exception):
    """The kit's wheels or model files are missing, or the files do not fit the calls."""


@dataclass(frozen=True)
class DeviceCall:
    carry: tuple[str, ...]
    command: str
    timeout_s: int
    carried_bytes: int
    """The call's parts and the stubs (the working tree comes on top)."""


def call_budget(travel_bytes: int, limit: int = CALL_LIMIT_BYTES, margin: int = MARGIN_BYTES) -> int:
    """Pure: the bytes of parts one call can carry beside the working tree that travels with it."""
    budget = limit - travel_bytes - margin
    if budget <= 0:
        raise PlanError(f"the working tree alone ({travel_bytes / MIB:.1f} MiB) fills a call")
    return budget


def device_calls(call_folders: list[str], call_sizes: list[int], stubs_bytes: int) -> list[DeviceCall]:
    """Pure: one `run` per call folder, relative to the repository root; the last one finishes."""
    calls: list[DeviceCall] = []
    for index, (folder, size) in enumerate(zip(call_folders, call_sizes, strict=True)):
        last = index == len(call_folders) - 1
        verb = "finish" if last else "stash"
        calls.append(
            DeviceCall(
                carry=(folder, CARRIED_STUBS),
                command=f"bash {SCRIPT} {verb} {folder}",
                timeout_s=FINISH_TIMEOUT_SECONDS if last else STASH_TIMEOUT_SECONDS,
                carried_bytes=size + stubs_bytes,
            )
        )
    return calls


def _tree_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(entry.stat().st_size for entry in path.rglob("*") if entry.is_file())


def travel_bytes(root: Path) -> int:
    """The working tree a call sends (tracked and untracked-not-ignored files) and the stubs."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=root,
        capture_output=True,
        timeout=60,
        check=True,
    ).stdout.decode()
    files = [root / name for name in listed.split("\0") if name]
    return sum(path.stat().st_size for path in files if path.is_file()) + _tree_bytes(root / CARRIED_STUBS)


def pack_model_files(source: Path, archive: Path) -> Path:
    """The embedded model's config and tokenizer in one gzipped tar (the tokenizer shrinks ~4x)."""
    missing = [name for name in ("config.json", "tokenizer.json") if not (source / name).is_file()]
    if missing:
        raise PlanError(f"{source} lacks {', '.join(missing)}: import the embedded model first (`make model`)")
    with tarfile.open(archive, "w:gz") as packed:
        for name in MODEL_FILES:
            if (source / name).is_file():
                packed.add(source / name, arcname=name)
    return archive


def default_model_files() -> Path:
    home = Path(os.environ.get("STRATA_HOME", str(Path.home() / ".strata")))
    return home / EMBEDDED_MODEL_DIR


def prepare(kit: Path, model_files: Path, root: Path) -> list[DeviceCall]:
    wheels = sorted((kit / "carried").glob("*.whl"))
    if not wheels:
        raise PlanError(
            f"no wheels in {kit / 'carried'}: run `python -m services.app.gpu_kit.wheels download` and `select`"
        )
    if not (root / CARRIED_STUBS).is_dir():
        raise PlanError(f"no {CARRIED_STUBS}/ here: generate the stubs first (`make protos`)")
    if not kit.resolve().is_relative_to(root.resolve()):
        raise PlanError(f"the kit {kit} must lie inside the repository ({root}): `carry` names paths in it")
    archive = pack_model_files(model_files, kit / MODEL_ARCHIVE)
    budget = call_budget(travel_bytes(root))
    folders = split_into_calls([*wheels, archive], kit / "calls", part_bytes=budget, call_bytes=budget)
    sizes = [_tree_bytes(folder) for folder in folders]
    calls = device_calls(
        [str(folder.resolve().relative_to(root.resolve())) for folder in folders],
        sizes,
        _tree_bytes(root / CARRIED_STUBS),
    )
    (kit / "plan.json").write_text(json.dumps([asdict(call) for call in calls], indent=1))
    return calls


def show(calls: list[DeviceCall], travel: int) -> str:
    """Pure: the calls as the lead makes them, one after the other."""
    lines = [
        f"{len(calls)} device calls, each within {CALL_LIMIT_BYTES // MIB} MiB with the working tree "
        f"({travel / MIB:.1f} MiB); make each right after the one before (the machine stays warm 30 s):"
    ]
    for index, call in enumerate(calls, start=1):
        total = (call.carried_bytes + travel) / MIB
        lines.append(
            f"{index}. run(command={call.command!r}, carry={list(call.carry)!r}, timeout_s={call.timeout_s})"
            f"  # {total:.1f} MiB"
        )
    lines.append("then: paste $OUT's gpu-exactness.md and gpu-bench.md into docs/benchmarks.md (GPU)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.app.gpu_kit.plan")
    parser.add_argument("command", choices=("prepare", "show"))
    parser.add_argument("--kit", type=Path, default=Path(".gpu-kit"))
    parser.add_argument("--model-files", type=Path, default=None, help="the embedded model's folder in the store")
    arguments = parser.parse_args(argv)
    root = Path.cwd()
    try:
        if arguments.command == "prepare":
            calls = prepare(arguments.kit, arguments.model_files or default_model_files(), root)
        else:
            plan = arguments.kit / "plan.json"
            if not plan.is_file():
                raise PlanError(f"no {plan}: run `python -m services.app.gpu_kit.plan prepare` first")
            calls = [
                DeviceCall(tuple(entry["carry"]), entry["command"], entry["timeout_s"], entry["carried_bytes"])
                for entry in json.loads(plan.read_text())
            ]
        print(show(calls, travel_bytes(root)))
    except (PlanError, PartsError, OSError, subprocess.SubprocessError) as error:
        print(f"plan: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
