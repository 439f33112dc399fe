"""The Dockerfile builds the workspace in a Rust image and runs `tollgate` as non-root on a small
runtime, and .dockerignore keeps the context to the Cargo workspace. No container engine exists on
the build machines, so this reads the files; it cannot build the image.
"""

from __future__ import annotations

import fnmatch
import re

import tomllib  # Python 3.11+

from chart_support import CHART, REPO

DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"


def _stages() -> list[tuple[str, str, list[str]]]:
    """(image, stage name, instructions) for every FROM, in order."""
    stages: list[tuple[str, str, list[str]]] = []
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = re.match(r"FROM\s+(\S+)(?:\s+AS\s+(\S+))?", line, re.I)
        if m:
            stages.append((m.group(1), m.group(2) or "", []))
        elif stages:
            stages[-1][2].append(line)
    return stages


def _ignored(path: str) -> bool:
    patterns = [p.strip() for p in DOCKERIGNORE.read_text().splitlines() if p.strip() and not p.startswith("#")]
    for pattern in patterns:
        pattern = pattern.rstrip("/")
        if fnmatch.fnmatch(path, pattern) or fnmatch.fnmatch(path, pattern + "/*"):
            return True
        if pattern.startswith("**/") and any(
            fnmatch.fnmatch("/".join(path.split("/")[i:]), pattern[3:]) for i in range(len(path.split("/")))
        ):
            return True
    return False


def test_multi_stage_build_in_rust_image_and_small_non_root_runtime():
    stages = _stages()
    assert len(stages) >= 2
    build_image, build_name, build_steps = stages[0]
    assert build_image.startswith("rust:"), build_image
    assert any("cargo build --release --locked" in s for s in build_steps)
    runtime_image, _, runtime_steps = stages[-1]  # the default target is the last stage
    assert "distroless" in runtime_image and runtime_image.endswith(":nonroot"), runtime_image
    users = [s.split()[1] for s in runtime_steps if s.upper().startswith("USER ")]
    assert users and users[-1].split(":")[0] not in ("0", "root")
    assert f"--from={build_name}" in " ".join(runtime_steps)
    entrypoint = [s for s in runtime_steps if s.upper().startswith("ENTRYPOINT")]
    assert entrypoint and entrypoint[-1].endswith('["/usr/local/bin/tollgate"]')
    exposed = " ".join(s for s in runtime_steps if s.upper().startswith("EXPOSE"))
    assert {"8080", "8081", "8082"} <= set(exposed.split())


def test_runtime_user_matches_the_chart_security_context():
    import yaml

    values = yaml.safe_load((CHART / "values.yaml").read_text())
    runtime_steps = _stages()[-1][2]
    user = [s.split()[1] for s in runtime_steps if s.upper().startswith("USER ")][-1]
    assert user.split(":")[0] == str(values["podSecurityContext"]["runAsUser"])


def test_dockerignore_keeps_the_workspace_and_drops_the_rest():
    manifest = tomllib.loads((REPO / "Cargo.toml").read_text())
    members = manifest["workspace"]["members"]
    needed = ["Cargo.toml", "Cargo.lock", "src/main.rs"]
    needed += [f"{m}/Cargo.toml" for m in members if m != "."]
    needed += [b.get("path", f"benches/{b['name']}.rs") for b in manifest.get("bench", [])]
    for path in needed:
        assert not _ignored(path), f".dockerignore drops {path}, which the build needs"
    for path in ["target/release/tollgate", ".git/HEAD", ".venv/bin/python", "helm/tollgate/Chart.yaml"]:
        assert _ignored(path), f".dockerignore should drop {path}"
