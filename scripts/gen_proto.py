"""Regenerate the Python stubs for proto/brunoise_api/v1 into brunoise_api/v1 (the one codegen command)."""

from __future__ import annotations

import argparse
import pathlib
import shutil
import sys
import tempfile

from grpc_tools import protoc

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
OUT_PACKAGE = ROOT / "brunoise_api" / "v1"


def generate(out_root: pathlib.Path) -> list[pathlib.Path]:
    """Run protoc for every .proto under proto/, writing stubs below out_root."""
    import grpc_tools

    include = pathlib.Path(grpc_tools.__file__).parent / "_proto"
    protos = sorted(PROTO_ROOT.rglob("*.proto"))
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={out_root}",
        f"--pyi_out={out_root}",
        f"--grpc_python_out={out_root}",
        *[str(p) for p in protos],
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    return sorted((out_root / "brunoise_api" / "v1").glob("*_pb2*.py*"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="exit 1 if the committed stubs are stale")
    ns = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        fresh = {p.name: p.read_bytes() for p in generate(pathlib.Path(tmp))}
        current = {p.name: p.read_bytes() for p in OUT_PACKAGE.glob("*_pb2*.py*")}
        if ns.check:
            if fresh != current:
                stale = sorted(set(fresh) ^ set(current) | {n for n in fresh if current.get(n) != fresh[n]})
                print(f"stale generated stubs: {', '.join(stale)}; run: python scripts/gen_proto.py", file=sys.stderr)
                return 1
            print("generated stubs are up to date")
            return 0
        for name in set(current) - set(fresh):
            (OUT_PACKAGE / name).unlink()
        OUT_PACKAGE.mkdir(parents=True, exist_ok=True)
        for name, data in fresh.items():
            (OUT_PACKAGE / name).write_bytes(data)
        init = OUT_PACKAGE / "__init__.py"
        if not init.exists():
            init.write_text('"""Generated protobuf and gRPC stubs for brunoise.v1 (do not edit)."""\n')
        shutil.rmtree(pathlib.Path(tmp) / "brunoise_api", ignore_errors=True)
    print(f"wrote {len(fresh)} files to {OUT_PACKAGE.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
