//! A tiny blocking HTTP/1.1 client over `std::net::TcpStream`, enough to drive `wick serve`
//! byte for byte (keep-alive, oversized bodies, exact headers) without an HTTP client crate.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{bail, Context, Result};

/// A parsed response.
#[derive(Debug)]
pub(crate) struct Reply {
    pub(crate) status: u16,
    pub(crate) headers: HashMap<String, String>,
    pub(crate) body: Vec<u8>,
}

impl Reply {
    pub(crate) fn json(&self) -> Result<serde_json::Value> {
        serde_json::from_slice(&self.body)
            .with_context(|| format!("body is not JSON: {}", String::from_utf8_lossy(&self.body)))
    }

    pub(crate) fn header(&self, name: &str) -> &str {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
            .unwrap_or_default()
    }
}

/// One connection that can carry several requests (keep-alive).
pub(crate) struct Connection {
    reader: BufReader<TcpStream>,
}

impl Connection {
    pub(crate) fn open(addr: SocketAddr) -> Result<Self> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        stream.set_read_timeout(Some(Duration::from_secs(60)))?;
        Ok(Connection {
            reader: BufReader::new(stream),
        })
    }

    /// Sends a request and reads its response; `headers` are `(name, value)` pairs.
    pub(crate) fn send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<Reply> {
        let mut request = format!(
            "{method} {path} HTTP/1.1\r\nHost: model.aws.local:8080\r\nContent-Length: {}\r\n",
            body.len()
        );
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        let stream = self.reader.get_mut();
        stream.write_all(request.as_bytes())?;
        stream.write_all(body)?;
        self.read_reply()
    }

    /// Sends a body with `Transfer-Encoding: chunked` (no Content-Length), as batch transform
    /// does with `MaxPayloadInMB=0`.
    pub(crate) fn send_chunked(
        &mut self,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        chunk: usize,
    ) -> Result<Reply> {
        let mut request =
            format!("POST {path} HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n");
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        let stream = self.reader.get_mut();
        stream.write_all(request.as_bytes())?;
        for part in body.chunks(chunk.max(1)) {
            stream.write_all(format!("{:x}\r\n", part.len()).as_bytes())?;
            stream.write_all(part)?;
            stream.write_all(b"\r\n")?;
        }
        stream.write_all(b"0\r\n\r\n")?;
        self.read_reply()
    }

    /// Sends a body made of `parts`, each `(bytes, times)` repeated, without holding it in
    /// memory (bodies of a gigabyte); waits up to `timeout` for the answer.
    pub(crate) fn send_repeated(
        &mut self,
        path: &str,
        headers: &[(&str, &str)],
        parts: &[(&[u8], usize)],
        timeout: Duration,
    ) -> Result<Reply> {
        let length: usize = parts.iter().map(|(bytes, times)| bytes.len() * times).sum();
        let mut request =
            format!("POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {length}\r\n");
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        let stream = self.reader.get_mut();
        stream.set_read_timeout(Some(timeout))?;
        stream.write_all(request.as_bytes())?;
        for (bytes, times) in parts {
            for _ in 0..*times {
                stream.write_all(bytes)?;
            }
        }
        self.read_reply()
    }

    /// Writes `bytes` as they are (a hand-made, possibly broken request).
    pub(crate) fn write_raw(&mut self, bytes: &[u8]) -> Result<()> {
        self.reader.get_mut().write_all(bytes)?;
        Ok(())
    }

    /// Closes the sending half: the server sees the end of the request stream.
    pub(crate) fn finish_sending(&mut self) -> Result<()> {
        self.reader.get_mut().shutdown(std::net::Shutdown::Write)?;
        Ok(())
    }

    /// Whether the server has closed the connection (no reply bytes, end of stream) within
    /// `timeout`.
    pub(crate) fn is_closed_within(&mut self, timeout: Duration) -> Result<bool> {
        self.reader.get_mut().set_read_timeout(Some(timeout))?;
        let mut byte = [0u8; 1];
        match self.reader.read(&mut byte) {
            Ok(0) => Ok(true),
            Ok(_) => bail!("the server sent data instead of closing"),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                Ok(false)
            }
            // A reset is a close too.
            Err(_) => Ok(true),
        }
    }

    /// Reads one response.
    pub(crate) fn read_reply(&mut self) -> Result<Reply> {
        let mut line = String::new();
        self.reader.read_line(&mut line)?;
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .context("no status line")?
            .parse()?;
        let mut headers = HashMap::new();
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line)? == 0 {
                bail!("connection closed inside the headers");
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_string());
            }
        }
        if status == 100 {
            return self.read_reply();
        }
        let length: usize = headers
            .get("content-length")
            .map(|v| v.parse())
            .transpose()?
            .unwrap_or(0);
        let mut body = vec![0; length];
        self.reader.read_exact(&mut body)?;
        Ok(Reply {
            status,
            headers,
            body,
        })
    }
}

/// One request on a fresh connection.
pub(crate) fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<Reply> {
    Connection::open(addr)?.send(method, path, headers, body)
}
