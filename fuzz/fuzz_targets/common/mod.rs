//! Helpers shared by the fuzz targets (not a target itself).

#![allow(dead_code)]

use std::sync::OnceLock;

/// Largest chunk size per `seed[0] & 7`: one-byte chunks up to big ones.
const MAX_CHUNK: [usize; 8] = [1, 2, 3, 5, 8, 16, 64, 512];

/// Cuts `len` bytes into consecutive ranges (some of them empty) whose sizes
/// come from a small PRNG seeded by `seed`, so every input carries its own
/// chunking and libFuzzer can mutate it. Returns the end offset of each
/// chunk; the last one is `len`.
pub fn chunk_ends(seed: [u8; 4], len: usize) -> Vec<usize> {
    let max = MAX_CHUNK[usize::from(seed[0] & 7)];
    // xorshift32 must not start at 0.
    let mut state = u32::from_le_bytes(seed) | 1;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        state
    };
    let mut ends = Vec::new();
    let mut at = 0;
    while at < len {
        let r = next();
        // One chunk in 16 is empty: pushing nothing must be harmless too.
        let size = if r & 0xf == 0 {
            0
        } else {
            1 + (r >> 4) as usize % max
        };
        at = (at + size).min(len);
        ends.push(at);
    }
    if ends.last() != Some(&len) {
        ends.push(len);
    }
    ends
}

/// `data` split at `ends` (as returned by [`chunk_ends`]).
pub fn chunks<'a>(data: &'a [u8], ends: &'a [usize]) -> impl Iterator<Item = &'a [u8]> + 'a {
    let mut from = 0;
    ends.iter().map(move |&end| {
        let chunk = &data[from..end];
        from = end;
        chunk
    })
}

/// Reads a 4-byte seed from a header slice.
pub fn seed(bytes: &[u8]) -> [u8; 4] {
    [bytes[0], bytes[1], bytes[2], bytes[3]]
}

/// `MAJORDOMO_FUZZ_STRICT=1`: also assert the invariants that are relaxed
/// by default because of known, reported limitations (see README.md).
pub fn strict() -> bool {
    static STRICT: OnceLock<bool> = OnceLock::new();
    *STRICT.get_or_init(|| std::env::var_os("MAJORDOMO_FUZZ_STRICT").is_some_and(|v| v == "1"))
}
