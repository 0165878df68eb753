"""The asyncio variant of the SDK, for agent harnesses built on an event loop.

    from agentd.sdk.aio import AsyncClient
    async with AsyncClient() as client:
        session = await client.session("fix-42", memory="2G")
        result = await session.run(["pytest", "-x"], capture_output=True, timeout=600)
        await session.close()

Same protocol as the blocking SDK (see client.py), fast path included: every session
keeps launchers placed ahead (docs/placement.md) by a blocking Client of its own, whose
background threads place them and report starts and ends. A run that finds one for
its limits hands the command over at once (no RPC) and waits for it in a thread;
otherwise the launcher is started with asyncio's subprocess support, placed by
BeginToolCall, then released, and launchers are placed with these limits for next time.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import subprocess
from collections.abc import Mapping, Sequence
from typing import Any

import grpc

from agentd.credproto import TOKEN_METADATA_KEY, fetch_token
from agentd.sdk.client import (
    _REPORTS,
    Client,
    Session,
    ToolCallResult,
    Usage,
    _priority,
    default_socket,
    resources,
)
from agentd.sdk.errors import (
    AgentdError,
    DaemonUnavailable,
    ToolCallFailed,
    ToolCallTimeout,
    from_rpc_error,
)
from agentd.sdk.launcher import launcher_path
from agentd.v1 import agent_pb2 as pb
from agentd.v1 import agent_pb2_grpc as pb_grpc


class AsyncClient:
    """`ahead` (default on): sessions keep launchers placed ahead, as Client does."""

    def __init__(
        self, socket_path: str | None = None, timeout: float = 30.0, ahead: bool = True
    ) -> None:
        self.socket_path = socket_path or default_socket()
        self.timeout = timeout
        if not os.path.exists(self.socket_path):
            raise DaemonUnavailable(f"no agentd socket at {self.socket_path} (is agentd running?)")
        self._channel = grpc.aio.insecure_channel(f"unix:{self.socket_path}")
        self._stub = pb_grpc.AgentServiceStub(self._channel)
        self._token: str | None = None
        self.ahead = ahead
        self._blocking: Client | None = None  # made by the first session, for its launchers

    async def _fast_path(self) -> Client | None:
        if self.ahead and self._blocking is None:
            self._blocking = await asyncio.to_thread(Client, self.socket_path, self.timeout)
        return self._blocking

    async def _fetch_token(self) -> str:
        try:
            return await asyncio.to_thread(fetch_token, self.socket_path)
        except OSError as e:
            raise DaemonUnavailable(
                f"cannot identify to agentd at {self.socket_path}.cred: {e}"
            ) from e

    async def call(self, method: str, request: Any) -> Any:
        """Invoke an AgentService method; a daemon restart (stale token) is retried once."""
        if self._token is None:
            self._token = await self._fetch_token()
        reporter = self._blocking.reporter if self._blocking is not None else None
        if reporter is not None and method not in _REPORTS and not reporter.idle():
            # Read your own writes, as Client.call: the background reports land first.
            await asyncio.to_thread(reporter.flush)
        rpc = getattr(self._stub, method)
        for attempt in (0, 1):
            try:
                return await rpc(
                    request, timeout=self.timeout, metadata=((TOKEN_METADATA_KEY, self._token),)
                )
            except grpc.aio.AioRpcError as e:
                if e.code() == grpc.StatusCode.UNAUTHENTICATED and attempt == 0:
                    self._token = await self._fetch_token()
                    continue
                raise from_rpc_error(e) from None
        raise AssertionError("unreachable")

    async def session(
        self,
        name: str = "",
        *,
        memory: str | int | None = None,
        cpu: str | float | None = None,
        pids: int | None = None,
        priority: str | None = None,
        exist_ok: bool = False,
    ) -> AsyncSession:
        info = await self.call(
            "CreateSession",
            pb.CreateSessionRequest(
                name=name,
                budget=resources(memory, None, None, cpu, pids),
                priority=_priority(priority),
                exist_ok=exist_ok,
            ),
        )
        blocking = await self._fast_path()
        return AsyncSession(self, info, Session(blocking, info) if blocking else None)

    async def close(self) -> None:
        if self._blocking is not None:
            await asyncio.to_thread(self._blocking.close)
        await self._channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class AsyncSession:
    def __init__(self, client: AsyncClient, info: pb.Session, ahead: Session | None = None) -> None:
        self.client = client
        self.info = info
        self.id: str = info.id
        self._ahead = ahead  # the same session through the blocking client: its launchers

    def placed_ahead(self) -> str | None:
        """The tool-call id the next run() gets if its limits are those of the launchers
        waiting for it; None if none is waiting."""
        return self._ahead.placed_ahead() if self._ahead is not None else None

    async def settle(self, timeout: float = 10.0) -> None:
        """Wait until the background work of finished tool calls is done."""
        if self._ahead is not None:
            await asyncio.to_thread(self._ahead.settle, timeout)

    async def close(self) -> pb.CloseSessionResponse:
        if self._ahead is not None:
            pool, self._ahead = self._ahead._pool, None
            if pool is not None:
                await asyncio.to_thread(pool.close)
        return await self.client.call("CloseSession", pb.CloseSessionRequest(session_id=self.id))

    async def run(
        self,
        args: Sequence[str],
        *,
        memory: str | int | None = None,
        cpu: str | float | None = None,
        pids: int | None = None,
        priority: str | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        input: bytes | None = None,
        capture_output: bool = False,
        timeout: float | None = None,
        check: bool = False,
    ) -> ToolCallResult:
        """Run `args` as a tool call and wait for it; like session.run of the blocking SDK
        (output as bytes)."""
        if isinstance(args, str | bytes):
            raise TypeError("args must be a sequence of strings; agentd never runs a shell")
        args = [os.fspath(a) for a in args]
        intent = pb.Intent(
            resources=resources(memory, None, None, cpu, pids),
            priority=_priority(priority),
            label=" ".join(args)[:4096],
        )
        if self._ahead is not None:
            result = await self._run_ahead(args, intent, env, cwd, input, capture_output, timeout)
            if result is not None:
                if check and result.returncode:
                    raise ToolCallFailed(result)
                return result
        pipe = asyncio.subprocess.PIPE if capture_output else None
        go_read, go_write = os.pipe2(os.O_CLOEXEC)
        err_read, err_write = os.pipe2(os.O_CLOEXEC)
        try:
            process = await asyncio.create_subprocess_exec(
                launcher_path(),
                str(go_read),
                str(err_write),
                "--",
                *args,
                pass_fds=(go_read, err_write),
                env=env,
                cwd=cwd,
                stdin=asyncio.subprocess.PIPE if input is not None else None,
                stdout=pipe,
                stderr=pipe,
            )
        except BaseException:
            os.close(go_write)
            os.close(err_read)
            raise
        finally:
            os.close(go_read)
            os.close(err_write)
        try:
            tool_call = await self.client.call(
                "BeginToolCall",
                pb.BeginToolCallRequest(session_id=self.id, intent=intent, pid=process.pid),
            )
        except BaseException:
            os.close(go_write)  # the launcher sees EOF and exits without running anything
            os.close(err_read)
            await process.wait()
            raise
        if self._ahead is not None:  # launchers with these limits for the next runs
            self._ahead._prepare_next(intent)
        os.write(go_write, b"g")
        os.close(go_write)
        try:
            failure = await asyncio.to_thread(os.read, err_read, 4)
        finally:
            os.close(err_read)
        if failure:
            code = int.from_bytes(failure, "little", signed=True)
            await process.wait()
            await self._end(tool_call.id, 127 if code == errno.ENOENT else 126)
            raise OSError(code, os.strerror(code), args[0])
        try:
            stdout, stderr = await asyncio.wait_for(process.communicate(input), timeout)
        except TimeoutError:
            await self.client.call(
                "KillToolCall", pb.KillToolCallRequest(tool_call_id=tool_call.id)
            )
            stdout, stderr = await process.communicate()
            result = await self._finish(tool_call.id, args, process, stdout, stderr)
            raise ToolCallTimeout(result, timeout or 0.0) from None
        result = await self._finish(tool_call.id, args, process, stdout, stderr)
        if check and result.returncode:
            raise ToolCallFailed(result)
        return result

    async def _run_ahead(
        self,
        args: list[str],
        intent: pb.Intent,
        env: Mapping[str, str] | None,
        cwd: str | None,
        input: bytes | None,
        capture_output: bool,
        timeout: float | None,
    ) -> ToolCallResult | None:
        """On a launcher placed ahead for `intent`, if one is ready (never waits for
        one): the hand-over runs here (a few syscalls, as a fork would), the wait
        for the command in a thread. None if none is ready."""
        assert self._ahead is not None
        pipe = subprocess.PIPE if capture_output else None
        process = self._ahead._start_ahead(
            args,
            intent,
            env,
            cwd,
            wait=0.0,
            stdin=subprocess.PIPE if input is not None else None,
            stdout=pipe,
            stderr=pipe,
        )
        if process is None:
            return None
        return await asyncio.to_thread(self._ahead.complete, process, input, timeout)

    async def _end(self, tool_call_id: str, code: int) -> None:
        with contextlib.suppress(AgentdError):
            await self.client.call(
                "EndToolCall",
                pb.EndToolCallRequest(
                    tool_call_id=tool_call_id, exit=pb.ExitStatus(known=True, exit_code=code)
                ),
            )

    async def _finish(
        self,
        tool_call_id: str,
        args: Sequence[str],
        process: asyncio.subprocess.Process,
        stdout: bytes | None,
        stderr: bytes | None,
    ) -> ToolCallResult:
        rc = await process.wait()
        ended = await self.client.call(
            "EndToolCall",
            pb.EndToolCallRequest(
                tool_call_id=tool_call_id,
                exit=pb.ExitStatus(known=True, exit_code=max(rc, 0), signal=max(-rc, 0)),
            ),
        )
        return ToolCallResult(
            args=args,
            returncode=rc,
            stdout=stdout,
            stderr=stderr,
            tool_call_id=tool_call_id,
            usage=Usage.from_pb(ended),
        )
