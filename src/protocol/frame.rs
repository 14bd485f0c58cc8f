//! Finding where one JSON request ends in a stream of bytes.
//!
//! The scanner tracks nesting depth and string state only; it does not validate JSON (serde
//! does that on the complete frame). It remembers where it stopped, so bytes that arrive a few
//! at a time are scanned once, not once per read.

use std::ops::Range;

/// What the bytes buffered so far hold.
#[derive(Debug, PartialEq, Eq)]
pub enum Scan {
    /// A complete frame at `frame`; the caller drops `..consumed` from the buffer afterwards.
    Complete {
        frame: Range<usize>,
        consumed: usize,
    },
    /// No complete frame yet: read more bytes. This is normal, not an error.
    NeedMore,
}

/// A request is over the size limit; the connection answers it and closes.
#[derive(Debug, PartialEq, Eq)]
pub struct FrameTooLarge;

/// Resumable scanner over a growing buffer. Call [`FrameScanner::reset`] after consuming a
/// frame.
#[derive(Debug, Default)]
pub struct FrameScanner {
    /// Bytes of the buffer already looked at.
    pos: usize,
    /// Where the current frame starts, once a non-space byte was seen.
    start: Option<usize>,
    /// Whether the frame is an object/array (ends at depth 0) or a bare token (ends at `\n`).
    bracketed: bool,
    depth: usize,
    in_string: bool,
    escaped: bool,
}

impl FrameScanner {
    pub fn new() -> Self {
        Self::default()
    }

    /// Forget all progress; the next call scans a fresh buffer from its start.
    pub fn reset(&mut self) {
        *self = Self::default();
    }

    /// True once a frame has started arriving (non-whitespace bytes are buffered).
    pub fn in_frame(&self) -> bool {
        self.start.is_some()
    }

    /// [`FrameScanner::scan`] under a size limit: a complete frame longer than
    /// `max_frame_bytes`, or more than that many bytes buffered without a complete frame, is
    /// [`FrameTooLarge`]. Bounding the whole buffer (not only the frame) means a client cannot
    /// grow it without end by sending whitespace.
    pub fn scan_limited(
        &mut self,
        buf: &[u8],
        max_frame_bytes: usize,
    ) -> Result<Scan, FrameTooLarge> {
        match self.scan(buf) {
            Scan::Complete { frame, .. } if frame.len() > max_frame_bytes => Err(FrameTooLarge),
            Scan::NeedMore if buf.len() > max_frame_bytes => Err(FrameTooLarge),
            scan => Ok(scan),
        }
    }

    /// Scans `buf`, which must be the same buffer as last time with bytes appended.
    pub fn scan(&mut self, buf: &[u8]) -> Scan {
        while self.pos < buf.len() {
            let byte = buf[self.pos];
            self.pos += 1;
            let Some(start) = self.start else {
                self.begin_frame(byte);
                continue;
            };
            if self.frame_ends_at(byte) {
                let end = if self.bracketed {
                    self.pos
                } else {
                    self.pos - 1
                };
                return Scan::Complete {
                    frame: start..end,
                    consumed: self.pos,
                };
            }
        }
        Scan::NeedMore
    }

    fn begin_frame(&mut self, byte: u8) {
        if byte.is_ascii_whitespace() {
            return;
        }
        self.start = Some(self.pos - 1);
        self.bracketed = matches!(byte, b'{' | b'[');
        self.depth = usize::from(self.bracketed);
    }

    fn frame_ends_at(&mut self, byte: u8) -> bool {
        if !self.bracketed {
            return byte == b'\n';
        }
        if self.in_string {
            match byte {
                _ if self.escaped => self.escaped = false,
                b'\\' => self.escaped = true,
                b'"' => self.in_string = false,
                _ => {}
            }
            return false;
        }
        match byte {
            b'"' => self.in_string = true,
            b'{' | b'[' => self.depth += 1,
            b'}' | b']' => {
                self.depth -= 1;
                return self.depth == 0;
            }
            _ => {}
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(input: &[u8]) -> Vec<String> {
        let mut scanner = FrameScanner::new();
        let mut buf = input.to_vec();
        let mut out = Vec::new();
        while let Scan::Complete { frame, consumed } = scanner.scan(&buf) {
            out.push(String::from_utf8_lossy(&buf[frame]).into_owned());
            buf.drain(..consumed);
            scanner.reset();
        }
        out
    }

    #[test]
    fn an_unterminated_object_is_complete_at_its_closing_brace() {
        assert_eq!(
            frames(br#"{"action": "ping"}"#),
            vec![r#"{"action": "ping"}"#]
        );
    }

    #[test]
    fn newline_separated_objects_are_separate_frames() {
        let input = b"{\"a\":1}\n{\"b\":2}\n  \n{\"c\":3}";
        assert_eq!(
            frames(input),
            vec![r#"{"a":1}"#, r#"{"b":2}"#, r#"{"c":3}"#]
        );
    }

    #[test]
    fn braces_and_quotes_inside_strings_do_not_count() {
        let input = br#"{"x": "a } \" { ] b", "y": {"z": [1, {"w": "}"}]}}"#;
        assert_eq!(frames(input).len(), 1);
        assert_eq!(frames(input)[0].len(), input.len());
    }

    #[test]
    fn bytes_arriving_one_at_a_time_complete_once() {
        let input = br#"{"action": "check", "nested": {"deep": ["}"]}}"#;
        let mut scanner = FrameScanner::new();
        let mut buf = Vec::new();
        for (i, byte) in input.iter().enumerate() {
            buf.push(*byte);
            let scan = scanner.scan(&buf);
            if i + 1 < input.len() {
                assert_eq!(scan, Scan::NeedMore, "completed early at byte {i}");
            } else {
                assert_eq!(
                    scan,
                    Scan::Complete {
                        frame: 0..input.len(),
                        consumed: input.len()
                    }
                );
            }
        }
    }

    #[test]
    fn a_bare_token_ends_at_the_newline_so_it_can_be_refused() {
        assert_eq!(
            frames(b"hello world\n{\"a\":1}"),
            vec!["hello world", r#"{"a":1}"#]
        );
    }

    #[test]
    fn whitespace_alone_is_not_a_frame() {
        let mut scanner = FrameScanner::new();
        assert_eq!(scanner.scan(b" \n\t "), Scan::NeedMore);
        assert!(!scanner.in_frame());
    }

    #[test]
    fn the_size_limit_counts_whole_frames_and_unfinished_buffers() {
        let mut scanner = FrameScanner::new();
        assert_eq!(
            scanner.scan_limited(b"{\"a\":1}", 7),
            Ok(Scan::Complete {
                frame: 0..7,
                consumed: 7
            })
        );
        scanner.reset();
        assert_eq!(scanner.scan_limited(b"{\"a\":12}", 7), Err(FrameTooLarge));
        scanner.reset();
        assert_eq!(scanner.scan_limited(b"{\"a\":", 7), Ok(Scan::NeedMore));
        scanner.reset();
        assert_eq!(scanner.scan_limited(b"        ", 7), Err(FrameTooLarge));
    }

    #[test]
    fn deep_nesting_is_scanned_without_recursion() {
        let mut input = vec![b'['; 100_000];
        input.extend(vec![b']'; 100_000]);
        assert_eq!(frames(&input).len(), 1);
    }
}
