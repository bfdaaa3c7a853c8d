//! majordomo API keys: format, generation and hashing (SPEC §3).
//!
//! A key is `mdm_sk_` + 43 characters of unpadded base64url (32 random bytes
//! from the OS). Only its BLAKE3 hash (hex) is stored; the plaintext is shown
//! once at creation. The validation cache lives in [`cache`].

pub mod cache;
pub mod revocation;

use base64::Engine;

pub const KEY_PREFIX: &str = "mdm_sk_";
const KEY_BODY_LEN: usize = 43;
pub const KEY_LEN: usize = KEY_PREFIX.len() + KEY_BODY_LEN;

/// A freshly generated key: the plaintext (show once) and what is stored.
pub struct GeneratedKey {
    pub plaintext: String,
    pub hash: String,
    pub hint: String,
}

/// Generates a new key from 32 bytes of OS randomness.
pub fn generate() -> Result<GeneratedKey, getrandom::Error> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)?;
    let mut plaintext = String::with_capacity(KEY_LEN);
    plaintext.push_str(KEY_PREFIX);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode_string(bytes, &mut plaintext);
    let hash = hash_hex(&plaintext);
    let hint = display_hint(&plaintext);
    Ok(GeneratedKey {
        plaintext,
        hash,
        hint,
    })
}

/// Whether a presented value can be a majordomo key at all. Malformed values
/// are rejected without touching the store or the negative cache.
pub fn is_well_formed(key: &str) -> bool {
    key.len() == KEY_LEN
        && key.starts_with(KEY_PREFIX)
        && key.as_bytes()[KEY_PREFIX.len()..]
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_')
}

/// The BLAKE3 hash of the whole key.
pub fn hash(key: &str) -> [u8; 32] {
    *blake3::hash(key.as_bytes()).as_bytes()
}

/// The BLAKE3 hash of the last secret hashed here, for the next request to
/// reuse: a client sends the same key (and the same provider credential)
/// request after request, and hashing one costs ~500 instructions where
/// comparing it with the last costs ~40. The comparison reads every byte
/// whatever they hold, so how long it takes tells nothing of the remembered
/// secret but its length. Kept per thread, in a `thread_local!`.
#[derive(Default)]
pub struct LastHash {
    secret: Vec<u8>,
    hash: Option<blake3::Hash>,
}

impl LastHash {
    /// `secret`'s hash, and whether it was remembered.
    pub fn hash(&mut self, secret: &[u8]) -> (blake3::Hash, bool) {
        match self.hash {
            Some(hash) if same_secret(&self.secret, secret) => (hash, true),
            _ => {
                let hash = blake3::hash(secret);
                self.secret.clear();
                self.secret.extend_from_slice(secret);
                self.hash = Some(hash);
                (hash, false)
            }
        }
    }
}

/// Whether `a` and `b` are equal, in a time that depends only on their
/// lengths: no early exit at the first difference.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let (a_words, b_words) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail = a_words
        .remainder()
        .iter()
        .zip(b_words.remainder())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y));
    let word = |w: &[u8]| u64::from_le_bytes(w.try_into().unwrap_or_default());
    let words = a_words
        .zip(b_words)
        .fold(0u64, |acc, (x, y)| acc | (word(x) ^ word(y)));
    (words | u64::from(tail)) == 0
}

thread_local! {
    /// The majordomo key this thread checked last.
    static LAST_KEY: std::cell::RefCell<LastHash> = std::cell::RefCell::default();
}

/// [`hash`], remembered for the thread's next request with the same key.
pub fn hash_remembered(key: &str) -> [u8; 32] {
    LAST_KEY.with_borrow_mut(|m| *m.hash(key.as_bytes()).0.as_bytes())
}

/// The stored form of [`hash`]: 64 lowercase hex characters.
pub fn hash_hex(key: &str) -> String {
    blake3::hash(key.as_bytes()).to_hex().to_string()
}

pub fn hash_to_hex(hash: &[u8; 32]) -> String {
    blake3::Hash::from_bytes(*hash).to_hex().to_string()
}

/// What `keys list` shows to tell keys apart: `mdm_sk_…` + the last 4 characters.
pub fn display_hint(key: &str) -> String {
    let tail = &key[key.len().saturating_sub(4)..];
    format!("{KEY_PREFIX}…{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_have_the_documented_format() {
        let k = generate().unwrap();
        assert_eq!(k.plaintext.len(), 50);
        assert!(k.plaintext.starts_with("mdm_sk_"));
        assert!(is_well_formed(&k.plaintext));
        assert_eq!(k.hash.len(), 64);
        assert_eq!(k.hash, hash_hex(&k.plaintext));
        assert_eq!(hash_to_hex(&hash(&k.plaintext)), k.hash);
        assert!(k.hint.ends_with(&k.plaintext[46..]));
    }

    #[test]
    fn a_remembered_hash_is_reused_only_for_the_same_secret() {
        let mut memo = LastHash::default();
        let secrets: [&[u8]; 6] = [
            b"",
            b"",
            b"sk-a",
            b"sk-b",
            b"sk-b",
            b"sk-a-longer-than-eight",
        ];
        let mut reused = Vec::new();
        for s in secrets {
            let (h, was) = memo.hash(s);
            assert_eq!(h, blake3::hash(s));
            reused.push(was);
        }
        assert_eq!(reused, [false, true, false, false, true, false]);
        // Same length, a difference in the last byte only.
        assert!(!memo.hash(b"sk-a-longer-than-eighT").1);
        assert!(same_secret(b"0123456789", b"0123456789"));
        assert!(!same_secret(b"0123456789", b"0123456788"));
        assert!(!same_secret(b"0123456789", b"012345678"));
        let k = generate().unwrap();
        assert_eq!(hash_remembered(&k.plaintext), hash(&k.plaintext));
        assert_eq!(hash_remembered(&k.plaintext), hash(&k.plaintext));
    }

    #[test]
    fn two_keys_differ() {
        assert_ne!(generate().unwrap().plaintext, generate().unwrap().plaintext);
    }

    #[test]
    fn malformed_keys_are_recognised() {
        assert!(!is_well_formed(""));
        assert!(!is_well_formed("sk-openai-style"));
        assert!(!is_well_formed(&format!("mdm_sk_{}", "a".repeat(42))));
        assert!(!is_well_formed(&format!("mdm_sk_{}!", "a".repeat(42))));
        assert!(is_well_formed(&format!("mdm_sk_{}", "a".repeat(43))));
    }
}
