//! The watch client against a scripted HTTP server on a raw socket: resumption with
//! `Last-Event-ID`, errors between events, idle streams, and the watcher's snapshot file. (The
//! workspace suite runs the same against the real server.)

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::*;
use crate::{Credentials, Transport, TransportConfig};

/// What the server does with one connection.
enum Reply {
    /// A 200 event stream with this body, then closes.
    Close(&'static str),
    /// A 200 event stream with this body, then stays silent and open.
    Hang(&'static str),
    /// This status, empty body.
    Status(u16),
}

struct Fake {
    base: String,
    /// The `Last-Event-ID` of each request, in order.
    seen: Arc<Mutex<Vec<Option<String>>>>,
}

/// Serves `script`, one reply per connection, then stops listening (connections refused).
async fn fake(script: Vec<Reply>) -> Fake {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", l.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        for reply in script {
            let (mut s, _) = l.accept().await.unwrap();
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut buf).await.unwrap();
                assert!(n > 0, "the client hung up mid-request");
                head.extend_from_slice(&buf[..n]);
            }
            let head = String::from_utf8_lossy(&head).to_lowercase();
            log.lock().unwrap().push(
                head.lines()
                    .find_map(|l| l.strip_prefix("last-event-id:"))
                    .map(|v| v.trim().to_owned()),
            );
            let sse =
                "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n";
            match reply {
                Reply::Close(body) => {
                    s.write_all(format!("{sse}{body}").as_bytes())
                        .await
                        .unwrap();
                }
                Reply::Hang(body) => {
                    s.write_all(format!("{sse}{body}").as_bytes())
                        .await
                        .unwrap();
                    tokio::spawn(async move {
                        let _keep = s;
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                    });
                }
                Reply::Status(code) => {
                    let r = format!(
                        "HTTP/1.1 {code} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                    );
                    s.write_all(r.as_bytes()).await.unwrap();
                }
            }
        }
    });
    Fake { base, seen }
}

/// An address nothing listens on.
async fn dead_address() -> String {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", l.local_addr().unwrap());
    drop(l);
    base
}

fn client(base: &str) -> ConfigClient {
    let transport = Transport::new(TransportConfig::default()).unwrap();
    ConfigClient::new(ApiClient::new(base, transport, Credentials::None))
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

const RESET_3: &str =
    "event: reset\nid: 3\ndata: {\"revision\":3,\"values\":{\"a\":1,\"name\":\"x\"}}\n\n";

#[tokio::test]
async fn events_resume_from_the_last_revision_across_every_kind_of_failure() {
    let f = fake(vec![
        Reply::Close(concat!(
            "event: reset\nid: 3\ndata: {\"revision\":3,\"values\":{\"a\":1,\"name\":\"x\"}}\n\n",
            ": heartbeat\n\n",
            "event: change\nid: 4\ndata: {\"revision\":4,\n",
            "data: \"changes\":[{\"key\":\"a\",\"value\":2}]}\n\n",
        )),
        Reply::Status(500),
        Reply::Close(concat!(
            "event: change\r\nid: 4\r\ndata: {\"revision\":4,\"changes\":[]}\r\n\r\n",
            "event: change\r\nid: 5\r\ndata: {\"revision\":5,\"changes\":[{\"key\":\"a\",\"deleted\":true}]}\r\n\r\n",
            "event: dropped\r\ndata: {\"reason\":\"too slow\"}\r\n\r\n",
        )),
        Reply::Hang(": heartbeat\n\n"),
        Reply::Hang("event: change\nid: 6\ndata: {\"revision\":6,\"changes\":[]}\n\n"),
    ])
    .await;
    let mut ev = client(&f.base)
        .events("payments", "prod", None)
        .with_backoff(ms(1), ms(10), Arc::new(crate::SystemRng::new()))
        .with_idle_timeout(ms(300));
    let ConfigEvent::Reset(s) = ev.next().await.unwrap() else {
        panic!("a reset first")
    };
    assert_eq!((s.revision, &s.values["a"]), (3, &json!(1)));
    let ConfigEvent::Change(c) = ev.next().await.unwrap() else {
        panic!("a change")
    };
    assert_eq!(
        (c.revision, c.changes[0].key.as_str()),
        (4, "a"),
        "multi-line data"
    );
    assert_eq!(ev.revision(), Some(4));
    let e = ev.next().await.unwrap_err();
    assert!(e.is_transient(), "the stream ended: {e}");
    let e = ev.next().await.unwrap_err();
    assert_eq!(e.status(), Some(500));
    assert!(e.is_transient());
    // The replayed revision 4 is skipped.
    assert_eq!(ev.next().await.unwrap().revision(), 5);
    let e = ev.next().await.unwrap_err();
    assert!(e.to_string().contains("too slow"), "{e}");
    // A heartbeat, then silence: taken for dead after the idle timeout.
    let e = ev.next().await.unwrap_err();
    assert!(matches!(e, Error::Timeout { .. }), "{e}");
    assert_eq!(ev.next().await.unwrap().revision(), 6);
    assert!(ev.is_connected());
    let seen = f.seen.lock().unwrap().clone();
    let want: Vec<Option<String>> = vec![
        None,
        Some("4".into()),
        Some("4".into()),
        Some("5".into()),
        Some("5".into()),
    ];
    assert_eq!(
        seen, want,
        "each reconnection resumes from the last revision seen"
    );
}

#[tokio::test]
async fn a_refusal_is_not_retried_silently() {
    let f = fake(vec![Reply::Status(403)]).await;
    let e = client(&f.base)
        .events("payments", "prod", None)
        .next()
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(403));
    assert!(!e.is_transient());
}

#[tokio::test]
async fn the_watcher_serves_its_snapshot_file_while_capstan_is_down() {
    let dir = std::env::temp_dir().join(format!("capstan-sdk-watch-{}", std::process::id()));
    let file = dir.join("payments-prod.json");
    let f = fake(vec![Reply::Close(concat!(
        "event: reset\nid: 3\ndata: {\"revision\":3,\"values\":{\"a\":1,\"name\":\"x\"}}\n\n",
        "event: change\nid: 4\ndata: {\"revision\":4,\"changes\":[{\"key\":\"a\",\"value\":2},{\"key\":\"b\",\"value\":[1,2]}]}\n\n",
    ))])
    .await;
    let changed: Arc<Mutex<Vec<String>>> = Arc::default();
    let log = changed.clone();
    let w = client(&f.base)
        .watcher("payments", "prod")
        .snapshot_file(&file)
        .backoff(ms(5), ms(20))
        .on_change(move |e| {
            log.lock()
                .unwrap()
                .extend(e.changes.iter().map(|c| c.key.clone()))
        })
        .start()
        .await
        .unwrap();
    assert_eq!(
        tokio::time::timeout(ms(2000), w.wait_for_revision(4))
            .await
            .unwrap(),
        4
    );
    assert_eq!(w.get::<i64>("a").unwrap(), Some(2));
    assert_eq!(w.get::<Vec<u8>>("b").unwrap(), Some(vec![1, 2]));
    assert_eq!(w.get::<String>("missing").unwrap(), None);
    assert!(
        matches!(w.get::<String>("a"), Err(Error::Value { .. })),
        "a number is not a String"
    );
    assert_eq!(
        *changed.lock().unwrap(),
        vec!["a".to_owned(), "b".to_owned()],
        "not called for the first snapshot"
    );
    // The server is gone now; the file catches up with revision 4.
    let mut on_disk = 0;
    for _ in 0..100 {
        on_disk = std::fs::read(&file)
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|v| v["snapshot"]["revision"].as_i64())
            .unwrap_or(0);
        if on_disk == 4 {
            break;
        }
        tokio::time::sleep(ms(20)).await;
    }
    assert_eq!(on_disk, 4);
    assert_eq!(
        w.get::<i64>("a").unwrap(),
        Some(2),
        "still served with Capstan down"
    );
    drop(w);

    // A new watcher while Capstan is down (connection refused): the file, at once.
    let down = dead_address().await;
    let started = std::time::Instant::now();
    let w = client(&down)
        .watcher("payments", "prod")
        .snapshot_file(&file)
        .start_timeout(Duration::from_secs(10))
        .start()
        .await
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "a refused connection falls back at once"
    );
    assert_eq!(w.revision(), 4);
    assert_eq!(w.get::<i64>("a").unwrap(), Some(2));
    assert!(!w.is_connected());
    // Another environment's file is not served.
    let e = client(&down)
        .watcher("payments", "staging")
        .snapshot_file(&file)
        .start_timeout(ms(300))
        .start()
        .await
        .unwrap_err();
    assert!(e.is_unreachable(), "{e}");
    // Nor is a file a refusal would hide.
    let f = fake(vec![Reply::Status(403)]).await;
    let e = client(&f.base)
        .watcher("payments", "prod")
        .snapshot_file(&file)
        .start()
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(403));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn without_a_file_start_fails_when_capstan_is_down_and_succeeds_when_it_comes() {
    let e = client(&dead_address().await)
        .watcher("payments", "prod")
        .start_timeout(ms(300))
        .start()
        .await
        .unwrap_err();
    assert!(e.is_unreachable(), "{e}");
    // The first snapshot, then `changed` wakes for the next revision.
    let f = fake(vec![Reply::Hang(RESET_3)]).await;
    let w = client(&f.base)
        .watcher("payments", "prod")
        .start()
        .await
        .unwrap();
    assert_eq!(w.revision(), 3);
    assert_eq!(w.get::<String>("name").unwrap().as_deref(), Some("x"));
    assert!(w.is_connected());
    assert!(
        tokio::time::timeout(ms(200), w.changed()).await.is_err(),
        "nothing changed"
    );
}
