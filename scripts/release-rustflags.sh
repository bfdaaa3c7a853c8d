#!/usr/bin/env bash
# Prints the RUSTFLAGS for a release build of majordomo: the committed
# profile (pgo/majordomo.profdata, made by scripts/build-pgo.sh) for a
# profile-guided build, or nothing (a plain build) when it cannot apply.
#
#   RUSTFLAGS="$(scripts/release-rustflags.sh)" cargo build --release --locked --bin majordomo
#
# With CARGO_TARGET_DIR set as for the build: the profile is copied there.
#
# The Dockerfile's builder, scripts/run.sh, scripts/validate-deploy.sh and the
# load benchmarks build this way, so all of them build the same binary.
# The profile names functions by their symbols, which carry the compiler's
# version: with another rustc than the one that made it (pgo/rustc-version),
# it would match nothing, so the build is plain and this says so on stderr.
# RUSTFLAGS already set are kept, after the profile's.
#
#   scripts/release-rustflags.sh --rustc-version   # this rustc, as pgo/rustc-version records it
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PROFILE="$REPO/pgo/majordomo.profdata"
# The one spelling of a compiler's identity, for build-pgo.sh to record and
# for the check below to compare.
rustc_version() { rustc -vV | sed -n 's/^release: //p; s/^commit-hash: //p' | paste -sd' '; }
if [[ "${1:-}" == --rustc-version ]]; then
  rustc_version
  exit 0
fi
flags=()
if [[ "${MAJORDOMO_PGO:-1}" == 0 ]]; then
  :   # asked for a plain build
elif [[ ! -f "$PROFILE" || ! -f "$REPO/pgo/rustc-version" ]]; then
  echo "release-rustflags: no profile in pgo/: plain release build" >&2
else
  made_with="$(cat "$REPO/pgo/rustc-version")"
  here="$(rustc_version)"
  if [[ "$made_with" == "$here" ]]; then
    # rustc needs an absolute path (build scripts compile elsewhere). A copy
    # in the target dir named by its content gives every checkout that
    # builds into that dir the same flags, so they share its artifacts
    # (RUSTFLAGS are part of cargo's fingerprint).
    sum="$(sha256sum "$PROFILE" | cut -c1-16)"
    copy="${CARGO_TARGET_DIR:-$REPO/target}/pgo/majordomo-$sum.profdata"
    if [[ ! -f "$copy" ]]; then
      mkdir -p "$(dirname "$copy")"
      cp "$PROFILE" "$copy.tmp.$$" && mv "$copy.tmp.$$" "$copy"
    fi
    copy="$(cd "$(dirname "$copy")" && pwd)/$(basename "$copy")"
    # A function changed since the profile was made is built as if it had no
    # profile; LLVM's warning for each would only be noise.
    flags+=("-Cprofile-use=$copy" "-Cllvm-args=-no-pgo-warn-mismatch")
    # Where there is history (not in the image's build context): say when the
    # code has changed since the training, which leaves parts of it unused.
    made_at="$(head -1 "$REPO/pgo/source-commit" 2>/dev/null || true)"
    if [[ -n "$made_at" ]] && git -C "$REPO" cat-file -e "$made_at^{commit}" 2>/dev/null &&
       ! git -C "$REPO" diff --quiet "$made_at" -- src Cargo.lock 2>/dev/null; then
      echo "release-rustflags: src/ or Cargo.lock changed since the profile was made (${made_at:0:12}): the functions changed since then are built without it; scripts/build-pgo.sh refreshes it" >&2
    fi
  else
    echo "release-rustflags: pgo/majordomo.profdata was made with rustc $made_with, this is $here: plain release build (scripts/build-pgo.sh makes a new one)" >&2
  fi
fi
[[ -n "${RUSTFLAGS:-}" ]] && flags+=("$RUSTFLAGS")
echo "${flags[*]}"
