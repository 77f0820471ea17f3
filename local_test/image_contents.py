"""Checks a container's filesystem (a `podman export` tar on stdin) against what the wick image
may hold: the binary, the CA bundle, the dynamic loader and shared libraries (lib*/...so*),
`serve` and `train` as links to wick, and the empty mount points the engine adds. Prints a
one-line summary and exits 0, or prints what should not be there and exits 1.
Used by local_test/container_test.sh (the image has no shell to look from inside)."""

import re
import sys
import tarfile

WICK = "usr/local/bin/wick"
CA_BUNDLE = "etc/ssl/certs/ca-certificates.crt"
LINKS = {"usr/local/bin/serve": "wick", "usr/local/bin/train": "wick"}
LIBRARY = re.compile(r"^(usr/)?lib(64|x32)?/([^/]+/)?[^/]+\.so(\.[0-9]+)*$")
# Files podman creates as mount points of /etc/hosts, /etc/resolv.conf and friends.
MOUNT_POINTS = re.compile(r"^(etc/[^/]+|run/[^/]+|\.containerenv)$")


def main() -> int:
    problems = []
    libraries = []
    found = set()
    links = {}
    with tarfile.open(fileobj=sys.stdin.buffer, mode="r|") as archive:
        for member in archive:
            name = member.name.removeprefix("./").rstrip("/")
            if name == "opt/ml" or name.startswith("opt/ml/"):
                problems.append(f"{name} (nothing may be under /opt/ml)")
            if member.issym() or member.islnk():
                links[name] = member.linkname
            elif member.isfile():
                if name in (WICK, CA_BUNDLE):
                    found.add(name)
                elif LIBRARY.match(name):
                    libraries.append(name)
                elif not (member.size == 0 and MOUNT_POINTS.match(name)):
                    problems.append(f"{name} ({member.size} bytes)")
            elif not member.isdir():
                problems.append(f"{name} (not a file, link or directory)")
    for name, target in links.items():
        if LINKS.get(name) != target:
            problems.append(f"{name} -> {target} (only serve and train may be links, to wick)")
    for name, target in LINKS.items():
        if links.get(name) != target:
            problems.append(f"no {name} -> {target}")
    for name in (WICK, CA_BUNDLE):
        if name not in found:
            problems.append(f"no {name}")
    if problems:
        print("; ".join(problems))
        return 1
    print(
        f"image files: {WICK}, {CA_BUNDLE}, serve and train -> wick, "
        f"{len(libraries)} libraries: {' '.join(sorted(libraries))}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
