#!/usr/bin/env bash
# Makes TorchSharp's libLibTorchSharp.so load on systems whose libstdc++ predates GLIBCXX_3.4.32 (Debian 12).
# The library needs exactly one symbol of that version, std::ios_base_library_init(); we provide it from a shim,
# drop the symbol's version, and mark the version requirement weak. A no-op where libstdc++ is new enough.
# usage: patch-libtorchsharp.sh <output-dir> <scratch-dir>
set -euo pipefail
out="$1"; scratch="$2"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
need=GLIBCXX_3.4.32
sym=_ZSt21ios_base_library_initv
shim=libfatellm-iosbase-shim.so

[ "$(uname -s)" = Linux ] || exit 0
mapfile -t libs < <(find "$out" -maxdepth 4 -name libLibTorchSharp.so 2>/dev/null)
[ ${#libs[@]} -gt 0 ] || exit 0

stdcxx=$( (/sbin/ldconfig -p 2>/dev/null || ldconfig -p 2>/dev/null) | awk '/libstdc\+\+\.so\.6 .*x86-64|libstdc\+\+\.so\.6 .*AArch64/{print $NF; exit}')
[ -n "$stdcxx" ] || stdcxx=$(ls /usr/lib/*-linux-gnu/libstdc++.so.6 2>/dev/null | head -n 1)
if [ -n "$stdcxx" ] && grep -q "$need" "$stdcxx"; then exit 0; fi

for lib in "${libs[@]}"; do
  grep -q "$need" "$lib" || continue
  dir=$(dirname "$lib")
  if [ -f "$dir/$shim" ] && command -v patchelf >/dev/null && patchelf --print-needed "$lib" | grep -qx "$shim"; then
    continue  # already patched
  fi
  for tool in g++ patchelf; do
    command -v "$tool" >/dev/null || { echo "error: $tool is required to patch $lib for this libstdc++ (run build/setup.sh)" >&2; exit 1; }
  done
  mkdir -p "$scratch"
  [ -x "$scratch/weaken-verneed" ] || g++ -O2 -o "$scratch/weaken-verneed" "$here/weaken-verneed.cpp"
  g++ -shared -fPIC -O2 -o "$dir/$shim" "$here/ios-base-shim.cpp"
  patchelf --clear-symbol-version "$sym" --add-needed "$shim" --set-rpath '$ORIGIN' "$lib"
  "$scratch/weaken-verneed" "$lib" "$need" >/dev/null
  echo "patched $lib for $need (system libstdc++: ${stdcxx:-unknown})"
done
