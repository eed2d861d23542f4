"""An example workflow: price an order, check stock and fraud in parallel, then decide.

    load_order -> {price_order, check_stock, fraud_score} -> decide -> {ship | hold}

Used by `make demo` and the README.
"""

from __future__ import annotations

import time

from fuseline import Computed, Depends, Step, Workflow
from fuseline.policies import RetryPolicy


class LoadOrder(Step):
    def run_step(self, order_id: int, items: int = 3) -> dict:
        time.sleep(0.02)  # pretend to read a database
        return {"order_id": order_id, "items": items, "unit_price": 12.5}


load_order = LoadOrder()


class PriceOrder(Step):
    def run_step(self, order: Computed[dict] = Depends(load_order)) -> float:
        return round(order["items"] * order["unit_price"], 2)


class CheckStock(Step):
    def run_step(self, order: Computed[dict] = Depends(load_order)) -> bool:
        time.sleep(0.02)
        return order["items"] <= 5


class FraudScore(Step):
    def run_step(self, order: Computed[dict] = Depends(load_order)) -> float:
        return (order["order_id"] * 37 % 100) / 100


price_order = PriceOrder()
check_stock = CheckStock()
fraud_score = FraudScore(policies=[RetryPolicy(max_retries=2, wait=0.1)])


class Decide(Step):
    """An AND join of the three checks that picks a branch by returning its name."""

    def run_step(
        self,
        total: Computed[float] = Depends(price_order),
        in_stock: Computed[bool] = Depends(check_stock),
        risk: Computed[float] = Depends(fraud_score),
    ) -> str:
        return "ship" if in_stock and risk < 0.8 else "hold"


class Ship(Step):
    def run_step(self, total: Computed[float] = Depends(price_order)) -> dict:
        return {"shipped": True, "charged": total}


class Hold(Step):
    def run_step(self, risk: Computed[float] = Depends(fraud_score)) -> dict:
        return {"shipped": False, "reason": f"review (risk {risk})"}


decide = Decide()
ship, hold = Ship(), Hold()
decide - "ship" >> ship
decide - "hold" >> hold

orders = Workflow(outputs=[ship, hold], workflow_id="orders", version="1")
