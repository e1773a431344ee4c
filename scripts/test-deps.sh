#!/bin/sh
# The Debian packages the test suite needs: redis-server (the tests start their own),
# chromium (tox -e browser) and tesseract-ocr (OCR of scans). Installs the missing ones with
# apt-get as root or with passwordless sudo; otherwise stops and says which command to run.
set -eu

missing=
for need in redis-server:redis-server chromium:chromium tesseract:tesseract-ocr; do
    command -v "${need%%:*}" >/dev/null 2>&1 || missing="$missing ${need#*:}"
done
[ -z "$missing" ] && exit 0

if [ "$(id -u)" = 0 ]; then
    as_root=
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    as_root="sudo -n"
else
    echo "The tests need:$missing. Install with:" >&2
    echo "    sudo apt-get update && sudo apt-get install -y$missing" >&2
    exit 1
fi

echo "installing$missing"
$as_root apt-get update -qq
$as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq$missing
