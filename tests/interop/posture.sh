#!/bin/bash
# The posture page in a real browser: headless Chromium (Debian package `chromium`).
#
# What it does:
#   1. runs tests/receipts.rs (real deliveries over DANE, MTA-STS and the WebPKI floor, and a
#      refused domain) with TLSRELAY_POSTURE_OUT set, so the test leaves the page written by
#      `tlsrelay posture --html` and the JSON of `tlsrelay posture --json` of that spool;
#   2. renders the page with `chromium --headless --dump-dom` and checks that every number the
#      rendered page shows (`data-n="<json path>"`) equals the JSON's, and that there are more
#      than 30 of them;
#   3. takes screenshots at a desktop (1000 px) and a phone (390 px) width; with --keep,
#      writes them to docs/posture.png and docs/posture-phone.png;
#   4. prints PASS/FAIL lines and, last, "<N> passed, <M> failed"; exits non-zero on any failure.
#
# Needs: chromium (installed with apt-get when missing and running as root), python3.
# Env: CARGO_TARGET_DIR as usual; KEEP_WORK=1 keeps the temporary directory.
set -uo pipefail
exec </dev/null
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
KEEP=0
[[ ${1:-} == --keep ]] && KEEP=1
passed=0 failed=0
pass() { echo "PASS: $*"; passed=$((passed + 1)); }
fail() { echo "FAIL: $*"; failed=$((failed + 1)); }
die() { fail "$*"; echo "$passed passed, $failed failed"; exit 1; }

if ! command -v chromium >/dev/null; then
    if [[ $(id -u) -eq 0 ]]; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium >/dev/null \
            || { apt-get update >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium >/dev/null; }
    fi
    command -v chromium >/dev/null || die "chromium is not installed (apt-get install chromium)"
fi
WORK=$(mktemp -d)
cleanup() { [[ ${KEEP_WORK:-0} == 1 ]] && echo "kept $WORK" || rm -rf "$WORK"; }
trap cleanup EXIT

cd "$ROOT" || die "no checkout at $ROOT"
if TLSRELAY_POSTURE_OUT=$WORK cargo test --test receipts >"$WORK/test.log" 2>&1; then
    pass "tests/receipts.rs delivered, verified the receipts and wrote the posture page"
else
    tail -n 40 "$WORK/test.log"
    die "tests/receipts.rs failed"
fi
[[ -s $WORK/posture.html && -s $WORK/posture.json ]] || die "the test left no posture.html/posture.json"

# Chromium's own sandbox needs user namespaces, which a root CI container may lack.
browser() { chromium --headless --no-sandbox --disable-gpu --hide-scrollbars "$@" 2>>"$WORK/chromium.log"; }
browser --dump-dom "file://$WORK/posture.html" >"$WORK/dom.html" || die "chromium --dump-dom failed"
if python3 - "$WORK/dom.html" "$WORK/posture.json" <<'PY'
import json, re, sys
dom = open(sys.argv[1]).read()
data = json.load(open(sys.argv[2]))

def lookup(path):
    if path == "early_warnings.count":
        return len(data["early_warnings"])
    scope, rest = data, path
    if path.startswith("totals."):
        scope, rest = data["totals"], path[len("totals."):]
    elif path.startswith("domains."):
        rest = path[len("domains."):]
        d = next(d for d in data["domains"] if rest.startswith(d["domain"] + "."))
        scope, rest = d, rest[len(d["domain"]) + 1:]
    if rest.startswith("mechanisms."):
        name, field = rest[len("mechanisms."):].rsplit(".", 1)
        return next(s for s in scope["mechanisms"] if s["mechanism"] == name)[field]
    for m in ("tls_versions", "refusals"):
        if rest.startswith(m + "."):
            return scope[m][rest[len(m) + 1:]]
    return scope[rest]

shown = re.findall(r'data-n="([^"]+)"[^>]*>([^<]*)<', dom)
bad = [(p, v, lookup(p)) for p, v in shown if float(v) != float(lookup(p))]
for b in bad:
    print("differs: %s shown %s, JSON %s" % b)
print("%d numbers compared" % len(shown))
sys.exit(1 if bad or len(shown) <= 30 else 0)
PY
then
    pass "every number of the page rendered by Chromium equals the JSON's"
else
    fail "the rendered page and the JSON differ"
fi
grep -q 'id="early-warnings"' "$WORK/dom.html" && pass "the page has its early warnings section" \
    || fail "no early warnings section"

browser --screenshot="$WORK/posture.png" --window-size=1000,1500 "file://$WORK/posture.html"
browser --screenshot="$WORK/posture-phone.png" --window-size=390,1600 "file://$WORK/posture.html"
if [[ -s $WORK/posture.png && -s $WORK/posture-phone.png ]]; then
    pass "screenshots at 1000 px and 390 px"
    if [[ $KEEP == 1 ]]; then
        cp "$WORK/posture.png" "$WORK/posture-phone.png" "$ROOT/docs/" && pass "screenshots kept in docs/"
    fi
else
    fail "chromium wrote no screenshot (see $WORK/chromium.log)"
fi
echo "$passed passed, $failed failed"
[[ $failed -eq 0 ]]
