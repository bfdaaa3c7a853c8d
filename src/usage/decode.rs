//! Incremental `Content-Encoding` decoding for the parser's copy of a body.
//!
//! The client always receives the upstream bytes untouched; only the usage
//! parser sees decoded ones. Decoders write their output straight into the
//! wrapped sink (the body parser) in pieces of at most their internal buffer
//! size (32 KiB for flate2, [`BROTLI_BUFFER`] for brotli), so a small
//! compressed chunk that expands enormously never sits in memory at once.
//!
//! Supported: `gzip` / `x-gzip` (several members in a row too), `deflate`
//! (zlib-wrapped as HTTP specifies, raw deflate as servers often send instead,
//! told apart by the zlib header), `br`, and `identity`. Anything else
//! (including stacked encodings) is [`DecodeError::Unsupported`]: the body
//! cannot be read, so its usage is unknown.

use std::io::{self, Write};

use flate2::write::{DeflateDecoder, MultiGzDecoder, ZlibDecoder};

/// Output buffer of the brotli decoder.
const BROTLI_BUFFER: usize = 16 * 1024;

/// Why decoding stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DecodeError {
    /// Occurs when the `Content-Encoding` is not one we can decode.
    Unsupported,
    /// Occurs when the compressed bytes are corrupt.
    Corrupt,
}

enum State<W: Write> {
    Identity(W),
    Gzip(MultiGzDecoder<W>),
    /// `deflate` before its first two bytes tell zlib from raw.
    DeflateHead {
        sink: W,
        head: Vec<u8>,
    },
    Zlib(ZlibDecoder<W>),
    RawDeflate(DeflateDecoder<W>),
    Brotli(Box<brotli::DecompressorWriter<W>>),
    /// Decoding failed or ended; further input is ignored.
    Stopped(W),
}

/// Decodes into `W`. See the module docs.
pub(crate) struct Decoder<W: Write + Default> {
    state: State<W>,
    error: Option<DecodeError>,
}

impl<W: Write + Default> Decoder<W> {
    pub(crate) fn new(content_encoding: Option<&str>, sink: W) -> Self {
        let encoding = content_encoding.map_or("", str::trim);
        let (state, error) = if encoding.is_empty() || encoding.eq_ignore_ascii_case("identity") {
            (State::Identity(sink), None)
        } else if encoding.eq_ignore_ascii_case("gzip") || encoding.eq_ignore_ascii_case("x-gzip") {
            (State::Gzip(MultiGzDecoder::new(sink)), None)
        } else if encoding.eq_ignore_ascii_case("deflate") {
            (
                State::DeflateHead {
                    sink,
                    head: Vec::with_capacity(2),
                },
                None,
            )
        } else if encoding.eq_ignore_ascii_case("br") {
            let writer = brotli::DecompressorWriter::new(sink, BROTLI_BUFFER);
            (State::Brotli(Box::new(writer)), None)
        } else {
            (State::Stopped(sink), Some(DecodeError::Unsupported))
        };
        Decoder { state, error }
    }

    pub(crate) fn write(&mut self, chunk: &[u8]) {
        if chunk.is_empty() {
            return;
        }
        let result = match &mut self.state {
            State::Identity(sink) => sink.write_all(chunk),
            State::Gzip(d) => d.write_all(chunk),
            State::Zlib(d) => d.write_all(chunk),
            State::RawDeflate(d) => d.write_all(chunk),
            State::Brotli(d) => write_brotli(d, chunk),
            State::Stopped(_) => Ok(()),
            State::DeflateHead { head, .. } => {
                let take = (2 - head.len()).min(chunk.len());
                head.extend_from_slice(&chunk[..take]);
                if head.len() < 2 {
                    return;
                }
                let State::DeflateHead { sink, head } =
                    std::mem::replace(&mut self.state, State::Stopped(W::default()))
                else {
                    return;
                };
                // A zlib header: method 8 in the low nibble, and the two
                // bytes as a big-endian number are a multiple of 31.
                let zlib =
                    head[0] & 0x0f == 8 && (u16::from(head[0]) << 8 | u16::from(head[1])) % 31 == 0;
                self.state = if zlib {
                    State::Zlib(ZlibDecoder::new(sink))
                } else {
                    State::RawDeflate(DeflateDecoder::new(sink))
                };
                self.write(&head);
                self.write(&chunk[take..]);
                return;
            }
        };
        if result.is_err() {
            self.stop(DecodeError::Corrupt);
        }
    }

    /// Ends the input and returns the sink. A compressed stream cut short is
    /// not an error here: the body parser sees the truncation itself.
    pub(crate) fn finish(mut self) -> (W, Option<DecodeError>) {
        let sink = match &mut self.state {
            State::Identity(sink) | State::Stopped(sink) | State::DeflateHead { sink, .. } => {
                std::mem::take(sink)
            }
            State::Gzip(d) => {
                let _ = d.try_finish();
                std::mem::take(d.get_mut())
            }
            State::Zlib(d) => {
                let _ = d.try_finish();
                std::mem::take(d.get_mut())
            }
            State::RawDeflate(d) => {
                let _ = d.try_finish();
                std::mem::take(d.get_mut())
            }
            State::Brotli(d) => {
                let _ = d.close();
                std::mem::take(d.get_mut())
            }
        };
        (sink, self.error)
    }

    fn stop(&mut self, error: DecodeError) {
        self.error.get_or_insert(error);
        let sink = match &mut self.state {
            State::Identity(sink) | State::Stopped(sink) | State::DeflateHead { sink, .. } => {
                std::mem::take(sink)
            }
            State::Gzip(d) => std::mem::take(d.get_mut()),
            State::Zlib(d) => std::mem::take(d.get_mut()),
            State::RawDeflate(d) => std::mem::take(d.get_mut()),
            State::Brotli(d) => std::mem::take(d.get_mut()),
        };
        self.state = State::Stopped(sink);
    }
}

/// The brotli writer reports a corrupt stream once and then accepts nothing
/// (`Ok(0)`); bytes after the end of a valid stream are likewise refused.
fn write_brotli<W: Write>(
    d: &mut brotli::DecompressorWriter<W>,
    mut chunk: &[u8],
) -> io::Result<()> {
    while !chunk.is_empty() {
        match d.write(chunk)? {
            0 => return Err(io::Error::from(io::ErrorKind::InvalidData)),
            n => chunk = &chunk[n..],
        }
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use flate2::write::{DeflateEncoder, GzEncoder, ZlibEncoder};
    use flate2::Compression;

    pub(crate) fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = GzEncoder::new(Vec::new(), Compression::default());
        e.write_all(data).expect("in-memory write");
        e.finish().expect("in-memory write")
    }

    pub(crate) fn zlib(data: &[u8]) -> Vec<u8> {
        let mut e = ZlibEncoder::new(Vec::new(), Compression::default());
        e.write_all(data).expect("in-memory write");
        e.finish().expect("in-memory write")
    }

    pub(crate) fn raw_deflate(data: &[u8]) -> Vec<u8> {
        let mut e = DeflateEncoder::new(Vec::new(), Compression::default());
        e.write_all(data).expect("in-memory write");
        e.finish().expect("in-memory write")
    }

    pub(crate) fn brotli(data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        {
            let mut w = brotli::CompressorWriter::new(&mut out, 4096, 5, 22);
            w.write_all(data).expect("in-memory write");
        }
        out
    }

    fn decode(encoding: &str, body: &[u8], chunk: usize) -> (Vec<u8>, Option<DecodeError>) {
        let mut d = Decoder::new(Some(encoding), Vec::new());
        for piece in body.chunks(chunk.max(1)) {
            d.write(piece);
        }
        d.finish()
    }

    const TEXT: &[u8] = b"data: {\"usage\":{\"prompt_tokens\":3}}\n\ndata: [DONE]\n\n";

    #[test]
    fn every_supported_encoding_round_trips_in_any_chunk_size() {
        let cases: [(&str, Vec<u8>); 5] = [
            ("gzip", gzip(TEXT)),
            ("x-gzip", gzip(TEXT)),
            ("deflate", zlib(TEXT)),
            ("deflate", raw_deflate(TEXT)),
            ("br", brotli(TEXT)),
        ];
        for (encoding, body) in &cases {
            for chunk in [1, 2, 3, 7, 64, body.len()] {
                assert_eq!(
                    decode(encoding, body, chunk),
                    (TEXT.to_vec(), None),
                    "{encoding} in {chunk}-byte chunks"
                );
            }
        }
        assert_eq!(decode(" Identity ", TEXT, 5), (TEXT.to_vec(), None));
    }

    #[test]
    fn unknown_encodings_are_unsupported() {
        assert_eq!(
            decode("zstd", TEXT, 4),
            (Vec::new(), Some(DecodeError::Unsupported))
        );
        assert_eq!(
            decode("gzip, br", TEXT, 4).1,
            Some(DecodeError::Unsupported)
        );
    }

    #[test]
    fn corrupt_input_stops_decoding() {
        for encoding in ["gzip", "deflate", "br"] {
            let (_, error) = decode(
                encoding,
                b"this is not compressed at all, not even close",
                4,
            );
            assert_eq!(error, Some(DecodeError::Corrupt), "{encoding}");
        }
    }

    #[test]
    fn a_truncated_stream_yields_what_was_decoded() {
        let body = gzip(TEXT);
        let (out, error) = decode("gzip", &body[..body.len() - 12], 5);
        assert_eq!(error, None);
        assert!(TEXT.starts_with(&out));
    }
}
