//! A minimal HTTP/1.1 stand-in for Workspaces: each request line is answered with the JSON
//! body a scenario's function gives it.

use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Maps a request line (`GET /workspaces/capability/requests?… HTTP/1.1`) to a JSON body.
pub type Answer = Arc<dyn Fn(&str) -> String + Send + Sync>;

/// Serves `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, answer: Answer) {
    while let Ok((conn, _)) = listener.accept().await {
        tokio::spawn(connection(conn, answer.clone()));
    }
}

async fn connection(mut conn: TcpStream, answer: Answer) -> std::io::Result<()> {
    let mut buf = Vec::new();
    loop {
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 4096];
            let n = conn.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        let length = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().parse().unwrap_or(0))
            })
            .unwrap_or(0usize);
        while buf.len() < head_end + length {
            let mut chunk = [0u8; 4096];
            let n = conn.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        buf.drain(..head_end + length);
        let body = answer(head.lines().next().unwrap_or_default());
        let reply = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        conn.write_all(reply.as_bytes()).await?;
    }
}
