// The live event feed: long-polls the UI's own feed (the sign-in cookie authorizes it) and prepends
// what arrives.  Bounded: at most 200 lines are kept, and a failing feed backs off up to 30 s.
(function () {
  const list = document.getElementById("feed");
  if (!list) return;
  let after = Number(list.dataset.after || 0);
  let delay = 1000;
  function line(event) {
    const item = document.createElement("li");
    const when = new Date(event.time).toISOString().slice(11, 19);  // UTC, as the server renders times
    const what = [event.model, event.version != null ? ":" + event.version : "", event.alias ? " @" + event.alias : ""].join("");
    item.textContent = when + "  " + event.type + "  " + what;
    item.className = "mono";
    return item;
  }
  const state = document.getElementById("feed-state");
  async function poll() {
    if (delay === 1000) state.textContent = "live";  // following (not after a failure)
    try {
      const answer = await fetch("/ui/events.json?after=" + after, {credentials: "same-origin"});
      if (!answer.ok) throw new Error("feed answered " + answer.status);
      const page = await answer.json();
      for (const event of page.events) list.insertBefore(line(event), list.firstChild);
      while (list.children.length > 200) list.removeChild(list.lastChild);
      after = page.next;
      delay = 1000;
      setTimeout(poll, 0);
    } catch (error) {
      state.textContent = "reconnecting…";
      setTimeout(poll, delay);
      delay = Math.min(delay * 2, 30000);
    }
  }
  poll();
})();
