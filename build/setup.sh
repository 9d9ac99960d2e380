#!/usr/bin/env bash
# Installs the system packages FateLlm needs and that a fresh Debian/Ubuntu with the .NET SDK may lack:
#   g++ and patchelf  — make TorchSharp's native library load on libstdc++ older than GCC 13 (Debian 12);
#   wordnet-base      — the offline WordNet 3.0 dictionary the demo and paper experiment train on;
#   python3-sentencepiece, python3-regex — the reference tokenizers the tests check FateLlm's tokenizer files against.
# With the argument "tests", also what only the test suite needs:
#   chromium, chromium-driver — the headless browser the live board's browser spec drives (never a downloaded one);
#   postgresql                — the shared journal of the arbiter fail-over spec: the local server is started and given a
#                               role fatellm (password fatellm, may create databases; each run makes its own and drops it).
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
  command -v pg_ctlcluster >/dev/null 2>&1 || missing+=(postgresql)
fi
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "setup: installing ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if [ "${1:-}" = "tests" ]; then
  as_postgres() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else sudo -u postgres "$@"; fi; }
  # Start every local cluster that is down (no systemd in containers), then make the spec's role once.
  pg_lsclusters -h | while read -r version cluster _ status _; do
    [ "$status" = online ] || { [ "$(id -u)" -eq 0 ] && pg_ctlcluster "$version" "$cluster" start || sudo pg_ctlcluster "$version" "$cluster" start; }
  done
  as_postgres psql -qtAc "SELECT 1 FROM pg_roles WHERE rolname = 'fatellm'" | grep -q 1 \
    || as_postgres psql -qc "CREATE ROLE fatellm LOGIN CREATEDB PASSWORD 'fatellm'"
fi
