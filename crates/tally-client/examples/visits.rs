//! Counts a visit exactly once and prints the cluster-wide total.
//!
//! ```sh
//! cargo run -p tally-client --example visits -- http://127.0.0.1:7701 http://127.0.0.1:7702
//! ```
//!
//! `TALLY_TOKEN` is sent as the client token, and `TALLY_CACERT` names the
//! CA bundle to trust for `https://` nodes.

use std::process::ExitCode;
use std::time::Duration;

use tally_client::{Client, Error};

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("visits: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), Error> {
    let mut builder = Client::builder().timeout(Duration::from_secs(10));
    let mut nodes = std::env::args().skip(1).peekable();
    if nodes.peek().is_none() {
        builder = builder.node("http://127.0.0.1:7777")?;
    }
    for node in nodes {
        builder = builder.node(&node)?;
    }
    if let Ok(token) = std::env::var("TALLY_TOKEN") {
        builder = builder.token(token);
    }
    if let Ok(ca) = std::env::var("TALLY_CACERT") {
        builder = builder.ca_file(ca)?;
    }
    let client = builder.build()?;
    // The key is made once: if the answer is lost, the retry inside
    // `increment_with_key` (or a later one with the same key) counts once.
    let key = Client::new_key();
    let done = client.increment_with_key("visits", 1, &key).await?;
    println!("node {} counts {} visits", done.node, done.value);
    match client.consistent_value("visits").await {
        Ok(total) => println!("the cluster counts {total}"),
        Err(Error::Incomplete {
            unreachable,
            best_known_value,
            ..
        }) => println!(
            "at least {best_known_value}; not heard from: {}",
            unreachable.join(", ")
        ),
        Err(e) => return Err(e),
    }
    Ok(())
}
