//! Runs the orders example: `CAPSTAN_ADDR`, `CAPSTAN_TENANT`, `ORDERS_CLIENT_ID`,
//! `ORDERS_CLIENT_SECRET`, `ORDERS_LISTEN` (default `127.0.0.1:8480`).

use capstan_example_orders::{app, Config};

fn env(name: &str, default: Option<&str>) -> Result<String, String> {
    std::env::var(name)
        .ok()
        .or(default.map(str::to_owned))
        .ok_or_else(|| format!("set {name}"))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt().with_env_filter("info").init();
    let cfg = Config {
        capstan: env("CAPSTAN_ADDR", Some("http://127.0.0.1:8470"))?,
        tenant: env("CAPSTAN_TENANT", Some("default"))?,
        client_id: env("ORDERS_CLIENT_ID", None)?,
        client_secret: env("ORDERS_CLIENT_SECRET", None)?,
        audience: env("ORDERS_AUDIENCE", Some("orders-api"))?,
    };
    let listen = env("ORDERS_LISTEN", Some("127.0.0.1:8480"))?;
    let router = app(&cfg).await?;
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    tracing::info!(%listen, "orders: serving");
    axum::serve(listener, router).await?;
    Ok(())
}
