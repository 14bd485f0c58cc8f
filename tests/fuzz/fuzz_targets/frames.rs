//! Fuzz target: arbitrary bytes through the frame scanner (split at arbitrary points, in both
//! framings) and every frame through the request parser.
//!
//! Invariants checked: nothing panics; a frame never exceeds the size limit; every scan that
//! completes consumes at least one byte and no more than is buffered; the frames found do not
//! depend on how the bytes were split into reads; every parse error becomes a one-line JSON reply.
#![no_main]

use claude_ipc::protocol::{FrameScanner, FrameTooLarge, Request, Scan};
use libfuzzer_sys::fuzz_target;

/// What happened to a stream of bytes: the frames found, and whether it ended over the limit.
#[derive(Debug, PartialEq)]
struct Outcome {
    frames: Vec<Vec<u8>>,
    too_large: bool,
}

fuzz_target!(|input: &[u8]| {
    // The first bytes choose the setup; the rest is the stream.
    let [mode, limit, splits @ ..] = input else {
        return;
    };
    let split_count = usize::from(*splits.first().unwrap_or(&0) % 8);
    let Some((split_bytes, stream)) = splits
        .get(1..)
        .and_then(|s| (s.len() >= split_count).then(|| s.split_at(split_count)))
    else {
        return;
    };
    // Legacy clients send objects back to back with no terminator; persistent ones end each
    // with a newline. Mode 1 turns the stream into the legacy framing.
    let stream: Vec<u8> = if mode % 2 == 1 {
        stream.iter().copied().filter(|b| *b != b'\n').collect()
    } else {
        stream.to_vec()
    };
    let max = 1 + usize::from(*limit) * 4;

    let whole = run(&stream, &[stream.len()], max);
    let chunks: Vec<usize> = split_bytes.iter().map(|b| 1 + usize::from(*b)).collect();
    let split = run(&stream, &chunks, max);
    if !whole.too_large && !split.too_large {
        assert_eq!(whole, split, "frames depend on how reads were split");
    }
    for frame in &whole.frames {
        if let Err(error) = Request::parse(frame) {
            let line = error.into_reply().to_line();
            assert_eq!(line.iter().filter(|b| **b == b'\n').count(), 1);
            assert_eq!(line.last(), Some(&b'\n'));
            serde_json::from_slice::<serde_json::Value>(&line).expect("reply is JSON");
        }
    }
});

/// Feeds `stream` to a scanner the way a connection does: appending reads of the given sizes
/// (the last size repeats), taking each frame off the front of the buffer.
fn run(stream: &[u8], chunk_sizes: &[usize], max: usize) -> Outcome {
    let mut scanner = FrameScanner::new();
    let mut buffer = Vec::new();
    let mut frames = Vec::new();
    let mut fed = 0;
    let mut sizes = chunk_sizes.iter().copied().chain(std::iter::repeat(
        *chunk_sizes.last().unwrap_or(&stream.len()),
    ));
    loop {
        match scanner.scan_limited(&buffer, max) {
            Err(FrameTooLarge) => {
                return Outcome {
                    frames,
                    too_large: true,
                }
            }
            Ok(Scan::Complete { frame, consumed }) => {
                assert!(consumed > 0, "a complete scan must consume bytes");
                assert!(consumed <= buffer.len());
                assert!(frame.end <= consumed && frame.start < frame.end);
                assert!(
                    frame.len() <= max,
                    "frame of {} over limit {max}",
                    frame.len()
                );
                frames.push(buffer[frame].to_vec());
                buffer.drain(..consumed);
                scanner.reset();
            }
            Ok(Scan::NeedMore) => {
                assert!(buffer.len() <= max);
                if fed == stream.len() {
                    // At end of stream the connection answers a half-sent request as a frame.
                    if scanner.in_frame() {
                        frames.push(std::mem::take(&mut buffer));
                    }
                    return Outcome {
                        frames,
                        too_large: false,
                    };
                }
                let take = sizes.next().unwrap().max(1).min(stream.len() - fed);
                buffer.extend_from_slice(&stream[fed..fed + take]);
                fed += take;
            }
        }
    }
}
