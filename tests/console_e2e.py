"""The web console's newcomer journey in a real browser (Debian's chromium, driven by Playwright).

Usage: console_e2e.py <base_url> <admin_token> <screenshot_dir> <admin_email> <admin_password>

The admin token reads the development mailbox (GET /v1/admin/mailbox), where the server writes the
mails a person would receive: the verification link and the invitation link are opened from there.
Journey: a wrong password shows the API's message → register → verify from the mail's link →
create an organization → invite a member → the invitee accepts from the mail's link (a second
browser context) → create an API key (shown once, copy button) → listed → rotate, disable,
revoke → the test environment has its own keys → providers, policies, a test key tried from the
page (answered, then refused by a rule) → the calls in the usage log, charts and violations →
webhooks → settings, billing → the pages at a phone's width; then the
invitee's reset password (mail link), sign-in code and MFA step.
Prints a JSON summary on stdout for tests/console.rs to check against the API.
"""

import base64
import hashlib
import hmac
import json
import pathlib
import struct
import threading
import http.server
import urllib.error
import re
import sys
import time
import urllib.parse
import urllib.request

from playwright.sync_api import expect, sync_playwright

BASE, ADMIN, SHOTS = sys.argv[1].rstrip("/"), sys.argv[2], pathlib.Path(sys.argv[3])
ADMIN_EMAIL, ADMIN_PASSWORD = sys.argv[4], sys.argv[5]
SHOTS.mkdir(parents=True, exist_ok=True)
OWNER = "owner@example.com"
INVITEE = "invitee@example.com"
PASSWORD = "a-long-console-passphrase-42"


def mail(to, subject):
    """The newest mail to `to` whose subject contains `subject` (waits for the background send)."""
    deadline = time.time() + 30
    while True:
        req = urllib.request.Request(
            f"{BASE}/v1/admin/mailbox?to={urllib.parse.quote(to)}",
            headers={"Authorization": f"Bearer {ADMIN}"},
        )
        with urllib.request.urlopen(req) as res:
            messages = json.load(res)["messages"]
        for m in messages:
            if subject in m["subject"]:
                return m["body"]
        if time.time() > deadline:
            raise AssertionError(f"no mail {subject!r} to {to}")
        time.sleep(0.2)


def link_in(body, path):
    """The mail's link to `path`, opened on this server (its path and query)."""
    m = re.search(r"https?://\S+?(" + re.escape(path) + r"\?\S+)", body)
    assert m, f"no {path} link in:\n{body}"
    return BASE + m.group(1)


class Receiver(http.server.BaseHTTPRequestHandler):
    """A webhook receiver on this machine: records each event type, answers 204."""

    received = []

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        Receiver.received.append(body.get("type"))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


def totp(secret_b32, at=None):
    """RFC 6238 (SHA-1, 6 digits, 30 s): an independent implementation."""
    key = base64.b32decode(secret_b32.upper() + "=" * (-len(secret_b32) % 8))
    counter = int((at or time.time()) // 30)
    digest = hmac.new(key, struct.pack(">Q", counter), hashlib.sha1).digest()
    offset = digest[-1] & 0x0F
    value = struct.unpack(">I", digest[offset : offset + 4])[0] & 0x7FFFFFFF
    return f"{value % 1_000_000:06d}"


def shot(page, name):
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def main():
    # The whole test suite runs beside this browser on a small machine: generous waits (each
    # only as long as the page needs).
    expect.set_options(timeout=20_000)
    summary = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
        owner_ctx = browser.new_context(viewport={"width": 1280, "height": 860})
        owner_ctx.grant_permissions(["clipboard-read", "clipboard-write"], origin=BASE)
        page = owner_ctx.new_page()
        page.on("dialog", lambda d: d.accept())
        console_errors = []
        # The API's refusals the journey provokes (a wrong password, a bad origin, no
        # subscription yet) are logged by the browser as failed loads of /v1/…; the page shows
        # them and the steps assert that. Anything else (a file of the console) is an error.
        def on_console(m):
            api_refusal = "/v1/" in (m.location or {}).get("url", "") and re.search(r"status of 4\d\d ", m.text)
            if m.type == "error" and not api_refusal:
                console_errors.append(f"{m.text} ({(m.location or {}).get('url')})")

        page.on("console", on_console)
        page.on("pageerror", lambda e: console_errors.append(str(e)))

        # The root sends a stranger to sign in; a wrong password shows the API's message.
        page.goto(BASE + "/")
        expect(page).to_have_url(BASE + "/login")
        expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
        page.get_by_label("Email").fill(OWNER)
        page.get_by_label("Password").fill("wrong-password-123")
        page.get_by_label("Password").press("Enter")  # the keyboard submits
        expect(page.get_by_role("alert")).to_have_text("Invalid email or password")
        shot(page, "01-login-error")

        # Register.
        page.get_by_role("link", name="Create an account").click()
        expect(page).to_have_url(BASE + "/register")
        page.get_by_label("Name").fill("Olive Owner")
        page.get_by_label("Email").fill(OWNER)
        page.get_by_label("Password").fill(PASSWORD)
        shot(page, "02-register")
        page.get_by_role("button", name="Create account").click()
        expect(page.get_by_role("heading", name="Verify your email")).to_be_visible()

        # Verify from the mail's link: the page opens with email and code filled in.
        link = link_in(mail(OWNER, "Verify"), "/verify-email")
        page.goto(link)
        expect(page.get_by_label("Email")).to_have_value(OWNER)
        expect(page.get_by_label("Code")).to_have_value(re.compile(r"^\d{6}$"))
        shot(page, "03-verify-email")
        page.get_by_role("button", name="Verify email").click()
        expect(page.get_by_role("status")).to_contain_text("is verified")
        page.get_by_role("link", name="Continue to your organizations").click()

        # Create an organization.
        expect(page.get_by_role("heading", name="Your organizations")).to_be_visible()
        page.get_by_label("Name").fill("Acme Console")
        page.get_by_label("Slug").fill("acme-console")
        shot(page, "04-organizations")
        page.get_by_role("button", name="Create organization").click()
        expect(page.get_by_role("heading", name="Members of Acme Console")).to_be_visible()
        org_id = re.search(r"/orgs/([^/]+)/members", page.url).group(1)
        summary["organization_id"] = org_id

        # An expired access token (and scoped token): the console refreshes them with the
        # refresh token, once for calls made together, and carries on.
        page.evaluate(
            """() => {
                const s = JSON.parse(sessionStorage.getItem('gatehouse.session'));
                s.access = 'expired';
                if (s.tenant) s.tenant.token = 'expired';
                sessionStorage.setItem('gatehouse.session', JSON.stringify(s));
            }"""
        )
        page.reload()
        expect(page.get_by_role("heading", name="Members of Acme Console")).to_be_visible()
        session = page.evaluate("JSON.parse(sessionStorage.getItem('gatehouse.session'))")
        assert session["access"] != "expired" and session["tenant"]["token"] != "expired", session

        # Invite a member.
        page.get_by_label("Email", exact=True).fill(INVITEE)
        page.get_by_label("Role", exact=True).select_option("editor")
        page.get_by_role("button", name="Send invitation").click()
        expect(page.get_by_role("status")).to_contain_text(f"Invitation sent to {INVITEE}")
        pending = page.get_by_role("row").filter(has_text=INVITEE)
        expect(pending).to_contain_text("pending")
        shot(page, "05-members-invited")

        # The invitee opens the mail's link in another browser and registers with it.
        link = link_in(mail(INVITEE, "invited"), "/accept-invitation")
        invitee_ctx = browser.new_context(viewport={"width": 1100, "height": 800})
        other = invitee_ctx.new_page()
        other.goto(link)
        expect(other.get_by_role("heading", name="Join the organization")).to_be_visible()
        other.get_by_label("Name").fill("Ivy Invitee")
        other.get_by_label("Email").fill(INVITEE)
        other.get_by_label("Password").fill(PASSWORD + "-ivy")
        shot(other, "06-accept-invitation")
        other.get_by_role("button", name="Create account").click()
        expect(other.get_by_role("heading", name="Members of Acme Console")).to_be_visible()
        expect(other.get_by_role("row").filter(has_text=INVITEE)).to_contain_text("editor")
        shot(other, "07-invitee-members")
        invitee_ctx.close()

        # The owner sees the new member (no longer pending).
        page.reload()
        row = page.get_by_role("row").filter(has_text=INVITEE)
        expect(row.first).to_be_visible()
        expect(page.get_by_text("No pending invitations.")).to_be_visible()

        # Create an API key: shown once, with a copy button, then listed.
        page.get_by_role("link", name="API keys").click()
        expect(page.get_by_role("heading", name="API keys — live")).to_be_visible()
        page.get_by_label("Name", exact=True).fill("backend")
        page.get_by_label("gateway:proxy").check()
        page.get_by_label("members:read").check()
        page.get_by_role("button", name="Create live key").click()
        secret = page.locator("#new-secret")
        expect(secret).to_have_text(re.compile(r"^sk_live_[A-Za-z0-9]{40}$"))
        token = secret.inner_text()
        page.get_by_role("button", name="Copy key").click()
        expect(page.get_by_text(re.compile(r"^(Copied\.|Selected: press Ctrl\+C to copy\.)$"))).to_be_visible()
        shot(page, "08-key-created")
        page.get_by_role("button", name="I have saved it").click()
        expect(secret).to_have_count(0)
        row = page.get_by_role("row").filter(has_text="backend")
        expect(row).to_contain_text(token[:11])
        expect(row).to_contain_text("gateway:proxy, members:read")
        expect(row).to_contain_text("active")
        summary["key_token"] = token

        # Rotate with a grace period: a new value, shown once.
        page.get_by_role("button", name="Rotate backend").click()
        page.get_by_label("The old value keeps working for").select_option("3600")
        page.get_by_role("button", name="Rotate key").click()
        expect(secret).to_have_text(re.compile(r"^sk_live_[A-Za-z0-9]{40}$"))
        rotated = secret.inner_text()
        assert rotated != token
        summary["rotated_token"] = rotated
        expect(page.get_by_role("row").filter(has_text="backend")).to_contain_text("old value until")
        # The preview is of the new value.
        preview = page.get_by_role("row").filter(has_text="backend").locator("td").nth(1)
        expect(preview).to_contain_text(rotated[:11])
        summary["key_preview"] = preview.inner_text()
        page.get_by_role("button", name="I have saved it").click()

        # A second key, by keyboard only (focus lands on the shown key's buttons, and back on the
        # page after it is dismissed), then disabled and revoked.
        page.get_by_label("Name", exact=True).fill("temporary")
        page.get_by_label("Name", exact=True).press("Enter")
        expect(secret).to_be_visible()
        expect(page.get_by_role("button", name="Copy key")).to_be_focused()
        page.keyboard.press("Tab")
        expect(page.get_by_role("button", name="I have saved it")).to_be_focused()
        page.keyboard.press("Enter")
        expect(secret).to_have_count(0)
        expect(page.get_by_role("heading", name="API keys — live")).to_be_focused()
        page.get_by_role("button", name="Disable temporary").click()
        temp = page.get_by_role("row").filter(has_text="temporary")
        expect(temp).to_contain_text("disabled")
        page.get_by_role("button", name="Revoke temporary").click()
        expect(temp).to_contain_text("revoked")
        shot(page, "09-keys")

        # What the API refuses shows its message and the field it names.
        page.get_by_label("Name", exact=True).fill("x" * 100)
        page.get_by_label("Type").select_option("publishable")
        page.get_by_label("Allowed origins (publishable keys)").fill("not an origin")
        page.get_by_role("button", name="Create live key").click()
        expect(page.get_by_role("alert")).to_contain_text("allowed_origins[0]")
        shot(page, "10-key-error")

        # The test environment has its own keys.
        page.get_by_label("Environment").select_option("test")
        expect(page.get_by_role("heading", name="API keys — test")).to_be_visible()
        expect(page.get_by_text("No test keys yet.")).to_be_visible()
        page.get_by_label("Environment").select_option("live")
        expect(page.get_by_role("heading", name="API keys — live")).to_be_visible()

        # Test data: the test environment's pages.
        page.get_by_label("Environment").select_option("test")
        expect(page.get_by_role("heading", name="API keys — test")).to_be_visible()

        # Providers: add one (the mock), disable it, delete it.
        page.get_by_role("link", name="Providers").click()
        expect(page.get_by_role("heading", name="Providers — test")).to_be_visible()
        expect(page.get_by_text("No test providers yet.")).to_be_visible()
        page.get_by_label("Provider", exact=True).select_option("mock")
        page.get_by_label("Provider name").fill("house mock")
        page.get_by_role("button", name="Add test provider").click()
        expect(page.get_by_role("status")).to_have_text("house mock is added.")
        provider = page.get_by_role("row").filter(has_text="house mock")
        expect(provider).to_contain_text("active")
        page.get_by_role("button", name="Disable house mock").click()
        expect(provider).to_contain_text("disabled")
        shot(page, "21-providers")
        page.get_by_role("button", name="Delete house mock").click()
        expect(page.get_by_text("No test providers yet.")).to_be_visible()

        # Policies: a bad pattern shows the API's message; a keyword rule that blocks.
        page.get_by_role("link", name="Policies").click()
        expect(page.get_by_role("heading", name="Policies")).to_be_visible()
        page.get_by_label("Rule name").fill("bad pattern")
        page.get_by_label("Type").select_option("regex")
        page.get_by_label("Configuration (JSON)").fill('{"pattern": "(", "label": "x"}')
        page.get_by_role("button", name="Add rule").click()
        expect(page.get_by_role("alert")).to_contain_text("config.pattern")
        page.get_by_label("Rule name").fill("No falcon")
        page.get_by_label("Type").select_option("keyword")
        expect(page.get_by_label("Configuration (JSON)")).to_have_value(re.compile("project falcon"))
        page.get_by_label("Action").select_option("block")
        page.get_by_role("button", name="Add rule").click()
        rule = page.get_by_role("row").filter(has_text="No falcon")
        expect(rule).to_contain_text("block")
        expect(rule).to_contain_text("project falcon")
        shot(page, "22-policies")

        # The policies' "Try it" box: the API's dry run says what a prompt would do, recording
        # nothing (the usage totals below count only the two gateway calls).
        try_rules = page.get_by_role("region", name="Try it")
        try_rules.get_by_label("Prompt").fill("tell me about Project Falcon")
        try_rules.get_by_role("button", name="Check prompt").click()
        verdict = page.locator("#policy-verdict")
        expect(verdict.get_by_role("status")).to_contain_text("Blocked")
        expect(verdict.get_by_role("row").filter(has_text="No falcon")).to_contain_text("keyword")
        shot(page, "22a-policy-try-it")
        try_rules.get_by_label("Prompt").fill("hello there")
        try_rules.get_by_role("button", name="Check prompt").click()
        expect(verdict.get_by_role("status")).to_contain_text("Allowed")
        # A rule that redacts: the text as the provider would get it.
        page.get_by_label("Rule name").fill("No emails")
        page.get_by_label("Type").select_option("pii")
        page.get_by_label("Configuration (JSON)").fill('{"kinds": ["email"]}')
        page.get_by_label("Action").select_option("redact")
        page.get_by_role("button", name="Add rule").click()
        expect(page.get_by_role("row").filter(has_text="No emails").first).to_contain_text("redact")
        try_rules.get_by_label("Prompt").fill("mail jane@example.com the notes")
        try_rules.get_by_role("button", name="Check prompt").click()
        expect(verdict.get_by_role("status")).to_contain_text("Redacted")
        expect(verdict.locator("pre.redacted")).to_have_text("mail [REDACTED:EMAIL] the notes")
        shot(page, "22a2-policy-try-it-redact")
        # Then off again, so the gateway calls below are judged by the keyword rule only.
        page.get_by_role("button", name="Delete No emails").click()
        expect(page.get_by_role("status").filter(has_text="No emails is deleted.")).to_be_visible()
        expect(page.locator("#policy-verdict")).to_be_empty()

        # A gateway key of the test environment, tried from the page: the mock answers; the
        # rule refuses a prompt that names the project.
        page.get_by_role("link", name="API keys").click()
        expect(page.get_by_role("heading", name="API keys — test")).to_be_visible()
        page.get_by_label("Name", exact=True).fill("app")
        page.get_by_label("gateway:proxy").check()
        page.get_by_role("button", name="Create test key").click()
        expect(secret).to_have_text(re.compile(r"^sk_test_"))
        try_it = page.get_by_role("region", name="Try the key")
        try_it.get_by_label("Prompt").fill("hello there")
        try_it.get_by_role("button", name="Send").click()
        expect(try_it.get_by_role("status")).to_contain_text("Answer:")
        expect(try_it.get_by_role("status")).to_contain_text("gpt-4o-mini")
        shot(page, "22b-try-it")
        try_it.get_by_label("Prompt").fill("tell me about project falcon")
        try_it.get_by_role("button", name="Send").click()
        expect(try_it.get_by_role("alert")).to_contain_text("Refused by policy: No falcon")
        page.get_by_role("button", name="I have saved it").click()

        # The calls in the usage log, the refusal among the violations.
        page.get_by_role("link", name="Requests").click()
        expect(page.get_by_role("heading", name="Requests — test")).to_be_visible()
        deadline = time.time() + 30
        while page.get_by_role("cell", name="gpt-4o-mini").count() == 0 and time.time() < deadline:
            time.sleep(0.2)
            page.reload()
            expect(page.get_by_role("heading", name="Requests — test")).to_be_visible()
        expect(page.get_by_role("cell", name="gpt-4o-mini").first).to_be_visible()
        expect(page.get_by_role("row").filter(has_text="No falcon")).to_contain_text("block")
        shot(page, "23-requests")

        # The same calls in the usage totals, the charts and the breakdowns.
        page.get_by_role("link", name="Usage").click()
        expect(page.get_by_role("heading", name="Usage — test")).to_be_visible()
        requests = page.locator(".stat").filter(has_text="Requests").locator("strong")
        expect(requests).to_have_text("2")
        expect(page.locator(".stat").filter(has_text="Errors").locator("strong")).to_have_text("1")
        expect(page.locator("figure.chart canvas")).to_have_count(4)
        by_model = page.locator("section").filter(has=page.get_by_role("heading", name="By model"))
        expect(by_model.get_by_role("row").filter(has_text="gpt-4o-mini")).to_contain_text("2")
        by_key = page.locator("section").filter(has=page.get_by_role("heading", name="By key"))
        expect(by_key.get_by_role("row").filter(has_text="app")).to_contain_text("2")
        page.get_by_label("Period").select_option("30d")
        expect(page.locator("figure.chart canvas")).to_have_count(4)
        expect(requests).to_have_text("2")
        shot(page, "23b-usage")

        # Webhooks: an endpoint on this machine, its secret shown once, a test event delivered.
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        hook_url = f"http://127.0.0.1:{server.server_address[1]}/hooks"
        page.get_by_role("link", name="Webhooks").click()
        expect(page.get_by_role("heading", name="Webhooks — test")).to_be_visible()
        page.get_by_label("Endpoint URL").fill(hook_url)
        page.get_by_label("Events").fill("webhook.test, api_key.created")
        page.get_by_role("button", name="Add test endpoint").click()
        expect(page.locator("#new-secret")).to_have_text(re.compile(r"^whsec_"))
        page.get_by_role("button", name="I have saved it").click()
        page.get_by_role("button", name=f"Send a test event to {hook_url}").click()
        expect(page.get_by_role("status")).to_contain_text("webhook.test event is on its way")
        page.get_by_role("button", name=f"Deliveries to {hook_url}").click()
        deliveries = page.get_by_role("region", name=f"Deliveries to {hook_url}")
        deadline = time.time() + 30
        while deliveries.get_by_text("HTTP 204").count() == 0 and time.time() < deadline:
            time.sleep(0.3)
            deliveries.get_by_role("button", name="Refresh").click()
        expect(deliveries.get_by_role("row").filter(has_text="webhook.test")).to_contain_text("HTTP 204")
        assert "webhook.test" in Receiver.received, Receiver.received
        shot(page, "24-webhooks")
        server.shutdown()
        page.get_by_label("Environment").select_option("live")

        # Settings: the profile; an allowlist that would lock the owner out is refused with a
        # warning (and not forced); one that keeps the owner in is saved, then cleared.
        page.get_by_role("link", name="Settings").click()
        expect(page.get_by_role("heading", name="Settings", exact=True)).to_be_visible()
        page.get_by_label("Description").fill("Where the console is tested")
        page.get_by_role("button", name="Save", exact=True).click()
        expect(page.get_by_role("status")).to_have_text("The organization is saved.")
        expect(page.get_by_label("Description")).to_have_value("Where the console is tested")
        page.get_by_label("Allowed addresses").fill("10.0.0.0/8")
        page.get_by_role("button", name="Save allowlist").click()
        expect(page.get_by_role("alert")).to_contain_text("lock you out")
        expect(page.get_by_role("button", name="Save anyway and lock myself out")).to_be_visible()
        shot(page, "25-settings-lockout")
        page.get_by_label("Allowed addresses").fill("127.0.0.1/32\n10.0.0.0/8")
        page.get_by_role("button", name="Save allowlist").click()
        expect(page.get_by_role("status")).to_have_text("The allowlist is saved.")
        expect(page.get_by_label("Allowed addresses")).to_have_value("127.0.0.1/32\n10.0.0.0/8")
        page.get_by_label("Allowed addresses").fill("")
        page.get_by_role("button", name="Save allowlist").click()
        expect(page.get_by_label("Allowed addresses")).to_have_value("")
        expect(page.get_by_role("row").filter(has_text="owner").first).to_be_visible()

        # Billing: usage against the plan, a subscription taken, then canceled at the cycle's end.
        page.get_by_role("link", name="Billing").click()
        expect(page.get_by_role("heading", name="Billing")).to_be_visible()
        expect(page.get_by_role("row", name=re.compile(r"^api requests \d+"))).to_be_visible()
        # Every organization is subscribed from its creation, on the default plan; no period has
        # closed yet, so no invoice.
        expect(page.get_by_text("No invoices yet")).to_be_visible()
        page.get_by_role("button", name="Switch to MidMarket").click()
        expect(page.get_by_role("status")).to_have_text("The organization is on MidMarket now.")
        expect(page.get_by_role("row").filter(has_text="MidMarket")).to_contain_text("active")
        page.get_by_role("button", name="Cancel at the end of the cycle").click()
        expect(page.get_by_text("ends at the end of this cycle").first).to_be_visible()
        shot(page, "26-billing")

        # The audit log lists what was done.
        page.get_by_role("link", name="Audit log").click()
        expect(page.get_by_role("heading", name="Audit log")).to_be_visible()
        expect(page.get_by_text("api_key.created").first).to_be_visible()
        shot(page, "11-audit")
        with page.expect_download() as download:
            page.get_by_role("button", name="Export CSV").click()
        csv_text = pathlib.Path(download.value.path()).read_text()
        assert download.value.suggested_filename == "audit-acme-console.csv", download.value.suggested_filename
        assert "api_key.created" in csv_text and csv_text.splitlines()[0].count(",") >= 3, csv_text[:300]

        # At a phone's width: the pages still fit (no horizontal scrolling).
        page.set_viewport_size({"width": 390, "height": 844})
        page.get_by_role("link", name="API keys").click()
        expect(page.get_by_role("heading", name="API keys — live")).to_be_visible()
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 390, f"the keys page scrolls sideways at 390px: {width}px"
        shot(page, "12-keys-phone")
        page.get_by_role("link", name="Members").click()
        expect(page.get_by_role("heading", name="Members of Acme Console")).to_be_visible()
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 390, f"the members page scrolls sideways at 390px: {width}px"
        shot(page, "13-members-phone")
        page.get_by_role("link", name="Usage").click()
        expect(page.locator("figure.chart canvas")).to_have_count(4)
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 390, f"the usage page scrolls sideways at 390px: {width}px"
        shot(page, "13b-usage-phone")
        for tab, heading in [
            ("Providers", "Providers — live"),
            ("Policies", "Policies"),
            ("Webhooks", "Webhooks — live"),
            ("Requests", "Requests — live"),
            ("Audit log", "Audit log"),
            ("Billing", "Billing"),
            ("Settings", "Settings"),
        ]:
            page.get_by_role("link", name=tab, exact=True).click()
            expect(page.get_by_role("heading", name=heading, exact=True)).to_be_visible()
            page.wait_for_load_state("networkidle")
            width = page.evaluate("document.documentElement.scrollWidth")
            assert width <= 390, f"the {tab} page scrolls sideways at 390px: {width}px"
            if tab == "Policies":
                page.get_by_label("Prompt").fill("about project falcon")
                page.get_by_role("button", name="Check prompt").click()
                expect(page.locator("#policy-verdict").get_by_role("status")).to_contain_text("Blocked")
                width = page.evaluate("document.documentElement.scrollWidth")
                assert width <= 390, f"the policies' verdict scrolls sideways at 390px: {width}px"
                shot(page, "13d-policies-phone")
        shot(page, "13c-settings-phone")

        # Signing out ends the session: the pages ask to sign in again.
        page.get_by_role("button", name="Sign out").click()
        expect(page).to_have_url(BASE + "/login")
        page.goto(f"{BASE}/orgs/{org_id}/keys")
        expect(page).to_have_url(re.compile(r"/login\?next="))

        account_flows(browser, console_errors)
        admin_flows(browser, console_errors)
        assert not console_errors, f"errors in the browser console: {console_errors}"
        browser.close()
    print(json.dumps(summary))


def account_flows(browser, console_errors):
    """The invitee's other ways in: a forgotten password reset from the mail's link, a sign-in
    code by email, the account page turning MFA on, and the MFA step with a recovery code."""
    ctx = browser.new_context(viewport={"width": 1000, "height": 800})
    page = ctx.new_page()
    page.on("pageerror", lambda e: console_errors.append(str(e)))
    new_password = PASSWORD + "-reset"

    # Forgot → the mail's link → a new password → sign in with it.
    page.goto(BASE + "/login")
    page.get_by_role("link", name="Forgot password?").click()
    expect(page.get_by_role("heading", name="Reset your password")).to_be_visible()
    page.get_by_label("Email").fill(INVITEE)
    page.get_by_role("button", name="Email me a reset link").click()
    expect(page.get_by_role("status")).to_contain_text("If an account exists")
    page.goto(link_in(mail(INVITEE, "Reset"), "/reset-password"))
    expect(page.get_by_label("Reset token")).to_have_value(re.compile(r"^rst_"))
    page.get_by_label("New password").fill(new_password)
    shot(page, "14-reset-password")
    page.get_by_role("button", name="Set password").click()
    expect(page.get_by_role("status")).to_contain_text("Your password is changed")
    page.get_by_role("link", name="Sign in").click()
    page.get_by_label("Email").fill(INVITEE)
    page.get_by_label("Password").fill(new_password)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Your organizations")).to_be_visible()
    page.get_by_role("button", name="Sign out").click()

    # A sign-in code by email.
    page.get_by_role("link", name="Email me a sign-in code").click()
    expect(page.get_by_role("heading", name="Sign in with a code")).to_be_visible()
    page.get_by_label("Email").fill(INVITEE)
    page.get_by_role("button", name="Email me a code").click()
    body = mail(INVITEE, "sign-in code")
    code = re.search(r"\b(\d{6})\b", body).group(1)
    page.get_by_label("Code").fill(code)
    shot(page, "15-sign-in-code")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Your organizations")).to_be_visible()

    # The account page: a name, then two-step verification turned on with an authenticator
    # (the code computed here from the secret the page shows); recovery codes shown once.
    page.get_by_role("link", name=f"Your account ({INVITEE})").click()
    expect(page.get_by_role("heading", name="Your account")).to_be_visible()
    page.get_by_label("Your name").fill("Ivy I. Invitee")
    page.get_by_role("button", name="Save").click()
    expect(page.get_by_role("status")).to_have_text("Your name is saved.")
    expect(page.get_by_label("Your name")).to_have_value("Ivy I. Invitee")
    expect(page.get_by_role("row").filter(has_text="this one")).to_have_count(1)
    page.get_by_role("button", name="Set up an authenticator app").click()
    # The otpauth:// link as a QR code (an SVG), with the secret as text beside it.
    qr = page.get_by_role("img", name="QR code of the authenticator set-up link")
    expect(qr).to_be_visible()
    assert qr.evaluate("(svg) => svg.querySelector('path').getAttribute('d').length") > 1000
    box = qr.bounding_box()
    assert box and box["width"] >= 150 and abs(box["width"] - box["height"]) < 1, box
    expect(page.locator("#totp-secret")).to_have_text(re.compile(r"^[A-Z2-7]{16,}=*$"))
    secret = page.locator("#totp-secret").inner_text()
    page.get_by_label("Code from your app").fill(totp(secret))
    shot(page, "16-account-mfa-setup")
    page.set_viewport_size({"width": 390, "height": 844})
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    expect(qr).to_be_visible()
    shot(page, "16b-account-mfa-setup-phone")
    page.set_viewport_size({"width": 1000, "height": 800})
    page.get_by_role("button", name="Turn on").click()
    codes = page.locator("#recovery-codes")
    expect(codes).to_be_visible()
    recovery = codes.inner_text().split()
    assert len(recovery) == 10, recovery
    page.get_by_role("button", name="I have saved them").click()
    expect(page.get_by_role("status")).to_have_text("Two-step verification is on.")
    expect(page.get_by_role("button", name="Turn off")).to_be_visible()
    shot(page, "17-account")
    page.get_by_role("button", name="Sign out").click()

    # The sign-in now asks for the second factor: a wrong code is refused, a recovery code works.
    page.get_by_label("Email").fill(INVITEE)
    page.get_by_label("Password").fill(new_password)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Two-step verification")).to_be_visible()
    page.get_by_label("Code").fill("000000")
    page.get_by_role("button", name="Verify").click()
    expect(page.get_by_role("alert")).to_have_text("The code is invalid")
    page.get_by_label("Code").fill(recovery[0])
    shot(page, "18-mfa-step")
    page.get_by_role("button", name="Verify").click()
    expect(page.get_by_role("heading", name="Your organizations")).to_be_visible()
    expect(page.get_by_role("link", name="Acme Console")).to_be_visible()
    ctx.close()


def admin_flows(browser, console_errors):
    """A platform admin: the overview, suspending and reactivating an organization, finding a
    user, the plan catalogue (create, edit, delete), a platform setting changed and restored, a
    signing-key rotation, the mailbox."""
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    page = ctx.new_page()
    page.on("pageerror", lambda e: console_errors.append(str(e)))
    page.on("dialog", lambda d: d.accept("console test") if d.type == "prompt" else d.accept())
    page.goto(BASE + "/login")
    page.get_by_label("Email").fill(ADMIN_EMAIL)
    page.get_by_label("Password").fill(ADMIN_PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.get_by_role("link", name="Platform admin").click()
    expect(page.get_by_role("heading", name="Platform")).to_be_visible()
    orgs = page.locator(".stat").filter(has_text="Organizations").locator("strong")
    expect(orgs).to_have_text("1")
    shot(page, "27-admin-overview")

    page.get_by_role("link", name="Organizations", exact=True).click()
    expect(page.get_by_role("heading", name="Organizations")).to_be_visible()
    row = page.get_by_role("row").filter(has_text="acme-console")
    page.get_by_role("button", name="Suspend Acme Console").click()
    expect(page.get_by_role("status")).to_have_text("Acme Console is suspended.")
    expect(row).to_contain_text("suspended")
    page.get_by_role("button", name="Reactivate Acme Console").click()
    expect(row).to_contain_text("active")
    shot(page, "28-admin-organizations")

    page.get_by_role("link", name="Users").click()
    expect(page.get_by_role("heading", name="Users")).to_be_visible()
    page.get_by_label("Search").fill("invitee")
    page.get_by_role("button", name="Search").click()
    expect(page.get_by_text("1 in all")).to_be_visible()
    expect(page.get_by_role("row").filter(has_text=INVITEE)).to_contain_text("on")

    # The plan catalogue: a plan created, listed, edited, refused where the API refuses (with
    # its message), and deleted; the default plan cannot be.
    page.get_by_role("link", name="Plans", exact=True).click()
    expect(page.get_by_role("heading", name="Plans", exact=True)).to_be_visible()
    expect(page.get_by_role("row").filter(has_text="MidMarket")).to_contain_text("499.00 USD / month")
    create = page.locator("#plan-create")
    create.get_by_label("Plan id").fill("team")
    create.get_by_label("Plan name").fill("Team")
    create.get_by_label("Amount (minor units)").fill("9900")
    create.get_by_label("Interval").select_option("year")
    create.get_by_label("members", exact=True).fill("20")
    create.get_by_label("gateway_tokens_per_month", exact=True).fill("5000000")
    create.get_by_label("Features (JSON object)").fill('{"sso": true, "support": "email"}')
    create.get_by_label("Overage prices (JSON object)").fill('{"projects": {"per": 1, "amount": 500}}')
    create.get_by_role("button", name="Create plan").click()
    # projects is left unlimited: no overage on it, says the API.
    expect(create.get_by_role("alert")).to_contain_text("overage_prices.projects")
    shot(page, "31-admin-plan-error")
    create.get_by_label("Overage prices (JSON object)").fill('{"gateway_tokens_per_month": {"per": 1000, "amount": 2}}')
    create.get_by_role("button", name="Create plan").click()
    expect(page.get_by_role("status")).to_have_text("Team is created.")
    team = page.get_by_role("row").filter(has_text="team")
    expect(team).to_contain_text("99.00 USD / year")
    expect(team).to_contain_text("members: 20")
    expect(team).to_contain_text("projects: unlimited")
    expect(team).to_contain_text("sso: true")
    expect(team).to_contain_text("gateway tokens per month: 0.02 USD per 1,000")
    shot(page, "32-admin-plans")
    page.get_by_role("button", name="Edit team").click()
    editor = page.locator("#plan-editor")
    expect(editor.get_by_label("Plan id")).to_have_value("team")
    expect(editor.get_by_label("Plan name")).to_be_focused()
    editor.get_by_label("Amount (minor units)").fill("12900")
    editor.get_by_label("members", exact=True).fill("")
    editor.get_by_label("Features (JSON object)").fill('{"sso": false}')
    shot(page, "33-admin-plan-edit")
    editor.get_by_role("button", name="Save plan").click()
    expect(page.get_by_role("status")).to_have_text("Team is saved.")
    expect(team).to_contain_text("129.00 USD / year")
    expect(team).to_contain_text("members: unlimited")
    expect(team).to_contain_text("sso: false")
    expect(team).not_to_contain_text("support")
    page.set_viewport_size({"width": 390, "height": 844})
    assert page.evaluate("document.documentElement.scrollWidth") <= 390, "plans scroll sideways"
    shot(page, "34-admin-plans-phone")
    page.set_viewport_size({"width": 1280, "height": 900})
    page.get_by_role("button", name="Delete smb").click()
    expect(page.get_by_role("alert")).to_contain_text("The default plan (smb) cannot be deleted")
    page.get_by_role("button", name="Delete team").click()
    expect(page.get_by_role("status")).to_have_text("Team is deleted.")
    expect(team).to_have_count(0)

    page.get_by_role("link", name="Configuration").click()
    expect(page.get_by_role("heading", name="Platform configuration")).to_be_visible()
    signup = page.get_by_role("row").filter(has_text="signup_open")
    signup.get_by_label("signup_open").select_option("false")
    signup.get_by_role("button", name="Set").click()
    expect(page.get_by_role("status")).to_have_text("signup_open is false on every node.")
    shot(page, "29-admin-configuration")
    signup = page.get_by_role("row").filter(has_text="signup_open")
    signup.get_by_label("signup_open").select_option("true")
    signup.get_by_role("button", name="Set").click()
    expect(page.get_by_role("status")).to_have_text("signup_open is true on every node.")

    page.get_by_role("link", name="Signing keys").click()
    expect(page.get_by_role("heading", name="Token signing keys")).to_be_visible()
    expect(page.get_by_role("row").filter(has_text="active")).to_have_count(1)
    page.get_by_role("button", name="Rotate now").click()
    expect(page.get_by_role("status")).to_have_text("A new signing key is active.")
    expect(page.get_by_role("row").filter(has_text="retired")).to_have_count(1)

    page.get_by_role("link", name="Mailbox").click()
    expect(page.get_by_role("heading", name="Development mailbox")).to_be_visible()
    page.get_by_label("To").fill(OWNER)
    page.get_by_role("button", name="Filter").click()
    expect(page.get_by_text("Verify your email address")).to_be_visible()
    page.get_by_text("Verify your email address").click()
    expect(page.get_by_text(re.compile(r"/verify-email\?email="))).to_be_visible()
    shot(page, "30-admin-mailbox")
    ctx.close()


if __name__ == "__main__":
    main()
