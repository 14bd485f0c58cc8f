//! A minimal HTTP/1.1 client for the dashboard workloads: GET over one kept-alive connection
//! with the login cookie, the body read by `Content-Length` or chunks, and a raw stream for
//! `/events`. As small as the wire clients, so the time measured is the dashboard's.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};

use crate::wire::{self, WireError};

/// One answer: its status, the headers a workload looks at, and the body.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A connection to the dashboard that sends the cookie with every request.
pub struct HttpClient {
    addr: SocketAddr,
    cookie: Option<String>,
    reader: Option<BufReader<TcpStream>>,
}

impl HttpClient {
    pub fn new(addr: SocketAddr, cookie: Option<String>) -> HttpClient {
        HttpClient {
            addr,
            cookie,
            reader: None,
        }
    }

    /// `GET path`, on the kept-alive connection (opened again if the server closed it).
    pub fn get(&mut self, path: &str) -> Result<Response, WireError> {
        if self.reader.is_none() {
            self.reader = Some(BufReader::new(wire::connect(self.addr)?));
        }
        let reader = self.reader.as_mut().expect("just opened");
        reader
            .get_mut()
            .write_all(request(self.addr, path, self.cookie.as_deref()).as_bytes())?;
        let response = read_response(reader)?;
        if response
            .header("connection")
            .is_some_and(|c| c.eq_ignore_ascii_case("close"))
        {
            self.reader = None;
        }
        Ok(response)
    }

    /// `GET path` on a connection of its own, returning it once the headers are read: the
    /// body (an event stream) is then read from the returned reader.
    pub fn open_stream(&self, path: &str) -> Result<(Response, BufReader<TcpStream>), WireError> {
        let stream = wire::connect(self.addr)?;
        let mut reader = BufReader::new(stream);
        reader
            .get_mut()
            .write_all(request(self.addr, path, self.cookie.as_deref()).as_bytes())?;
        let (status, headers) = read_head(&mut reader)?;
        let head = Response {
            status,
            headers,
            body: Vec::new(),
        };
        Ok((head, reader))
    }
}

fn request(addr: SocketAddr, path: &str, cookie: Option<&str>) -> String {
    let cookie = cookie
        .map(|c| format!("Cookie: {c}\r\n"))
        .unwrap_or_default();
    format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{cookie}Accept: text/html\r\n\r\n")
}

fn read_response(reader: &mut BufReader<TcpStream>) -> Result<Response, WireError> {
    let (status, headers) = read_head(reader)?;
    let find = |name: &str| {
        headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.clone())
    };
    let body = if let Some(length) = find("content-length") {
        let length: usize = length
            .trim()
            .parse()
            .map_err(|_| WireError::Refused(format!("a bad Content-Length: {length}")))?;
        let mut body = vec![0; length];
        reader.read_exact(&mut body)?;
        body
    } else if find("transfer-encoding").is_some_and(|t| t.contains("chunked")) {
        read_chunks(reader)?
    } else {
        let mut body = Vec::new();
        reader.read_to_end(&mut body)?;
        body
    };
    Ok(Response {
        status,
        headers,
        body,
    })
}

/// The status line and headers, up to the blank line.
fn read_head(reader: &mut BufReader<TcpStream>) -> Result<(u16, Vec<(String, String)>), WireError> {
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Err(WireError::Closed);
    }
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| WireError::Refused(format!("not an HTTP status line: {line:?}")))?;
    let mut headers = Vec::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Err(WireError::Closed);
        }
        let header = line.trim_end();
        if header.is_empty() {
            return Ok((status, headers));
        }
        if let Some((name, value)) = header.split_once(':') {
            headers.push((name.trim().to_owned(), value.trim().to_owned()));
        }
    }
}

fn read_chunks(reader: &mut BufReader<TcpStream>) -> Result<Vec<u8>, WireError> {
    let mut body = Vec::new();
    loop {
        let mut size = String::new();
        reader.read_line(&mut size)?;
        let size = usize::from_str_radix(size.trim().split(';').next().unwrap_or(""), 16)
            .map_err(|_| WireError::Refused(format!("a bad chunk size: {size:?}")))?;
        let mut chunk = vec![0; size + 2];
        reader.read_exact(&mut chunk)?;
        chunk.truncate(size);
        if size == 0 {
            return Ok(body);
        }
        body.extend_from_slice(&chunk);
    }
}

/// The target of the page's `<a rel="next" href="...">`, unescaped, if it has one.
pub fn next_link(html: &str) -> Option<String> {
    let after = &html[html.find("rel=\"next\"")?..];
    let href = &after[after.find("href=\"")? + "href=\"".len()..];
    let link = &href[..href.find('"')?];
    Some(link.replace("&amp;", "&"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_link_is_found_and_unescaped() {
        let html = r#"<ol></ol><p><a rel="next" href="/conversations?with=a&amp;and=b&amp;before=42">Older</a></p>"#;
        assert_eq!(
            next_link(html).as_deref(),
            Some("/conversations?with=a&and=b&before=42")
        );
        assert_eq!(next_link("<p>no more</p>"), None);
    }
}
