//! Test helpers: a deliberately tiny blocking HTTP/1.1 client (so tests can
//! also send malformed and oversized requests) and Hrana request builders.
#![allow(dead_code)]

use serde_json::{json, Value as J};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn json(&self) -> J {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "status {} body is not JSON ({e}): {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    /// Lines of an NDJSON (cursor) body.
    pub fn lines(&self) -> Vec<J> {
        self.text()
            .lines()
            .map(|l| serde_json::from_str(l).expect("cursor line is JSON"))
            .collect()
    }
}

/// One request on a fresh connection (`Connection: close`).
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Resp {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).unwrap();
    // A server may answer (e.g. 413) before reading the whole body.
    let _ = s.write_all(body);
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    parse_response(&raw)
}

fn parse_response(raw: &[u8]) -> Resp {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP head in {:?}", String::from_utf8_lossy(raw)));
    let head = std::str::from_utf8(&raw[..split]).unwrap();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let rest = &raw[split + 4..];
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    let body = if chunked {
        dechunk(rest)
    } else {
        rest.to_vec()
    };
    Resp {
        status,
        headers,
        body,
    }
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let eol = b
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("chunk size line");
        let size =
            usize::from_str_radix(std::str::from_utf8(&b[..eol]).unwrap().trim(), 16).unwrap();
        b = &b[eol + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
    }
}

pub fn post(addr: SocketAddr, path: &str, body: &J) -> Resp {
    request(
        addr,
        "POST",
        path,
        &[("Content-Type", "application/json")],
        body.to_string().as_bytes(),
    )
}

pub fn get(addr: SocketAddr, path: &str) -> Resp {
    request(addr, "GET", path, &[], b"")
}

/// POST /v3/pipeline, expecting 200; returns the body.
pub fn pipeline(addr: SocketAddr, baton: Option<&str>, requests: Vec<J>) -> J {
    let r = post(
        addr,
        "/v3/pipeline",
        &json!({"baton": baton, "requests": requests}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

/// One statement on a fresh self-closing stream; the execute result (or
/// panic with the error).
pub fn exec(addr: SocketAddr, sql: &str, args: Vec<J>) -> J {
    let body = pipeline(addr, None, vec![execute(sql, args), close()]);
    let r = &body["results"][0];
    assert_eq!(r["type"], "ok", "{sql}: {r}");
    r["response"]["result"].clone()
}

/// Like `exec` but expects an error; returns it.
pub fn exec_err(addr: SocketAddr, sql: &str, args: Vec<J>) -> J {
    let body = pipeline(addr, None, vec![execute(sql, args), close()]);
    let r = &body["results"][0];
    assert_eq!(r["type"], "error", "{sql}: {r}");
    r["error"].clone()
}

pub fn execute(sql: &str, args: Vec<J>) -> J {
    json!({"type": "execute", "stmt": {"sql": sql, "args": args}})
}

pub fn close() -> J {
    json!({"type": "close"})
}

pub fn int(i: i64) -> J {
    json!({"type": "integer", "value": i.to_string()})
}

pub fn text(s: &str) -> J {
    json!({"type": "text", "value": s})
}

/// The single integer of a one-row, one-column result.
pub fn scalar(result: &J) -> i64 {
    result["rows"][0][0]["value"]
        .as_str()
        .unwrap_or_else(|| panic!("no scalar in {result}"))
        .parse()
        .unwrap()
}

pub fn count(addr: SocketAddr, table: &str) -> i64 {
    scalar(&exec(
        addr,
        &format!("SELECT count(*) FROM {table}"),
        vec![],
    ))
}

pub fn node() -> conductor_node::RunningNode {
    conductor_node::spawn(conductor_node::Config::temp()).expect("spawn node")
}

pub fn node_with(f: impl FnOnce(&mut conductor_node::Config)) -> conductor_node::RunningNode {
    let mut c = conductor_node::Config::temp();
    f(&mut c);
    conductor_node::spawn(c).expect("spawn node")
}
