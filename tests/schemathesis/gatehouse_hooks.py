"""Schemathesis hooks for Gatehouse's own OpenAPI document (run by tests/schemathesis.rs).

The run acts as the account GATEHOUSE_EMAIL / GATEHOUSE_PASSWORD signs in to (an organization's
owner, or a platform admin) with its access token, or — GATEHOUSE_CREDENTIAL = "key" — with a
secret API key that account mints in the organization GATEHOUSE_ORG. GATEHOUSE_BASE is the server. Generated cases may sign the caller out, end its session
or revoke its key; the credential is therefore renewed every few seconds (a fresh sign-in, or a
fresh key minted by the owner), so that the run keeps reaching past authentication.
"""

import json
import os
import random
import urllib.request

import schemathesis

BASE = os.environ["GATEHOUSE_BASE"]
ORG = os.environ["GATEHOUSE_ORG"]
EMAIL = os.environ["GATEHOUSE_EMAIL"]
PASSWORD = os.environ["GATEHOUSE_PASSWORD"]
CREDENTIAL = os.environ.get("GATEHOUSE_CREDENTIAL", "token")


def _post(path, body, token=None):
    req = urllib.request.Request(
        BASE + path,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    if token:
        req.add_header("Authorization", "Bearer " + token)
    with urllib.request.urlopen(req, timeout=30) as res:
        return json.loads(res.read())


def _sign_in():
    return _post("/v1/auth/login", {"email": EMAIL, "password": PASSWORD})["access_token"]


@schemathesis.auth(refresh_interval=5)
class Credential:
    def get(self, case, ctx):
        token = _sign_in()
        if CREDENTIAL == "token":
            return token
        key = _post(
            f"/v1/organizations/{ORG}/api-keys",
            {"name": "schemathesis"},
            token,
        )
        return key["token"]

    def set(self, case, data, ctx):
        case.headers = case.headers or {}
        case.headers["Authorization"] = "Bearer " + data


@schemathesis.hook
def map_path_parameters(ctx, path_parameters):
    # Mostly the caller's own organization (so the generated cases get past the membership
    # check and into the handlers), sometimes whatever was generated.
    # Never the organization itself to DELETE: the rest of the run needs it.
    deleting_it = ctx.operation.method.upper() == "DELETE" and ctx.operation.path in (
        "/v1/organizations/{org_id}",
    )
    if (
        path_parameters
        and "org_id" in path_parameters
        and not deleting_it
        and random.random() < 0.85
    ):
        path_parameters["org_id"] = ORG
    return path_parameters
