#!/usr/bin/env bash
# Installs the system packages FateLlm needs and that a fresh Debian/Ubuntu with the .NET SDK may lack:
#   g++ and patchelf  — make TorchSharp's native library load on libstdc++ older than GCC 13 (Debian 12);
#   wordnet-base      — the offline WordNet 3.0 dictionary the demo and paper experiment train on;
#   python3-sentencepiece, python3-regex — the reference tokenizers the tests check FateLlm's tokenizer files against.
# With the argument "tests", also what only the test suite needs:
#   chromium, chromium-driver — the headless browser the live board's browser spec drives (never a downloaded one).
# Idempotent: installs only what is missing; runs apt-get update once, and only if something is missing.
set -euo pipefail
missing=()
command -v g++ >/dev/null 2>&1 || missing+=(g++)
command -v patchelf >/dev/null 2>&1 || missing+=(patchelf)
[ -f /usr/share/wordnet/data.noun ] || missing+=(wordnet-base)
/usr/bin/python3 -c "import sentencepiece" >/dev/null 2>&1 || missing+=(python3-sentencepiece)
/usr/bin/python3 -c "import regex" >/dev/null 2>&1 || missing+=(python3-regex)
if [ "${1:-}" = "tests" ]; then
  [ -x /usr/bin/chromium ] || missing+=(chromium)
  [ -x /usr/bin/chromedriver ] || missing+=(chromium-driver)
fi
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "setup: installing ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
