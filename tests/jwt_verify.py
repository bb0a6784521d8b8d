"""Verifies a Gatehouse access token with PyJWT, an implementation independent of ours,
against the JWKS the server publishes. Usage: jwt_verify.py JWKS_JSON TOKEN ISSUER
Prints the verified claims as JSON; exits non-zero if verification fails."""
import json
import sys

import jwt

jwks, token, issuer = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
kid = jwt.get_unverified_header(token)["kid"]
jwk = next(k for k in jwks["keys"] if k["kid"] == kid)
key = jwt.PyJWK.from_dict(jwk)
claims = jwt.decode(token, key=key.key, algorithms=["EdDSA"], issuer=issuer)
print(json.dumps(claims))
