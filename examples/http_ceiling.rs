//! The HTTP ceiling that `make bench` measures tally against: a bare axum
//! server with tally's two hot routes, answering a constant without storage,
//! replication or middleware, on a tokio runtime built like tally's.
//!
//! ```sh
//! cargo build --release --example http_ceiling
//! target/release/examples/http_ceiling 127.0.0.1:7799
//! ```

use axum::Router;
use axum::body::Bytes;
use axum::routing::{get, post};

/// Reads the whole body, as tally does before parsing the amount.
async fn increment(body: Bytes) -> &'static str {
    std::hint::black_box(body);
    "1"
}

async fn value() -> &'static str {
    "1"
}

fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:7799".to_string());
    let app = Router::new()
        .route("/counter/{name}", post(increment))
        .route("/counter/{name}/value", get(value));
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(async {
            let listener = tokio::net::TcpListener::bind(&addr).await?;
            eprintln!("http_ceiling: listening on {}", listener.local_addr()?);
            axum::serve(listener, app).await
        })
}
