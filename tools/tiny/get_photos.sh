#!/bin/sh
# Installs the Debian packages whose photographs d3sr-tiny is trained on
# (tools/tiny/photos.tsv lists them, with their licences from
# /usr/share/doc/PACKAGE/copyright) and checks every listed file is there.
set -eu
here=$(dirname "$0")
packages=$(grep -v '^#' "$here/photos.tsv" | cut -f2 | sort -u)
if [ "$(id -u)" = 0 ]; then sudo=""; else sudo="sudo"; fi
$sudo apt-get update -q
# shellcheck disable=SC2086
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q $packages
missing=0
for path in $(grep -v '^#' "$here/photos.tsv" | cut -f3); do
    [ -f "$path" ] || { echo "missing: $path" >&2; missing=1; }
done
exit $missing
