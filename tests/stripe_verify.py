#!/usr/bin/env python3
"""Checks Gatehouse's Stripe webhook signatures against Stripe's own library (the `stripe`
package from PyPI, `pip install stripe`), both ways.

Usage: stripe_verify.py CASES.json, where CASES.json is a list of
`{"secret": "whsec_…", "body": "<exact body>", "t": <unix seconds>, "header": "t=…,v1=…"}`:
`header` is what Gatehouse signed. Each must verify with `stripe.WebhookSignature.verify_header`
(tolerance 300 s against this machine's clock), and a copy with the body changed must not. Prints
on stdout a JSON list with, for each case, the header Stripe's library generates for the same
body, secret and time (for Gatehouse's verifier to accept).

Exits 0 when all is well, 1 otherwise, 3 when the package is not installed (the Rust test then
skips, loudly, unless CI=true).
"""

import json
import sys

try:
    from stripe import SignatureVerificationError, WebhookSignature
except ImportError:
    print("the stripe package is not installed", file=sys.stderr)
    sys.exit(3)


def main(path):
    with open(path, encoding="utf-8") as f:
        cases = json.load(f)
    if not cases:
        raise AssertionError("no cases")
    generated = []
    for case in cases:
        body, secret, header = case["body"], case["secret"], case["header"]
        WebhookSignature.verify_header(body, header, secret, tolerance=300)
        try:
            WebhookSignature.verify_header(body + " ", header, secret, tolerance=300)
        except SignatureVerificationError:
            pass
        else:
            raise AssertionError("a changed body verified")
        generated.append(
            WebhookSignature.generate_signature_header(body, secret, timestamp=case["t"])
        )
    print(json.dumps(generated))


if __name__ == "__main__":
    try:
        main(sys.argv[1])
    except (AssertionError, SignatureVerificationError) as e:
        print(f"refused: {e}", file=sys.stderr)
        sys.exit(1)
