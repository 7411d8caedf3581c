//! Tests of the `conductor-node` binary as a process: flags, durability
//! across kill -9, graceful SIGTERM, the token never reaching the logs.

mod common;

use common::*;
use serde_json::json;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

struct Proc {
    child: Child,
    addr: SocketAddr,
    log: Arc<Mutex<String>>,
}

/// Starts the binary on an ephemeral port and waits for its "listening"
/// line, which names the port.
fn start(dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Proc {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_conductor-node"));
    cmd.args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir)
        .args(extra)
        .env_remove("CONDUCTOR_NODE_AUTH_TOKEN")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("start conductor-node");
    let stderr = child.stderr.take().unwrap();
    let log = Arc::new(Mutex::new(String::new()));
    let (tx, rx) = std::sync::mpsc::channel();
    let log2 = log.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = line.split("listen=").nth(1) {
                let addr: SocketAddr = rest.split_whitespace().next().unwrap().parse().unwrap();
                let _ = tx.send(addr);
            }
            let mut l = log2.lock().unwrap();
            l.push_str(&line);
            l.push('\n');
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(20))
        .unwrap_or_else(|_| panic!("node did not start: {}", log.lock().unwrap()));
    Proc { child, addr, log }
}

fn sigterm(p: &Proc) {
    let ok = Command::new("kill")
        .args(["-TERM", &p.child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
}

fn wait_exit(p: &mut Proc, limit: Duration) -> std::process::ExitStatus {
    let t = Instant::now();
    loop {
        if let Some(s) = p.child.try_wait().unwrap() {
            return s;
        }
        assert!(
            t.elapsed() < limit,
            "node did not exit: {}",
            p.log.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("conductor-node-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

#[test]
fn help_explains_every_flag() {
    let out = Command::new(env!("CARGO_BIN_EXE_conductor-node"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for flag in [
        "--listen",
        "--data-dir",
        "--auth-token",
        "CONDUCTOR_NODE_AUTH_TOKEN",
        "--max-body-bytes",
        "--stream-idle-timeout-ms",
        "--busy-timeout-ms",
        "--synchronous",
        "--delay-ms",
        "delay every pipeline/cursor response by N ms",
        "--threads",
        "--shutdown-timeout-ms",
        "--log-level",
        "kill -9",
    ] {
        assert!(help.contains(flag), "--help lacks {flag:?}:\n{help}");
    }
}

#[test]
fn kill_9_after_commit_loses_nothing() {
    let dir = temp_dir("kill9");
    let mut p = start(&dir, &[], &[]);
    let a = p.addr;
    exec(a, "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)", vec![]);
    for i in 0..200 {
        exec(a, "INSERT INTO t VALUES (?, 'autocommit')", vec![int(i)]);
    }
    // Committed in an interactive transaction whose stream stays open.
    let b = pipeline(
        a,
        None,
        vec![
            execute("BEGIN", vec![]),
            execute("INSERT INTO t VALUES (1000, 'txn')", vec![]),
        ],
    );
    let b = pipeline(a, b["baton"].as_str(), vec![execute("COMMIT", vec![])]);
    assert_eq!(b["results"][0]["type"], "ok");
    // Uncommitted, must vanish.
    pipeline(
        a,
        None,
        vec![
            execute("BEGIN", vec![]),
            execute("INSERT INTO t VALUES (2000, 'open')", vec![]),
        ],
    );
    p.child.kill().unwrap(); // SIGKILL
    p.child.wait().unwrap();

    let mut p = start(&dir, &[], &[]);
    assert_eq!(count(p.addr, "t"), 201);
    let r = exec(p.addr, "SELECT count(*) FROM t WHERE id = 2000", vec![]);
    assert_eq!(scalar(&r), 0);
    sigterm(&p);
    wait_exit(&mut p, Duration::from_secs(15));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn sigterm_finishes_in_flight_requests_and_rolls_back() {
    let dir = temp_dir("sigterm");
    let mut p = start(&dir, &["--delay-ms", "700"], &[]);
    let a = p.addr;
    exec(a, "CREATE TABLE t(id INTEGER PRIMARY KEY)", vec![]);
    exec(a, "INSERT INTO t VALUES (1), (3)", vec![]);
    pipeline(
        a,
        None,
        vec![
            execute("BEGIN", vec![]),
            execute("INSERT INTO t VALUES (2)", vec![]),
        ],
    );
    // A request in flight when SIGTERM arrives still gets its answer.
    let inflight = std::thread::spawn(move || count(a, "t"));
    std::thread::sleep(Duration::from_millis(200));
    sigterm(&p);
    let n = inflight.join().expect("in-flight request answered");
    assert_eq!(n, 2, "the open transaction is invisible");
    let status = wait_exit(&mut p, Duration::from_secs(15));
    assert!(status.success(), "{status:?}\n{}", p.log.lock().unwrap());
    let log = p.log.lock().unwrap().clone();
    assert!(log.contains("transactions roll back"), "{log}");
    // A clean close checkpoints and removes the WAL.
    assert!(!dir.join("node.db-wal").exists(), "WAL left behind");

    let mut p = start(&dir, &[], &[]);
    let r = exec(p.addr, "SELECT group_concat(id) FROM t", vec![]);
    assert_eq!(r["rows"][0][0]["value"], "1,3");
    sigterm(&p);
    assert!(wait_exit(&mut p, Duration::from_secs(15)).success());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn token_from_the_environment_is_enforced_and_never_logged() {
    let dir = temp_dir("token");
    let token = "zz-very-secret-token-zz";
    let mut p = start(
        &dir,
        &["--log-level", "debug"],
        &[("CONDUCTOR_NODE_AUTH_TOKEN", token)],
    );
    let a = p.addr;
    let body =
        json!({"baton": null, "requests": [execute("SELECT 1", vec![]), close()]}).to_string();
    assert_eq!(
        request(a, "POST", "/v3/pipeline", &[], body.as_bytes()).status,
        401
    );
    let auth = format!("Bearer {token}");
    let r = request(
        a,
        "POST",
        "/v3/pipeline",
        &[("Authorization", &auth)],
        body.as_bytes(),
    );
    assert_eq!(r.status, 200);
    sigterm(&p);
    wait_exit(&mut p, Duration::from_secs(15));
    let log = p.log.lock().unwrap().clone();
    assert!(
        log.contains("/v3/pipeline"),
        "debug logs one line per request: {log}"
    );
    assert!(!log.contains(token), "token leaked into the log: {log}");
    let _ = std::fs::remove_dir_all(&dir);
}

fn vm_hwm_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn cursor_streams_a_large_table_with_bounded_memory() {
    use std::io::{Read, Write};
    let dir = temp_dir("cursor-mem");
    let mut p = start(&dir, &[], &[]);
    let a = p.addr;
    exec(
        a,
        "CREATE TABLE big(id INTEGER PRIMARY KEY, t TEXT)",
        vec![],
    );
    exec(
        a,
        "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 300000) \
         INSERT INTO big SELECT i, printf('%0100d', i) FROM c",
        vec![],
    );
    // Restart so the peak RSS reflects the scan only.
    sigterm(&p);
    wait_exit(&mut p, Duration::from_secs(15));
    let mut p = start(&dir, &[], &[]);
    let before = vm_hwm_kb(p.child.id());
    let body = json!({"baton": null, "batch": {"steps": [{"stmt": {"sql": "SELECT * FROM big"}}]}})
        .to_string();
    let mut s = std::net::TcpStream::connect(p.addr).unwrap();
    write!(
        s,
        "POST /v3/cursor HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    // A slow reader: the node must wait for it rather than buffer the rest.
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0usize;
    let mut rows = 0usize;
    // The last bytes of the previous read, so a marker split across reads
    // is still counted. (Chunks end at line ends, so chunk framing never
    // splits one.)
    let mut window: Vec<u8> = Vec::new();
    loop {
        let n = s.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        total += n;
        window.extend_from_slice(&buf[..n]);
        rows += window.windows(6).filter(|w| w == b"\"row\":").count();
        window.drain(..window.len().saturating_sub(5));
        std::thread::sleep(Duration::from_micros(300));
    }
    let after = vm_hwm_kb(p.child.id());
    assert!(total > 40_000_000, "only {total} bytes received");
    assert_eq!(rows, 300_000);
    // ~45 MB of rows went through; the node's peak RSS grows by a few MB.
    assert!(
        after - before < 20_000,
        "peak RSS grew from {before} kB to {after} kB"
    );
    sigterm(&p);
    wait_exit(&mut p, Duration::from_secs(15));
    let _ = std::fs::remove_dir_all(&dir);
}
