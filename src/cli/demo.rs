//! `tally demo`: a local cluster of nodes on 127.0.0.1, its config posted,
//! kept running until Ctrl-C; then every node is stopped cleanly.

use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use super::stop_signal;
use crate::client;

/// A one-shot request of the demo, through the client's HTTP exchange.
async fn http(
    method: hyper::Method,
    url: &str,
    body: Vec<u8>,
    timeout: Duration,
) -> Result<(u16, String), String> {
    let req = client::Req {
        method,
        path: String::new(),
        headers: Vec::new(),
        body,
        content_type: "application/json",
    };
    match client::send(&req, url, timeout).await {
        Ok(a) => Ok((a.status, a.body)),
        Err(client::SendError::Invalid(e)) => Err(e),
        Err(client::SendError::Unreachable { reason, .. }) => {
            Err(format!("cannot reach {url}: {reason}"))
        }
    }
}

/// Children killed when dropped, so a failed demo leaves nothing running.
struct Cluster(Vec<Child>);

impl Drop for Cluster {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub(super) async fn demo(nodes: u64, base_port: u16, dir: &Path) -> Result<(), String> {
    let addrs: Vec<String> = (0..nodes)
        .map(|i| format!("127.0.0.1:{}", u64::from(base_port) + i))
        .collect();
    let mut cluster = start(&addrs, dir)?;
    wait_ready(&addrs).await?;
    let config = serde_json::json!({ "actors": addrs }).to_string();
    let (status, body) = http(
        hyper::Method::POST,
        &format!("http://{}/config", addrs[0]),
        config.into_bytes(),
        Duration::from_secs(5),
    )
    .await?;
    if status != 200 {
        return Err(format!("posting the config failed ({status}): {body}"));
    }
    print_help(&addrs, dir);
    stop_signal().await;
    stop(&mut cluster).await;
    Ok(())
}

fn start(addrs: &[String], dir: &Path) -> Result<Cluster, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this executable: {e}"))?;
    let mut cluster = Cluster(Vec::new());
    for (i, addr) in addrs.iter().enumerate() {
        let id = i as u64 + 1;
        let child = Command::new(&exe)
            .arg(id.to_string())
            .arg("--listen")
            .arg(addr)
            .arg("--data-dir")
            .arg(dir.join(format!("node-{id}")))
            .env("TALLY_LOG", "warn")
            .spawn()
            .map_err(|e| format!("cannot start node {id}: {e}"))?;
        cluster.0.push(child);
    }
    Ok(cluster)
}

async fn wait_ready(addrs: &[String]) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(15);
    for addr in addrs {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!("node at {addr} did not start within 15s"));
            }
            let url = format!("http://{addr}/status");
            let probe = http(
                hyper::Method::GET,
                &url,
                Vec::new(),
                left.min(Duration::from_secs(1)),
            );
            if let Ok((200, _)) = probe.await {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(())
}

fn print_help(addrs: &[String], dir: &Path) {
    println!(
        "tally demo: {} nodes running, data under {}",
        addrs.len(),
        dir.display()
    );
    for (i, addr) in addrs.iter().enumerate() {
        println!("  node {} at http://{addr}", i + 1);
    }
    let a = &addrs[0];
    let b = addrs.last().expect("at least one node");
    println!("try:");
    println!("  curl -X POST http://{a}/counter/visits -d 5");
    println!("  curl http://{b}/counter/visits/value");
    println!("  curl http://{b}/counter/visits/consistent_value");
    println!("  curl http://{a}/status");
    println!("or with the client in this binary:");
    println!("  tally inc visits 5 --node {a}");
    println!("  tally get visits --consistent --node {b}");
    println!("  tally status --node {a}");
    println!("or open the web console: http://{a}/");
    println!("Ctrl-C stops the cluster.");
}

/// Asks every node to stop cleanly (a terminal's Ctrl-C may have reached
/// them already), then gives them time before the guard kills what is left.
async fn stop(cluster: &mut Cluster) {
    for child in &cluster.0 {
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
    }
    let deadline = Instant::now() + Duration::from_secs(12);
    for child in &mut cluster.0 {
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
