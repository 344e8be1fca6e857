#!/usr/bin/env bash
# Helpers shared by the ci/ job scripts; sourced, not run.
#   PYTHON          interpreter to use (default: python3)
#   CI_REPORT_DIR   where jobs leave junit XML / JSON reports (default: $TMPDIR/gdn-ci-reports)
#   CI_ALLOW_NO_TESTS=1  treat pytest's "no tests collected" (exit 5) as a pass (default: fail)
set -euo pipefail

CI_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$CI_ROOT"
PYTHON="${PYTHON:-python3}"
CI_REPORT_DIR="${CI_REPORT_DIR:-${TMPDIR:-/tmp}/gdn-ci-reports}"
mkdir -p "$CI_REPORT_DIR"
export PYTHONUNBUFFERED=1
# The runtime default of Triton 3.9; set so that it stops warning about the coming change.
export TRITON_DEFAULT_FP_FUSION="${TRITON_DEFAULT_FP_FUSION:-1}"

ci_log() { printf '[ci/%s] %s\n' "${CI_JOB:-?}" "$*" >&2; }

# run_pytest JOB ARGS...: pytest with a junit report (and a per-test timeout of
# CI_PYTEST_TIMEOUT seconds when pytest-timeout is installed); exit 5 (nothing collected) is
# reported loudly and fails unless CI_ALLOW_NO_TESTS=1.  Other statuses are returned as is.
run_pytest() {
    local job="$1"; shift
    local rc=0
    local timeout=()
    if "$PYTHON" -c 'import pytest_timeout' 2>/dev/null; then
        timeout=(--timeout="${CI_PYTEST_TIMEOUT:-900}")
    else
        ci_log "pytest-timeout not installed: no per-test timeout"
    fi
    "$PYTHON" -m pytest -p no:cacheprovider --junitxml="$CI_REPORT_DIR/$job.xml" \
        "${timeout[@]}" "$@" || rc=$?
    if [ "$rc" -eq 5 ]; then
        rm -f "$CI_REPORT_DIR/$job.xml"
        if [ "${CI_ALLOW_NO_TESTS:-0}" = "1" ]; then
            ci_log "pytest collected NO tests (exit 5); passing because CI_ALLOW_NO_TESTS=1"
            return 0
        fi
        ci_log "pytest collected NO tests (exit 5): a job that tests nothing fails" \
               "(set CI_ALLOW_NO_TESTS=1 to accept it)"
        return 5
    fi
    return "$rc"
}
