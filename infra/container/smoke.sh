#!/usr/bin/env bash
# Build the Dockerfile with podman and run the image the three ways users run it:
#   1. `textworker demo` (the image's default command);
#   2. `textworker run` over an input directory mounted read-only, into a mounted output directory;
#   3. `textworker serve` in the container, called with curl from the host.
# Prints the build time and the image size, and exits non-zero at the first failed check.
#
#   infra/container/smoke.sh                 # build, then run the checks
#   SKIP_BUILD=1 infra/container/smoke.sh    # run the checks on the image already built
#   CONTEXT=DIR infra/container/smoke.sh     # build from DIR (e.g. a `git archive` export) instead of this tree
#
# Settings (environment):
#   BASE       base image; built by bootstrap-base.sh when it is missing (default localhost/textworker-base:bookworm)
#   IMAGE      tag of the image built (default localhost/textworker:cpu)
#   TORCH      torch requirement or wheel path for the build (default: the Dockerfile's CPU index)
#   WHEELS     a host directory mounted at the same path while building, for a local torch wheel
#   HOST_CA    a CA bundle the build's pip trusts, for networks behind a TLS-inspecting proxy
#   RUNTIME    OCI runtime (default runc; see containers.conf for why not crun)
#   PORT       port `serve` listens on, on the host network (default 18000)
set -euo pipefail
cd "$(dirname "$0")/../.."
export CONTAINERS_CONF=${CONTAINERS_CONF:-$PWD/infra/container/containers.conf}
BASE=${BASE:-localhost/textworker-base:bookworm}
IMAGE=${IMAGE:-localhost/textworker:cpu}
PORT=${PORT:-18000}
podman_() { podman --runtime "${RUNTIME:-runc}" "$@"; }
say() { printf '== %s\n' "$*"; }
fail() { printf 'FAILED: %s\n' "$*" >&2; exit 1; }

WORK=$(mktemp -d /var/tmp/textworker-smoke.XXXXXX)
cleanup() { podman_ rm -f -t 5 textworker-smoke-serve >/dev/null 2>&1 || true; rm -rf "$WORK"; }
trap cleanup EXIT

if [ -z "${SKIP_BUILD:-}" ]; then
    podman image exists "$BASE" || infra/container/bootstrap-base.sh "$BASE"
    args=(--network host --build-arg "BASE=$BASE" --build-arg "BUILDER=$BASE" -t "$IMAGE")
    [ -n "${TORCH:-}" ] && args+=(--build-arg "TORCH=$TORCH")
    [ -n "${WHEELS:-}" ] && args+=(--volume "$WHEELS:$WHEELS:ro")
    if [ -n "${HOST_CA:-}" ]; then
        # pip in the build's RUN steps reads /etc/pip.conf; neither file stays in the image
        printf '[global]\ncert = /run/host-ca.crt\n' > "$WORK/pip.conf"
        args+=(--volume "$HOST_CA:/run/host-ca.crt:ro" --volume "$WORK/pip.conf:/etc/pip.conf:ro")
    fi
    say "building $IMAGE on $BASE"
    start=$(date +%s)
    podman_ build "${args[@]}" "${CONTEXT:-.}"
    say "build took $(( $(date +%s) - start )) s"
fi
say "image size: $(podman image inspect "$IMAGE" --format '{{.Size}}') bytes ($(podman image ls "$IMAGE" --format '{{.Size}}'))"

say "1. textworker demo (the default command)"
podman_ run --rm --network host "$IMAGE" | tee "$WORK/demo.txt"
grep -q 'now holds for pipeline `demo`' "$WORK/demo.txt" || fail "demo printed no report"
grep -q 'dead letters: 7' "$WORK/demo.txt" || fail "demo stored the wrong number of dead letters"

say "2. textworker run over a mounted input"
mkdir -p "$WORK/in" "$WORK/out" && chmod 777 "$WORK/out"
head -n 20 worker/seed/sample_docs.jsonl > "$WORK/in/docs.jsonl"
printf '%s\n' '{"id": "mounted-1", "text": "The hotel room was spotless and the staff were lovely."}' >> "$WORK/in/docs.jsonl"
podman_ run --rm --network host -v "$WORK/in:/in:ro" -v "$WORK/out:/out" "$IMAGE" \
    run pipelines/demo.yaml --input /in/docs.jsonl --database-url sqlite:////out/results.db --json --quiet | tee "$WORK/run.json"
python3 - "$WORK/out/results.db" <<'PY' || fail "the mounted run stored the wrong rows"
import sqlite3, sys
db = sqlite3.connect(sys.argv[1])
stages = dict(db.execute("select stage, count(*) from results where doc_id = 'mounted-1' group by stage").fetchall())
print("rows stored for mounted-1:", stages)
assert {"sentiment", "spam", "qa"} <= set(stages), stages
PY

say "3. textworker serve in the container, curl from the host"
# as infra/compose.yaml runs it: on every interface, so with a token (refused without one)
podman_ run -d --name textworker-smoke-serve --network host --shm-size 1g -e TEXTWORKER_TOKEN=smoke-token "$IMAGE" \
    serve pipelines/demo.yaml --host 0.0.0.0 --port "$PORT" --database-url none >/dev/null
for _ in $(seq 1 180); do
    curl -sf "http://127.0.0.1:$PORT/readyz" >/dev/null && break
    podman_ container exists textworker-smoke-serve || fail "the serve container exited"
    sleep 2
done
curl -sf "http://127.0.0.1:$PORT/readyz" >/dev/null || { podman_ logs --tail 40 textworker-smoke-serve; fail "serve never became ready"; }
curl -s -o /dev/null -w '%{http_code}\n' "http://127.0.0.1:$PORT/v1/documents" -H 'content-type: application/json' -d '{}' \
    | grep -qx 401 || fail "serve answered a request without the token"
curl -sf "http://127.0.0.1:$PORT/v1/documents" -H 'content-type: application/json' -H 'Authorization: Bearer smoke-token' -d '{"documents": [
  {"id": "r1", "text": "The room was spotless and the staff were lovely."},
  {"id": "m1", "text": "URGENT! You have won a prize. Call 09061 701461 now"}]}' | tee "$WORK/serve.json"
echo
python3 - "$WORK/serve.json" <<'PY' || fail "serve answered wrongly"
import json, sys
answer = json.load(open(sys.argv[1]))
docs = {d["id"]: d for d in answer["documents"]}
assert docs["r1"]["status"] == "ok" and "sentiment" in docs["r1"]["results"], docs["r1"]
assert docs["m1"]["results"]["spam"]["label"] == "spam", docs["m1"]
PY
podman_ stop -t 30 textworker-smoke-serve >/dev/null
say "all checks passed"
