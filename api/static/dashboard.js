// The dashboard's only script (the project's own; the CSP allows no other).
// Live refresh: every data-refresh seconds while the tab is visible, re-fetch
// this page and swap its [data-live] regions; stop while the tab is hidden.
// Actions: forms marked data-action are sent with fetch (after a confirm when
// data-confirm is set), then the page's live regions are refreshed. Without
// this script every link and form works as plain HTML.
(function () {
  "use strict";
  var seconds = Number(document.body.dataset.refresh || 0);
  var pending = null;

  function parse(html) {
    return new DOMParser().parseFromString(html, "text/html");
  }

  function swap(doc) {
    document.querySelectorAll("[data-live]").forEach(function (old) {
      var fresh = doc.getElementById(old.id);
      if (fresh) {
        old.replaceWith(document.importNode(fresh, true));
      }
    });
  }

  function live() {
    // A page without live parts (a form's result) has nothing to refresh.
    return document.querySelector("[data-live]") !== null;
  }

  function get(url) {
    return fetch(url, {credentials: "same-origin", cache: "no-store", redirect: "follow"});
  }

  function signedOut(response) {
    // A session that ended answers with the sign-in page: go there.
    if (new URL(response.url).pathname.endsWith("/signin")) {
      window.location.assign(response.url);
      return true;
    }
    return false;
  }

  function refresh() {
    return get(window.location.href).then(function (response) {
      if (signedOut(response) || !response.ok) {
        return;
      }
      return response.text().then(function (html) { swap(parse(html)); });
    }).catch(function () { /* offline for a moment: the next tick tries again */ });
  }

  function schedule() {
    window.clearTimeout(pending);
    pending = null;
    if (seconds > 0 && live() && document.visibilityState === "visible") {
      pending = window.setTimeout(function () { refresh().then(schedule); }, seconds * 1000);
    }
  }

  function flash(text) {
    var box = document.getElementById("flash");
    box.textContent = "";
    if (text) {
      var p = document.createElement("p");
      p.className = "flash";
      p.textContent = text;
      box.appendChild(p);
    }
  }

  document.addEventListener("visibilitychange", function () {
    if (document.visibilityState === "visible") {
      refresh().then(schedule);
    } else {
      schedule();
    }
  });

  document.addEventListener("submit", function (event) {
    var form = event.target;
    if (!form.hasAttribute("data-action")) {
      return;
    }
    event.preventDefault();
    if (form.dataset.confirm && !window.confirm(form.dataset.confirm)) {
      return;
    }
    fetch(form.action, {method: "POST", credentials: "same-origin", body: new URLSearchParams(new FormData(form))})
      .then(function (response) {
        if (signedOut(response)) {
          return;
        }
        return response.text().then(function (html) {
          var note = parse(html).querySelector("#flash .flash, main .error");
          flash(note ? note.textContent : "HTTP " + response.status);
          return refresh();
        });
      })
      .catch(function () { flash("The service did not answer; try again."); });
  });

  schedule();
}());
