// The dashboard's live updates: one EventSource on /events per page. New messages that
// belong on this page (the body's data-live says which) are inserted at the top of
// #messages; a delivery-state change updates every item of that message on the page; a
// live agents table gets its rows again when they change. The inserted markup is the
// server's own rendering, escaped there.
(function () {
  "use strict";
  var list = document.getElementById("messages") || document.getElementById("results");
  var agents = document.querySelector('table#agents[data-live="agents"] tbody');
  if ((!list && !agents) || typeof EventSource === "undefined") {
    return;
  }
  var body = document.body;
  var live = body.dataset.live;
  // A page left open on busy agents keeps only this many messages, newest first.
  var MAX_SHOWN = 200;
  var skipped = 0;

  function newestShown() {
    var newest = 0;
    if (!list) {
      return newest;
    }
    list.querySelectorAll("li.message").forEach(function (item) {
      newest = Math.max(newest, Number(item.dataset.id) || 0);
    });
    return newest;
  }

  function belongs(message) {
    switch (live) {
      case "all":
        return true;
      case "thread":
        return String(message.thread) === body.dataset.thread;
      case "to":
        return message.to === body.dataset.to;
      case "pair":
        return (message.from === body.dataset.a && message.to === body.dataset.b) ||
          (message.from === body.dataset.b && message.to === body.dataset.a);
      default:
        return false;
    }
  }

  var source = new EventSource("/events?after=" + newestShown() + (agents ? "&agents=1" : ""));

  source.addEventListener("message", function (event) {
    var message = JSON.parse(event.data);
    if (!list || !belongs(message) || list.querySelector('li.message[data-id="' + message.id + '"]')) {
      return;
    }
    var template = document.createElement("template");
    template.innerHTML = message.html;
    var item = template.content.firstElementChild;
    if (item) {
      item.classList.add("new");
      list.prepend(item);
      while (list.children.length > MAX_SHOWN) {
        list.lastElementChild.remove();
      }
    }
  });

  // More mail arrived than the stream sends at once: say so, and how to see it all.
  source.addEventListener("skipped", function (event) {
    if (!list) {
      return;
    }
    skipped += JSON.parse(event.data).count;
    var notice = document.getElementById("skipped");
    if (!notice) {
      notice = document.createElement("p");
      notice.id = "skipped";
      notice.className = "notice";
      list.parentNode.insertBefore(notice, list);
    }
    notice.textContent = "About " + skipped + " more messages arrived too fast to show live; " +
      "reload the page to list them all.";
  });

  source.addEventListener("agents", function (event) {
    if (agents) {
      agents.innerHTML = JSON.parse(event.data).html;
    }
  });

  source.addEventListener("state", function (event) {
    var change = JSON.parse(event.data);
    document.querySelectorAll('li.message[data-id="' + change.id + '"]').forEach(function (item) {
      item.dataset.state = change.state;
      var label = item.querySelector(".state");
      if (label) {
        label.textContent = change.state;
      }
    });
  });
})();
