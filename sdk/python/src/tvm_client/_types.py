"""Typed views of the API's JSON answers (``crates/tvm-api/src/*.rs``).

Every answer type keeps the JSON it was read from in ``raw`` (fields added by a newer
server are there even when this client does not know them yet).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Union

__all__ = [
    "Timings",
    "StageResult",
    "CaseResult",
    "RefusedDestination",
    "NetworkUsage",
    "ExecuteResult",
    "StreamEvent",
    "Language",
    "ApiErrorInfo",
    "ExecutionState",
    "ExecutionSummary",
    "SandboxLimits",
    "SandboxInfo",
    "FileEntry",
    "FileListing",
    "FileWritten",
]

JSON = Dict[str, Any]


def _int(v: Any, default: int = 0) -> int:
    return int(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else default


def _opt_int(v: Any) -> Optional[int]:
    return int(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _str(v: Any, default: str = "") -> str:
    return v if isinstance(v, str) else default


def _opt_str(v: Any) -> Optional[str]:
    return v if isinstance(v, str) else None


def _bool(v: Any) -> bool:
    return bool(v) if isinstance(v, bool) else False


def _dict(v: Any) -> JSON:
    return v if isinstance(v, dict) else {}


def _list(v: Any) -> List[Any]:
    return v if isinstance(v, list) else []


@dataclass(frozen=True)
class Timings:
    """``timings_ms``: milliseconds spent waiting for a slot, starting the VM, running
    the job, and in total."""

    queued: int = 0
    vm_start: int = 0
    exec: int = 0
    total: int = 0

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "Timings":
        return cls(
            queued=_int(d.get("queued")),
            vm_start=_int(d.get("vm_start")),
            exec=_int(d.get("exec")),
            total=_int(d.get("total")),
        )


@dataclass(frozen=True)
class StageResult:
    """The compile stage of a language that compiles."""

    status: str
    exit_code: Optional[int]
    signal: Optional[str]
    stdout: str
    stderr: str
    stdout_truncated: bool
    stderr_truncated: bool
    duration_ms: int

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "StageResult":
        return cls(
            status=_str(d.get("status")),
            exit_code=_opt_int(d.get("exit_code")),
            signal=_opt_str(d.get("signal")),
            stdout=_str(d.get("stdout")),
            stderr=_str(d.get("stderr")),
            stdout_truncated=_bool(d.get("stdout_truncated")),
            stderr_truncated=_bool(d.get("stderr_truncated")),
            duration_ms=_int(d.get("duration_ms")),
        )


@dataclass(frozen=True)
class CaseResult:
    """The result of one test case of a request's ``tests``, in order."""

    status: str
    exit_code: Optional[int]
    signal: Optional[str]
    stdout: str
    stderr: str
    stdout_truncated: bool
    stderr_truncated: bool
    duration_ms: int
    #: ``accepted``, ``wrong_answer``, ``time_limit``, ``memory_limit``,
    #: ``runtime_error``; ``None`` when the case could not be judged.
    verdict: Optional[str]
    error: Optional[str] = None

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "CaseResult":
        return cls(
            status=_str(d.get("status")),
            exit_code=_opt_int(d.get("exit_code")),
            signal=_opt_str(d.get("signal")),
            stdout=_str(d.get("stdout")),
            stderr=_str(d.get("stderr")),
            stdout_truncated=_bool(d.get("stdout_truncated")),
            stderr_truncated=_bool(d.get("stderr_truncated")),
            duration_ms=_int(d.get("duration_ms")),
            verdict=_opt_str(d.get("verdict")),
            error=_opt_str(d.get("error")),
        )


@dataclass(frozen=True)
class RefusedDestination:
    host: str
    port: int
    #: ``not_allowed``, ``special_address``, ``resolve_failed``, ``connect_failed``,
    #: ``connect_timeout``, ``limit_connections``, ``limit_bytes``, ``bad_request``.
    reason: str

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "RefusedDestination":
        return cls(host=_str(d.get("host")), port=_int(d.get("port")), reason=_str(d.get("reason")))


@dataclass(frozen=True)
class NetworkUsage:
    """What a job's egress did (present only when the request had ``network``)."""

    bytes_in: int
    bytes_out: int
    connections: int
    refused: List[RefusedDestination]

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "NetworkUsage":
        return cls(
            bytes_in=_int(d.get("bytes_in")),
            bytes_out=_int(d.get("bytes_out")),
            connections=_int(d.get("connections")),
            refused=[RefusedDestination.from_json(_dict(r)) for r in _list(d.get("refused"))],
        )


@dataclass(frozen=True)
class ExecuteResult:
    """The answer of an execution (``POST /v1/execute``, a sandbox exec, an async
    execution's result, or a stream's ``exit`` event).

    ``status`` is ``completed`` (the program exited by itself, with any exit code),
    ``timeout``, ``memory_limit``, ``output_limit``, ``compile_error`` or
    ``sandbox_error``. ``files`` maps each path ``files_out`` matched to its bytes
    (``None`` when ``files_out`` was not given).
    """

    id: str
    status: str
    stdout: str
    stderr: str
    exit_code: Optional[int]
    signal: Optional[str]
    timings_ms: Timings
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    backend: str = ""
    error: Optional[str] = None
    files: Optional[Dict[str, bytes]] = None
    files_truncated: Optional[bool] = None
    compile: Optional[StageResult] = None
    tests: Optional[List[CaseResult]] = None
    verdict: Optional[str] = None
    network: Optional[NetworkUsage] = None
    raw: JSON = field(default_factory=dict, repr=False, compare=False)

    @property
    def ok(self) -> bool:
        """Whether the program ran to its end and exited 0."""
        return self.status == "completed" and self.exit_code == 0

    @classmethod
    def from_json(
        cls,
        d: Mapping[str, Any],
        *,
        stdout: Optional[str] = None,
        stderr: Optional[str] = None,
    ) -> "ExecuteResult":
        """Reads an answer; ``stdout``/``stderr`` stand in for output that was
        streamed rather than included (a stream's ``exit`` event)."""
        files: Optional[Dict[str, bytes]] = None
        if isinstance(d.get("files"), list):
            files = {}
            for f in d["files"]:
                f = _dict(f)
                content = _str(f.get("content"))
                if f.get("encoding", "base64") == "base64":
                    files[_str(f.get("path"))] = base64.b64decode(content)
                else:
                    files[_str(f.get("path"))] = content.encode("utf-8")
        compile_ = d.get("compile")
        tests = d.get("tests")
        network = d.get("network")
        ft = d.get("files_truncated")
        return cls(
            id=_str(d.get("id")),
            status=_str(d.get("status")),
            stdout=_str(d.get("stdout")) if stdout is None else stdout,
            stderr=_str(d.get("stderr")) if stderr is None else stderr,
            exit_code=_opt_int(d.get("exit_code")),
            signal=_opt_str(d.get("signal")),
            timings_ms=Timings.from_json(_dict(d.get("timings_ms"))),
            stdout_truncated=_bool(d.get("stdout_truncated")),
            stderr_truncated=_bool(d.get("stderr_truncated")),
            backend=_str(d.get("backend")),
            error=_opt_str(d.get("error")),
            files=files,
            files_truncated=ft if isinstance(ft, bool) else None,
            compile=StageResult.from_json(compile_) if isinstance(compile_, dict) else None,
            tests=(
                [CaseResult.from_json(_dict(c)) for c in tests] if isinstance(tests, list) else None
            ),
            verdict=_opt_str(d.get("verdict")),
            network=NetworkUsage.from_json(network) if isinstance(network, dict) else None,
            raw=dict(d),
        )


@dataclass(frozen=True)
class StreamEvent:
    """One event of an execution stream: ``stdout`` and ``stderr`` carry text as it
    was printed (``data`` is a ``str``); the last event is ``exit``, whose ``data`` is
    the :class:`ExecuteResult` (its ``stdout``/``stderr`` are the whole streamed
    output)."""

    event: str
    data: Union[str, ExecuteResult]

    @property
    def text(self) -> str:
        """The output text of a ``stdout``/``stderr`` event (``""`` for ``exit``)."""
        return self.data if isinstance(self.data, str) else ""

    @property
    def result(self) -> Optional[ExecuteResult]:
        """The final result, for the ``exit`` event."""
        return self.data if isinstance(self.data, ExecuteResult) else None


@dataclass(frozen=True)
class Language:
    """One entry of ``GET /v1/languages``."""

    name: str
    version: str
    file_name: str
    aliases: List[str]
    extensions: List[str]
    compiled: bool

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "Language":
        return cls(
            name=_str(d.get("name")),
            version=_str(d.get("version")),
            file_name=_str(d.get("file_name")),
            aliases=[_str(a) for a in _list(d.get("aliases"))],
            extensions=[_str(e) for e in _list(d.get("extensions"))],
            compiled=_bool(d.get("compiled")),
        )


@dataclass(frozen=True)
class ApiErrorInfo:
    code: str
    message: str


@dataclass(frozen=True)
class ExecutionState:
    """An async execution without a result yet (``queued``, ``running``), or that
    never ran (``rejected``, with the reason in ``error``)."""

    id: str
    status: str
    age_ms: int
    error: Optional[ApiErrorInfo] = None
    raw: JSON = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "ExecutionState":
        err = d.get("error")
        return cls(
            id=_str(d.get("id")),
            status=_str(d.get("status")),
            age_ms=_int(d.get("age_ms")),
            error=(
                ApiErrorInfo(code=_str(err.get("code")), message=_str(err.get("message")))
                if isinstance(err, dict)
                else None
            ),
            raw=dict(d),
        )


#: The states of an async execution that has no result (yet).
PENDING_STATUSES = frozenset({"queued", "running", "rejected"})


def execution_outcome(d: Mapping[str, Any]) -> Union[ExecuteResult, ExecutionState]:
    """``GET /v1/executions/{id}``: the result once it ran, else its state."""
    if d.get("status") in PENDING_STATUSES:
        return ExecutionState.from_json(d)
    return ExecuteResult.from_json(d)


@dataclass(frozen=True)
class ExecutionSummary:
    """One entry of ``GET /v1/executions``; ``status`` is a pending state or, once it
    ran, the execution's own status."""

    id: str
    status: str
    age_ms: int

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "ExecutionSummary":
        return cls(id=_str(d.get("id")), status=_str(d.get("status")), age_ms=_int(d.get("age_ms")))


@dataclass(frozen=True)
class SandboxLimits:
    memory_mb: int
    vcpus: int
    max_processes: int
    disk_mb: int

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "SandboxLimits":
        return cls(
            memory_mb=_int(d.get("memory_mb")),
            vcpus=_int(d.get("vcpus")),
            max_processes=_int(d.get("max_processes")),
            disk_mb=_int(d.get("disk_mb")),
        )


@dataclass(frozen=True)
class SandboxInfo:
    """What the API says about a live sandbox (times are RFC 3339, UTC)."""

    id: str
    created_at: str
    expires_at: str
    last_active_at: str
    ttl_s: int
    idle_timeout_s: int
    limits: SandboxLimits
    env_keys: List[str]
    execs: int
    backend: str
    vm_start_ms: int
    raw: JSON = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "SandboxInfo":
        return cls(
            id=_str(d.get("id")),
            created_at=_str(d.get("created_at")),
            expires_at=_str(d.get("expires_at")),
            last_active_at=_str(d.get("last_active_at")),
            ttl_s=_int(d.get("ttl_s")),
            idle_timeout_s=_int(d.get("idle_timeout_s")),
            limits=SandboxLimits.from_json(_dict(d.get("limits"))),
            env_keys=[_str(k) for k in _list(d.get("env_keys"))],
            execs=_int(d.get("execs")),
            backend=_str(d.get("backend")),
            vm_start_ms=_int(d.get("vm_start_ms")),
            raw=dict(d),
        )


@dataclass(frozen=True)
class FileEntry:
    name: str
    #: ``file``, ``dir``, ``symlink`` or ``other``.
    type: str
    #: Bytes, for files (0 otherwise).
    size: int


@dataclass(frozen=True)
class FileListing:
    """A directory of a sandbox's work dir; ``path`` is relative to it (``""`` for the
    work dir itself). ``truncated``: entries were left out (at most 10,000)."""

    path: str
    entries: List[FileEntry]
    truncated: bool

    @property
    def names(self) -> List[str]:
        return [e.name for e in self.entries]

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "FileListing":
        return cls(
            path=_str(d.get("path")),
            entries=[
                FileEntry(
                    name=_str(e.get("name")), type=_str(e.get("type")), size=_int(e.get("size"))
                )
                for e in (_dict(x) for x in _list(d.get("entries")))
            ],
            truncated=_bool(d.get("truncated")),
        )


@dataclass(frozen=True)
class FileWritten:
    path: str
    size: int

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "FileWritten":
        return cls(path=_str(d.get("path")), size=_int(d.get("size")))
