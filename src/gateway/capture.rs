//! Bounded copies of request and response bodies for `logging.body_storage`.
//!
//! Bytes are copied as they pass (the stream itself is never held); past
//! `logging.max_body_bytes` the copy stops. The text is cut on a UTF-8
//! character boundary, so a multi-byte character is never split.

/// A body copy of at most `limit` bytes.
#[derive(Debug)]
pub struct BodyCapture {
    buf: Vec<u8>,
    limit: usize,
    total: usize,
}

impl BodyCapture {
    pub fn new(limit: usize) -> BodyCapture {
        BodyCapture {
            buf: Vec::new(),
            limit,
            total: 0,
        }
    }

    pub fn push(&mut self, chunk: &[u8]) {
        self.total += chunk.len();
        let room = self.limit.saturating_sub(self.buf.len());
        self.buf.extend_from_slice(&chunk[..chunk.len().min(room)]);
    }

    /// The captured text. Binary or compressed bodies are described, not stored.
    pub fn finish(self, content_encoding: Option<&str>) -> Option<String> {
        if self.total == 0 {
            return None;
        }
        if let Some(enc) = content_encoding.filter(|e| !e.eq_ignore_ascii_case("identity")) {
            return Some(format!(
                "[{enc}-encoded body of {} bytes not stored]",
                self.total
            ));
        }
        let truncated = self.total > self.buf.len();
        let text = match std::str::from_utf8(&self.buf) {
            Ok(t) => t.to_string(),
            // Cut inside a character at the end: keep the complete ones.
            Err(e) if e.error_len().is_none() => {
                String::from_utf8_lossy(&self.buf[..e.valid_up_to()]).into_owned()
            }
            Err(_) => return Some(format!("[binary body of {} bytes not stored]", self.total)),
        };
        if truncated {
            Some(format!("{text}[… truncated, {} bytes in all]", self.total))
        } else {
            Some(text)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_never_splits_a_utf8_character() {
        let mut c = BodyCapture::new(4);
        c.push("ab€cd".as_bytes()); // € is 3 bytes: a b [e2 82 ac] → a limit of 4 cuts inside it
        let t = c.finish(None).unwrap();
        assert!(t.starts_with("ab["), "{t}");
        assert!(t.contains("truncated"));
    }

    #[test]
    fn small_bodies_are_kept_whole_and_empty_ones_are_none() {
        let mut c = BodyCapture::new(100);
        c.push(b"{\"a\":");
        c.push(b"1}");
        assert_eq!(c.finish(None).unwrap(), "{\"a\":1}");
        assert_eq!(BodyCapture::new(10).finish(None), None);
    }

    #[test]
    fn encoded_bodies_are_described() {
        let mut c = BodyCapture::new(100);
        c.push(&[0x1f, 0x8b, 0, 1]);
        assert!(c
            .finish(Some("gzip"))
            .unwrap()
            .contains("gzip-encoded body of 4 bytes"));
    }
}
