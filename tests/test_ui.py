"""The registry's web UI in a real browser: Debian's chromium, driven by Selenium (chromium-driver).

Pages render, search works, an alias moved through the UI shows in the API (and in the audit trail
under the token's name), a read token cannot move one, the token never appears in a URL, the live
feed shows a change made elsewhere, and no page logs a console error.  With
``MODELYARD_SCREENSHOTS=DIR`` the main pages are saved there (docs/ holds the README's copies).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from modelyard.registry.kernel import schemas
from modelyard.registry.signing.bundles import TrustRoot
from modelyard.registry.settings import RegistrySettings
from tests.helpers import eventually
from tests.support.servers import ThreadedRegistry

pytestmark = pytest.mark.slow

CHROMIUM, DRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ThreadedRegistry, dict[str, str]]]:
    """A registry with authentication on, a few models, a protected alias and reported deployments."""
    tmp = tmp_path_factory.mktemp("ui")
    settings = RegistrySettings(db_url=f"sqlite:///{tmp / 'r.db'}", artifacts_url=str(tmp / "a"),
                                migrate_on_start=True)
    with ThreadedRegistry(settings) as server:
        store = server.store
        tokens = {scope: store.create_token(f"{scope}-person", scope)[0] for scope in ("read", "write", "admin")}
        store.create_model("digits-cnn", description="8×8 digits, a small CNN", tags={"team": "vision"})
        store.create_model("minilm", description="sentence embeddings", tags={"team": "nlp"})
        for number, accuracy in enumerate((0.91, 0.96, 0.97), start=1):
            store.create_version("digits-cnn", format="torch-export", metrics={"accuracy": accuracy},
                                 created_by="token:ci")
            store.mark_ready("digits-cnn", number, "sha256:" + hashlib.sha256(bytes([number])).hexdigest(), 24_576)
        store.create_version("minilm", format="bento", created_by="token:ci")
        store.set_alias("digits-cnn", "production", 2, actor="token:release-bot")
        store.set_alias("digits-cnn", "staging", 3, actor="token:ci")
        store.protect_alias("digits-cnn", "production", schemas.AliasProtection(require=["accuracy>=0.95"]))
        for name in ("team-cv", "team-old"):  # team-old is removed: what it signed shows as no longer trusted
            pem = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
            root = store.add_trust_root(name, schemas.TrustRootCreate(method="key", pem=pem), created_by="token:admin")
            store.record_signature("digits-cnn", 2, digest="sha256:" + hashlib.sha256(bytes([2])).hexdigest(),
                                   signers=[TrustRoot(name, "key", pem, root.fingerprint)], bundle=b"{}",
                                   bundle_digest="sha256:" + hashlib.sha256(b"{}").hexdigest(),
                                   uploaded_by="token:ci")
        store.remove_trust_root("team-old")
        for cluster, ready in (("eu-1", 2), ("us-1", 1)):
            store.report_deployment(cluster, "ml", "digits", schemas.DeploymentReport(
                model="digits-cnn", version=2, phase="Ready" if ready == 2 else "Degraded", ready_replicas=ready,
                desired_replicas=2, helm_revision=4, url="http://digits.ml.svc.cluster.local:3000",
                rollout_result="Ready"), reporter="token:operator")
        yield server, tokens


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not (Path(CHROMIUM).exists() and Path(DRIVER).exists()):
        pytest.fail("no chromium: run `make system-deps` (Debian's chromium and chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1280,900", "--no-first-run", "--disable-extensions"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def sign_in(driver, server: ThreadedRegistry, token: str) -> None:  # noqa: ANN001 - a selenium WebDriver
    from selenium.webdriver.common.by import By

    driver.delete_all_cookies()
    driver.get(server.url + "/ui/models/digits-cnn")
    assert "/ui/login" in driver.current_url  # auth is on: the page sends the browser to sign in
    driver.find_element(By.ID, "token").send_keys(token)
    driver.find_element(By.ID, "submit").click()
    eventually(lambda: driver.current_url.endswith("/ui/models/digits-cnn"), timeout=10, what="back after sign-in")
    assert token not in driver.current_url
    cookie = driver.get_cookie("modelyard_token")
    assert cookie and cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/ui"


def element(driver, element_id: str):  # noqa: ANN001, ANN201 - selenium types
    """The element once the page that has it has loaded (a form's answer arrives after the click)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, 10).until(expected_conditions.presence_of_element_located((By.ID, element_id)))


REFUSALS = re.compile(r"/ui/\S* - Failed to load resource: the server responded with a status of (401|403|409|422)")


def console_errors(driver) -> list[str]:  # noqa: ANN001
    """Severe console entries, less the browser's note of a page answered with a deliberate refusal
    (a read token's move is a 403 page, as the API's is a 403); a missing script or style is a 404
    and still counts."""
    return [entry["message"] for entry in driver.get_log("browser")
            if entry["level"] == "SEVERE" and not REFUSALS.search(entry["message"])]


def screenshot(driver, name: str) -> None:  # noqa: ANN001
    target = os.environ.get("MODELYARD_SCREENSHOTS")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(Path(target) / f"ui-{name}.png"))


def test_pages_render_and_search_finds_models(browser, registry) -> None:  # noqa: ANN001
    from selenium.webdriver.common.by import By

    server, tokens = registry
    sign_in(browser, server, tokens["read"])
    assert browser.find_element(By.TAG_NAME, "h1").text == "digits-cnn"
    versions = browser.find_element(By.ID, "versions").text
    assert "0.97" in versions and "token:ci" in versions and "24.0 KiB" in versions
    assert "eu-1/ml/digits: Ready 2/2" in browser.find_element(By.ID, "v2").text
    assert "us-1/ml/digits: Degraded 1/2" in browser.find_element(By.ID, "v2").text
    signed = browser.find_element(By.CSS_SELECTOR, "#v2 td.signatures").text
    assert "team-cv" in signed and "team-old (no longer trusted)" in signed and "team-cv (" not in signed
    aliases = browser.find_element(By.ID, "aliases").text
    assert "accuracy>=0.95" in aliases and "token:release-bot" in aliases
    screenshot(browser, "model")

    browser.get(server.url + "/ui")
    assert {e.text for e in browser.find_elements(By.CSS_SELECTOR, "#models td a")} == {"digits-cnn", "minilm"}
    screenshot(browser, "models")
    browser.find_element(By.ID, "q").send_keys("min")
    browser.find_element(By.CSS_SELECTOR, "#search button").click()
    eventually(lambda: "q=min" in browser.current_url, timeout=10, what="the search")
    assert [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#models td a")] == ["minilm"]
    browser.get(server.url + "/ui?tag=team%3Dvision")
    assert [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#models td a")] == ["digits-cnn"]

    browser.get(server.url + "/ui/deployments")
    rows = browser.find_element(By.ID, "deployments").text
    assert "eu-1" in rows and "us-1" in rows and "Degraded" in rows
    screenshot(browser, "deployments")
    browser.get(server.url + "/ui/models/digits-cnn/aliases/production")
    assert "token:release-bot" in browser.find_element(By.ID, "history").text
    assert console_errors(browser) == []


def test_an_alias_moved_in_the_ui_moves_in_the_api_under_the_rules(browser, registry) -> None:  # noqa: ANN001
    from selenium.webdriver.common.by import By

    server, tokens = registry
    api = server.url + "/api/v1/models/digits-cnn/aliases"
    as_admin = {"Authorization": f"Bearer {tokens['admin']}"}

    def move(alias: str, version: int) -> None:
        browser.find_element(By.ID, "alias").send_keys(alias)
        browser.find_element(By.ID, "version").send_keys(str(version))
        browser.find_element(By.ID, "move").click()

    sign_in(browser, server, tokens["read"])  # a read token cannot move an alias
    move("staging", 1)
    assert "needs 'write'" in element(browser, "error").text
    assert httpx.get(f"{api}/staging", headers=as_admin).json()["version"] == 3

    sign_in(browser, server, tokens["write"])
    move("staging", 1)
    assert "staging → 1" in element(browser, "notice").text
    assert httpx.get(f"{api}/staging", headers=as_admin).json()["version"] == 1
    history = httpx.get(f"{api}/staging/history", headers=as_admin).json()["items"]
    assert (history[0]["from_version"], history[0]["to_version"], history[0]["actor"]) == (3, 1, "token:write-person")
    move("production", 1)  # protected: version 1 has accuracy 0.91
    assert "accuracy >= 0.95 (accuracy is 0.91)" in element(browser, "error").text
    assert httpx.get(f"{api}/production", headers=as_admin).json()["version"] == 2
    assert console_errors(browser) == []


def test_the_event_feed_is_live(browser, registry) -> None:  # noqa: ANN001
    from selenium.webdriver.common.by import By

    server, tokens = registry
    sign_in(browser, server, tokens["read"])
    browser.get(server.url + "/ui/events")
    eventually(lambda: browser.find_element(By.ID, "feed-state").text == "live", timeout=30, what="the feed")
    httpx.put(server.url + "/api/v1/models/digits-cnn/aliases/canary", json={"version": 3},
              headers={"Authorization": f"Bearer {tokens['write']}"}).raise_for_status()
    eventually(lambda: "alias.set digits-cnn:3 @canary" in " ".join(browser.find_element(By.ID, "feed").text.split()),
               timeout=15, what="the change in the live feed")
    screenshot(browser, "events")
    assert console_errors(browser) == []


def test_the_sign_in_page_refuses_a_bad_token_and_goes_nowhere_else(browser, registry) -> None:  # noqa: ANN001
    from selenium.webdriver.common.by import By

    server, _ = registry
    browser.delete_all_cookies()
    browser.get(server.url + "/ui/login?next=https://elsewhere.example/")
    browser.find_element(By.ID, "token").send_keys("my_not-a-token")
    browser.find_element(By.ID, "submit").click()
    assert "unknown or revoked token" in element(browser, "error").text
    assert browser.get_cookie("modelyard_token") is None
    hidden = browser.find_element(By.NAME, "next").get_attribute("value")
    assert hidden == "/ui"  # no open redirect


def refused_posts(server: ThreadedRegistry, route: str) -> float:
    """How many posts to ``route`` the UI refused with 403 (read from the server's own metrics)."""
    return server.app.state.metrics.requests.labels("POST", route, "403")._value.get()


@pytest.fixture
def attacker_site() -> Iterator[tuple[str, dict[str, str]]]:
    """Another origin (127.0.0.2, its own port) serving the pages put in the returned dict."""
    import http.server
    import threading

    pages: dict[str, str] = {}

    class Pages(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the standard library's name
            body = pages.get(self.path, "").encode()
            self.send_response(200 if body else 404)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: object) -> None:
            pass

    site = http.server.ThreadingHTTPServer(("127.0.0.2", 0), Pages)
    thread = threading.Thread(target=site.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.2:{site.server_address[1]}", pages
    finally:
        site.shutdown()
        site.server_close()


def _forged(action: str, fields: dict[str, str]) -> str:
    inputs = "".join(f'<input name="{k}" value="{v}">' for k, v in fields.items())
    return f'<form method="post" action="{action}">{inputs}</form><script>document.forms[0].submit()</script>'


@pytest.mark.parametrize("auth", ["open registry", "signed-in visitor"])
def test_a_page_on_another_site_cannot_move_an_alias_or_sign_a_visitor_in(  # noqa: ANN001
        browser, registry, attacker_site, tmp_path: Path, auth: str) -> None:
    """Cross-site posts, by plain form and from a sandboxed frame (``Origin: null``), change nothing:
    on the embedded default (no tokens: no cookie is needed to move an alias) and for a signed-in
    visitor (the other site is on the same host, so a SameSite cookie alone would not stop it)."""
    site, pages = attacker_site
    open_settings = RegistrySettings(db_url=f"sqlite:///{tmp_path / 'r.db'}", artifacts_url=str(tmp_path / "a"),
                                     migrate_on_start=True)
    with ThreadedRegistry(open_settings) as open_server:
        server, tokens = (open_server, {}) if auth == "open registry" else registry
        store = server.store
        if auth == "open registry":
            store.create_model("digits-cnn")
            for number in (1, 2):
                store.create_version("digits-cnn", format="torch-export")
                store.mark_ready("digits-cnn", number, "sha256:" + hashlib.sha256(bytes([number])).hexdigest(), 1)
            store.set_alias("digits-cnn", "production", 2)
            browser.delete_all_cookies()
            browser.get(server.url + "/ui/models/digits-cnn")  # a visit: the browser holds the UI's cookies
        else:
            sign_in(browser, server, tokens["write"])
        before = store.get_alias("digits-cnn", "production").version
        move = f"{server.url}/ui/models/digits-cnn/aliases"
        pages["/form"] = _forged(move, {"alias": "production", "version": "1"})
        frame = _forged(move, {"alias": "production", "version": "1"}).replace('"', "&quot;")
        pages["/frame"] = f'<iframe sandbox="allow-forms allow-scripts" srcdoc="{frame}"></iframe>'
        pages["/login"] = _forged(f"{server.url}/ui/login", {"token": "my_attackers-token-0123456789"})
        for page, route in (("/form", "/ui/models/{name}/aliases"), ("/frame", "/ui/models/{name}/aliases"),
                            ("/login", "/ui/login")):
            refused = refused_posts(server, route)
            browser.get(site + page)
            eventually(lambda: refused_posts(server, route) == refused + 1, timeout=15,  # noqa: B023
                       what=f"the post from {page} to reach the registry and be refused")
        assert store.get_alias("digits-cnn", "production").version == before
        assert [m.actor for m in store.alias_history("digits-cnn", "production").items].count("anonymous") <= 1
        if auth == "signed-in visitor":  # still signed in as the visitor, not as the attacker
            browser.get(server.url + "/ui/models/digits-cnn")
            assert "token:write-person" in browser.find_element("tag name", "header").text


def test_ui_answers_forbid_framing_sniffing_and_caching(registry) -> None:  # noqa: ANN001
    server, tokens = registry
    with httpx.Client(base_url=server.url, timeout=10) as client:
        client.cookies.set("modelyard_token", tokens["read"], path="/ui")
        for path in ("/ui/models/digits-cnn", "/ui/login", "/ui/static/ui.css"):
            answer = client.get(path)
            assert answer.status_code == 200, path
            assert answer.headers["x-frame-options"] == "DENY"
            assert "frame-ancestors 'none'" in answer.headers["content-security-policy"]
            assert "script-src 'self'" in answer.headers["content-security-policy"]
            assert answer.headers["x-content-type-options"] == "nosniff"
            assert answer.headers["referrer-policy"] == "same-origin"
            assert (answer.headers.get("cache-control") == "no-store") == (not path.startswith("/ui/static"))
        # a link cannot put its own words on a page: only an alias name and a number are shown
        page = client.get("/ui/models/digits-cnn", params={"notice": "Session expired: call +1-555-0100",
                                                            "moved": "Call us now", "to": "3"}).text
        assert "555-0100" not in page and "Call us now" not in page
        assert "staging → 3" in client.get("/ui/models/digits-cnn", params={"moved": "staging", "to": "3"}).text
        # a direct post with a matching cookie pair but no Origin is refused too
        client.cookies.set("modelyard_csrf", "a" * 43, path="/ui")
        answer = client.post("/ui/models/digits-cnn/aliases", data={"alias": "staging", "version": "1",
                                                                   "csrf": "a" * 43})
        assert answer.status_code == 403 and "does not say where it comes from" in answer.json()["detail"]
        answer = client.post("/ui/models/digits-cnn/aliases", headers={"Origin": server.url},
                             data={"alias": "staging", "version": "1", "csrf": "b" * 43})
        assert answer.status_code == 403 and "CSRF" in answer.json()["detail"]


def test_the_session_cookie_is_secure_behind_a_trusted_tls_proxy_only(tmp_path: Path) -> None:
    for trusted in (False, True):
        settings = RegistrySettings(db_url=f"sqlite:///{tmp_path / f'{trusted}.db'}", artifacts_url=str(tmp_path / "a"),
                                    migrate_on_start=True, trust_forwarded_proto=trusted)
        with ThreadedRegistry(settings) as server:
            token, _ = server.store.create_token("person", "read")
            with httpx.Client(base_url=server.url, timeout=10) as client:
                page = client.get("/ui/login", headers={"X-Forwarded-Proto": "https"})
                csrf = page.cookies["modelyard_csrf"]
                origin = "https://" + server.url.removeprefix("http://") if trusted else server.url
                client.cookies.clear()  # sent by hand: the jar keeps a Secure cookie off plain http
                answer = client.post("/ui/login", data={"token": token, "csrf": csrf},
                                     headers={"Origin": origin, "X-Forwarded-Proto": "https",
                                              "Cookie": f"modelyard_csrf={csrf}"})
                assert answer.status_code == 303, answer.text
                cookie = answer.headers["set-cookie"]
                assert ("secure" in cookie.lower()) == trusted
