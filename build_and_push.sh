#!/usr/bin/env bash
# Builds the wick image for linux/amd64 and pushes it to Amazon ECR in the caller's account
# (AWS's scikit_bring_your_own build_and_push.sh, made robust). Prints the image URI.
#
# Usage: ./build_and_push.sh [--dry-run] IMAGE_NAME [-- DOCKER_BUILD_ARGS...]
#   --dry-run   print the commands instead of running them (needs neither aws nor docker;
#               ACCOUNT stands for the account when AWS cannot be asked)
#   Account: $AWS_ACCOUNT_ID, else `aws sts get-caller-identity`.
#   Region: $AWS_REGION, else `aws configure get region`, else us-west-2.
#   Tags: latest and the git commit (with -dirty when the work tree has changes).
#   Extra arguments after `--` go to `docker build`, e.g.
#     ./build_and_push.sh wick -- --target prebuilt --build-arg WICK_BINARY=target/release/wick
set -euo pipefail

usage() {
    sed -n '2,13s/^# \{0,1\}//p' "${BASH_SOURCE[0]}" >&2
    exit 1
}

dry_run=0
image=""
build_args=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --dry-run) dry_run=1 ;;
        -h | --help) usage ;;
        --) shift; build_args=("$@"); break ;;
        -*) echo "error: unknown option $1" >&2; usage ;;
        *)
            [[ -z "$image" ]] || { echo "error: one image name only" >&2; usage; }
            image=$1
            ;;
    esac
    shift
done
[[ -n "$image" ]] || usage

cd "$(dirname "${BASH_SOURCE[0]}")"

# Runs a command, or prints it (shell-quoted) with --dry-run.
run() {
    if [[ $dry_run == 1 ]]; then
        printf '%q ' "$@"
        printf '\n'
    else
        "$@"
    fi
}

if [[ -n "${AWS_ACCOUNT_ID:-}" ]]; then
    account=$AWS_ACCOUNT_ID
elif ! account=$(aws sts get-caller-identity --query Account --output text); then
    if [[ $dry_run == 1 ]]; then
        echo "warning: no AWS account (aws sts get-caller-identity failed); printing ACCOUNT" >&2
        account=ACCOUNT
    else
        echo "error: could not get the AWS account (aws sts get-caller-identity); check credentials" >&2
        exit 255
    fi
fi
region=${AWS_REGION:-$(aws configure get region 2>/dev/null || true)}
region=${region:-us-west-2}
registry="$account.dkr.ecr.$region.amazonaws.com"
fullname="$registry/$image"

commit=$(git rev-parse --short=12 HEAD 2>/dev/null || echo nogit)
if [[ $commit != nogit && -n "$(git status --porcelain 2>/dev/null)" ]]; then
    commit="$commit-dirty"
fi

if [[ $dry_run == 1 ]]; then
    echo "aws ecr describe-repositories --region $region --repository-names $image >/dev/null 2>&1 || aws ecr create-repository --region $region --repository-name $image >/dev/null"
elif ! aws ecr describe-repositories --region "$region" --repository-names "$image" >/dev/null 2>&1; then
    echo "creating ECR repository $image in $region" >&2
    aws ecr create-repository --region "$region" --repository-name "$image" >/dev/null
fi

if [[ $dry_run == 1 ]]; then
    echo "aws ecr get-login-password --region $region | docker login --username AWS --password-stdin $registry"
else
    aws ecr get-login-password --region "$region" \
        | docker login --username AWS --password-stdin "$registry"
fi

run docker build --platform linux/amd64 \
    --build-arg "REVISION=$commit" \
    -t "$image:latest" -t "$image:$commit" \
    ${build_args[@]+"${build_args[@]}"} .
for tag in latest "$commit"; do
    run docker tag "$image:$tag" "$fullname:$tag"
    run docker push "$fullname:$tag"
done

echo "$fullname:$commit"
