//! The official libSQL client talks to conductor-node: `@libsql/client`
//! (HTTP mode) run by Node.js through tests/js/run.sh. Needs `node` and
//! `npm` (the npm install is done once by the script). Set
//! CONDUCTOR_SKIP_JS_CLIENT=1 to skip on a machine without Node.js.

use std::process::Command;

fn run_js_client(token: Option<&str>) {
    let mut config = conductor_node::Config::temp();
    config.auth_token = token.map(str::to_owned);
    let node = conductor_node::spawn(config).expect("spawn node");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/js/run.sh");
    let mut cmd = Command::new("bash");
    cmd.arg(script).arg(node.url());
    if let Some(t) = token {
        cmd.arg(t);
    }
    let out = cmd.output().expect("run tests/js/run.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "@libsql/client test failed\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
    );
    assert!(stdout.contains(" passed, 0 failed"), "{stdout}");
    node.shutdown();
}

#[test]
fn libsql_js_client_statements_batches_transactions() {
    if std::env::var_os("CONDUCTOR_SKIP_JS_CLIENT").is_some() {
        eprintln!("skipped: CONDUCTOR_SKIP_JS_CLIENT is set");
        return;
    }
    run_js_client(None);
}

#[test]
fn libsql_js_client_with_auth_token() {
    if std::env::var_os("CONDUCTOR_SKIP_JS_CLIENT").is_some() {
        eprintln!("skipped: CONDUCTOR_SKIP_JS_CLIENT is set");
        return;
    }
    run_js_client(Some("js-client-token"));
}
