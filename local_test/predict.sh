#!/usr/bin/env bash
# Sends one file to the local endpoint's /invocations and prints the JSON answer, like AWS's
# local_test/predict.sh. Exits non-zero on an HTTP error (the error body is still printed).
#
# Usage: local_test/predict.sh FILE [CONTENT_TYPE]
#   CONTENT_TYPE defaults to image/jpeg; any image type, application/json or
#   application/x-npy (see README "Serving"). Port: ${SAGEMAKER_BIND_TO_PORT:-8080}.
#   Set VERBOSE=1 to see the HTTP exchange (curl -v).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

if [[ $# -lt 1 || $# -gt 2 ]]; then
    sed -n '2,8s/^# \{0,1\}//p' "${BASH_SOURCE[0]}" >&2
    exit 1
fi
file=$1
content_type=${2:-image/jpeg}
[[ -f "$file" ]] || { echo "error: no such file: $file" >&2; exit 1; }

verbose=()
[[ "${VERBOSE:-0}" == 1 ]] && verbose=(-v)
curl -sS --fail-with-body ${verbose[@]+"${verbose[@]}"} \
    -H "Content-Type: $content_type" -H "Accept: application/json" \
    --data-binary "@$file" "http://127.0.0.1:$port/invocations" || {
    status=$?
    echo
    exit "$status"
}
echo
