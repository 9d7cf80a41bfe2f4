# Sourced by scripts/test: find Chromium for the browser tests (tests/browser), or install
# Debian's package when running as root with apt-get. When neither works, say how to provide one;
# the browser tests then fail with the same advice (they are never skipped).
chromium_found() {
  [ -n "${JOBGATE_TEST_CHROMIUM:-}" ] && return 0
  for name in chromium chromium-browser google-chrome google-chrome-stable; do
    command -v "$name" >/dev/null 2>&1 && return 0
  done
  return 1
}
if ! chromium_found; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "Installing Chromium for the browser tests (apt-get install chromium)..." >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq --no-install-recommends chromium >/dev/null 2>&1 \
      || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq --no-install-recommends chromium >/dev/null 2>&1; } \
      || true
  fi
  if ! chromium_found; then
    echo "No Chromium for the browser tests: install it (apt-get install chromium), put chromium or" >&2
    echo "google-chrome on the PATH, or set JOBGATE_TEST_CHROMIUM=/path/to/chrome." >&2
  fi
fi
