"""The committed brunoise.v1 stubs match what scripts/gen_proto.py generates from proto/."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_generated_stubs_are_fresh() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_proto.py"), "--check"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, f"stubs are stale: {result.stderr}"


def test_import_name_does_not_collide() -> None:
    # `proto` is taken by proto-plus; ours lives under the distribution's own name.
    from brunoise_api.v1 import assigner_pb2, slicing_pb2

    assert assigner_pb2.DESCRIPTOR.package == "brunoise.v1"
    assert slicing_pb2.Slice.DESCRIPTOR.full_name == "brunoise.v1.Slice"


def test_stale_stub_is_detected(tmp_path: Path) -> None:
    # Copy the generator and the protos, change a proto, and check that --check fails.
    import shutil

    work = tmp_path / "repo"
    shutil.copytree(ROOT / "proto", work / "proto")
    shutil.copytree(ROOT / "brunoise_api" / "v1", work / "brunoise_api" / "v1")
    (work / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "gen_proto.py", work / "scripts" / "gen_proto.py")
    ok = subprocess.run([sys.executable, str(work / "scripts" / "gen_proto.py"), "--check"], capture_output=True, timeout=120)
    assert ok.returncode == 0
    proto = work / "proto" / "brunoise_api" / "v1" / "router.proto"
    proto.write_text(proto.read_text() + "\nmessage Extra { string x = 1; }\n")
    stale = subprocess.run(
        [sys.executable, str(work / "scripts" / "gen_proto.py"), "--check"], capture_output=True, text=True, timeout=120
    )
    assert stale.returncode == 1
    assert "router_pb2" in stale.stderr
