# Sourced by the gateway benchmarks: an organization whose live key reaches the mock upstream.
# Needs GATE (the gateway's address) and MOCK (the mock upstream's); the bootstrap admin
# admin@bench.local must exist. Sets api(), owner, org and key.
api() { curl -s -X "$1" "http://$GATE$2" -H "content-type: application/json" ${3:+-H "authorization: Bearer $3"} -d "${4:-}"; }
# The benchmark measures the path, not the plan: lift the default plan's hourly limit and quota.
admin=$(api POST /v1/auth/login "" '{"email":"admin@bench.local","password":"load-test-passphrase-9"}' | python3 -c 'import json,sys;print(json.load(sys.stdin)["access_token"])')
api PATCH /v1/admin/plans/smb "$admin" '{"limits":{"requests_per_hour":1000000000,"api_requests_per_month":1000000000,"gateway_requests_per_month":1000000000,"gateway_tokens_per_month":100000000000}}' >/dev/null
owner=$(api POST /v1/auth/register "" '{"email":"bench@example.com","password":"load-test-passphrase-7"}' | python3 -c 'import json,sys;print(json.load(sys.stdin)["access_token"])')
org=$(api POST /v1/organizations "$owner" '{"name":"Bench","slug":"bench"}' | python3 -c 'import json,sys;print(json.load(sys.stdin)["id"])')
api POST "/v1/organizations/$org/providers" "$owner" "{\"provider\":\"openai_compatible\",\"name\":\"mock\",\"base_url\":\"http://$MOCK/v1\"}" >/dev/null
key=$(api POST "/v1/organizations/$org/api-keys" "$owner" '{"name":"bench","scopes":["gateway:proxy"],"rate_limit":{"requests_per_minute":1000000}}' | python3 -c 'import json,sys;print(json.load(sys.stdin)["token"])')
