//! Captured log lines, for tests that assert what the controller says and how often. The
//! capture is process-wide (every test of the binary writes to it), so tests filter the lines
//! by something only they log: a step name, a temporary directory.

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

static CAPTURED: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();

/// The writer every log line goes to.
#[derive(Clone)]
struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Starts capturing this process's log lines (info and above); later calls do nothing.
pub fn capture() {
    CAPTURED.get_or_init(|| {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let sink = Sink(buffer.clone());
        tracing_subscriber::fmt()
            .with_env_filter("info,sqlx=warn")
            .with_ansi(false)
            .with_writer(move || sink.clone())
            .init();
        buffer
    });
}

/// The captured lines that contain every one of `needles`.
pub fn lines_with(needles: &[&str]) -> Vec<String> {
    let buffer = CAPTURED
        .get()
        .expect("logs::capture() first")
        .lock()
        .unwrap();
    String::from_utf8_lossy(&buffer)
        .lines()
        .filter(|l| needles.iter().all(|n| l.contains(n)))
        .map(str::to_string)
        .collect()
}
