"""The dashboard in a real headless Chromium: sign in, watch a DAG run live, retry from a step.

A real server process over PostgreSQL serves the pages; a real worker (a thread of this
process on a broker of its own) runs the instance while the page polls. The node colours
are read from the browser (the ``data-state`` the script updates and the fill the
stylesheet gives it), before and after. Screenshots go to ``tests/artifacts/``.
"""

from __future__ import annotations

import time
from typing import Any

from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from tests.dashboard.conftest import ARTIFACTS, Site, running_worker
from tests.dashboard.flows import pipeline

#: Long enough for a worker to run the pipeline (about 1 s of sleep) and the page to poll it.
PATIENCE = 30.0


def sign_in(browser: Any, site: Site, role: str) -> None:
    browser.delete_all_cookies()
    browser.get(f"{site.url}/login")
    browser.find_element(By.ID, "token").send_keys(site.tokens[role])
    browser.find_element(By.ID, "sign-in").click()
    WebDriverWait(browser, PATIENCE).until(lambda b: b.find_elements(By.ID, "instances"))
    assert browser.find_element(By.ID, "who").text == f"dash-{role}"


def node(browser: Any, step: str) -> Any:
    return browser.find_element(By.CSS_SELECTOR, f'svg.dag g.node[data-step="{step}"]')


def state_and_fill(browser: Any, step: str) -> tuple[str, str]:
    element = node(browser, step)
    box = element.find_element(By.CSS_SELECTOR, "rect.box")
    return element.get_attribute("data-state"), box.value_of_css_property("fill")


def wait_for_state(browser: Any, step: str, wanted: set[str]) -> list[str]:
    """Poll the page (not the database) until ``step``'s node shows one of ``wanted``; the
    states it showed on the way."""
    seen: list[str] = []
    deadline = time.monotonic() + PATIENCE
    while time.monotonic() < deadline:
        try:
            state = node(browser, step).get_attribute("data-state")
        except Exception:  # the page is reloading or the graph being replaced: look again
            time.sleep(0.05)
            continue
        if not seen or seen[-1] != state:
            seen.append(state)
        if state in wanted:
            return seen
        time.sleep(0.05)
    raise AssertionError(f"{step} showed {seen}, never {wanted}")


def test_an_operator_watches_an_instance_run_and_retries_it_from_a_step(browser: Any, site: Site) -> None:
    started = time.monotonic()
    sign_in(browser, site, "operator")
    instance_id = site.broker.dispatch_workflow(pipeline.to_schema(), {"count": 4})
    browser.get(f"{site.url}/instances/{instance_id}")
    assert browser.find_element(By.ID, "instance-status").text == "RUNNING"
    names = {n.get_attribute("data-step") for n in browser.find_elements(By.CSS_SELECTOR, "svg.dag g.node")}
    assert names == {"prepare", "slow", "fan", "tail", "finish"}
    assert len(browser.find_elements(By.CSS_SELECTOR, "svg.dag path.edge")) == 5
    before = {step: state_and_fill(browser, step) for step in ("prepare", "slow", "finish")}
    assert before["prepare"][0] == "QUEUED" and before["slow"][0] == before["finish"][0] == "PENDING"
    browser.save_screenshot(str(ARTIFACTS / "dashboard-queued.png"))

    with running_worker(site.database_url, pipeline):
        slow_states = wait_for_state(browser, "slow", {"SUCCEEDED"})
        wait_for_state(browser, "finish", {"SUCCEEDED"})
        WebDriverWait(browser, PATIENCE).until(
            lambda b: b.find_element(By.ID, "instance-status").text == "SUCCEEDED"
        )
        after = {step: state_and_fill(browser, step) for step in ("prepare", "slow", "finish")}
        assert "RUNNING" in slow_states or "QUEUED" in slow_states, slow_states
        for step in after:
            assert after[step][0] == "SUCCEEDED"
            assert after[step][1] != before["slow"][1], (step, before, after)  # another colour
        items = browser.find_elements(By.CSS_SELECTOR, 'svg.dag g.node[data-step="fan"] rect.item')
        assert [i.get_attribute("data-step") for i in items] == [f"fan[{i}]" for i in range(4)]
        assert {i.get_attribute("data-state") for i in items} == {"SUCCEEDED"}
        browser.save_screenshot(str(ARTIFACTS / "dashboard-succeeded.png"))

        retry = browser.find_element(By.CSS_SELECTOR, 'button[data-action="retry-from"][data-step="slow"]')
        retry.click()
        WebDriverWait(browser, PATIENCE).until(lambda b: b.find_elements(By.ID, "confirmation"))
        assert "retry --from 'slow' by dash-operator" in browser.find_element(By.ID, "dry-run").text
        changed = browser.find_element(By.ID, "changes").text
        for step in ("slow", "tail", "finish"):
            assert step in changed
        browser.save_screenshot(str(ARTIFACTS / "dashboard-confirm.png"))
        assert site.broker.get_instance(instance_id).status.value == "SUCCEEDED"  # not yet applied

        browser.find_element(By.ID, "apply").click()
        WebDriverWait(browser, PATIENCE).until(lambda b: b.current_url.endswith(f"/instances/{instance_id}"))
        rerun = wait_for_state(browser, "slow", {"SUCCEEDED"})
        wait_for_state(browser, "finish", {"SUCCEEDED"})
        assert rerun[0] != "SUCCEEDED", rerun  # the page showed it run again
        WebDriverWait(browser, PATIENCE).until(
            lambda b: b.find_element(By.ID, "instance-status").text == "SUCCEEDED"
        )
    info = site.broker.get_instance(instance_id)
    assert info.step("slow").attempt == 2 and info.step("prepare").attempt == 1
    assert info.result == {"sum": 14, "length": 4}
    timeline = browser.find_element(By.ID, "timeline").text
    assert "dash-operator" in timeline
    browser.save_screenshot(str(ARTIFACTS / "dashboard.png"))
    print(
        f"browser run and retry: {time.monotonic() - started:.1f} s; slow showed {slow_states} then {rerun}"
    )


def test_a_viewer_sees_the_instance_without_any_action(browser: Any, site: Site) -> None:
    instance_id = site.broker.dispatch_workflow(pipeline.to_schema(), {"count": 2})
    sign_in(browser, site, "viewer")
    counts = {
        e.get_attribute("data-count"): e.text for e in browser.find_elements(By.CSS_SELECTOR, "[data-count]")
    }
    assert counts["RUNNING"] == "1"
    browser.get(f"{site.url}/instances/{instance_id}")
    assert node(browser, "slow").get_attribute("data-state") == "PENDING"
    assert browser.find_elements(By.CSS_SELECTOR, "button[data-action]") == []
    assert browser.find_elements(By.ID, "actions") == []
    browser.save_screenshot(str(ARTIFACTS / "dashboard-viewer.png"))


def test_a_worker_token_is_refused_and_a_revoked_one_signs_out(browser: Any, site: Site) -> None:
    browser.delete_all_cookies()
    browser.get(f"{site.url}/login")
    browser.find_element(By.ID, "token").send_keys(site.tokens["worker"])
    browser.find_element(By.ID, "sign-in").click()
    WebDriverWait(browser, PATIENCE).until(lambda b: b.find_elements(By.ID, "problem-title"))
    assert "worker token" in browser.find_element(By.ID, "problem-message").text

    sign_in(browser, site, "operator")
    from fuseline.service.tokens import TokenStore

    TokenStore(site.broker).revoke("dash-operator")
    time.sleep(1.0)
    browser.get(f"{site.url}/instances")
    assert "/login" in browser.current_url and browser.find_elements(By.ID, "token")


def shown_counts(browser: Any) -> dict[str, str]:
    """The instance counts the page shows now, by status."""
    elements = browser.find_elements(By.CSS_SELECTOR, "#counts [data-count]")
    return {e.get_attribute("data-count"): e.text for e in elements}


def wait_for_counts(browser: Any, wanted: dict[str, str]) -> float:
    """Wait (reading the page, never reloading it) until it shows ``wanted``; the seconds it took."""
    started = time.monotonic()
    WebDriverWait(browser, PATIENCE, poll_frequency=0.05).until(
        lambda b: all(shown_counts(b).get(status) == count for status, count in wanted.items())
    )
    return time.monotonic() - started


def test_the_instance_counts_follow_the_database_without_a_reload(browser: Any, site: Site) -> None:
    sign_in(browser, site, "viewer")
    assert shown_counts(browser) == {"RUNNING": "0", "SUCCEEDED": "0", "FAILED": "0", "CANCELLED": "0"}
    browser.execute_script("window.fuselineNotReloaded = true;")  # a reload would drop it
    site.broker.dispatch_workflow(pipeline.to_schema(), {"count": 2})
    site.broker.dispatch_workflow(pipeline.to_schema(), {"count": 2})
    dispatched = wait_for_counts(browser, {"RUNNING": "2", "SUCCEEDED": "0"})
    with running_worker(site.database_url, pipeline):
        finished = wait_for_counts(browser, {"RUNNING": "0", "SUCCEEDED": "2"})
    assert browser.execute_script("return window.fuselineNotReloaded === true;"), "the page was reloaded"
    print(f"counts showed the dispatch after {dispatched:.2f} s and the runs after {finished:.2f} s")
