"""A real pyrovm for the integration tests: started as a subprocess with its own config,
port and runtime dir, stopped (SIGTERM) at the end of the test module that used it.

`PYROVM_BIN` names the binary (default: the repository's `target/release/pyrovm`, then
`target/debug/pyrovm`), `TVM_IMAGE_DIR` the guest image (default
`~/.cache/tvm/current`). Without either the integration tests are skipped with the
reason printed; with `TVM_REQUIRE_VM=1` (as `make test` sets) that is a failure.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable, Iterator, Optional, Tuple

import pytest

REPO = Path(__file__).resolve().parents[3]
TOKEN = "sdk-python-test-token"


def _binary() -> Optional[Path]:
    env = os.environ.get("PYROVM_BIN")
    if env:
        return Path(env)
    for p in (REPO / "target/release/pyrovm", REPO / "target/debug/pyrovm"):
        if p.is_file():
            return p
    return None


def _image() -> Path:
    return Path(os.environ.get("TVM_IMAGE_DIR") or os.path.expanduser("~/.cache/tvm/current"))


def need_vm() -> Tuple[Path, Path]:
    """The binary and the image, or skip (fail under TVM_REQUIRE_VM=1) saying why."""
    binary, image = _binary(), _image()
    reason = None
    if binary is None or not os.access(binary, os.X_OK):
        reason = f"no pyrovm binary ({binary or REPO / 'target/release/pyrovm'}; set PYROVM_BIN)"
    elif not all((image / f).is_file() for f in ("vmlinux", "initramfs.cpio", "rootfs.erofs")):
        reason = f"no guest image in {image} (make image, or set TVM_IMAGE_DIR)"
    if reason is not None:
        if os.environ.get("TVM_REQUIRE_VM") == "1":
            pytest.fail(f"TVM_REQUIRE_VM=1 but {reason}")
        print(f"SKIPPED: {reason}", file=sys.stderr)
        pytest.skip(reason)
    assert binary is not None
    return binary, image


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PyrovmServer:
    """One pyrovm on a free loopback port. `top` is extra top-level TOML; `pool_size`
    None means no pool class (every request cold-boots) and no snapshot."""

    def __init__(
        self,
        binary: Path,
        image: Path,
        *,
        token: Optional[str] = None,
        top: str = "",
        pool_size: Optional[int] = 1,
    ) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="sdkpy-server-"))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.token = token
        self.run_dir = self.dir / "run"
        lines = [
            f'listen = "127.0.0.1:{self.port}"',
            f'image_dir = "{image}"',
            f'runtime_dir = "{self.run_dir}"',
            "boot_timeout_ms = 60000",
        ]
        if token is not None:
            (self.dir / "tokens").write_text(f"{token}\n")
            lines.append(f'token_file = "{self.dir / "tokens"}"')
        if pool_size is None:
            lines.append("pool = []")
        lines.append(top)
        if pool_size is not None:
            lines += ["[[pool]]", "vcpus = 1", "memory_mb = 256", f"size = {pool_size}"]
        lines += ["[snapshot]", f"enabled = {'true' if pool_size is not None else 'false'}"]
        cfg = self.dir / "pyrovm.toml"
        cfg.write_text("\n".join(lines) + "\n")
        self.log_path = self.dir / "pyrovm.log"
        self._log = open(self.log_path, "wb")
        env = dict(os.environ)
        env.pop("TVM_TOKENS", None)  # only the tokens of the config
        self.proc = subprocess.Popen(
            [str(binary), "--config", str(cfg)], stdout=self._log, stderr=subprocess.STDOUT, env=env
        )
        t0 = time.monotonic()
        try:
            self._wait(lambda: self._get("/healthz") == 200, 60, "did not answer /healthz")
            if pool_size is not None:
                self._wait(lambda: self.metric("tvm_snapshots_ready") >= 1, 240, "made no snapshot")
                self._wait(
                    lambda: self.metric("tvm_pool_ready_vms") >= pool_size,
                    120,
                    "did not fill its pool",
                )
        except BaseException:
            self.stop(check=False)
            raise
        self.start_s = time.monotonic() - t0

    def _wait(self, ok: Callable[[], bool], timeout: float, what: str) -> None:
        end = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"pyrovm exited ({self.proc.returncode}):\n{self.log_tail()}")
            try:
                if ok():
                    return
            except (OSError, ValueError):
                pass
            if time.monotonic() > end:
                raise RuntimeError(f"pyrovm {what} within {timeout} s:\n{self.log_tail()}")
            time.sleep(0.1)

    def _get(self, path: str) -> int:
        req = urllib.request.Request(self.url + path)
        if self.token:
            req.add_header("authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=5) as r:
                return int(r.status)
        except urllib.error.HTTPError as e:
            return int(e.code)

    def metric(self, name: str) -> float:
        req = urllib.request.Request(self.url + "/metrics")
        if self.token:
            req.add_header("authorization", f"Bearer {self.token}")
        with urllib.request.urlopen(req, timeout=5) as r:
            text = r.read().decode()
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith(name)
            and not line.startswith("#")
            and (len(line) == len(name) or line[len(name)] in " {")
        )

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def stop(self, check: bool = True) -> None:
        """SIGTERM, wait for the drain; then nothing of the instance may be left."""
        problems = []
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                problems.append("did not stop within 60 s of SIGTERM")
        self._log.close()
        if self.proc.returncode != 0:
            problems.append(f"exited {self.proc.returncode}")
        left = sorted(p.name for p in self.run_dir.iterdir()) if self.run_dir.is_dir() else []
        if left:
            problems.append(f"left {left} in its runtime dir")
        tail = self.log_tail()
        shutil.rmtree(self.dir, ignore_errors=True)
        if check and problems:
            raise RuntimeError(f"pyrovm {'; '.join(problems)}:\n{tail}")


@pytest.fixture(scope="module")
def tvm_server() -> Iterator[PyrovmServer]:
    """A pyrovm with a token, a pool of one, snapshots on (the shipped defaults
    otherwise)."""
    binary, image = need_vm()
    srv = PyrovmServer(binary, image, token=TOKEN, pool_size=1)
    print(f"\npyrovm on {srv.url}, ready in {srv.start_s:.1f} s", file=sys.stderr)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def one_slot_server() -> Iterator[PyrovmServer]:
    """A pyrovm with one execution slot and no queue: a second request gets 429."""
    binary, image = need_vm()
    srv = PyrovmServer(binary, image, top="max_concurrency = 1\nmax_queued = 0", pool_size=None)
    print(
        f"\npyrovm (1 slot, no queue) on {srv.url}, ready in {srv.start_s:.1f} s", file=sys.stderr
    )
    yield srv
    srv.stop()
