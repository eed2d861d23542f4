// fuseline dashboard: live instance graphs and counts, by polling small JSON endpoints.
"use strict";
(function () {
  const POLL_MS = 1000;

  async function getJson(url) {
    const response = await fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } });
    if (response.status === 401) { window.location.reload(); return null; }
    return response.ok ? response.json() : null;
  }

  function setState(element, state) {
    for (const name of [...element.classList]) {
      if (name.startsWith("state-")) element.classList.remove(name);
    }
    element.classList.add("state-" + state);
    element.dataset.state = state;
  }

  function editing() {
    const active = document.activeElement;
    return active && ["INPUT", "TEXTAREA", "SELECT"].includes(active.tagName);
  }

  async function followInstance(box) {
    const base = "/instances/" + encodeURIComponent(box.dataset.instance);
    const live = await getJson(base + "/live.json");
    if (live === null) return;
    const svg = box.querySelector("svg");
    if (svg && svg.dataset.shape !== live.shape) {
      const response = await fetch(base + "/graph", { credentials: "same-origin" });
      if (response.ok) box.innerHTML = await response.text();
    }
    for (const element of box.querySelectorAll("[data-step]")) {
      const state = live.steps[element.dataset.step];
      if (state && element.dataset.state !== state) {
        setState(element, state);
        const text = element.querySelector(".state-text");
        if (text) text.textContent = state;
      }
    }
    for (const badge of document.querySelectorAll("[data-step-state]")) {
      const state = live.steps[badge.dataset.stepState];
      if (state && badge.textContent !== state) { setState(badge, state); badge.textContent = state; }
    }
    const progress = document.getElementById("progress");
    if (progress) progress.textContent = live.done + "/" + live.total + " steps done";
    const status = document.getElementById("instance-status");
    if (status && status.textContent !== live.status) {
      setState(status, live.status);
      status.textContent = live.status;
    }
    if (live.status !== box.dataset.status && !editing()) window.location.reload();
  }

  async function followCounts(box) {
    const counts = await getJson("/counts.json?workflow=" + encodeURIComponent(box.dataset.workflow || ""));
    if (counts === null) return;
    for (const element of box.querySelectorAll("[data-count]")) {
      const value = counts[element.dataset.count];
      if (value !== undefined) element.textContent = value;
    }
  }

  function every(task) {
    let busy = false;
    setInterval(async function () {
      if (busy || document.hidden) return;
      busy = true;
      try { await task(); } catch (error) { /* the next poll tries again */ } finally { busy = false; }
    }, POLL_MS);
  }

  document.addEventListener("DOMContentLoaded", function () {
    const graph = document.getElementById("graph");
    if (graph) every(() => followInstance(graph));
    const counts = document.getElementById("counts");
    if (counts) every(() => followCounts(counts));
  });
})();
