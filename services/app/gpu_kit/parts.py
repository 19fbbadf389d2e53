"""Files split into parts that fit a device call, grouped into calls, and put back together. Pure stdlib.

`split_into_calls` writes `call-1/`, `call-2/`... under a folder, each at most `call_bytes` of parts
(a file larger than `part_bytes` is cut), and `manifest.json` into the first call: every file's name,
size, sha256 and parts in order. On the device, each call's parts are moved into one staging folder
(`stash`); `reassemble` then rebuilds every file there, checking sizes and hashes, and says what is
missing when a call's parts never arrived.

    python3 -m services.app.gpu_kit.parts split OUT_DIR FILE...     (here)
    python3 -m services.app.gpu_kit.parts stash CALL_DIR STAGING    (there, every call)
    python3 -m services.app.gpu_kit.parts reassemble STAGING TARGET (there, the last call)
"""

import argparse
import hashlib
import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

MIB = 1024 * 1024
DEFAULT_PART_BYTES = 60 * MIB
DEFAULT_CALL_BYTES = 60 * MIB
"""Under the 64 MiB a call carries, leaving room for the repository itself (~3 MiB)."""
MANIFEST_NAME = "manifest.json"
_CHUNK_BYTES = 4 * MIB


class PartsError(Exception):
    """A part is missing or damaged, or the files cannot be split as asked."""


@dataclass(frozen=True)
class Part:
    name: str
    size: int


@dataclass(frozen=True)
class CarriedFile:
    name: str
    size: int
    sha256: str
    parts: tuple[Part, ...]


def plan_parts(sizes: dict[str, int], part_bytes: int) -> dict[str, tuple[Part, ...]]:
    """Pure: each file's parts (`NAME.part-000`, ...) of at most `part_bytes`; a file that fits is one part."""
    if part_bytes <= 0:
        raise PartsError("part_bytes must be positive")
    plans: dict[str, tuple[Part, ...]] = {}
    for name, size in sizes.items():
        count = max(1, -(-size // part_bytes))
        plans[name] = tuple(
            Part(f"{name}.part-{index:03d}", min(part_bytes, size - index * part_bytes)) for index in range(count)
        )
    return plans


def group_into_calls(parts: list[Part], call_bytes: int) -> list[list[Part]]:
    """Pure: parts in order, a new call whenever the next part would pass `call_bytes` (first fit, so
    the calls stay in the order the files were given)."""
    calls: list[list[Part]] = []
    for part in parts:
        if part.size > call_bytes:
            raise PartsError(f"part {part.name} ({part.size} bytes) is larger than a call ({call_bytes} bytes)")
        for call in calls:
            if sum(existing.size for existing in call) + part.size <= call_bytes:
                call.append(part)
                break
        else:
            calls.append([part])
    return calls


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def split_into_calls(
    files: list[Path], out_dir: Path, part_bytes: int = DEFAULT_PART_BYTES, call_bytes: int = DEFAULT_CALL_BYTES
) -> list[Path]:
    """Writes the parts of `files` into `out_dir/call-N/` and the manifest into `call-1/`; returns the
    call folders. The manifest's few bytes are counted in no call: the limits leave room for them."""
    names = [path.name for path in files]
    if len(set(names)) != len(names):
        raise PartsError("two files share a name: " + ", ".join(sorted({n for n in names if names.count(n) > 1})))
    plans = plan_parts({path.name: path.stat().st_size for path in files}, part_bytes)
    calls = group_into_calls([part for path in files for part in plans[path.name]], call_bytes)
    call_of = {part.name: index for index, call in enumerate(calls) for part in call}
    if out_dir.exists():
        shutil.rmtree(out_dir)
    folders = [out_dir / f"call-{index + 1}" for index in range(len(calls))]
    for folder in folders:
        folder.mkdir(parents=True)
    carried: list[CarriedFile] = []
    for path in files:
        with path.open("rb") as source:
            for part in plans[path.name]:
                with (folders[call_of[part.name]] / part.name).open("wb") as target:
                    _copy_bytes(source, target, part.size)
        carried.append(CarriedFile(path.name, path.stat().st_size, _sha256(path), plans[path.name]))
    manifest = {
        "files": [
            {
                "name": entry.name,
                "size": entry.size,
                "sha256": entry.sha256,
                "parts": [{"name": part.name, "size": part.size} for part in entry.parts],
            }
            for entry in carried
        ]
    }
    (folders[0] / MANIFEST_NAME).write_text(json.dumps(manifest, indent=1))
    return folders


def _copy_bytes(source: BinaryIO, target: BinaryIO, count: int) -> None:
    remaining = count
    while remaining > 0:
        chunk = source.read(min(_CHUNK_BYTES, remaining))
        if not chunk:
            raise PartsError("a file ended before its planned size (changed while splitting?)")
        target.write(chunk)
        remaining -= len(chunk)


def stash(call_dir: Path, staging: Path) -> list[str]:
    """Moves one call's parts (and the manifest) into `staging`; returns their names."""
    staging.mkdir(parents=True, exist_ok=True)
    moved: list[str] = []
    for path in sorted(call_dir.iterdir()):
        if path.is_file():
            shutil.move(str(path), staging / path.name)
            moved.append(path.name)
    return moved


def read_manifest(staging: Path) -> list[CarriedFile]:
    manifest_path = staging / MANIFEST_NAME
    if not manifest_path.is_file():
        raise PartsError(f"no {MANIFEST_NAME} in {staging}: the first call's parts were not stashed there")
    document = json.loads(manifest_path.read_text())
    return [
        CarriedFile(
            str(entry["name"]),
            int(entry["size"]),
            str(entry["sha256"]),
            tuple(Part(str(part["name"]), int(part["size"])) for part in entry["parts"]),
        )
        for entry in document["files"]
    ]


def missing_parts(staging: Path) -> list[str]:
    """The parts the manifest names that `staging` lacks or holds at another size."""
    missing: list[str] = []
    for entry in read_manifest(staging):
        for part in entry.parts:
            path = staging / part.name
            if not path.is_file() or path.stat().st_size != part.size:
                missing.append(part.name)
    return missing


def reassemble(staging: Path, target: Path) -> list[Path]:
    """Rebuilds every file of the manifest into `target`, each checked against its size and sha256."""
    missing = missing_parts(staging)
    if missing:
        raise PartsError(f"{len(missing)} parts are missing or incomplete in {staging}: {', '.join(missing)}")
    target.mkdir(parents=True, exist_ok=True)
    rebuilt: list[Path] = []
    for entry in read_manifest(staging):
        path = target / entry.name
        with path.open("wb") as output:
            for part in entry.parts:
                with (staging / part.name).open("rb") as source:
                    shutil.copyfileobj(source, output, _CHUNK_BYTES)
        if path.stat().st_size != entry.size or _sha256(path) != entry.sha256:
            path.unlink()
            raise PartsError(f"{entry.name} does not match its sha256 after reassembly: a part is damaged")
        rebuilt.append(path)
    return rebuilt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python3 -m services.app.gpu_kit.parts",
        description="Files split into parts that fit a device call, and put back together.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    split = commands.add_parser("split", help="cut files into call folders (here)")
    split.add_argument("out_dir", type=Path)
    split.add_argument("files", type=Path, nargs="+")
    split.add_argument("--part-mib", type=int, default=DEFAULT_PART_BYTES // MIB)
    split.add_argument("--call-mib", type=int, default=DEFAULT_CALL_BYTES // MIB)
    stash_command = commands.add_parser("stash", help="move a carried call's parts into the staging folder")
    stash_command.add_argument("call_dir", type=Path)
    stash_command.add_argument("staging", type=Path)
    rebuild = commands.add_parser("reassemble", help="rebuild and check every file from the staging folder")
    rebuild.add_argument("staging", type=Path)
    rebuild.add_argument("target", type=Path)
    arguments = parser.parse_args(argv)
    try:
        if arguments.command == "split":
            folders = split_into_calls(
                list(arguments.files), arguments.out_dir, arguments.part_mib * MIB, arguments.call_mib * MIB
            )
            for folder in folders:
                size = sum(path.stat().st_size for path in folder.iterdir())
                print(f"{folder}: {size / MIB:.1f} MiB")
        elif arguments.command == "stash":
            moved = stash(arguments.call_dir, arguments.staging)
            print(
                f"stashed {len(moved)} files in {arguments.staging}; still missing: {missing_parts(arguments.staging)}"
            )
        else:
            for path in reassemble(arguments.staging, arguments.target):
                print(f"rebuilt {path} ({path.stat().st_size} bytes, sha256 checked)")
    except (PartsError, OSError) as error:
        print(f"parts: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
