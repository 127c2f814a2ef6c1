"""Many concurrent calls from one asyncio program on one connection."""

from __future__ import annotations

import asyncio

import automation_framework as af


async def fetch(client: af.AsyncClient, n: int) -> str:
    async with client.call("search", cost=0.001) as call:
        await asyncio.sleep(0)  # the upstream request would go here
        call.cost = 0.0008
    return f"result {n}"


async def main() -> None:
    async with af.AsyncClient(agent="crawler") as client:
        results = await asyncio.gather(*(fetch(client, n) for n in range(32)), return_exceptions=True)
        denied = [r for r in results if isinstance(r, af.Denied)]
        print(f"{len(results) - len(denied)} calls made, {len(denied)} denied")
        print(await client.budget())


if __name__ == "__main__":
    asyncio.run(main())
