#!/usr/bin/env python3
"""Verifies webhook deliveries with an independent Standard Webhooks implementation: the
`standardwebhooks` package from PyPI (`pip install standardwebhooks`).

Usage: webhooks_verify.py CASES.json, where CASES.json is a list of
`{"secret": "whsec_…", "headers": {"webhook-id": …, …}, "body": "<exact body received>"}`.

Exits 0 when every delivery verifies (and tampered copies of it do not), 1 when one does not,
3 when the package is not installed (the Rust test then skips, loudly, unless CI=true).
"""

import json
import sys

try:
    from standardwebhooks import Webhook, WebhookVerificationError
except ImportError:
    print("the standardwebhooks package is not installed", file=sys.stderr)
    sys.exit(3)


def must_fail(wh, body, headers, what):
    try:
        wh.verify(body, headers)
    except WebhookVerificationError:
        return
    raise AssertionError(f"a delivery with {what} verified")


def main(path):
    with open(path, encoding="utf-8") as f:
        cases = json.load(f)
    if not cases:
        raise AssertionError("no deliveries to verify")
    for case in cases:
        wh = Webhook(case["secret"])
        headers = case["headers"]
        body = case["body"]
        payload = wh.verify(body, headers)
        if payload != json.loads(body):
            raise AssertionError("verify() returned a different payload")
        must_fail(wh, body + " ", headers, "a changed body")
        must_fail(wh, body, {**headers, "webhook-id": headers["webhook-id"] + "x"}, "another id")
        must_fail(
            wh,
            body,
            {**headers, "webhook-timestamp": str(int(headers["webhook-timestamp"]) + 1)},
            "another timestamp",
        )
    print(f"verified {len(cases)} deliveries with standardwebhooks")


if __name__ == "__main__":
    try:
        main(sys.argv[1])
    except (AssertionError, WebhookVerificationError) as e:
        print(f"verification failed: {e!r}", file=sys.stderr)
        sys.exit(1)
