# shellcheck shell=bash
# Sourced by the load benchmarks: builds the release binaries they measure.
#
#   build_release TARGET_DIR [EXAMPLE...]
#
# majordomo exactly as the Dockerfile's builder builds it (its own cargo
# invocation, with scripts/release-rustflags.sh: the committed profile), so the
# benchmarks measure the binary that ships. Examples (the bare proxy, the Rust
# mock) come from a second invocation: building them with the binary would
# unify dev-dependency features into shared crates and give majordomo other
# symbols than the ones the profile names. Same RUSTFLAGS for both, so the two
# never rebuild each other's dependencies.
build_release() {
  local target=$1; shift
  local repo flags ex examples=()
  repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)"
  flags="$(CARGO_TARGET_DIR="$target" "$repo/scripts/release-rustflags.sh")"
  for ex in "$@"; do examples+=(--example "$ex"); done
  ( cd "$repo" && export RUSTFLAGS="$flags" CARGO_TARGET_DIR="$target" &&
    nice -n 10 cargo build --release --locked --bin majordomo &&
    if [[ ${#examples[@]} -gt 0 ]]; then nice -n 10 cargo build --release --locked "${examples[@]}"; fi )
}
