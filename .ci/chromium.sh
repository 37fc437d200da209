#!/usr/bin/env bash
# Installs Debian's Chromium for the dashboard's browser test
# (tests/test_dashboard_browser.py), when it is missing and apt can install it.
# Never fails the build: where it cannot install, it says why, and the test
# skips with that reason.
set -u
CHROMIUM=/usr/bin/chromium
if [ -x "$CHROMIUM" ]; then
    echo "chromium: $("$CHROMIUM" --version 2>/dev/null || echo present)"
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "chromium: not installed, and there is no apt-get here; the browser test skips"
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        SUDO="sudo -n"
    else
        echo "chromium: not installed, and apt-get needs root; the browser test skips"
        exit 0
    fi
fi
export DEBIAN_FRONTEND=noninteractive
if ! $SUDO apt-get install -y --no-install-recommends chromium >/tmp/chromium-install.log 2>&1; then
    $SUDO apt-get update >>/tmp/chromium-install.log 2>&1
    $SUDO apt-get install -y --no-install-recommends chromium >>/tmp/chromium-install.log 2>&1
fi
if [ -x "$CHROMIUM" ]; then
    echo "chromium: installed $("$CHROMIUM" --version 2>/dev/null)"
else
    echo "chromium: apt-get could not install it (see /tmp/chromium-install.log); the browser test skips"
fi
exit 0
