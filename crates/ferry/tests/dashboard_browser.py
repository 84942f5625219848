"""The dashboard in a real Chromium, driven by Playwright for Python (pinned by
scripts/setup.d/dashboard-browser.sh); run by the `in_a_real_chromium` test in dashboard.rs,
which starts the daemon and checks consent and jobs through the CLI around this.

Argument: one JSON object with login_url, port, sysfs (the fake power supply's root),
assets (photos in the library), screenshots (a folder) and axe (axe.min.js).
Prints one JSON line of findings; exits non-zero with the reason on the first failed check.
"""

import http.server
import json
import os
import sys
import threading

from playwright.sync_api import sync_playwright

ARGS = json.loads(sys.argv[1])
PORT = ARGS["port"]
ORIGIN = f"http://127.0.0.1:{PORT}"
found = {}


def check(cond, what):
    if not cond:
        raise SystemExit(f"dashboard_browser.py: {what}")


def sysfs(rel, value):
    path = os.path.join(ARGS["sysfs"], rel)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(value)
    os.replace(tmp, path)  # the observer never reads half a value


def plug_in():
    sysfs("class/power_supply/AC/online", "1")
    sysfs("class/power_supply/BAT0/status", "Charging")


class Attacker(http.server.BaseHTTPRequestHandler):
    """Another origin whose page auto-submits a revoke form to the dashboard. The form carries
    the session's real CSRF token (`csrf`, set by the test): as if it had leaked, so that only
    the cookie's SameSite and the Origin / Sec-Fetch-Site checks stand in the way."""

    csrf = ""

    def do_GET(self):
        body = f"""<!doctype html><html><body>
<form id="f" method="post" action="{ORIGIN}/extensions/revoke">
<input type="hidden" name="id" value="bundled"><input type="hidden" name="csrf" value="{self.csrf}">
</form><script>document.getElementById("f").submit();</script></body></html>""".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def verdict(page):
    return page.locator("#verdict-text").inner_text()


def consent_shown(page):
    """What the bundled extension's card says of its consent, as the page shows it now."""
    page.goto(ORIGIN + "/")
    return page.locator('article[aria-labelledby="ext-bundled"] dt:text-is("Consent") + dd').inner_text()


def forged_revoke(context, page_url):
    """Opens the attacker's page at `page_url` in a new tab; the status its revoke got."""
    evil = context.new_page()
    with evil.expect_response(f"{ORIGIN}/extensions/revoke") as r:
        evil.goto(page_url)
    status = r.value.status
    evil.close()
    return status


with sync_playwright() as p:
    browser = p.chromium.launch(
        executable_path="/usr/bin/chromium",
        args=[
            "--no-sandbox",
            "--disable-gpu",
            # DNS rebinding: a name of the attacker's that resolves to our loopback address;
            # and another site of the attacker's, served from loopback too.
            "--host-resolver-rules=MAP evil.test 127.0.0.1, MAP attacker.test 127.0.0.1",
        ],
    )
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    requests = []
    page.on("request", lambda r: requests.append(r.url))

    # The one-time link logs in and leaves no token in the address bar.
    page.goto(ARGS["login_url"])
    check(page.url == ORIGIN + "/", f"after the login the page is {page.url}")
    waiting = verdict(page)
    check("waiting for the charger" in waiting, f"on battery the verdict is {waiting!r}")
    found["verdict_on_battery"] = waiting
    shots = ARGS["screenshots"]
    page.screenshot(path=os.path.join(shots, "waiting-desktop-light.png"), full_page=True)

    # Plugging in turns the verdict with no reload: a marker set on this document survives.
    page.evaluate("window.__ferryNoReload = true")
    plug_in()
    expected = f"All {ARGS['assets']} photos are backed up"
    page.wait_for_function(
        "t => document.getElementById('verdict-text').textContent === t",
        arg=expected,
        timeout=90_000,
    )
    check(page.evaluate("window.__ferryNoReload === true"), "the page was reloaded")
    found["verdict_plugged_in"] = verdict(page)
    page.wait_for_function(
        "() => document.getElementById('conditions').textContent === 'uploads may run'",
        timeout=30_000,
    )

    # Accessibility: axe-core finds nothing serious (evaluated over the DevTools protocol,
    # which the page's CSP does not govern; the page itself still runs no inline script).
    with open(ARGS["axe"]) as f:
        page.evaluate(f.read())
    results = page.evaluate(
        "async () => { const r = await axe.run(document); "
        "return r.violations.map(v => ({id: v.id, impact: v.impact, help: v.help})); }"
    )
    serious = [v for v in results if v["impact"] in ("serious", "critical")]
    check(not serious, f"axe-core: {serious}")
    found["axe_minor"] = results

    for scheme in ("light", "dark"):
        page.emulate_media(color_scheme=scheme)
        for name, size in (("desktop", (1280, 800)), ("phone", (390, 844))):
            page.set_viewport_size({"width": size[0], "height": size[1]})
            page.screenshot(path=os.path.join(shots, f"safe-{name}-{scheme}.png"), full_page=True)
    page.emulate_media(color_scheme="light")
    page.set_viewport_size({"width": 1280, "height": 800})

    # Every request the page made went to its own origin.
    foreign = [u for u in requests if not u.startswith(ORIGIN + "/")]
    check(not foreign, f"requests elsewhere: {foreign}")
    found["requests"] = sorted(set(requests))

    # Other sites' pages auto-submit a revoke form carrying the session's real CSRF token.
    check(consent_shown(page) == "Enabled", "the extension is enabled before the forgeries")
    Attacker.csrf = page.locator('input[name="csrf"]').first.get_attribute("value")
    check(len(Attacker.csrf) == 64, f"the page's CSRF token is {Attacker.csrf!r}")
    server = http.server.HTTPServer(("127.0.0.1", 0), Attacker)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    attacker_port = server.server_address[1]
    # A cross-site page (attacker.test is not 127.0.0.1's site): Chromium does not send the
    # SameSite=Strict cookie on the cross-site post, so the dashboard sees no session: 401.
    status = forged_revoke(context, f"http://attacker.test:{attacker_port}/")
    found["cross_site_revoke_status"] = status
    check(status == 401, f"a cross-site revoke got {status}")
    check(consent_shown(page) == "Enabled", "a cross-site revoke changed the consent")
    # The same address on another port is the same site, so the cookie goes along, and the
    # token is right: only Sec-Fetch-Site (same-site, not same-origin) and Origin refuse it.
    status = forged_revoke(context, f"http://127.0.0.1:{attacker_port}/")
    found["same_site_revoke_status"] = status
    check(status == 403, f"a same-site, cross-origin revoke got {status}")
    check(consent_shown(page) == "Enabled", "a same-site revoke changed the consent")
    server.shutdown()

    # DNS rebinding: our address under another name is refused.
    evil = context.new_page()
    resp = evil.goto(f"http://evil.test:{PORT}/")
    found["rebinding_status"] = resp.status
    check(resp.status == 421, f"evil.test got {resp.status}")
    evil.close()

    # The real revoke, by clicking its button (a plain form post, then back to the page).
    page.goto(ORIGIN + "/")
    with page.expect_response(f"{ORIGIN}/extensions/revoke") as r:
        page.get_by_role("button", name="Revoke").click()
    if r.value.status != 303:
        check(False, f"the revoke got {r.value.status}: {r.value.text()}")
    page.wait_for_load_state()
    check(page.url == ORIGIN + "/", f"after the revoke the page is {page.url}")
    check("Not enabled" in page.content(), "the card does not show the revoke")
    page.screenshot(path=os.path.join(shots, "revoked-desktop-light.png"), full_page=True)
    browser.close()

print(json.dumps(found))
