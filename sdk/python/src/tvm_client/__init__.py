"""tvm-client: the Python client of TVM, which runs untrusted code in a fresh microVM
per request.

    from tvm_client import Client

    with Client() as tvm:                      # $TVM_SERVER, $TVM_TOKEN
        r = tvm.execute("python", "print(6*7)")
        print(r.status, r.stdout)               # completed 42
"""

from ._async_client import AsyncClient, AsyncExecutionStream, AsyncSandbox, SandboxCreation
from ._base import __version__
from ._client import Client, ExecutionStream, Sandbox
from ._errors import (
    BadRequest,
    Conflict,
    Gone,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    ServerError,
    StreamError,
    TransportError,
    TvmError,
    Unauthorized,
    Unavailable,
)
from ._types import (
    ApiErrorInfo,
    CaseResult,
    ExecuteResult,
    ExecutionState,
    ExecutionSummary,
    FileEntry,
    FileListing,
    FileWritten,
    Language,
    NetworkUsage,
    RefusedDestination,
    SandboxInfo,
    SandboxLimits,
    StageResult,
    StreamEvent,
    Timings,
)

__all__ = [
    "__version__",
    "Client",
    "AsyncClient",
    "Sandbox",
    "AsyncSandbox",
    "SandboxCreation",
    "ExecutionStream",
    "AsyncExecutionStream",
    "ExecuteResult",
    "StreamEvent",
    "Timings",
    "StageResult",
    "CaseResult",
    "NetworkUsage",
    "RefusedDestination",
    "Language",
    "ExecutionState",
    "ExecutionSummary",
    "ApiErrorInfo",
    "SandboxInfo",
    "SandboxLimits",
    "FileEntry",
    "FileListing",
    "FileWritten",
    "TvmError",
    "BadRequest",
    "Unauthorized",
    "NotFound",
    "Gone",
    "Conflict",
    "PayloadTooLarge",
    "RateLimited",
    "Unavailable",
    "ServerError",
    "TransportError",
    "StreamError",
]
