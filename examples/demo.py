"""`make demo`: dispatch a few orders, run them with two workers, show the outcome."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from orders import orders

from fuseline.broker import MemoryBroker
from fuseline.clients import LocalBrokerClient
from fuseline.engines import ProcessEngine


def main() -> None:
    broker = MemoryBroker()
    ids = [orders.dispatch(broker, {"order_id": n, "items": n % 7}) for n in range(1, 6)]
    print(f"dispatched {len(ids)} instances of workflow {orders.workflow_id!r}: {list(orders.steps)}")
    engines = [ProcessEngine(LocalBrokerClient(broker), [orders]) for _ in range(2)]
    threads = [threading.Thread(target=e.work) for e in engines]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for e in engines:
        print(f"worker {e.worker_id[:8]} ran {e.steps_run} steps")
    for instance_id in ids:
        info = broker.get_instance(instance_id)
        states = ", ".join(f"{s.name}={s.state}" for s in info.steps)
        print(f"{instance_id[:8]} {info.status:<9} result={info.result}  [{states}]")


if __name__ == "__main__":
    main()
