//! Server-sent events framing over arbitrary chunk boundaries.
//!
//! Implements the parts of the WHATWG event-stream format that usage parsing
//! needs: lines end in LF, CRLF or CR (a CR that ends one chunk and an LF that
//! starts the next are one line end); lines starting with `:` are comments;
//! `event:` names the event; several `data:` lines join with `\n`; a blank
//! line dispatches the event; one space after the colon is dropped; `id:` and
//! `retry:` are ignored.
//!
//! Data is never buffered here: its bytes are handed to the [`Handler`] as
//! they arrive (the usage parser streams them into a [`super::scan::Scanner`],
//! which has its own caps), so a multi-megabyte `response.completed` event
//! costs no memory. Only the event name is held, up to [`EVENT_NAME_CAP`]
//! bytes; a longer one sets [`SseReader::overflowed`].
//!
//! Lines that are not SSE fields at all (no known field name, e.g. a
//! pretty-printed JSON error object that Gemini writes into a stream without
//! `data:`) are handed to [`Handler::stray`] line by line instead of being
//! dropped, so the caller can still find the error in them.
//!
//! At end of input the last line is ended and a pending event is dispatched
//! with [`Event::at_eof`] set, so the caller can tell a cleanly terminated
//! event from a possibly truncated one.

/// Longest `event:` value kept.
pub(crate) const EVENT_NAME_CAP: usize = 128;
/// Longest field name recognised; `retry` is the longest real one.
const FIELD_NAME_CAP: usize = 8;

/// A dispatched event. Its data went to [`Handler::data`] beforehand.
#[derive(Debug)]
pub(crate) struct Event<'a> {
    /// The `event:` value, if the event had one.
    pub name: Option<&'a [u8]>,
    /// The data was exactly `[DONE]` (OpenAI's end of stream marker).
    pub done: bool,
    /// Dispatched by the end of input rather than by a blank line.
    pub at_eof: bool,
    /// Dispatched by the end of input with data that is `[DONE]` cut short:
    /// a truncated end marker, not malformed JSON.
    pub done_cut: bool,
}

impl Event<'_> {
    /// `[DONE]`, whole or cut short: no JSON to read.
    pub fn is_end_marker(&self) -> bool {
        self.done || self.done_cut
    }
}

/// Receives what the reader finds.
pub(crate) trait Handler {
    /// More bytes of the current event's data (`\n` between data lines).
    fn data(&mut self, bytes: &[u8]);
    /// The current event is complete.
    fn dispatch(&mut self, event: &Event<'_>);
    /// Bytes of a line that is not an SSE field; a line ends with `b"\n"`.
    fn stray(&mut self, bytes: &[u8]);
    /// An event whose one data line arrived whole in one piece of input,
    /// blank line included: the same as [`Handler::data`] then
    /// [`Handler::dispatch`], for a handler that need not copy the data.
    fn whole(&mut self, data: &[u8], event: &Event<'_>) {
        self.data(data);
        self.dispatch(event);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Data,
    Event,
    Ignored,
    Stray,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Line {
    /// At the start of a line.
    Start,
    /// Reading a field name.
    Name,
    /// After `name:`, where one space may be dropped.
    AfterColon(Field),
    /// In the field value, up to the line end.
    Value(Field),
}

/// Incremental event-stream reader. See the module docs.
#[derive(Debug)]
pub(crate) struct SseReader {
    line: Line,
    name: [u8; FIELD_NAME_CAP],
    name_len: usize,
    /// The previous byte was a CR ending a line; an LF now is part of it.
    cr_pending: bool,
    event_name: Vec<u8>,
    has_event_name: bool,
    has_data: bool,
    data_len: u64,
    data_head: [u8; 6],
    overflowed: bool,
}

impl Default for SseReader {
    fn default() -> Self {
        SseReader {
            line: Line::Start,
            name: [0; FIELD_NAME_CAP],
            name_len: 0,
            cr_pending: false,
            event_name: Vec::new(),
            has_event_name: false,
            has_data: false,
            data_len: 0,
            data_head: [0; 6],
            overflowed: false,
        }
    }
}

impl SseReader {
    /// Back at the start of a stream, keeping the event name's buffer.
    pub(crate) fn reset(&mut self) {
        let mut event_name = std::mem::take(&mut self.event_name);
        event_name.clear();
        *self = SseReader {
            event_name,
            ..SseReader::default()
        };
    }

    /// Set once an event name went over [`EVENT_NAME_CAP`].
    pub(crate) fn overflowed(&self) -> bool {
        self.overflowed
    }

    pub(crate) fn push(&mut self, input: &[u8], h: &mut impl Handler) {
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            if self.cr_pending {
                self.cr_pending = false;
                if b == b'\n' {
                    i += 1;
                    continue;
                }
            }
            match self.line {
                // The lines of nearly every event: no need to read their
                // field names byte by byte (what follows is as below).
                Line::Start if input[i..].starts_with(b"data: ") => {
                    let rest = &input[i + 6..];
                    let end = memchr::memchr2(b'\n', b'\r', rest);
                    // Nearly every event is one `data:` line and a blank
                    // line, within one read: handed over as it lies.
                    if let (false, Some(end)) = (self.has_data, end) {
                        if let Some(blank) = blank_line_ending(&rest[end..]) {
                            self.whole(&rest[..end], h);
                            i += 6 + end + blank;
                            continue;
                        }
                    }
                    // Otherwise the line's value, up to the end found.
                    self.begin_value(Field::Data, h);
                    self.line = Line::Value(Field::Data);
                    self.value(Field::Data, &rest[..end.unwrap_or(rest.len())], h);
                    match end {
                        Some(end) => {
                            self.line_end(rest[end], h);
                            i += 6 + end + 1;
                        }
                        None => i = input.len(),
                    }
                }
                Line::Start if input[i..].starts_with(b"event: ") => {
                    self.begin_value(Field::Event, h);
                    self.line = Line::Value(Field::Event);
                    i += 7;
                }
                Line::Start => match b {
                    b'\n' | b'\r' => {
                        self.line_end(b, h);
                        i += 1;
                    }
                    b':' => {
                        self.line = Line::Value(Field::Ignored);
                        i += 1;
                    }
                    _ => {
                        self.name_len = 0;
                        self.line = Line::Name;
                    }
                },
                Line::Name => match b {
                    b':' => {
                        let field = self.field();
                        if field == Field::Stray {
                            h.stray(&self.name[..self.name_len]);
                            h.stray(b":");
                            self.line = Line::Value(Field::Stray);
                        } else {
                            self.line = Line::AfterColon(field);
                        }
                        i += 1;
                    }
                    b'\n' | b'\r' => {
                        // A field without a colon has an empty value.
                        let field = self.field();
                        if field == Field::Stray {
                            h.stray(&self.name[..self.name_len]);
                        }
                        self.begin_value(field, h);
                        self.line = Line::Value(field);
                    }
                    _ if self.name_len == FIELD_NAME_CAP => {
                        h.stray(&self.name[..self.name_len]);
                        self.line = Line::Value(Field::Stray);
                    }
                    _ => {
                        self.name[self.name_len] = b;
                        self.name_len += 1;
                        i += 1;
                    }
                },
                Line::AfterColon(field) => {
                    if b == b' ' {
                        i += 1;
                    }
                    self.begin_value(field, h);
                    self.line = Line::Value(field);
                }
                Line::Value(field) => {
                    let rest = &input[i..];
                    let end = memchr::memchr2(b'\n', b'\r', rest);
                    self.value(field, &rest[..end.unwrap_or(rest.len())], h);
                    match end {
                        Some(end) => {
                            self.line_end(rest[end], h);
                            i += end + 1;
                        }
                        None => i = input.len(),
                    }
                }
            }
        }
    }

    /// Ends the input: the last line ends and a pending event is dispatched.
    pub(crate) fn finish(&mut self, h: &mut impl Handler) {
        match self.line {
            Line::Start => {}
            Line::Name => {
                let field = self.field();
                if field == Field::Stray {
                    h.stray(&self.name[..self.name_len]);
                }
                self.begin_value(field, h);
                self.line_end(b'\n', h);
            }
            Line::AfterColon(field) => {
                self.begin_value(field, h);
                self.line_end(b'\n', h);
            }
            Line::Value(_) => self.line_end(b'\n', h),
        }
        self.dispatch(true, h);
    }

    fn field(&self) -> Field {
        match &self.name[..self.name_len] {
            b"data" => Field::Data,
            b"event" => Field::Event,
            b"id" | b"retry" => Field::Ignored,
            _ => Field::Stray,
        }
    }

    fn begin_value(&mut self, field: Field, h: &mut impl Handler) {
        match field {
            Field::Data => {
                if self.has_data {
                    self.data(b"\n", h);
                }
                self.has_data = true;
            }
            Field::Event => {
                self.event_name.clear();
                self.has_event_name = true;
            }
            Field::Ignored | Field::Stray => {}
        }
    }

    fn value(&mut self, field: Field, bytes: &[u8], h: &mut impl Handler) {
        match field {
            Field::Data => self.data(bytes, h),
            Field::Event => {
                let room = EVENT_NAME_CAP.saturating_sub(self.event_name.len());
                if bytes.len() > room {
                    self.overflowed = true;
                }
                self.event_name
                    .extend_from_slice(&bytes[..bytes.len().min(room)]);
            }
            Field::Stray => h.stray(bytes),
            Field::Ignored => {}
        }
    }

    fn data(&mut self, bytes: &[u8], h: &mut impl Handler) {
        // Keep the first bytes of the data, to recognise `[DONE]`.
        if let Some(head) = usize::try_from(self.data_len)
            .ok()
            .and_then(|at| self.data_head.get_mut(at..))
        {
            let n = head.len().min(bytes.len());
            head[..n].copy_from_slice(&bytes[..n]);
        }
        self.data_len += bytes.len() as u64;
        h.data(bytes);
    }

    fn line_end(&mut self, b: u8, h: &mut impl Handler) {
        self.cr_pending = b == b'\r';
        match self.line {
            Line::Start => self.dispatch(false, h),
            Line::Value(Field::Stray) => h.stray(b"\n"),
            _ => {}
        }
        self.line = Line::Start;
    }

    /// A whole event of one data line (`data`), after any `event:` line.
    fn whole(&mut self, data: &[u8], h: &mut impl Handler) {
        let event = Event {
            name: self.has_event_name.then_some(self.event_name.as_slice()),
            done: data == b"[DONE]",
            at_eof: false,
            done_cut: false,
        };
        h.whole(data, &event);
        self.has_event_name = false;
        self.event_name.clear();
    }

    fn dispatch(&mut self, at_eof: bool, h: &mut impl Handler) {
        if self.has_data {
            let event = Event {
                name: self.has_event_name.then_some(self.event_name.as_slice()),
                done: self.data_len == 6 && &self.data_head == b"[DONE]",
                at_eof,
                done_cut: at_eof
                    && (1..6).contains(&self.data_len)
                    && self
                        .data_head
                        .starts_with(&b"[DONE]"[..self.data_len as usize]),
            };
            h.dispatch(&event);
        }
        self.has_data = false;
        self.has_event_name = false;
        self.event_name.clear();
        self.data_len = 0;
    }
}

/// How many bytes end a line and then the event, when `ending` (from a
/// line's end on) starts with that line's end and a blank line, both LF or
/// both CRLF (Gemini's). A line ending in a lone CR, or whose blank line has
/// not arrived yet, is read byte by byte.
fn blank_line_ending(ending: &[u8]) -> Option<usize> {
    if ending.starts_with(b"\n\n") {
        Some(2)
    } else if ending.starts_with(b"\r\n\r\n") {
        Some(4)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records what the reader reports, as text.
    #[derive(Default)]
    struct Log {
        data: Vec<u8>,
        events: Vec<String>,
        stray: Vec<u8>,
        /// Events handed over whole.
        wholes: usize,
    }

    impl Handler for Log {
        fn data(&mut self, bytes: &[u8]) {
            self.data.extend_from_slice(bytes);
        }
        fn dispatch(&mut self, event: &Event<'_>) {
            let name = event.name.map(|n| String::from_utf8_lossy(n).into_owned());
            self.events.push(format!(
                "{}|{}{}{}{}",
                name.unwrap_or_else(|| "-".into()),
                String::from_utf8_lossy(&self.data),
                if event.done { "|done" } else { "" },
                if event.at_eof { "|eof" } else { "" },
                if event.done_cut { "|done_cut" } else { "" },
            ));
            self.data.clear();
        }
        fn stray(&mut self, bytes: &[u8]) {
            self.stray.extend_from_slice(bytes);
        }
        fn whole(&mut self, data: &[u8], event: &Event<'_>) {
            self.wholes += 1;
            self.data(data);
            self.dispatch(event);
        }
    }

    /// One-line events that arrive whole are handed over at once, with the
    /// name of an `event:` line before them; any other shape (several data
    /// lines, a lone CR, an event cut by the end of a read) is framed line
    /// by line.
    #[test]
    fn one_line_events_read_whole_are_handed_over_at_once() {
        let input = b"data: {\"a\":1}\n\nevent: ping\ndata: {}\n\ndata: x\ndata: y\n\n\
                      data: crlf\r\n\r\ndata: cr\r\rdata: [DONE]\n\ndata: cut\n";
        let log = read_split(input, &[input.len() - 3]);
        assert_eq!(
            log.events,
            [
                "-|{\"a\":1}",
                "ping|{}",
                "-|x\ny",
                "-|crlf",
                "-|cr",
                "-|[DONE]|done",
                "-|cut|eof"
            ]
        );
        assert_eq!(log.wholes, 4);
        let bytes: Vec<usize> = (1..input.len()).collect();
        let single = read_split(input, &bytes);
        assert_eq!(single.events, log.events);
        assert_eq!(single.wholes, 0);
    }

    fn read_split(input: &[u8], splits: &[usize]) -> Log {
        let mut reader = SseReader::default();
        let mut log = Log::default();
        let mut from = 0;
        for &at in splits {
            reader.push(&input[from..at], &mut log);
            from = at;
        }
        reader.push(&input[from..], &mut log);
        reader.finish(&mut log);
        log
    }

    fn read(input: &[u8]) -> Log {
        read_split(input, &[])
    }

    proptest::proptest! {
        /// A line whose field name arrives whole in a chunk (`data: ` and
        /// `event: ` are then not read byte by byte) is framed as when the
        /// chunks are single bytes.
        #[test]
        fn any_mix_of_lines_frames_the_same_whole_and_byte_by_byte(
            parts in proptest::collection::vec(proptest::sample::select(vec![
                "data: ", "data:", "data", "dat", "data:  ", "event: ", "event:", "event",
                "eventx: ", "datum: ", ": ", " ", "\n", "\r", "\r\n", "x", "{\"a\":1}",
                "[DONE]", "id: 1", "retry: 5", "data: data: ",
            ]), 0..40),
        ) {
            let input = parts.concat().into_bytes();
            let whole = read(&input);
            let singles: Vec<usize> = (1..input.len()).collect();
            let bytes = read_split(&input, &singles);
            proptest::prop_assert_eq!(&whole.events, &bytes.events);
            proptest::prop_assert_eq!(&whole.data, &bytes.data);
            proptest::prop_assert_eq!(&whole.stray, &bytes.stray);
        }
    }

    #[test]
    fn events_with_names_multi_line_data_and_comments_are_framed() {
        let log = read(b": hello\nevent: a\ndata: 1\ndata:2\nid: 7\n\ndata: [DONE]\n\n");
        assert_eq!(log.events, ["a|1\n2", "-|[DONE]|done"]);
        assert!(log.stray.is_empty());
    }

    #[test]
    fn crlf_and_lone_cr_line_ends_are_equivalent_to_lf() {
        let lf = read(b"event: x\ndata: {}\n\ndata: 2\n\n").events;
        assert_eq!(
            read(b"event: x\r\ndata: {}\r\n\r\ndata: 2\r\n\r\n").events,
            lf
        );
        assert_eq!(read(b"event: x\rdata: {}\r\rdata: 2\r\r").events, lf);
    }

    #[test]
    fn a_cr_lf_pair_split_across_chunks_is_one_line_end() {
        let input = b"data: 1\r\n\r\ndata: 2\r\n\r\n";
        let whole = read(input).events;
        assert_eq!(whole, ["-|1", "-|2"]);
        for split in 0..=input.len() {
            assert_eq!(
                read_split(input, &[split]).events,
                whole,
                "split at {split}"
            );
        }
    }

    #[test]
    fn only_one_space_after_the_colon_is_dropped() {
        assert_eq!(read(b"data:  x\n\n").events, ["-| x"]);
        assert_eq!(read(b"data\n\n").events, ["-|"]);
    }

    #[test]
    fn an_unterminated_last_event_is_dispatched_at_eof() {
        assert_eq!(read(b"data: {\"a\":1}").events, ["-|{\"a\":1}|eof"]);
        assert_eq!(read(b"data: [DONE]\n").events, ["-|[DONE]|done|eof"]);
    }

    #[test]
    fn a_done_marker_cut_by_the_end_of_input_is_told_apart() {
        assert_eq!(read(b"data: [DO").events, ["-|[DO|eof|done_cut"]);
        assert_eq!(read(b"data: [DONE").events, ["-|[DONE|eof|done_cut"]);
        assert_eq!(read(b"data: [DO\n\n").events, ["-|[DO"]);
        assert_eq!(read(b"data: [DX").events, ["-|[DX|eof"]);
        assert_eq!(read(b"data: [DONE]x").events, ["-|[DONE]x|eof"]);
    }

    #[test]
    fn lines_that_are_not_fields_go_to_stray() {
        let log = read(b"data: 1\n\n{\n  \"error\": {\"code\": 503}\n}\n");
        assert_eq!(log.events, ["-|1"]);
        assert_eq!(log.stray, b"{\n  \"error\": {\"code\": 503}\n}\n");
    }

    #[test]
    fn an_overlong_event_name_is_reported() {
        let mut input = b"event: ".to_vec();
        input.extend(std::iter::repeat_n(b'x', EVENT_NAME_CAP + 1));
        input.extend(b"\ndata: 1\n\n");
        let mut reader = SseReader::default();
        let mut log = Log::default();
        reader.push(&input, &mut log);
        assert!(reader.overflowed());
        assert_eq!(log.events.len(), 1);
    }
}
