"""The ``my_workflows`` module that the worker guide imports: a small RAG pipeline.

    normalise_query -> {retrieve_documents, expand_query} -> generate_answer

``RUNS`` counts how many times each step ran in this process.
"""

from __future__ import annotations

from collections import Counter

from fuseline import Computed, Depends, Step, Workflow

RUNS: Counter[str] = Counter()


class NormaliseQuery(Step):
    def run_step(self, question: str) -> str:
        RUNS["normalise_query"] += 1
        return " ".join(question.lower().split())


normalise_query = NormaliseQuery()


class RetrieveDocuments(Step):
    def run_step(self, query: Computed[str] = Depends(normalise_query), top_k: int = 2) -> list[str]:
        RUNS["retrieve_documents"] += 1
        return [f"doc {n} on {query}" for n in range(1, top_k + 1)]


class ExpandQuery(Step):
    def run_step(self, query: Computed[str] = Depends(normalise_query)) -> list[str]:
        RUNS["expand_query"] += 1
        return [query, f"what is {query}"]


retrieve_documents = RetrieveDocuments()
expand_query = ExpandQuery()


class GenerateAnswer(Step):
    """An AND join of retrieval and query expansion."""

    def run_step(
        self,
        documents: Computed[list[str]] = Depends(retrieve_documents),
        queries: Computed[list[str]] = Depends(expand_query),
    ) -> dict:
        RUNS["generate_answer"] += 1
        return {"answer": f"{queries[-1]}? see {len(documents)} documents", "sources": documents}


generate_answer = GenerateAnswer()

rag_workflow = Workflow(outputs=generate_answer, workflow_id="rag", version="1")
