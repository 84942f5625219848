"""The dashboard in a real Chromium, driven by Playwright for Python (pinned by
scripts/setup.d/dashboard-browser.sh); run by the `in_a_real_chromium` test in dashboard.rs,
which starts the daemon and checks consent and jobs through the CLI around this.

Argument: one JSON object with login_url, port, sysfs (the fake power supply's root),
assets (photos in the library), library (its folder), new_photo (a JPEG to add outside the
folder consent is limited to), screenshots (a folder) and axe (axe.min.js). With
"mode": "failed" (the `failed_uploads_in_a_real_chromium` test, a server that refuses every
photo) it checks the failed cards and their thumbnails instead.
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


def thumbs_loaded(page, section):
    """Scrolls each thumbnail of `section` (a heading id) into view (they load lazily) and
    waits until every one has loaded; their natural widths."""
    imgs = page.locator(f'section[aria-labelledby="{section}"] img.thumb')
    check(imgs.count() > 0, f"no thumbnail under #{section}")
    # Live updates may replace the list (and its images) at any moment: each poll brings the
    # images not loaded yet, whichever elements they are now, into view.
    page.wait_for_function(
        "s => { const l = [...document.querySelectorAll("
        "`section[aria-labelledby=\"${s}\"] img.thumb`)];"
        " const todo = l.filter(i => !(i.complete && i.naturalWidth > 0));"
        " todo.forEach(i => i.scrollIntoView({block: 'center'}));"
        " return l.length > 0 && todo.length === 0; }",
        arg=section,
        timeout=30_000,
    )
    return imgs.evaluate_all("l => l.map(i => [i.alt, i.naturalWidth, i.currentSrc])")


def axe_check(page):
    """Accessibility: axe-core finds nothing serious (evaluated over the DevTools protocol,
    which the page's CSP does not govern; the page itself still runs no inline script). The
    minor findings."""
    with open(ARGS["axe"]) as f:
        page.evaluate(f.read())
    results = page.evaluate(
        "async () => { const r = await axe.run(document); "
        "return r.violations.map(v => ({id: v.id, impact: v.impact, help: v.help})); }"
    )
    serious = [v for v in results if v["impact"] in ("serious", "critical")]
    check(not serious, f"axe-core: {serious}")
    return results


def failed_mode(page, shots):
    """A server that refuses every photo: the verdict says so, each failed file has a card
    line with its error and a thumbnail that loaded, and axe-core finds nothing serious."""
    page.goto(ARGS["login_url"])
    check(page.url == ORIGIN + "/", f"after the login the page is {page.url}")
    v = verdict(page)
    check("failed" in v, f"the verdict is {v!r}")
    found["verdict"] = v
    check(page.locator("#failed-h").count() == 1, "no Failed section")
    thumbs = thumbs_loaded(page, "failed-h")
    found["failed_thumbs"] = thumbs
    # The fixtures are 64 x 48 JPEGs: real thumbnails, not the placeholder (256 wide).
    check(any(w == 64 for _, w, _ in thumbs), f"no JPEG thumbnail among {thumbs}")
    check(all(src.startswith(ORIGIN + "/thumb/") for _, _, src in thumbs), f"{thumbs}")
    found["axe_minor"] = axe_check(page)
    page.screenshot(path=os.path.join(shots, "failed-desktop-light.png"), full_page=True)
    page.emulate_media(color_scheme="dark")
    page.set_viewport_size({"width": 390, "height": 844})
    page.screenshot(path=os.path.join(shots, "failed-phone-dark.png"), full_page=True)


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
    if ARGS.get("mode") == "failed":
        failed_mode(page, ARGS["screenshots"])
        foreign = [u for u in requests if not u.startswith(ORIGIN + "/")]
        check(not foreign, f"requests elsewhere: {foreign}")
        browser.close()
        print(json.dumps(found))
        sys.exit(0)

    # The one-time link logs in and leaves no token in the address bar.
    page.goto(ARGS["login_url"])
    check(page.url == ORIGIN + "/", f"after the login the page is {page.url}")
    waiting = verdict(page)
    check("waiting for the charger" in waiting, f"on battery the verdict is {waiting!r}")
    found["verdict_on_battery"] = waiting
    # The waiting list says the same reason, each photo with a thumbnail that loaded.
    lists = page.locator("#lists").inner_text()
    check("waiting for the charger" in lists, f"on battery the lists say {lists!r}")
    found["waiting_thumbs_on_battery"] = thumbs_loaded(page, "waiting-h")
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
    # What is observed follows too: it never says "on battery" beside "uploads may run".
    page.wait_for_function(
        "() => document.getElementById('observed').textContent.includes('on mains power')",
        timeout=30_000,
    )
    check(page.evaluate("window.__ferryNoReload === true"), "the page was reloaded")

    found["axe_minor"] = axe_check(page)

    for scheme in ("light", "dark"):
        page.emulate_media(color_scheme=scheme)
        for name, size in (("desktop", (1280, 800)), ("phone", (390, 844))):
            page.set_viewport_size({"width": size[0], "height": size[1]})
            page.screenshot(path=os.path.join(shots, f"safe-{name}-{scheme}.png"), full_page=True)
    page.emulate_media(color_scheme="light")
    page.set_viewport_size({"width": 1280, "height": 800})

    # Consent limited to one folder (the card's form): a new photo elsewhere waits "outside
    # consent scope", said by the verdict and listed with its thumbnail, with no reload.
    page.goto(ORIGIN + "/")
    page.fill("#folders-bundled", "Trips")
    with page.expect_response(f"{ORIGIN}/extensions/limit") as r:
        page.get_by_role("button", name="Limit to these folders").click()
    check(r.value.status == 303, f"the limit got {r.value.status}")
    page.wait_for_load_state()
    check("only these folders: Trips" in page.content(), "the card does not show the limit")
    page.evaluate("window.__ferryNoReload = true")
    with open(ARGS["new_photo"], "rb") as f:
        photo = f.read() + b"a new photo"
    tmp = os.path.join(os.path.dirname(ARGS["library"]), "new-elsewhere.jpg.tmp")
    with open(tmp, "wb") as f:
        f.write(photo)
    os.replace(tmp, os.path.join(ARGS["library"], "new-elsewhere.jpg"))
    try:
        page.wait_for_function(
            "() => document.getElementById('verdict-text').textContent.includes('outside consent scope')",
            timeout=90_000,
        )
    except Exception as e:
        check(False, f"no 'outside consent scope' ({e}); the page shows: {verdict(page)!r}, "
              f"{page.locator('#progress').inner_text()!r}, {page.locator('#lists').inner_text()!r}")
    found["verdict_outside_scope"] = verdict(page)
    # The progress line agrees: the photo no consent covers is not counted as one to send.
    page.wait_for_function(
        "() => { const m = document.getElementById('progress').textContent"
        ".match(/(\\d+) of (\\d+) files sent/); return !m || m[1] === m[2]; }",
        timeout=30_000,
    )
    found["progress_outside_scope"] = page.locator("#progress").inner_text()
    # The waiting list follows live too, the new photo's thumbnail in it.
    page.wait_for_function(
        "() => (document.getElementById('lists').textContent || '').includes('new-elsewhere.jpg')",
        timeout=30_000,
    )
    check(page.evaluate("window.__ferryNoReload === true"), "the page was reloaded")
    waiting = page.locator('section[aria-labelledby="waiting-h"]').inner_text()
    check("outside consent scope" in waiting and "new-elsewhere.jpg" in waiting, waiting)
    found["waiting_thumbs"] = thumbs_loaded(page, "waiting-h")
    page.screenshot(path=os.path.join(shots, "outside-scope-desktop-light.png"), full_page=True)

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
