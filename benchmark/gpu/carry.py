"""Carry what a GPU server without a package index lacks, in bounded pieces, and put it back together there.

Such a server reaches no package index, and may accept files only in pieces of bounded size.
``onnxruntime-gpu``'s cp312 wheel alone is 256 MB, so every wheel the GPU benchmark needs and the machine's
image does not hold (that one, BentoML and the packages it pulls in) goes into one tar that is cut
into pieces, one folder per call: ``.gpu-carry/call1``, ``call2``... (git-ignored). The last call
also carries ``inputs/``: the exported models, the test images and ``wrk``. Files written outside
``$OUT`` stay on the machine while it is warm, so each call stashes its pieces under
``/tmp/fashion-gpu``; the last call joins them, checks the SHA-256 and installs the wheels with
``pip install --no-deps --target``.

Here (the session's checkout, with the shared venv)::

    python -m benchmark.gpu.carry download            # pip download into .gpu-carry/wheels
    python -m benchmark.gpu.carry prepare             # pieces + the carry list of every call

There (what docs/gpu.md's calls run)::

    python3 -m benchmark.gpu.carry stash .gpu-carry/call1
    python3 -m benchmark.gpu.carry assemble           # benchmark/gpu.sh does this itself

Standard library only: it runs on the device before anything is installed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CARRY = REPO / ".gpu-carry"
DEVICE_DIR = Path("/tmp/fashion-gpu")
DEVICE_PACKAGES = Path(__file__).with_name("device_packages.txt")
CALL_LIMIT = 64 * 2**20  # what one call may carry, working tree included (device README, Limits)
MARGIN = 2 * 2**20  # room for files the tree gains between `prepare` and the calls
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64", "manylinux_2_24_x86_64", "manylinux_2_31_x86_64", "manylinux_2_34_x86_64",
             "manylinux_2_35_x86_64")
# Carried even though the image has them: pydantic and BentoML need recent releases of these small ones.
ALWAYS_CARRY = frozenset({"onnxruntime-gpu", "typing-extensions"})
# What the benchmark needs beyond the image: ONNX Runtime's CUDA provider, and the service's stack.
REQUIREMENTS = ("onnxruntime-gpu==1.31.1", "bentoml==1.4.40", "httptools>=0.6", "python-multipart>=0.0.13")
TEST_FILES = ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
# The artifacts the GPU runs load; the SavedModel stays home (TensorFlow cannot use CUDA 13 there).
MODEL_FILES = ("manifest.json", "model.yaml", "model.onnx", "model.pt", "model-int8.onnx")


class CarryError(RuntimeError):
    """Pieces missing, damaged or from another bundle; a download or install that failed."""


@dataclass(frozen=True)
class Piece:
    """One slice of the bundle: which call carries it, its name and checksum."""

    call: int
    name: str
    size: int
    sha256: str


def normalise(name: str) -> str:
    """A distribution name as PEP 503 compares them (``Foo_Bar.baz`` -> ``foo-bar-baz``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def dist_name(filename: str) -> str:
    """The normalised distribution name of a wheel file (``Foo_Bar-1.0-...whl`` -> ``foo-bar``)."""
    return normalise(filename.split("-", 1)[0])


def device_packages(path: Path = DEVICE_PACKAGES) -> frozenset[str]:
    """Names of the packages the device image already holds (never carried)."""
    words = [w for line in path.read_text().splitlines() if not line.startswith("#") for w in line.split()]
    return frozenset(normalise(w) for w in words)


def sha256_of(path: Path) -> str:
    """Hex SHA-256 of a file, read in 8 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while block := stream.read(8 * 2**20):
            digest.update(block)
    return digest.hexdigest()


def download(dest: Path, python: str = sys.executable) -> list[Path]:
    """``pip download`` the requirements for CPython 3.12 on manylinux x86-64; drop what the image has.

    Returns:
        The wheels kept, sorted by name.
    """
    dest.mkdir(parents=True, exist_ok=True)
    platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
    command = [python, "-m", "pip", "download", "--only-binary=:all:", "--python-version", "3.12",
               "--implementation", "cp", *platforms, "-d", str(dest), *REQUIREMENTS]
    if subprocess.run(command, check=False).returncode:
        raise CarryError(f"pip download failed: {' '.join(command)}")
    present = device_packages()
    for wheel in dest.glob("*.whl"):
        if dist_name(wheel.name) in present - ALWAYS_CARRY:
            wheel.unlink()
    return sorted(dest.glob("*.whl"))


def tree_bytes(repo: Path = REPO) -> int:
    """Bytes of the working tree a call sends: tracked plus untracked files git does not ignore."""
    listed = subprocess.run(["git", "ls-files", "-z", "-co", "--exclude-standard"], cwd=repo, check=True,
                            capture_output=True).stdout.split(b"\0")
    return sum((repo / name.decode()).stat().st_size for name in listed if name and (repo / name.decode()).is_file())


def wrk_files() -> list[Path]:
    """``wrk`` and the LuaJIT library it links (the image has neither; its glibc is newer than ours)."""
    wrk = shutil.which("wrk")
    if wrk is None:
        return []
    libs = re.findall(r"=> (\S*libluajit\S*)", subprocess.run(["ldd", wrk], capture_output=True, text=True).stdout)
    return [Path(wrk), *(Path(lib) for lib in libs)]


def gather_wheels(stage: Path, wheels: Path) -> None:
    """The bundle: every wheel to install."""
    shutil.copytree(wheels, stage / "wheels", ignore=shutil.ignore_patterns("*.tmp"))


def gather_inputs(target: Path, models: Path, data: Path) -> int:
    """What the benchmark reads, carried whole in the last call: ``models/`` (a BentoML store), ``data/``, ``bin/``.

    Only each model's newest version (``latest``) and the artifacts in :data:`MODEL_FILES` go. Kept out
    of the bundle so that, if the machine went cold and pieces were lost, the torch stages still run.

    Returns:
        Bytes written.
    """
    for latest in models.glob("*/latest"):
        version = latest.read_text().strip()
        folder = target / "models" / latest.parent.name
        (folder / version).mkdir(parents=True)
        (folder / "latest").write_text(version)
        for name in MODEL_FILES:
            if (latest.parent / version / name).is_file():
                shutil.copy2(latest.parent / version / name, folder / version / name)
    (target / "data").mkdir(parents=True)
    for name in TEST_FILES:
        shutil.copy2(data / name, target / "data" / name)
    (target / "bin").mkdir()
    for path in wrk_files():
        shutil.copy2(path, target / "bin" / path.name)
    return sum(p.stat().st_size for p in target.rglob("*") if p.is_file())


def pack(stage: Path, bundle: Path) -> None:
    """One uncompressed tar of the staged tree (wheels and gzip files do not compress further)."""
    with tarfile.open(bundle, "w") as tar:
        for path in sorted(stage.rglob("*")):
            tar.add(path, arcname=path.relative_to(stage).as_posix(), recursive=False)


def split(bundle: Path, out: Path, budget: int) -> list[Piece]:
    """Cut the bundle into ``budget``-byte pieces, one per call folder ``out/call<k>/piece-<k>``."""
    pieces = []
    with bundle.open("rb") as stream:
        while block := stream.read(budget):
            call = len(pieces) + 1
            folder = out / f"call{call}"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"piece-{call}").write_bytes(block)
            pieces.append(Piece(call, f"piece-{call}", len(block), hashlib.sha256(block).hexdigest()))
    return pieces


def prepare(wheels: Path, models: Path, data: Path, out: Path = CARRY, budget: int | None = None) -> dict:
    """Stage, pack and split; writes ``plan.json`` into every call folder and returns the plan.

    The last call also carries ``inputs/`` (models, test images, wrk); if its piece leaves no room
    for them, they get a call of their own.
    """
    budget = budget or CALL_LIMIT - tree_bytes() - MARGIN
    for old in out.glob("call*"):
        shutil.rmtree(old)
    stage, bundle, inputs = out / "stage", out / "bundle.tar", out / "inputs.tmp"
    for folder in (stage, inputs):
        shutil.rmtree(folder, ignore_errors=True)
    stage.mkdir(parents=True)
    try:
        gather_wheels(stage, wheels)
        inputs_bytes = gather_inputs(inputs, models, data)
        if inputs_bytes > budget:
            raise CarryError(f"inputs alone ({inputs_bytes / 2**20:.1f} MiB) exceed one call's budget")
        pack(stage, bundle)
        pieces = split(bundle, out, budget)
        calls = len(pieces) + (pieces[-1].size + inputs_bytes > budget)
        plan = {"bundle_sha256": sha256_of(bundle), "bundle_bytes": bundle.stat().st_size, "piece_budget": budget,
                "calls": calls, "inputs_bytes": inputs_bytes, "pieces": [vars(p) for p in pieces],
                "wheels": sorted(p.name for p in (stage / "wheels").glob("*.whl"))}
        shutil.move(inputs, out / f"call{calls}" / "inputs")
    finally:
        for folder in (stage, inputs):
            shutil.rmtree(folder, ignore_errors=True)
        bundle.unlink(missing_ok=True)
    for call in range(1, calls + 1):
        (out / f"call{call}" / "plan.json").write_text(json.dumps(plan, indent=1) + "\n")
    return plan


def stash(call_dir: Path, device_dir: Path = DEVICE_DIR) -> list[str]:
    """Copy one call's pieces under ``device_dir/pieces``, checked; returns the piece names now held.

    Pieces of an older bundle (another ``plan.json``) are dropped first.
    """
    plan = json.loads((call_dir / "plan.json").read_text())
    held = device_dir / "pieces"
    held.mkdir(parents=True, exist_ok=True)
    plan_file = device_dir / "plan.json"
    if plan_file.exists() and json.loads(plan_file.read_text())["bundle_sha256"] != plan["bundle_sha256"]:
        shutil.rmtree(held)
        held.mkdir()
    plan_file.write_text(json.dumps(plan))
    for piece in plan["pieces"]:
        source = call_dir / piece["name"]
        if source.is_file():
            if sha256_of(source) != piece["sha256"]:
                raise CarryError(f"{source}: checksum differs from plan.json (damaged in transit?)")
            shutil.copyfile(source, held / piece["name"])
    return sorted(p.name for p in held.iterdir())


def assemble(device_dir: Path = DEVICE_DIR) -> Path:
    """Join every stashed piece, check the bundle's SHA-256, unpack it; returns the unpacked folder.

    Raises:
        CarryError: pieces missing (the machine went cold between calls, or a call was skipped) or damaged.
    """
    plan = json.loads((device_dir / "plan.json").read_text())
    missing = [p["name"] for p in plan["pieces"] if not (device_dir / "pieces" / p["name"]).is_file()]
    if missing:
        raise CarryError(f"pieces not on this machine: {missing}; it went cold or a call was skipped: "
                         "run every call of docs/gpu.md again, back to back")
    bundle, digest = device_dir / "bundle.tar", hashlib.sha256()
    with bundle.open("wb") as out:
        for piece in plan["pieces"]:
            block = (device_dir / "pieces" / piece["name"]).read_bytes()
            digest.update(block)
            out.write(block)
    if digest.hexdigest() != plan["bundle_sha256"]:
        raise CarryError("joined bundle's SHA-256 differs from plan.json")
    target = device_dir / "bundle"
    shutil.rmtree(target, ignore_errors=True)
    with tarfile.open(bundle) as tar:
        tar.extractall(target, filter="data")
    bundle.unlink()
    return target


def install(bundle: Path, site: Path, python: str = sys.executable) -> list[str]:
    """``pip install --no-index --no-deps --target site`` every carried wheel; returns their file names."""
    wheels = sorted((bundle / "wheels").glob("*.whl"))
    # The target's tags, named: the same command then also checks a bundle on a machine with another Python.
    tags = ["--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp",
            *[arg for p in PLATFORMS for arg in ("--platform", p)]]
    command = [python, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile", "--no-cache-dir",
               "--upgrade", *tags, "--target", str(site), *map(str, wheels)]
    if subprocess.run(command, check=False).returncode:
        raise CarryError("pip install of the carried wheels failed (see its output above)")
    return [w.name for w in wheels]


def call_lines(plan: dict) -> list[str]:
    """The steps on the GPU server, one folder each, in order: stash every piece, then run the benchmark."""
    count = plan["calls"]
    lines = [f"bundle {plan['bundle_bytes'] / 2**20:.1f} MiB in {len(plan['pieces'])} pieces of <= "
             f"{plan['piece_budget'] / 2**20:.1f} MiB, inputs {plan['inputs_bytes'] / 2**20:.1f} MiB; {count} steps, "
             "each with its folder copied beside the checkout on the server (/tmp/fashion-gpu keeps the pieces):"]
    for step in range(1, count + 1):
        command = ("bash benchmark/gpu.sh --out DIR" if step == count else
                   f"python3 -m benchmark.gpu.carry stash .gpu-carry/call{step}")
        lines.append(f"  step {step}: folder .gpu-carry/call{step}  command: {command}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmark.gpu.carry", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    get = commands.add_parser("download", help=f"pip download into {CARRY.name}/wheels (default)")
    get.add_argument("--dest", type=Path, default=CARRY / "wheels")
    make = commands.add_parser("prepare", help="pack and split into call folders; print each call's carry list")
    make.add_argument("--wheels", type=Path, default=CARRY / "wheels")
    make.add_argument("--models", type=Path, default=Path.home() / "bentoml" / "models",
                      help="a BentoML store's models folder (default ~/bentoml/models)")
    make.add_argument("--data", type=Path, default=Path("/usr/share/datasets/fashion-mnist"),
                      help="folder holding the two t10k .gz files (default: Debian's)")
    make.add_argument("--summary", type=Path, default=None, help="also write the steps to this file")
    make.add_argument("--budget-mib", type=float, default=None,
                      help="bytes per piece, MiB (default: 64 MiB less the working tree and 2 MiB)")
    keep = commands.add_parser("stash", help=f"on the device: keep one call's pieces under {DEVICE_DIR}")
    keep.add_argument("call_dir", type=Path)
    join = commands.add_parser("assemble", help="on the device: join, check, unpack, pip install --target")
    join.add_argument("--site", type=Path, default=DEVICE_DIR / "site")
    for command in (keep, join):
        command.add_argument("--device-dir", type=Path, default=DEVICE_DIR, help=f"default {DEVICE_DIR}")
    args = parser.parse_args(argv)
    try:
        if args.command == "download":
            print(f"{len(download(args.dest))} wheels in {args.dest}")
        elif args.command == "prepare":
            budget = round(args.budget_mib * 2**20) if args.budget_mib else None
            text = "\n".join(call_lines(prepare(args.wheels, args.models, args.data, budget=budget)))
            print(text)
            if args.summary:
                args.summary.write_text(text + "\n")
        elif args.command == "stash":
            print(f"held under {args.device_dir}/pieces: {stash(args.call_dir, args.device_dir)}")
        else:
            print(f"installed into {args.site}: {install(assemble(args.device_dir), args.site)}")
    except (CarryError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
