"""The asyncio SDK against a real daemon."""

from __future__ import annotations

import asyncio
import signal
import sys

import pytest

from agentd.sdk import InvalidArgument, ToolCallFailed, ToolCallTimeout
from agentd.sdk.aio import AsyncClient
from agentd.v1 import agent_pb2 as pb


# The cgroup limit alone (the backstop): the memory guard only reports here, instead of
# stopping at the intent and granting from the session (tests/integration/test_guards.py).
@pytest.mark.agentd_config('[guard]\nmemory_action = "report"\n')
def test_async_tool_calls_run_concurrently_in_their_own_groups(agentd):
    async def main() -> None:
        async with AsyncClient(agentd.socket) as client:
            session = await client.session("async", memory="512M")
            script = "print(open('/proc/self/cgroup').read())"
            results = await asyncio.gather(
                *(
                    session.run([sys.executable, "-c", script], capture_output=True)
                    for _ in range(4)
                )
            )
            ids = {r.tool_call_id for r in results}
            assert len(ids) == 4
            for result in results:
                assert result.returncode == 0
                memory = next(
                    line for line in result.stdout.decode().splitlines() if ":memory:" in line
                )
                assert memory.endswith(f"/sessions/async/{result.tool_call_id}")
            oom = await session.run(
                [sys.executable, "-c", "x = bytearray(200 << 20)"], memory="64M"
            )
            assert oom.returncode == -signal.SIGKILL and oom.usage.oom_killed
            with pytest.raises(InvalidArgument) as err:
                await session.run(["/bin/true"], memory="-3")
            assert err.value.field == "intent.resources.memory_max"
            with pytest.raises(ToolCallTimeout):
                await session.run(["/bin/sleep", "30"], timeout=0.3)
            with pytest.raises(FileNotFoundError):
                await session.run(["/no/such/program"])
            await session.close()

    asyncio.run(main())


def test_async_runs_take_launchers_placed_ahead(agentd):
    """The fast path (docs/placement.md) in the asyncio SDK: a run with the session's
    limits takes a launcher the daemon placed beforehand; its command runs in that
    group, the daemon learns of its end, and a timeout still kills the tool call."""

    async def main() -> None:
        async with AsyncClient(agentd.socket) as client:
            session = await client.session("async-ahead")
            await session.settle()
            waiting = session.placed_ahead()
            assert waiting is not None
            script = "print(open('/proc/self/cgroup').read())"
            result = await session.run([sys.executable, "-c", script], capture_output=True)
            assert result.returncode == 0 and result.tool_call_id == waiting
            memory = next(
                line for line in result.stdout.decode().splitlines() if ":memory:" in line
            )
            assert memory.endswith(f"/sessions/async-ahead/{waiting}")
            assert result.usage.cpu_user_seconds + result.usage.cpu_system_seconds > 0
            # The daemon learned of the start and the end (call() lands the reports first).
            ended = await client.call("GetToolCall", pb.GetToolCallRequest(tool_call_id=waiting))
            assert ended.state == pb.TOOL_CALL_STATE_ENDED and ended.exit.known
            assert ended.intent.label.startswith(sys.executable)
            await session.settle()
            sleeper = session.placed_ahead()
            with pytest.raises(ToolCallTimeout) as err:
                await session.run(["/bin/sleep", "30"], timeout=0.3)
            assert err.value.result.tool_call_id == sleeper
            assert err.value.result.returncode == -signal.SIGKILL
            with pytest.raises(ToolCallFailed):
                await session.run(["/bin/false"], check=True)
            closed = await session.close()
            assert [t.id for t in closed.ended_tool_calls] == []  # unused launchers: none

    asyncio.run(main())
