"""The asyncio SDK against a real daemon."""

from __future__ import annotations

import asyncio
import signal
import sys

import pytest

from agentd.sdk import InvalidArgument, ToolCallTimeout
from agentd.sdk.aio import AsyncClient


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
