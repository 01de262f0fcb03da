#!/bin/bash
# Runs every fuzz target (or those named after SECONDS) for SECONDS each, one
# after the other, and prints the executions and findings of each.
#   fuzz/run.sh 30                      # every target, 30 s each
#   fuzz/run.sh 600 data xtext          # two targets, 10 minutes each
# Needs nightly and cargo-fuzz (`cargo install cargo-fuzz`). New corpus entries
# go to fuzz/corpus/TARGET (not committed); the committed seeds stay in
# fuzz/seeds/TARGET. A crash is saved in fuzz/artifacts/TARGET and makes the
# exit status 1. JOBS=2 runs two targets at a time.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
seconds=${1:?usage: fuzz/run.sh SECONDS [TARGET...]}
shift
targets=("$@")
if [[ ${#targets[@]} -eq 0 ]]; then
    mapfile -t targets < <(cargo +nightly fuzz list)
fi
# Kept apart from the stable builds' target dir: other flags, other toolchain.
target_dir=${FUZZ_TARGET_DIR:-$PWD/../target/fuzz}
jobs=${JOBS:-1}

dict_of() {
    case $1 in
        smtp_command|smtp_reply|xtext) echo dict/smtp.dict ;;
        data) echo dict/data.dict ;;
        sts_txt|sts_policy|tlsrpt_record) echo dict/sts.dict ;;
        local_policy|postfix_import) echo dict/policy.dict ;;
        envelope_json) echo dict/json.dict ;;
    esac
}

cargo +nightly fuzz build --target-dir "$target_dir" || exit 2

run_one() {
    local t=$1 log=logs/$1.log dict
    mkdir -p "corpus/$t" "seeds/$t" "artifacts/$t" logs
    dict=$(dict_of "$t")
    cargo +nightly fuzz run --target-dir "$target_dir" "$t" "corpus/$t" "seeds/$t" -- \
        -max_total_time="$seconds" -print_final_stats=1 -rss_limit_mb=2048 -timeout=10 \
        ${dict:+-dict=$dict} >"$log" 2>&1
    local rc=$?
    local execs found
    execs=$(grep -a -m1 -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$')
    found=$(find "artifacts/$t" -type f | wc -l)
    printf '%-16s %4ss  executions %10s  exit %s  artifacts %s\n' \
        "$t" "$seconds" "${execs:-?}" "$rc" "$found"
    return $rc
}

status=0
running=0
for t in "${targets[@]}"; do
    run_one "$t" &
    running=$((running + 1))
    if [[ $running -ge $jobs ]]; then
        wait -n || status=1
        running=$((running - 1))
    fi
done
while [[ $running -gt 0 ]]; do
    wait -n || status=1
    running=$((running - 1))
done
[[ $status -eq 0 ]] || echo "findings: see fuzz/artifacts/ and fuzz/logs/"
exit $status
