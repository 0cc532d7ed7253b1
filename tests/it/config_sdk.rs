//! The SDK's config watcher and `capstanctl config` against a real server: values pushed to a
//! watcher within a second, typed reads, the snapshot file served while Capstan is down, and
//! the CLI's writes, reads, conditional writes, schema refusals and watch stream.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use capstan_sdk::config::{ConfigClient, PutOptions};
use capstan_sdk::proto::config::PatchRequest;
use capstan_sdk::{Capstan, Error};
use capstan_tests::{on_both_backends, Ctx, TestServer};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::cli::{temp_dir, Ctl};

on_both_backends!(
    the_watcher_gets_values_and_sees_writes_within_a_second,
    the_snapshot_file_is_served_while_capstan_is_down,
    capstanctl_config_writes_reads_and_watches,
);

const NS: &str = "payments";
const ENV: &str = "prod";

/// A config client acting as a new admin of the default tenant.
async fn config_client(s: &TestServer) -> ConfigClient {
    let admin = s.admin().await;
    let capstan = Capstan::new(&s.base, "default")
        .unwrap()
        .with_clock(s.clock.clone());
    ConfigClient::new(capstan.api(capstan.token_source(&admin.id, &admin.secret, &[])))
}

async fn put(cfg: &ConfigClient, key: &str, value: Value) -> i64 {
    cfg.put(NS, ENV, key, &value, PutOptions::default())
        .await
        .unwrap()
        .revision
}

/// What an `on_change` callback was called with: the revision and the changed keys.
type Call = (i64, Vec<String>);

#[derive(Debug, Deserialize, PartialEq)]
struct Limits {
    rps: u32,
    burst: u32,
}

async fn the_watcher_gets_values_and_sees_writes_within_a_second(ctx: &Ctx) {
    let s = ctx.server().await;
    let cfg = config_client(&s).await;
    put(&cfg, "timeout_ms", json!(250)).await;
    let first = put(&cfg, "limits", json!({"rps": 100, "burst": 20})).await;

    let calls: Arc<Mutex<Vec<Call>>> = Arc::default();
    let log = calls.clone();
    let w = cfg
        .watcher(NS, ENV)
        .on_change(move |e| {
            let keys = e.changes.iter().map(|c| c.key.clone()).collect();
            log.lock().unwrap().push((e.revision, keys));
        })
        .start()
        .await
        .unwrap();
    assert_eq!(w.revision(), first);
    assert!(w.is_connected());
    // Its stream has a connection of its own, so the server writes it outside hyper's
    // per-connection buffers (though the SDK fetched its token over HTTP first).
    assert!(
        s.metrics()
            .await
            .lines()
            .any(|l| l == "capstan_http_direct_streams 1"),
        "the SDK's watch was not its connection's first request"
    );
    assert_eq!(w.get::<u64>("timeout_ms").unwrap(), Some(250));
    assert_eq!(
        w.get::<Limits>("limits").unwrap(),
        Some(Limits {
            rps: 100,
            burst: 20
        })
    );
    assert_eq!(w.get::<u64>("absent").unwrap(), None);
    assert!(
        matches!(w.get::<String>("timeout_ms"), Err(Error::Value { .. })),
        "a number is not a string"
    );
    assert!(
        calls.lock().unwrap().is_empty(),
        "no callback for the first snapshot"
    );

    // A write reaches the watcher within a second.
    let next = w.changed();
    let sent = Instant::now();
    let r = put(&cfg, "timeout_ms", json!(300)).await;
    let got = tokio::time::timeout(Duration::from_secs(1), next)
        .await
        .expect("the watcher sees a write within a second");
    assert_eq!(got, r);
    assert!(sent.elapsed() < Duration::from_secs(1));
    assert_eq!(w.get::<u64>("timeout_ms").unwrap(), Some(300));
    assert_eq!(
        *calls.lock().unwrap(),
        vec![(r, vec!["timeout_ms".to_owned()])],
        "the callback ran, with the changed key, before the revision was announced"
    );

    // An atomic patch: one revision, sets and deletes together.
    let mut patch = PatchRequest::default();
    patch.set.insert("feature.new_checkout".into(), json!(true));
    patch.delete.push("limits".into());
    let p = cfg.patch(NS, ENV, &patch).await.unwrap().revision;
    let got = tokio::time::timeout(Duration::from_secs(1), w.wait_for_revision(p))
        .await
        .unwrap();
    assert_eq!(got, p);
    assert_eq!(w.get::<bool>("feature.new_checkout").unwrap(), Some(true));
    assert_eq!(w.get::<Limits>("limits").unwrap(), None);
    assert_eq!(
        *w.snapshot(),
        cfg.snapshot(NS, ENV).await.unwrap(),
        "the watcher's snapshot is the server's"
    );
    drop(w);
    s.shutdown().await;
}

/// The revision in a snapshot file, once it is at least `want` (or what it is after 5 s).
async fn file_revision(path: &std::path::Path, want: i64) -> i64 {
    let mut seen = -1;
    for _ in 0..100 {
        seen = std::fs::read(path)
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .and_then(|v| v["snapshot"]["revision"].as_i64())
            .unwrap_or(-1);
        if seen >= want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    seen
}

async fn the_snapshot_file_is_served_while_capstan_is_down(ctx: &Ctx) {
    let s = ctx.server().await;
    let cfg = config_client(&s).await;
    put(&cfg, "timeout_ms", json!(250)).await;
    let file = temp_dir("config-snapshot").join("payments-prod.json");
    let w = cfg
        .watcher(NS, ENV)
        .snapshot_file(&file)
        .backoff(Duration::from_millis(50), Duration::from_millis(200))
        .start()
        .await
        .unwrap();
    let r = put(&cfg, "timeout_ms", json!(300)).await;
    tokio::time::timeout(Duration::from_secs(1), w.wait_for_revision(r))
        .await
        .unwrap();
    assert_eq!(
        file_revision(&file, r).await,
        r,
        "the file follows the changes"
    );
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "the file may hold secrets");
    }

    // Capstan stops (with the watch open): the watcher keeps serving what it had.
    tokio::time::timeout(Duration::from_secs(30), s.shutdown())
        .await
        .expect("the server stops with a watcher connected");
    for _ in 0..100 {
        if !w.is_connected() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!w.is_connected());
    assert_eq!(w.get::<u64>("timeout_ms").unwrap(), Some(300));
    assert_eq!(w.revision(), r);

    // A watcher started while Capstan is down (connection refused) serves the file at once.
    let started = Instant::now();
    let w2 = cfg
        .watcher(NS, ENV)
        .snapshot_file(&file)
        .start()
        .await
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "a refused connection falls back without waiting for the start timeout"
    );
    assert_eq!(w2.revision(), r);
    assert_eq!(w2.get::<u64>("timeout_ms").unwrap(), Some(300));
    assert!(!w2.is_connected());

    // Without a file there is nothing to serve: start says Capstan is unreachable.
    let e = cfg
        .watcher(NS, ENV)
        .start_timeout(Duration::from_millis(500))
        .start()
        .await
        .unwrap_err();
    assert!(e.is_unreachable(), "{e}");
    drop((w, w2));
}

fn lines(out: &str) -> Vec<Value> {
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

async fn capstanctl_config_writes_reads_and_watches(ctx: &Ctx) {
    let s = ctx.server().await;
    let admin = s.admin().await;
    let ctl = Ctl::new(&s);
    ctl.login_dev(&admin).await;
    let set = |k: &'static str, v: &'static str| {
        let ctl = &ctl;
        async move {
            ctl.ok(&["config", "set", NS, ENV, k, v]).await.json()["revision"]
                .as_i64()
                .unwrap()
        }
    };
    let r1 = set("timeout_ms", "250").await;
    let r2 = set("greeting", "hello world").await;
    assert!(r2 > r1);

    // VALUE is JSON when it parses, a string otherwise.
    let v = ctl
        .ok(&["config", "get", NS, ENV, "timeout_ms"])
        .await
        .json();
    assert_eq!(
        (v["key"].clone(), v["value"].clone()),
        (json!("timeout_ms"), json!(250))
    );
    let all = ctl.ok(&["config", "get", NS, ENV]).await.json();
    assert_eq!(
        all["values"],
        json!({"timeout_ms": 250, "greeting": "hello world"})
    );
    assert_eq!(all["revision"], r2);
    let o = ctl
        .ok(&["-o", "table", "config", "get", NS, ENV, "greeting"])
        .await;
    assert_eq!(o.out, "hello world\n", "the bare value for people");

    // A stale --if-match is refused; an absent key is exit code 4.
    let stale = r1.to_string();
    let o = ctl
        .run(&[
            "config",
            "set",
            NS,
            ENV,
            "timeout_ms",
            "1",
            "--if-match",
            &stale,
        ])
        .await;
    assert_eq!(o.code, 1, "{}", o.err);
    assert!(o.err.contains("409"), "{}", o.err);
    assert_eq!(ctl.run(&["config", "get", NS, ENV, "nope"]).await.code, 4);

    // patch, history, diff, rollback.
    let p = ctl
        .ok(&[
            "config",
            "patch",
            NS,
            ENV,
            "--set",
            "a=1",
            "--set",
            r#"b={"x":true}"#,
            "--delete",
            "greeting",
        ])
        .await
        .json()["revision"]
        .as_i64()
        .unwrap();
    let h = ctl
        .ok(&["config", "history", NS, ENV, "--limit", "10"])
        .await
        .json();
    assert_eq!(h["entries"][0]["revision"], p);
    let d = ctl
        .ok(&[
            "config",
            "diff",
            NS,
            ENV,
            "--from",
            &r2.to_string(),
            "--to",
            &p.to_string(),
        ])
        .await
        .json();
    let mut keys: Vec<&str> = d["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["key"].as_str().unwrap())
        .collect();
    keys.sort();
    assert_eq!(keys, ["a", "b", "greeting"]);
    ctl.ok(&["config", "rollback", NS, ENV, "--to", &r1.to_string()])
        .await;
    let all = ctl.ok(&["config", "get", NS, ENV]).await.json();
    assert_eq!(all["values"], json!({"timeout_ms": 250}));
    let now = all["revision"].as_i64().unwrap();

    // A schema refuses what violates it, saying where.
    let schema = ctl.file(
        "schema.json",
        &json!({"type": "object", "properties": {"timeout_ms": {"type": "integer"}}}),
    );
    ctl.ok(&["config", "schema", "set", NS, "--file", &schema])
        .await;
    let o = ctl
        .run(&["config", "set", NS, ENV, "timeout_ms", "soon"])
        .await;
    assert_eq!(o.code, 1, "{}", o.err);
    assert!(
        o.err.contains("422") && o.err.contains("timeout_ms"),
        "{}",
        o.err
    );
    ctl.ok(&["config", "schema", "delete", NS]).await;

    // watch: everything first, as a reset ...
    let o = ctl.ok(&["config", "watch", NS, ENV, "--count", "1"]).await;
    let first = lines(&o.out);
    assert_eq!(first[0]["event"], "reset");
    assert_eq!(first[0]["revision"], now);
    assert_eq!(first[0]["values"], json!({"timeout_ms": 250}));
    // ... or, from a revision, each change as it happens.
    let since = now.to_string();
    let args = [
        "config", "watch", NS, ENV, "--since", &since, "--count", "1",
    ];
    let watch = ctl.run(&args);
    let write = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        set("timeout_ms", "500").await
    };
    let (o, r) = tokio::time::timeout(Duration::from_secs(10), async {
        tokio::join!(watch, write)
    })
    .await
    .expect("the watch prints the change");
    assert_eq!(o.code, 0, "{}", o.err);
    let got = lines(&o.out);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0]["event"], "change");
    assert_eq!(got[0]["revision"], r);
    assert_eq!(
        got[0]["changes"],
        json!([{"key": "timeout_ms", "value": 500}])
    );
    s.shutdown().await;
}
