//! The demo's network: one TCP proxy per node, so that a node can be cut
//! off on loopback without root.
//!
//! Each node's address in the config (its actor) is its proxy's; the node
//! itself listens on another port, which the demo and `inc`/`get` use
//! directly. `isolate N` makes every proxy refuse what crosses between N and
//! the others, both ways: N's proxy refuses and cuts every connection (so
//! no node, and no client going through the proxy, reaches N), and the
//! other proxies refuse and cut the connections that N opened. A proxy
//! tells who opened a connection by which node process owns the connecting
//! socket (Linux: `/proc/net/tcp` and `/proc/<pid>/fd`); a connection whose
//! owner it cannot find counts as a client's.
//!
//! The node does not know about any of this: it identifies itself by asking
//! the actors who they are (its own proxy leads back to it), and refused
//! connections look to it like an unreachable peer. Left out: delays, lost
//! packets and one-way cuts (the chaos suite does those with nftables).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// Bound on connecting to the node behind a proxy.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Which nodes are cut off, which process is which node, and every open
/// connection. A std mutex: held for a few lookups, never across an await.
#[derive(Default)]
pub struct Net {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    isolated: Vec<bool>,
    /// Process id of each node (index = node number - 1), while it runs.
    pids: Vec<Option<u32>>,
    conns: HashMap<u64, Conn>,
    next: u64,
}

struct Conn {
    /// Index of the node whose proxy accepted it.
    to: usize,
    /// Index of the node that opened it; `None` for a client.
    from: Option<usize>,
    cut: CancellationToken,
}

impl Net {
    pub fn new(nodes: usize) -> Net {
        Net {
            state: Mutex::new(State {
                isolated: vec![false; nodes],
                pids: vec![None; nodes],
                ..State::default()
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn set_pid(&self, node: usize, pid: Option<u32>) {
        self.lock().pids[node] = pid;
    }

    pub fn is_isolated(&self, node: usize) -> bool {
        self.lock().isolated[node]
    }

    /// Cuts node `node` off: refuses from now on, and cuts at once, every
    /// connection to it or from it. Returns how many open connections were cut.
    pub fn isolate(&self, node: usize) -> usize {
        let mut s = self.lock();
        s.isolated[node] = true;
        let mut cut = 0;
        for c in s.conns.values() {
            if c.to == node || c.from == Some(node) {
                c.cut.cancel();
                cut += 1;
            }
        }
        cut
    }

    pub fn heal(&self, node: usize) {
        self.lock().isolated[node] = false;
    }

    /// Registers a connection unless isolation forbids it.
    fn admit(&self, to: usize, from: Option<usize>) -> Option<(u64, CancellationToken)> {
        let mut s = self.lock();
        if s.isolated[to] || from.is_some_and(|f| s.isolated[f]) {
            return None;
        }
        let id = s.next;
        s.next += 1;
        let cut = CancellationToken::new();
        s.conns.insert(
            id,
            Conn {
                to,
                from,
                cut: cut.clone(),
            },
        );
        Some((id, cut))
    }

    fn forget(&self, id: u64) {
        self.lock().conns.remove(&id);
    }

    fn pids(&self) -> Vec<Option<u32>> {
        self.lock().pids.clone()
    }
}

/// Accepts on node `node`'s actor address and forwards to `target` (where
/// the node listens) until `stop`.
pub async fn serve(
    net: Arc<Net>,
    node: usize,
    listener: TcpListener,
    target: SocketAddr,
    stop: CancellationToken,
) {
    let own_port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
    let tasks = tokio_util::task::TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            () = stop.cancelled() => break,
        };
        let Ok((inbound, peer)) = accepted else {
            // Out of descriptors or similar: back off instead of spinning.
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let net = net.clone();
        let stop = stop.clone();
        tasks.spawn(async move {
            let from = owner(peer, own_port, &net.pids());
            let Some((id, cut)) = net.admit(node, from) else {
                return; // dropping `inbound` closes it
            };
            forward(inbound, target, &cut, &stop).await;
            net.forget(id);
        });
    }
    tasks.close();
    // Every connection task ends at `stop`; this only waits for them to notice.
    let _ = tokio::time::timeout(Duration::from_secs(2), tasks.wait()).await;
}

async fn forward(
    mut inbound: TcpStream,
    target: SocketAddr,
    cut: &CancellationToken,
    stop: &CancellationToken,
) {
    let Ok(Ok(mut outbound)) =
        tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(target)).await
    else {
        return; // the node is down: the caller sees its connection closed
    };
    let _ = outbound.set_nodelay(true);
    let _ = inbound.set_nodelay(true);
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
        () = cut.cancelled() => {}
        () = stop.cancelled() => {}
    }
}

/// Which node (index into `pids`) owns the socket that connected from
/// `peer` to the proxy's `proxy_port`, if any of them does.
fn owner(peer: SocketAddr, proxy_port: u16, pids: &[Option<u32>]) -> Option<usize> {
    if !peer.ip().is_loopback() {
        return None;
    }
    let inode = ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .find_map(|table| {
            let text = std::fs::read_to_string(table).ok()?;
            socket_inode(&text, peer.port(), proxy_port)
        })?;
    let wanted = format!("socket:[{inode}]");
    pids.iter().enumerate().find_map(|(i, pid)| {
        let fds = std::fs::read_dir(format!("/proc/{}/fd", (*pid)?)).ok()?;
        fds.flatten()
            .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|l| l.as_os_str() == wanted.as_str()))
            .then_some(i)
    })
}

/// The inode of the socket going from local port `local` to remote port
/// `remote`, in the text of `/proc/net/tcp` (or `tcp6`).
fn socket_inode(table: &str, local: u16, remote: u16) -> Option<u64> {
    let port = |field: &str| {
        let hex = field.rsplit_once(':')?.1;
        u16::from_str_radix(hex, 16).ok()
    };
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 10 || port(f[1])? != local || port(f[2])? != remote {
            return None;
        }
        f[9].parse().ok().filter(|&inode| inode != 0)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = "\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1E1D 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 41001 1 0000000000000000 100 0 0 10 0
   1: 0100007F:1E1D 0100007F:A8F2 01 00000000:00000000 00:00000000 00000000  1000        0 41002 1 0000000000000000 20 4 30 10 -1
   2: 0100007F:A8F2 0100007F:1E1D 01 00000000:00000000 00:00000000 00000000  1000        0 41003 1 0000000000000000 20 4 30 10 -1
";

    #[test]
    fn finds_the_connecting_end_not_the_accepted_one() {
        // 0x1E1D = 7709 (the proxy), 0xA8F2 = 43250 (the caller).
        assert_eq!(socket_inode(TABLE, 43250, 7709), Some(41003));
        assert_eq!(socket_inode(TABLE, 7709, 43250), Some(41002));
        assert_eq!(socket_inode(TABLE, 43251, 7709), None);
        assert_eq!(socket_inode("", 1, 2), None);
    }

    #[test]
    fn isolation_refuses_both_ways_and_cuts_open_connections() {
        let net = Net::new(3);
        let (_, to_two) = net.admit(1, Some(0)).expect("whole network");
        let (_, from_two) = net.admit(0, Some(1)).expect("whole network");
        let (_, client) = net.admit(0, None).expect("whole network");
        let (_, elsewhere) = net.admit(2, Some(0)).expect("whole network");
        assert_eq!(net.isolate(1), 2);
        assert!(to_two.is_cancelled() && from_two.is_cancelled());
        assert!(!client.is_cancelled() && !elsewhere.is_cancelled());
        assert!(net.admit(1, None).is_none(), "a client through 2's proxy");
        assert!(net.admit(0, Some(1)).is_none(), "2 calling 1");
        assert!(net.admit(2, Some(0)).is_some(), "1 calling 3");
        net.heal(1);
        assert!(net.admit(1, Some(0)).is_some());
        assert!(net.admit(0, Some(1)).is_some());
    }
}
