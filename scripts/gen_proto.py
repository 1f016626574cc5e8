"""Generates the Python code for proto/ into the k2 package (k2/<pkg>/v1/*_pb2*.py[i]).

`python scripts/gen_proto.py` regenerates; `--check` regenerates into a scratch folder and fails when the committed
code differs, so stale generated code cannot land.
"""

import filecmp
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO = ROOT / "proto"
GENERATED_PACKAGES = ["k2/auth", "k2/marketdata", "k2/ingest", "k2/writer", "k2/query", "k2/telemetry"]


def generate(out: Path) -> None:
    files = sorted(str(p.relative_to(PROTO)) for p in PROTO.rglob("*.proto"))
    args = [
        "protoc",
        f"-I{PROTO}",
        f"-I{Path(protoc.__file__).parent / '_proto'}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        *files,
    ]
    if protoc.main(args) != 0:
        sys.exit("protoc failed")
    for package in GENERATED_PACKAGES:
        for folder in [out / package, *(p for p in (out / package).rglob("*") if p.is_dir())]:
            (folder / "__init__.py").write_text("")


def main() -> None:
    if "--check" not in sys.argv:
        generate(ROOT)
        return
    with tempfile.TemporaryDirectory() as scratch:
        generate(Path(scratch))
        stale = []
        for package in GENERATED_PACKAGES:
            fresh = {p.relative_to(scratch) for p in (Path(scratch) / package).rglob("*") if p.is_file()}
            committed = {
                p.relative_to(ROOT)
                for p in (ROOT / package).rglob("*")
                if p.is_file() and "__pycache__" not in p.parts
            }
            stale += sorted(str(p) for p in fresh ^ committed)
            stale += [
                str(p)
                for p in sorted(fresh & committed)
                if not filecmp.cmp(Path(scratch) / p, ROOT / p, shallow=False)
            ]
        if stale:
            sys.exit("generated code is stale, run `make proto`: " + ", ".join(stale))
    print("generated code is current")


if __name__ == "__main__":
    main()
