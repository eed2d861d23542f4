"""A person in the loop: the workflow waits for a signal, holding no worker (the README uses it).

    draft -> approval (WaitFor "approved", at most 7 days) -> publish

Submit it, let a worker run ``draft``, then approve from anywhere::

    fuseline submit examples/approval.py:approval --input title=Q3
    fuseline worker run examples/approval.py:approval --burst
    fuseline instances signal ID approved --data '{"by": "ana"}'
    fuseline worker run examples/approval.py:approval --burst

Without the signal within 7 days, ``approval`` fails with "no signal 'approved' within 604800 s".
"""

from __future__ import annotations

from fuseline import Depends, FunctionStep, WaitFor, Workflow


def draft(title: str) -> dict:
    return {"title": title, "body": f"The {title} report."}


drafted = FunctionStep(draft)
signed_off = WaitFor("approved", timeout=7 * 24 * 3600, name="approval")
drafted >> signed_off


def publish(document: dict = Depends(drafted), decision: dict = Depends(signed_off)) -> str:
    """``decision`` is the signal's data."""
    return f"published {document['title']!r}, approved by {decision['by']}"


approval = Workflow(outputs=FunctionStep(publish), workflow_id="example-approval", version="1")
