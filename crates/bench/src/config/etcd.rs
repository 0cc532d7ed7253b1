//! A throwaway single-member etcd for the peer comparison, driven through its JSON gRPC gateway
//! (`/v3/…`, etcd 3.4 and later).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use base64::Engine;
use serde_json::{json, Value};
use tokio::process::{Child, Command};

use super::watch::{find, Event};

/// A running etcd; dropped or stopped, its process and data directory go.
pub struct Etcd {
    child: Child,
    dir: PathBuf,
    /// Client address, `127.0.0.1:port`.
    pub addr: String,
}

impl Etcd {
    /// The process id, for its RSS.
    pub fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    /// Kills etcd and removes its data.
    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The `etcd` binary on `PATH`, if any.
pub fn binary() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("etcd"))
        .find(|p| p.is_file())
}

fn free_port() -> Result<u16, String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(l.local_addr().map_err(|e| e.to_string())?.port())
}

/// `etcd 3.4.23`, from the first line of `etcd --version`.
pub async fn version(bin: &Path) -> String {
    Command::new(bin)
        .arg("--version")
        .output()
        .await
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(|l| l.replace("Version: ", ""))
        })
        .unwrap_or_else(|| "etcd".into())
}

/// Starts etcd on free loopback ports with a fresh data directory and waits until it is
/// healthy.
pub async fn start(bin: &Path, http: &reqwest::Client) -> Result<Etcd, String> {
    let (client, peer) = (free_port()?, free_port()?);
    let dir = std::env::temp_dir().join(capstan_tests::db::unique_name("capstan_bench_etcd"));
    let client_url = format!("http://127.0.0.1:{client}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let child = Command::new(bin)
        .args(["--name", "bench", "--data-dir"])
        .arg(&dir)
        .args([
            "--listen-client-urls",
            &client_url,
            "--advertise-client-urls",
            &client_url,
            "--listen-peer-urls",
            &peer_url,
            "--initial-advertise-peer-urls",
            &peer_url,
            "--initial-cluster",
            &format!("bench={peer_url}"),
            "--logger",
            "zap",
            "--log-level",
            "error",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start etcd: {e}"))?;
    let etcd = Etcd {
        child,
        dir,
        addr: format!("127.0.0.1:{client}"),
    };
    for _ in 0..100 {
        let health = http.get(format!("{client_url}/health")).send().await;
        if let Ok(r) = health {
            if r.text().await.is_ok_and(|t| t.contains("true")) {
                return Ok(etcd);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    etcd.stop().await;
    Err("etcd did not become healthy within 10 s".into())
}

/// Base64, as the gateway encodes keys and values.
pub fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// `POST /v3/kv/put`; the revision it made.
pub async fn put(
    http: &reqwest::Client,
    addr: &str,
    key: &str,
    value: &str,
) -> Result<i64, String> {
    let v: Value = http
        .post(format!("http://{addr}/v3/kv/put"))
        .json(&json!({"key": b64(key), "value": b64(value)}))
        .send()
        .await
        .map_err(|e| e.to_string())?
        .json()
        .await
        .map_err(|e| e.to_string())?;
    // The gateway writes 64-bit integers as JSON strings.
    v["header"]["revision"]
        .as_str()
        .and_then(|r| r.parse().ok())
        .ok_or_else(|| format!("etcd put answered {v}"))
}

/// The streaming `POST /v3/watch` request for one watcher of `key`.
pub fn watch_request(addr: &str, key: &str) -> Vec<u8> {
    let body = json!({"create_request": {"key": b64(key)}}).to_string();
    format!(
        "POST /v3/watch HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// One line of the watch stream: `{"result":{…,"created":true}}`, `{"result":{…,"events":[{
/// "kv":{…,"mod_revision":"N",…}}]}}` or a cancel. Found by substring, not parsed, so that
/// the client costs etcd's watchers what it costs Capstan's.
pub fn watch_line(line: &[u8]) -> Event {
    if find(line, b"\"events\"").is_some() {
        let Some(i) = find(line, b"\"mod_revision\":\"") else {
            return Event::None;
        };
        let digits = &line[i + 16..];
        let n = digits.iter().take_while(|b| b.is_ascii_digit()).count();
        return std::str::from_utf8(&digits[..n])
            .ok()
            .and_then(|d| d.parse().ok())
            .map_or(Event::None, Event::Change);
    }
    if find(line, b"\"created\":true").is_some() {
        return Event::Created;
    }
    if find(line, b"\"canceled\":true").is_some() || find(line, b"\"error\"").is_some() {
        return Event::Dropped;
    }
    Event::None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watch_lines() {
        let created = br#"{"result":{"header":{"cluster_id":"1","member_id":"2","revision":"2","raft_term":"2"},"created":true}}"#;
        let change = br#"{"result":{"header":{"revision":"3"},"events":[{"kv":{"key":"aw==","create_revision":"2","mod_revision":"3","version":"2","value":"Mg=="}}]}}"#;
        assert!(matches!(watch_line(created), Event::Created));
        assert!(matches!(watch_line(change), Event::Change(3)));
        assert!(matches!(watch_line(b"{}"), Event::None));
    }
}
