//! The compiled `capstanctl` binary against a real server: the process's streams, exit codes
//! and stdin (the rest of the CLI is tested in the workspace suite through the same `run`).

// Tests may unwrap and panic: a failure is the point.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write;
use std::process::{Command, Output, Stdio};

use capstan_tests::Ctx;

fn capstanctl(config: &std::path::Path, addr: &str, args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_capstanctl"))
        .args(["--config-dir", config.to_str().unwrap(), "--addr", addr])
        .args(args)
        .env_remove("CAPSTAN_CLIENT_SECRET")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_binary_logs_in_from_stdin_and_exits_with_documented_codes() {
    let ctx = Ctx::sqlite().await;
    let s = ctx.server().await;
    let admin = s.admin().await;
    let dir = std::env::temp_dir().join(capstan_tests::db::unique_name("capstanctl-bin"));
    let addr = s.base.clone();
    let (d, a) = (dir.clone(), addr.clone());
    let (id, secret) = (admin.id.clone(), admin.secret.clone());
    let out = tokio::task::spawn_blocking(move || {
        let mut codes = Vec::new();
        let login = capstanctl(
            &d,
            &a,
            &["login", "--client-id", &id, "--client-secret-stdin"],
            &format!("{secret}\n"),
        );
        assert!(String::from_utf8_lossy(&login.stderr).contains("logged in"));
        codes.push(login.status.code());
        let list = capstanctl(&d, &a, &["clients", "list"], "");
        let v: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
        assert_eq!(
            v[0]["client_id"],
            id.as_str(),
            "JSON when stdout is not a terminal"
        );
        codes.push(list.status.code());
        codes.push(
            capstanctl(&d, &a, &["clients", "get", "svc_nope"], "")
                .status
                .code(),
        );
        codes.push(capstanctl(&d, &a, &["no-such-command"], "").status.code());
        let version = capstanctl(&d, &a, &["--version"], "");
        assert!(String::from_utf8_lossy(&version.stdout).contains("server "));
        codes
    })
    .await
    .unwrap();
    assert_eq!(out, vec![Some(0), Some(0), Some(4), Some(2)]);
    s.shutdown().await;
    ctx.cleanup().await;
}
