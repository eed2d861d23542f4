"""A workflow with every feature whose schema must be identical in every process.

Function steps, class steps, two classes with the same name, a class-attribute
dependency, an async step, an OR join, a branch, a condition and policies.
Imported by ``test_schema_determinism.py`` in subprocesses, and also run as a
script (``python determinism_workflows.py``), which prints the workflow id.
"""

from __future__ import annotations

from fuseline import AsyncStep, Computed, Condition, Depends, FunctionStep, Step, Workflow
from fuseline.policies import RetryPolicy, StepTimeoutPolicy


def fetch_urls(seed: str = "news") -> list[str]:
    return [f"https://{seed}.example/{n}" for n in range(3)]


def parse_pages(urls: Computed[list[str]] = Depends(fetch_urls)) -> dict[str, int]:
    return {url: len(url) for url in urls}


class Score(Step):
    def run_step(self, pages: Computed[dict] = Depends(parse_pages)) -> float:
        return sum(pages.values()) / max(len(pages), 1)


class Legacy:
    """Holds a second class named ``Score``: its step becomes ``score_2``."""

    class Score(Step):
        def run_step(self, urls: Computed[list[str]] = Depends(fetch_urls)) -> float:
            return float(len(urls))


class Enrich(AsyncStep):
    async def run_step(self, pages: Computed[dict] = Depends(parse_pages)) -> int:
        return len(pages)


score = Score(policies=[RetryPolicy(max_retries=2, wait=0.1, backoff=3.0, max_wait=1.0)])
legacy_score = Legacy.Score(max_attempts=5)
enrich = Enrich(policies=[StepTimeoutPolicy(2.5)])


class Decide(Step):
    def run_step(
        self,
        primary: Computed[float] = Depends(score),
        fallback: Computed[float] = Depends(legacy_score),
        extra: Computed[int] = Depends(enrich),
    ) -> str:
        return "publish" if primary > fallback else "review"


decide = Decide()


class Publish(Step):
    def run_step(self, value: Computed[float] = Depends(score)) -> str:
        return f"published {value}"


class Review(Step):
    def run_step(self) -> str:
        return "sent to review"


publish, review = Publish(), Review(name="human review")
decide - "publish" >> publish
decide - "review" >> review


class Merge(Step):
    source = FunctionStep.for_function(fetch_urls)

    def run_step(
        self,
        outcome: Computed[str] = Depends([publish, review]),
        urls: Computed[list[str]] = Depends(source),
    ) -> dict:
        return {"outcome": outcome, "urls": len(urls)}


merge = Merge()
HAS_URLS = Condition(lambda summary: summary["urls"] > 0, "has urls")
PUBLISHED = Condition(lambda summary: summary["outcome"].startswith("published"), "published")


def notify(summary: Computed[dict] = Depends(merge, condition=HAS_URLS & ~PUBLISHED | PUBLISHED)) -> str:
    return f"notified: {summary['outcome']}"


def archive(summary: Computed[dict] = Depends(merge, condition=lambda s: s["urls"] > 10)) -> str:
    return "archived"


workflow = Workflow(
    outputs=[notify, archive, merge],
    policies=[RetryPolicy(max_retries=1), StepTimeoutPolicy(60)],
)


if __name__ == "__main__":
    print(workflow.workflow_id)
