//! The task's log: one bounded buffer shared by `shoal_v1::log`, stdout and stderr.
//!
//! wasi-common's in-memory pipe grows without bound (a module printing in a loop took
//! 1.8 GB before its deadline), so every byte a task emits lands here instead, and what does
//! not fit is counted and dropped.

use std::{
    io,
    sync::{Arc, Mutex, PoisonError},
};

/// Captured output of a finished task.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Logs {
    /// What the task logged and printed, in order, up to the cap (lossy UTF-8).
    pub text: String,
    /// Bytes dropped past the cap.
    pub dropped_bytes: u64,
    /// The cap in bytes.
    pub limit: usize,
}

impl std::fmt::Display for Logs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)?;
        if self.dropped_bytes > 0 {
            write!(
                f,
                "\n[log truncated: {} more bytes dropped; the task exceeded its {} KiB log limit]",
                self.dropped_bytes,
                self.limit / 1024
            )?;
        }
        Ok(())
    }
}

#[derive(Debug)]
struct Buffer {
    bytes: Vec<u8>,
    limit: usize,
    dropped: u64,
}

/// A cloneable handle to one task's bounded log buffer.
#[derive(Clone, Debug)]
pub(crate) struct LogSink(Arc<Mutex<Buffer>>);

impl LogSink {
    pub(crate) fn new(limit: usize) -> Self {
        Self(Arc::new(Mutex::new(Buffer {
            bytes: Vec::new(),
            limit,
            dropped: 0,
        })))
    }

    /// Appends `parts` as one record; whatever does not fit is counted, not stored.
    pub(crate) fn append(&self, parts: &[&[u8]]) {
        let mut buf = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        for part in parts {
            let room = buf.limit.saturating_sub(buf.bytes.len());
            let take = room.min(part.len());
            buf.bytes.extend_from_slice(&part[..take]);
            buf.dropped += (part.len() - take) as u64;
        }
    }

    pub(crate) fn finish(&self) -> Logs {
        let buf = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        Logs {
            text: String::from_utf8_lossy(&buf.bytes).into_owned(),
            dropped_bytes: buf.dropped,
            limit: buf.limit,
        }
    }
}

/// stdout or stderr of a task, as a `Write` for wasi-common's pipe.
pub(crate) struct StdStream(pub(crate) LogSink);

impl io::Write for StdStream {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.0.append(&[data]);
        // Report everything as written, so the guest never spins retrying a full buffer.
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_and_counts_what_it_drops() {
        let sink = LogSink::new(8);
        sink.append(&[b"hello ", b"world"]);
        let logs = sink.finish();
        assert_eq!(logs.text, "hello wo");
        assert_eq!(logs.dropped_bytes, 3);
        assert!(logs.to_string().contains("exceeded its 0 KiB log limit"));
    }
}
