//! `capstanctl` against a real server: every command, its outputs and its error paths. The
//! tests run the CLI's `run` (what the binary runs) with its streams captured.

use std::path::{Path, PathBuf};
use std::time::Duration;

use capstan_tests::{on_both_backends, Creds, Ctx, TestServer};
use reqwest::Method;
use serde_json::{json, Value};

on_both_backends!(
    every_command_runs_against_a_real_server,
    error_paths_say_what_went_wrong_and_what_to_do,
    decisions_follow_prints_new_decisions,
    identity_commands_run_against_a_real_server,
);

/// A capstanctl with its own config directory, pointed at one server.
pub struct Ctl {
    pub dir: PathBuf,
    pub addr: String,
}

pub struct Out {
    pub code: i32,
    pub out: String,
    pub err: String,
}

impl Out {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.out).unwrap_or_else(|e| panic!("{e}: {}", self.out))
    }
}

pub fn temp_dir(prefix: &str) -> PathBuf {
    let d = std::env::temp_dir().join(capstan_tests::db::unique_name(prefix));
    std::fs::create_dir_all(&d).unwrap();
    d
}

impl Ctl {
    pub fn new(s: &TestServer) -> Ctl {
        Ctl {
            dir: temp_dir("capstanctl"),
            addr: s.base.clone(),
        }
    }

    pub async fn run(&self, args: &[&str]) -> Out {
        self.run_stdin(args, "").await
    }

    pub async fn run_stdin(&self, args: &[&str], stdin: &str) -> Out {
        let dir = self.dir.join("config");
        let mut all = vec![
            "capstanctl".to_owned(),
            "--config-dir".into(),
            dir.display().to_string(),
            "--addr".into(),
            self.addr.clone(),
        ];
        all.extend(args.iter().map(|a| (*a).to_owned()));
        let mut input = std::io::Cursor::new(stdin.as_bytes().to_vec());
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let mut io = capstan_cli::Io {
            stdin: &mut input,
            out: &mut out,
            err: &mut err,
            stdout_tty: false,
            interactive: false,
        };
        let code = capstan_cli::run(all, &mut io).await;
        Out {
            code,
            out: String::from_utf8(out).unwrap(),
            err: String::from_utf8(err).unwrap(),
        }
    }

    /// Runs and insists on success.
    pub async fn ok(&self, args: &[&str]) -> Out {
        let o = self.run(args).await;
        assert_eq!(o.code, 0, "capstanctl {args:?}: {}{}", o.err, o.out);
        o
    }

    pub fn file(&self, name: &str, v: &Value) -> String {
        let p = self.dir.join(name);
        std::fs::write(&p, v.to_string()).unwrap();
        p.display().to_string()
    }

    /// Logs in with `capstan dev`'s admin.json format.
    pub async fn login_dev(&self, creds: &Creds) {
        let dev = self.dir.join("dev");
        std::fs::create_dir_all(&dev).unwrap();
        std::fs::write(
            dev.join("admin.json"),
            json!({"tenant": "default", "client_id": creds.id, "client_secret": creds.secret})
                .to_string(),
        )
        .unwrap();
        let o = self.ok(&["login", "--dev", dev.to_str().unwrap()]).await;
        assert!(o.err.contains("logged in to"), "{}", o.err);
    }
}

fn allow(action: &str, resource: &str) -> Value {
    json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": action, "Resource": resource}]})
}

fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

async fn every_command_runs_against_a_real_server(ctx: &Ctx) {
    let s = ctx.server().await;
    let admin = s.admin().await;
    let ctl = Ctl::new(&s);
    ctl.login_dev(&admin).await;
    let contexts = ctl.dir.join("config").join("contexts.json");
    assert_eq!(mode(&contexts), 0o600, "the login file is the user's only");
    assert_eq!(mode(contexts.parent().unwrap()), 0o700);
    let c = ctl.ok(&["contexts"]).await.json();
    assert_eq!(c[0]["addr"], s.base.as_str());
    assert_eq!(c[0]["current"], true);

    // --version shows the server's version too.
    let v = ctl.ok(&["--version"]).await.out;
    assert!(
        v.contains(&format!("capstanctl {}", env!("CARGO_PKG_VERSION"))),
        "{v}"
    );
    assert!(
        v.contains(&format!(
            "server {} at {}",
            env!("CARGO_PKG_VERSION"),
            s.base
        )),
        "{v}"
    );

    // Tenants.
    let t = ctl
        .ok(&["tenants", "create", "acme", "--signing-alg", "EdDSA"])
        .await
        .json();
    assert_eq!(t["tenant"]["id"], "acme");
    assert!(t["admin_client"]["client_secret"].is_string());
    let ids: Vec<Value> = ctl
        .ok(&["tenants", "list"])
        .await
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].clone())
        .collect();
    assert!(ids.contains(&json!("acme")) && ids.contains(&json!("default")));

    // Clients.
    let shop = ctl
        .ok(&[
            "clients",
            "create",
            "--name",
            "shop",
            "--audience",
            "orders-api",
            "--audience",
            "capstan",
            "--scope",
            "orders:read",
            "--token-ttl",
            "600",
        ])
        .await
        .json();
    let shop_id = shop["client_id"].as_str().unwrap().to_owned();
    let shop_secret = shop["client_secret"].as_str().unwrap().to_owned();
    assert_eq!(shop["token_ttl_seconds"], 600);
    let list = ctl.ok(&["clients", "list"]).await.json();
    assert!(list
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["client_id"] == shop_id.as_str()));
    let table = ctl.ok(&["clients", "list", "-o", "table"]).await.out;
    assert!(table.starts_with("CLIENT_ID"), "{table}");
    assert!(
        table.contains("shop") && table.contains("orders-api,capstan"),
        "{table}"
    );
    let yaml = ctl
        .ok(&["clients", "get", &shop_id, "-o", "yaml"])
        .await
        .out;
    assert!(yaml.contains("name: shop"), "{yaml}");
    let rotated = ctl
        .ok(&["clients", "rotate-secret", &shop_id, "--grace-period", "60"])
        .await
        .json();
    assert_ne!(rotated["client_secret"].as_str().unwrap(), shop_secret);
    let temp = ctl
        .ok(&["clients", "create", "--name", "temp", "--audience", "x"])
        .await
        .json();
    let o = ctl
        .ok(&["clients", "delete", temp["client_id"].as_str().unwrap()])
        .await;
    assert!(o.err.contains("deleted client"));

    // Keys: rotate with a delay, list, withdraw the pending key.
    let k = ctl
        .ok(&["keys", "rotate", "--publish-delay", "3600"])
        .await
        .json();
    let kid = k["kid"].as_str().unwrap().to_owned();
    let keys = ctl.ok(&["keys", "list"]).await.json();
    assert!(keys
        .as_array()
        .unwrap()
        .iter()
        .any(|k| k["kid"] == kid.as_str()));
    ctl.ok(&["keys", "delete", &kid]).await;
    assert!(!s.jwks("default").await.to_string().contains(&kid));

    // token, introspect, revoke.
    let token = ctl.ok(&["token"]).await.out.trim().to_owned();
    assert_eq!(token.split('.').count(), 3);
    let other = ctl
        .ok(&["token", "--audience", "capstan"])
        .await
        .out
        .trim()
        .to_owned();
    assert_eq!(ctl.ok(&["introspect", &other]).await.json()["active"], true);
    ctl.ok(&["revoke", &other]).await;
    assert_eq!(
        ctl.ok(&["introspect", &other]).await.json()["active"],
        false
    );

    // Policies: put from a file and from stdin, get, list, versions, validate, delete.
    let f = ctl.file(
        "read.json",
        &allow("orders:Get*", "crn:capstan:orders:default:order/*"),
    );
    let put = ctl.ok(&["policies", "put", "OrdersRead", &f]).await.json();
    assert_eq!(put["version"], 1);
    let doc = allow("orders:*", "crn:capstan:orders:default:order/*").to_string();
    let o = ctl
        .run_stdin(&["policies", "put", "OrdersRead"], &doc)
        .await;
    assert_eq!(o.code, 0, "{}", o.err);
    assert_eq!(o.json()["version"], 2);
    let got = ctl
        .ok(&["policies", "get", "OrdersRead", "--version", "1"])
        .await
        .json();
    assert_eq!(got["document"]["Statement"][0]["Action"], "orders:Get*");
    let table = ctl
        .ok(&["policies", "get", "OrdersRead", "-o", "table"])
        .await
        .out;
    assert!(
        table.contains("\"orders:*\""),
        "the document itself: {table}"
    );
    let versions = ctl.ok(&["policies", "versions", "OrdersRead"]).await.json();
    assert_eq!(
        versions,
        json!([{"version": 1, "default": false, "created_at": versions[0]["created_at"]}, {"version": 2, "default": true, "created_at": versions[1]["created_at"]}])
    );
    let names = ctl.ok(&["policies", "list"]).await.out;
    assert!(names.contains("OrdersRead") && names.contains("AdministratorAccess"));
    let valid = ctl.ok(&["policies", "validate", &f]).await.json();
    assert_eq!(valid["valid"], true);
    let scratch = ctl.file("scratch.json", &allow("x:Y", "*"));
    ctl.ok(&["policies", "put", "Scratch", &scratch]).await;
    ctl.ok(&["policies", "delete", "Scratch"]).await;

    // Attach and detach, to a principal and to a group; groups.
    ctl.ok(&["attach", "OrdersRead", "--principal", &shop_id])
        .await;
    let allowed = ctl
        .run(&[
            "authorize",
            "--principal",
            &shop_id,
            "--action",
            "orders:GetOrder",
            "--resource",
            "crn:capstan:orders:default:order/42",
            "--context",
            "orders:Region=eu",
        ])
        .await;
    assert_eq!(allowed.code, 0, "{}", allowed.err);
    let d = allowed.json();
    assert_eq!(d["decision"], "Allow");
    assert_eq!(d["matched"][0]["policy"], "OrdersRead");
    let table = ctl
        .run(&[
            "authorize",
            "--principal",
            &shop_id,
            "--action",
            "orders:GetOrder",
            "--resource",
            "crn:capstan:orders:default:order/42",
            "-o",
            "table",
        ])
        .await
        .out;
    assert!(
        table.starts_with("Allow  (reason: allowed") && table.contains("OrdersRead v2"),
        "{table}"
    );
    ctl.ok(&["detach", "OrdersRead", "--principal", &shop_id])
        .await;
    let denied = ctl
        .run(&[
            "authorize",
            "--principal",
            &shop_id,
            "--action",
            "orders:GetOrder",
            "--resource",
            "crn:capstan:orders:default:order/42",
        ])
        .await;
    assert_eq!(denied.code, capstan_cli::exit::DENIED);
    assert_eq!(denied.json()["reason"], "implicit_deny");

    ctl.ok(&["groups", "create", "readers"]).await;
    ctl.ok(&["groups", "add-member", "readers", &shop_id]).await;
    ctl.ok(&["attach", "OrdersRead", "--group", "readers"])
        .await;
    let groups = ctl.ok(&["groups", "list"]).await.json();
    assert_eq!(
        groups,
        json!([{"name": "readers", "members": [shop_id], "policies": ["OrdersRead"]}])
    );
    ctl.ok(&["detach", "OrdersRead", "--group", "readers"])
        .await;
    ctl.ok(&["groups", "remove-member", "readers", &shop_id])
        .await;
    ctl.ok(&["groups", "delete", "readers"]).await;
    assert_eq!(ctl.ok(&["groups", "list"]).await.json(), json!([]));

    // Boundary and tags.
    ctl.ok(&["boundary", "set", &shop_id, "OrdersRead"]).await;
    ctl.ok(&["boundary", "clear", &shop_id]).await;
    ctl.ok(&["tags", "set", &shop_id, "team=orders", "env=prod"])
        .await;

    // Resource policies and guardrails.
    let rp = json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"Capstan": shop_id}, "Action": "orders:GetOrder", "Resource": "crn:capstan:orders:default:order/7"}]});
    let rp_file = ctl.file("rp.json", &rp);
    let crn = "crn:capstan:orders:default:order/7";
    ctl.ok(&["resource-policies", "put", crn, &rp_file]).await;
    assert_eq!(ctl.ok(&["resource-policies", "get", crn]).await.json(), rp);
    let list = ctl.ok(&["resource-policies", "list"]).await.json();
    assert_eq!(list[0]["resource"], crn);
    ctl.ok(&["resource-policies", "delete", crn]).await;
    let g = json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}, {"Effect": "Deny", "Action": "orders:DeleteOrder", "Resource": "*"}]});
    let g_file = ctl.file("g.json", &g);
    ctl.ok(&["guardrails", "put", "NoDeletes", &g_file]).await;
    assert_eq!(ctl.ok(&["guardrails", "get", "NoDeletes"]).await.json(), g);
    assert_eq!(
        ctl.ok(&["guardrails", "list"]).await.json()[0]["name"],
        "NoDeletes"
    );
    ctl.ok(&["guardrails", "delete", "NoDeletes"]).await;

    // Simulate: a new policy from a file, requests from a file; the changed decision first.
    let reqs = ctl.file(
        "reqs.json",
        &json!([
            {"principal": admin.id, "action": "auth:ListClients", "resource": "crn:capstan:auth:default:clients/*"},
            {"principal": shop_id, "action": "orders:GetOrder", "resource": "crn:capstan:orders:default:order/1"}
        ]),
    );
    let changes = ctl.file(
        "changes.json",
        &json!([{"op": "attach", "policy": "OrdersSim", "principal": shop_id}]),
    );
    let sim_doc = ctl.file("sim.json", &allow("orders:GetOrder", "*"));
    let sim = ctl
        .ok(&[
            "simulate",
            "--put-policy",
            &format!("OrdersSim={sim_doc}"),
            "--changes",
            &changes,
            "--requests",
            &reqs,
        ])
        .await
        .json();
    assert_eq!(sim["changed"], 1);
    assert_eq!(sim["results"][0]["principal"], shop_id.as_str());
    assert_eq!(sim["results"][0]["after"]["decision"], "Allow");
    let table = ctl
        .ok(&[
            "simulate",
            "--put-policy",
            &format!("OrdersSim={sim_doc}"),
            "--changes",
            &changes,
            "--requests",
            &reqs,
            "-o",
            "table",
        ])
        .await
        .out;
    assert!(
        table.lines().nth(1).unwrap().starts_with("CHANGED"),
        "{table}"
    );

    // Decisions, filtered.
    let ds = ctl
        .ok(&[
            "decisions",
            "--principal",
            &shop_id,
            "--decision",
            "Deny",
            "--since",
            "10m",
        ])
        .await
        .json();
    assert!(!ds.as_array().unwrap().is_empty());
    assert!(ds
        .as_array()
        .unwrap()
        .iter()
        .all(|d| d["principal"] == shop_id.as_str() && d["decision"] == "Deny"));
    let table = ctl
        .ok(&["decisions", "--limit", "2", "-o", "table"])
        .await
        .out;
    assert_eq!(table.lines().count(), 3, "{table}");
    // The decisions of one trace: a call carrying its traceparent.
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let token = ctl
        .ok(&["token", "--audience", "capstan"])
        .await
        .out
        .trim()
        .to_owned();
    let r = s
        .http
        .get(s.url("/v1/clients"))
        .bearer_auth(&token)
        .header("traceparent", format!("00-{trace}-00f067aa0ba902b7-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let ds = ctl.ok(&["decisions", "--trace-id", trace]).await.json();
    let ds = ds.as_array().unwrap();
    assert_eq!(ds.len(), 1, "{ds:?}");
    assert_eq!(ds[0]["trace_id"], trace);
    assert_eq!(ds[0]["action"], "auth:ListClients");

    // Completions.
    for shell in ["bash", "zsh", "fish"] {
        let o = ctl.ok(&["completions", shell]).await;
        assert!(
            o.out.contains("capstanctl") && o.out.contains("resource-policies"),
            "{shell}"
        );
    }

    // Logging in with a secret on stdin, as another client; then logout.
    let o = ctl
        .run_stdin(
            &["login", "--client-id", &shop_id, "--client-secret-stdin"],
            &format!("{}\n", rotated["client_secret"].as_str().unwrap()),
        )
        .await;
    assert_eq!(o.code, 0, "{}", o.err);
    let o = ctl.ok(&["logout"]).await;
    assert!(o.err.contains("logged out"));
    assert_eq!(ctl.ok(&["contexts"]).await.json(), json!([]));
    s.shutdown().await;
}

async fn error_paths_say_what_went_wrong_and_what_to_do(ctx: &Ctx) {
    let s = ctx.server().await;
    let admin = s.admin().await;
    let ctl = Ctl::new(&s);

    // Not logged in.
    let o = ctl.run(&["clients", "list"]).await;
    assert_eq!(o.code, 1);
    assert!(
        o.err.contains("not logged in") && o.err.contains("capstanctl login"),
        "{}",
        o.err
    );
    // Usage errors: exit code 2; the secret is never a flag.
    assert_eq!(ctl.run(&["clients"]).await.code, 2);
    assert_eq!(ctl.run(&["clients", "get"]).await.code, 2);
    assert_eq!(
        ctl.run(&["login", "--client-id", "svc_x", "--client-secret", "s"])
            .await
            .code,
        2
    );
    // A wrong secret is refused at login and not kept.
    let o = ctl
        .run_stdin(
            &["login", "--client-id", &admin.id, "--client-secret-stdin"],
            "wrong\n",
        )
        .await;
    assert_eq!(o.code, 1);
    assert!(o.err.contains("invalid_client"), "{}", o.err);
    assert!(
        !ctl.dir.join("config/contexts.json").exists()
            || !std::fs::read_to_string(ctl.dir.join("config/contexts.json"))
                .unwrap()
                .contains("wrong")
    );

    ctl.login_dev(&admin).await;
    let admin_token = s.token("default", &admin, &[]).await;

    // 404.
    let o = ctl.run(&["clients", "get", "svc_doesnotexist"]).await;
    assert_eq!(o.code, capstan_cli::exit::NOT_FOUND, "{}", o.err);
    assert!(o.err.contains("not found"), "{}", o.err);
    assert_eq!(ctl.run(&["policies", "get", "Nope"]).await.code, 4);
    // Key ids are base64url and may start with `-`: still a key id, not a flag.
    let o = ctl.run(&["keys", "delete", "-nosuchkid"]).await;
    assert_eq!(o.code, 4, "{}", o.err);

    // An invalid policy: the JSON path of the problem.
    let bad = ctl.file("bad.json", &json!({"Version": "2012-10-17", "Statement": [{"Effect": "Alow", "Action": "a:b", "Resource": "*"}]}));
    let o = ctl.run(&["policies", "put", "Bad", &bad]).await;
    assert_eq!(o.code, 1);
    assert!(o.err.contains("$.Statement[0].Effect"), "{}", o.err);
    let o = ctl.run(&["policies", "validate", &bad]).await;
    assert_eq!(o.code, 1);
    assert_eq!(o.json()["valid"], false);
    let o = ctl
        .run_stdin(&["policies", "put", "Bad"], "{not json")
        .await;
    assert_eq!(o.code, 1);
    assert!(o.err.contains("stdin is not JSON"), "{}", o.err);

    // 403 with the action, the resource and the reason.
    let weak = s
        .create_client(
            &admin_token,
            json!({"name": "weak", "audiences": ["capstan"]}),
        )
        .await;
    let weak_ctl = Ctl::new(&s);
    weak_ctl.login_dev(&weak).await;
    let o = weak_ctl.run(&["clients", "list"]).await;
    assert_eq!(o.code, capstan_cli::exit::DENIED, "{}", o.err);
    assert!(
        o.err.contains("auth:ListClients")
            && o.err.contains("crn:capstan:auth:default:clients/")
            && o.err.contains("implicit_deny"),
        "{}",
        o.err
    );

    // An expired login is renewed from the saved credentials…
    let path = weak_ctl.dir.join("config/contexts.json");
    let mut saved: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let ctx_key = s.base.clone();
    saved["contexts"][&ctx_key]["expires_at"] = json!(1);
    saved["contexts"][&ctx_key]["access_token"] = json!("expired.token.value");
    std::fs::write(&path, saved.to_string()).unwrap();
    let o = weak_ctl.run(&["clients", "list"]).await;
    assert_eq!(o.code, 3, "renewed, then denied as before: {}", o.err);
    let renewed: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert!(
        renewed["contexts"][&ctx_key]["expires_at"]
            .as_i64()
            .unwrap()
            > 1
    );
    // …and a token the server refuses is replaced once.
    let mut saved = renewed.clone();
    saved["contexts"][&ctx_key]["access_token"] = json!("not.a.token");
    std::fs::write(&path, saved.to_string()).unwrap();
    assert_eq!(weak_ctl.run(&["clients", "list"]).await.code, 3);
    // When the login itself stops working (its client deleted), it says to log in again.
    let (status, _) = s
        .api(
            Method::DELETE,
            &format!("/v1/clients/{}", weak.id),
            &admin_token,
            None,
        )
        .await;
    assert_eq!(status, 204);
    let mut saved: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    saved["contexts"][&ctx_key]["expires_at"] = json!(1);
    std::fs::write(&path, saved.to_string()).unwrap();
    let o = weak_ctl.run(&["clients", "list"]).await;
    assert_eq!(o.code, 1);
    assert!(
        o.err.contains("no longer works") && o.err.contains("capstanctl login"),
        "{}",
        o.err
    );

    // Unreachable: the address tried and how to set it.
    let addr = s.base.clone();
    s.shutdown().await;
    let o = ctl.run(&["clients", "list"]).await;
    assert_eq!(o.code, 1);
    assert!(
        o.err.contains(&format!("cannot reach Capstan at {addr}")),
        "{}",
        o.err
    );
    assert!(o.err.contains("--addr or CAPSTAN_ADDR"), "{}", o.err);
    let v = ctl.run(&["--version"]).await;
    assert_eq!(v.code, 0);
    assert!(v.out.contains("server unreachable"), "{}", v.out);
}

async fn decisions_follow_prints_new_decisions(ctx: &Ctx) {
    let s = ctx.server().await;
    let admin = s.admin().await;
    let ctl = Ctl::new(&s);
    ctl.login_dev(&admin).await;
    let token = s.token("default", &admin, &[]).await;
    let dir = ctl.dir.join("config").display().to_string();
    let args = [
        "capstanctl",
        "--config-dir",
        &dir,
        "--addr",
        &s.base,
        "decisions",
        "--follow",
        "--decision",
        "Deny",
    ];
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let mut input = std::io::Cursor::new(Vec::new());
    let follow = async {
        let mut io = capstan_cli::Io {
            stdin: &mut input,
            out: &mut out,
            err: &mut err,
            stdout_tty: false,
            interactive: false,
        };
        tokio::time::timeout(Duration::from_millis(3500), capstan_cli::run(args, &mut io)).await
    };
    let act = async {
        tokio::time::sleep(Duration::from_millis(1200)).await;
        let body = json!({"principal": "svc_nobody", "action": "orders:Follow", "resource": "crn:capstan:orders:default:order/followed"});
        let (status, d) = s
            .api(Method::POST, "/v1/authorize", &token, Some(body))
            .await;
        assert_eq!(status, 200);
        assert_eq!(d["decision"], "Deny");
    };
    let (r, ()) = tokio::join!(follow, act);
    assert!(r.is_err(), "follow keeps running");
    let text = String::from_utf8(out).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        lines
            .iter()
            .any(|d| d["resource"] == "crn:capstan:orders:default:order/followed"),
        "{text}"
    );
    assert!(lines.iter().all(|d| d["decision"] == "Deny"), "{text}");
    s.shutdown().await;
}

/// docs/cli.md is what `capstanctl docs` prints.
#[tokio::test]
async fn the_cli_reference_is_current() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/cli.md");
    let current = std::fs::read_to_string(&path).unwrap_or_default();
    let generated = capstan_cli::docs::markdown();
    if current != generated {
        if std::env::var_os("CAPSTAN_UPDATE_DOCS").is_some() {
            std::fs::write(&path, &generated).unwrap();
        } else {
            panic!("docs/cli.md is stale: run `cargo run -p capstan-cli -- docs > docs/cli.md`");
        }
    }
}

async fn identity_commands_run_against_a_real_server(ctx: &Ctx) {
    let s = ctx.server().await;
    let admin = s.admin().await;
    let ctl = Ctl::new(&s);
    ctl.login_dev(&admin).await;
    let c = ctl
        .ok(&[
            "clients",
            "create",
            "--name",
            "orders",
            "--audience",
            "capstan",
        ])
        .await
        .json();
    let id = c["client_id"].as_str().unwrap().to_owned();
    ctl.ok(&["attach", "IdentityWorkload", "--principal", &id])
        .await;

    // Registration entries.
    let e = ctl
        .ok(&[
            "entries",
            "create",
            "--principal",
            &id,
            "--path",
            "payments/orders",
            "--dns",
            "orders.internal",
            "--ttl",
            "600",
        ])
        .await
        .json();
    assert_eq!(
        e["spiffe_id"],
        "spiffe://capstan.local/t/default/payments/orders"
    );
    assert_eq!(
        ctl.ok(&["entries", "list"])
            .await
            .json()
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        ctl.ok(&["entries", "get", &id]).await.json()["ttl_seconds"],
        600
    );
    let u = ctl
        .ok(&[
            "entries",
            "update",
            &id,
            "--path",
            "payments/orders",
            "--dns",
            "orders.internal",
        ])
        .await
        .json();
    assert_eq!(u["ttl_seconds"], 3600);

    // A join token yields one SVID; the key is written here, readable by its owner only.
    let jt = ctl
        .ok(&["join-token", "create", "--principal", &id, "--ttl", "600"])
        .await
        .json();
    let token = jt["token"].as_str().unwrap();
    let dir = ctl.dir.join("svid");
    let dir_s = dir.display().to_string();
    let o = ctl
        .run_stdin(
            &["svid", "issue", "--out", &dir_s, "--join-token", "-"],
            token,
        )
        .await;
    assert_eq!(o.code, 0, "{}{}", o.err, o.out);
    assert_eq!(
        o.json()["spiffe_id"],
        "spiffe://capstan.local/t/default/payments/orders"
    );
    assert_eq!(mode(&dir.join("svid.key")), 0o600);
    let again = ctl
        .run_stdin(
            &["svid", "issue", "--out", &dir_s, "--join-token", "-"],
            token,
        )
        .await;
    assert_eq!(again.code, 1, "a join token works once: {}", again.err);
    let shown = ctl
        .ok(&["svid", "show", &dir.join("svid.pem").display().to_string()])
        .await
        .json();
    assert_eq!(
        shown["spiffe_id"],
        "spiffe://capstan.local/t/default/payments/orders"
    );
    assert_eq!(shown["dns_names"], json!(["orders.internal"]));
    let key = std::fs::read_to_string(dir.join("svid.key")).unwrap();
    assert!(key.contains("PRIVATE KEY"));
    let records = ctl.ok(&["svid", "list", "--principal", &id]).await.json();
    assert_eq!(records[0]["via"], "join_token");
    assert_eq!(records[0]["serial"], shown["serial"]);

    // The logged-in client's own SVID.
    let mine = ctl.dir.join("mine").display().to_string();
    let o = ctl.ok(&["svid", "issue", "--out", &mine]).await.json();
    assert_eq!(
        o["spiffe_id"],
        format!("spiffe://capstan.local/t/default/{}", admin.id).as_str()
    );

    // The bundle, both forms.
    let b = ctl.ok(&["bundle"]).await.json();
    assert!(b["keys"]
        .as_array()
        .unwrap()
        .iter()
        .any(|k| k["use"] == "x509-svid"));
    let pem = ctl.ok(&["bundle", "--pem"]).await.out;
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"), "{pem}");

    // CAs: list, rotate (prepared), taint.
    let cas = ctl.ok(&["ca", "list"]).await.json();
    assert_eq!(cas[0]["slot"], "active");
    let r = ctl.ok(&["ca", "rotate"]).await.json();
    assert_eq!(r["slot"], "prepared");
    let t = ctl
        .ok(&["ca", "taint", r["id"].as_str().unwrap()])
        .await
        .json();
    assert!(t["tainted_at"].is_i64());
    let missing = ctl.run(&["ca", "taint", "g99"]).await;
    assert_eq!(missing.code, 4, "{}", missing.err);

    // A client for tls_client_auth.
    let t = ctl
        .ok(&[
            "clients",
            "create",
            "--name",
            "mtls",
            "--audience",
            "capstan",
            "--tls-client-auth",
        ])
        .await
        .json();
    assert_eq!(t["token_endpoint_auth_method"], "tls_client_auth");
    ctl.ok(&["entries", "delete", &id]).await;
    assert_eq!(ctl.run(&["entries", "get", &id]).await.code, 4);
    s.shutdown().await;
}
