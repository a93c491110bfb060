"""The WebSocket fan-out on its own: channels per run, bounded queues."""

from __future__ import annotations

import asyncio
import json

from hotcb.server.hub import Hub


def test_messages_go_only_to_subscribers_of_their_run():
    async def main() -> None:
        hub = Hub(queue_max=10)
        a, b = hub.connect(), hub.connect()
        assert hub.subscribe(a, ["r1", "r2"]) == {"r1", "r2"}
        assert hub.subscribe(b, ["r2"]) == {"r2"}
        hub.publish("r1", {"type": "metrics", "run": "r1", "records": []})
        hub.publish("r2", {"type": "metrics", "run": "r2", "records": []})
        hub.publish("r3", {"type": "metrics", "run": "r3", "records": []})
        assert [json.loads(a.queue.get_nowait())["run"] for _ in range(2)] == ["r1", "r2"]
        assert json.loads(b.queue.get_nowait())["run"] == "r2" and b.queue.empty()
        # resubscribing changes the channels; disconnecting removes the page everywhere
        assert hub.subscribe(a, ["r2"]) == set()
        assert sorted(hub.watched()) == ["r2"]
        hub.disconnect(a)
        hub.disconnect(b)
        assert hub.watched() == [] and hub.connections == 0

    asyncio.run(main())


def test_a_slow_page_is_cut_off_not_buffered_forever():
    async def main() -> None:
        hub = Hub(queue_max=3)
        slow = hub.connect()
        hub.subscribe(slow, ["r"])
        for i in range(10):
            hub.publish("r", {"type": "metrics", "run": "r", "records": [{"step": i}]})
        items = [slow.queue.get_nowait() for _ in range(slow.queue.qsize())]
        assert len(items) == 3 and items[-1] is None  # end-of-stream marker: the sender closes
        assert slow.slow

    asyncio.run(main())
