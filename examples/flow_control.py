"""Flow control on a broker: durable retries, a Sleep, limits and queues (the README uses it).

    payments:    charge -> cooling_off (a 2 s Sleep) -> send_receipt
                 - charge: RetryPolicy(max_retries=3, wait=1.0), at most 2 running at once
                 - send_receipt: at most 3 starts per customer in any 10 s
                 - the workflow: at most 1 payment in progress per customer
    thumbnails:  render (queue "gpu") -> publish (queue "default")

``charge`` calls a flaky payment gateway: it fails the first ``failures``
times it runs for an order (counted in files under ``./flow-control-state``,
so the count survives worker processes), and the broker retries it.
"""

from __future__ import annotations

from pathlib import Path

from fuseline import Computed, Depends, Sleep, Step, Workflow
from fuseline.policies import ConcurrencyLimit, RateLimit, RetryPolicy

STATE = Path("flow-control-state")


def runs_so_far(name: str) -> int:
    """Count one more run of ``name`` and return the count (1 on the first run)."""
    STATE.mkdir(exist_ok=True)
    with (STATE / name).open("a+") as ledger:
        ledger.write("run\n")
        ledger.seek(0)
        return len(ledger.readlines())


# -- payments ---------------------------------------------------------------------------------


class Charge(Step):
    def run_step(self, order_id: int, customer: str, amount: float, failures: int = 0) -> dict:
        run = runs_so_far(f"charge-{order_id}")
        if run <= failures:
            raise ConnectionError(f"payment gateway timed out (order {order_id}, run {run})")
        return {"order_id": order_id, "customer": customer, "charged": amount}


# Retried by the broker after 1, 2 and 4 s (backoff 2.0): 4 runs at most. The gateway takes
# two connections, so at most two charges run at once, whatever the number of workers.
charge = Charge(policies=[RetryPolicy(max_retries=3, wait=1.0), ConcurrencyLimit(2)])

# Two seconds between the charge and the receipt, without holding a worker.
cooling_off = Sleep(2, name="cooling_off")


class SendReceipt(Step):
    def run_step(self, customer: str, payment: Computed[dict] = Depends(charge)) -> str:
        return f"receipt for {payment['charged']:.2f} sent to {customer}"


# The mail provider accepts 3 mails per customer in any 10 seconds.
send_receipt = SendReceipt(policies=[RateLimit(3, per=10.0, key="customer")])
charge >> cooling_off >> send_receipt

#: One payment per customer at a time: another one of the same customer waits for it to end.
payments = Workflow(
    outputs=send_receipt,
    workflow_id="payments",
    version="1",
    policies=[ConcurrencyLimit(1, key="customer")],
)

# -- thumbnails -------------------------------------------------------------------------------


class Render(Step):
    queue = "gpu"  # only workers started with --queue gpu claim it

    def run_step(self, image: str) -> str:
        return f"{image}.thumb.png"


render = Render()


class Publish(Step):  # in the "default" queue
    def run_step(self, thumbnail: Computed[str] = Depends(render)) -> str:
        return f"published {thumbnail}"


thumbnails = Workflow(outputs=Publish(), workflow_id="thumbnails", version="1")
