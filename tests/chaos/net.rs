//! The test network: one private bridge in a namespace of its own, one
//! namespace per node, and a veth from the root namespace so the test
//! client reaches every node. Faults are nftables rules and tc qdiscs
//! *inside* the node namespaces, so they never touch the host's own
//! firewall or links, and a partition never cuts the client.
//!
//! ```text
//!  root ns: tly<pid>c 10.77.X.1 ──┐
//!                                 │ (veth)
//!  tly<pid>br: bridge tlyb<pid> ──┼── h1 ── eth0 10.77.X.11  (ns tly<pid>n1)
//!                                 ├── h2 ── eth0 10.77.X.12  (ns tly<pid>n2)
//!                                 └── ...
//! ```
//!
//! Every name is derived from the test's process id, so concurrent runs
//! do not collide, and a rerun with a recycled pid first removes what an
//! earlier crash may have left behind.

use std::process::{Command, Stdio};

use crate::eintr;

/// The nftables table each node namespace gets; partitions are rules in it.
const TABLE: &str = "tally_chaos";

/// Runs a command; Ok(stdout) when it exits 0, Err(what failed) otherwise.
pub fn sh(program: &str, args: &[&str]) -> Result<String, String> {
    sh_in(program, args, None)
}

/// Like [`sh`], feeding `stdin` to the command.
pub fn sh_in(program: &str, args: &[&str], stdin: Option<&str>) -> Result<String, String> {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot run `{program} {}`: {e}", args.join(" ")))?;
    if let Some(input) = stdin
        && let Some(mut pipe) = child.stdin.take()
    {
        eintr::write_all(&mut pipe, input.as_bytes())
            .map_err(|e| format!("cannot feed `{program}`: {e}"))?;
    }
    let out =
        eintr::wait_with_output(child).map_err(|e| format!("`{program}` did not finish: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "`{program} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// What the link-delay fault uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DelayMode {
    /// `tc netem delay 50ms 20ms`: the real thing.
    Netem,
    /// The kernel has no sch_netem: a tbf rate limit (a slow, lossy link) instead.
    TbfFallback,
}

pub struct Lab {
    pub pid: u32,
    /// X in 10.77.X.0/24.
    pub subnet: u8,
    pub nodes: usize,
    pub delay_mode: DelayMode,
}

impl Lab {
    pub fn bridge_ns(pid: u32) -> String {
        format!("tly{pid}br")
    }

    pub fn node_ns_of(pid: u32, i: usize) -> String {
        format!("tly{pid}n{i}")
    }

    pub fn client_veth(pid: u32) -> String {
        format!("tly{pid}c")
    }

    /// Namespace of node `i` (1-based).
    pub fn node_ns(&self, i: usize) -> String {
        Self::node_ns_of(self.pid, i)
    }

    /// Address of node `i` (1-based).
    pub fn node_ip(&self, i: usize) -> String {
        format!("10.77.{}.{}", self.subnet, 10 + i)
    }

    pub fn client_ip(&self) -> String {
        format!("10.77.{}.1", self.subnet)
    }

    /// Removes every namespace and link a run with this pid may have left.
    pub fn remove_leftovers(pid: u32) {
        let prefix = format!("tly{pid}");
        if let Ok(list) = sh("ip", &["netns", "list"]) {
            for line in list.lines() {
                let name = line.split_whitespace().next().unwrap_or("");
                let Some(rest) = name.strip_prefix(&prefix) else {
                    continue;
                };
                let ours = rest == "br"
                    || rest
                        .strip_prefix('n')
                        .is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()));
                if ours {
                    let _ = sh("ip", &["netns", "del", name]);
                }
            }
        }
        let veth = Self::client_veth(pid);
        if sh("ip", &["link", "show", "dev", &veth]).is_ok() {
            let _ = sh("ip", &["link", "del", "dev", &veth]);
        }
    }

    /// Picks 10.77.X.0/24 from the pid, moving on while the host already uses it.
    fn pick_subnet(pid: u32) -> Result<u8, String> {
        let addrs = sh("ip", &["-4", "-o", "addr", "show"])?;
        let routes = sh("ip", &["-4", "route", "show"]).unwrap_or_default();
        let start = (pid % 250) as u8;
        for k in 0..250u8 {
            let x = 1 + (start.wrapping_add(k) % 250);
            let net = format!("10.77.{x}.");
            if !addrs.contains(&net) && !routes.contains(&net) {
                return Ok(x);
            }
        }
        Err("every 10.77.X.0/24 subnet is in use on this host".into())
    }

    /// Builds the network for `nodes` nodes. On error, what was built is removed.
    pub fn create(pid: u32, nodes: usize) -> Result<Lab, String> {
        Self::remove_leftovers(pid);
        let subnet = Self::pick_subnet(pid)?;
        let mut lab = Lab {
            pid,
            subnet,
            nodes,
            delay_mode: DelayMode::Netem,
        };
        if let Err(e) = lab.build() {
            lab.destroy();
            return Err(e);
        }
        Ok(lab)
    }

    fn build(&mut self) -> Result<(), String> {
        let pid = self.pid;
        let br_ns = Self::bridge_ns(pid);
        let bridge = format!("tlyb{pid}");
        let client = Self::client_veth(pid);
        sh("ip", &["netns", "add", &br_ns])?;
        sh("ip", &["-n", &br_ns, "link", "set", "lo", "up"])?;
        sh(
            "ip",
            &["-n", &br_ns, "link", "add", &bridge, "type", "bridge"],
        )?;
        sh("ip", &["-n", &br_ns, "link", "set", &bridge, "up"])?;
        sh(
            "ip",
            &[
                "link", "add", &client, "type", "veth", "peer", "name", "up0", "netns", &br_ns,
            ],
        )?;
        sh(
            "ip",
            &["-n", &br_ns, "link", "set", "up0", "master", &bridge],
        )?;
        sh("ip", &["-n", &br_ns, "link", "set", "up0", "up"])?;
        let client_cidr = format!("{}/24", self.client_ip());
        sh("ip", &["addr", "add", &client_cidr, "dev", &client])?;
        sh("ip", &["link", "set", &client, "up"])?;
        for i in 1..=self.nodes {
            let ns = self.node_ns(i);
            let port = format!("h{i}");
            sh("ip", &["netns", "add", &ns])?;
            sh("ip", &["-n", &ns, "link", "set", "lo", "up"])?;
            sh(
                "ip",
                &[
                    "-n", &br_ns, "link", "add", &port, "type", "veth", "peer", "name", "eth0",
                    "netns", &ns,
                ],
            )?;
            sh(
                "ip",
                &["-n", &br_ns, "link", "set", &port, "master", &bridge],
            )?;
            sh("ip", &["-n", &br_ns, "link", "set", &port, "up"])?;
            let cidr = format!("{}/24", self.node_ip(i));
            sh("ip", &["-n", &ns, "addr", "add", &cidr, "dev", "eth0"])?;
            sh("ip", &["-n", &ns, "link", "set", "eth0", "up"])?;
            let table = format!(
                "table inet {TABLE} {{\n\
                 \x20 chain input {{ type filter hook input priority 0; policy accept; }}\n\
                 \x20 chain output {{ type filter hook output priority 0; policy accept; }}\n\
                 }}\n"
            );
            sh_in(
                "ip",
                &["netns", "exec", &ns, "nft", "-f", "-"],
                Some(&table),
            )?;
        }
        // Probe the delay qdisc once, on node 1.
        let ns = self.node_ns(1);
        match sh(
            "ip",
            &[
                "netns", "exec", &ns, "tc", "qdisc", "add", "dev", "eth0", "root", "netem",
                "delay", "1ms",
            ],
        ) {
            Ok(_) => {
                sh(
                    "ip",
                    &[
                        "netns", "exec", &ns, "tc", "qdisc", "del", "dev", "eth0", "root",
                    ],
                )?;
                self.delay_mode = DelayMode::Netem;
            }
            Err(e) => {
                eprintln!("chaos: tc netem is not available ({e})");
                self.delay_mode = DelayMode::TbfFallback;
            }
        }
        Ok(())
    }

    /// Drops all traffic between each pair in `cuts` (1-based node numbers),
    /// in both directions, with rules in both nodes' namespaces. Replaces
    /// any earlier partition. The client address is never matched.
    pub fn partition(&self, cuts: &[(usize, usize)]) -> Result<(), String> {
        for i in 1..=self.nodes {
            let mut blocked: Vec<String> = cuts
                .iter()
                .filter_map(|&(a, b)| {
                    if a == i {
                        Some(self.node_ip(b))
                    } else if b == i {
                        Some(self.node_ip(a))
                    } else {
                        None
                    }
                })
                .collect();
            blocked.sort();
            blocked.dedup();
            let mut script =
                format!("flush chain inet {TABLE} input\nflush chain inet {TABLE} output\n");
            if !blocked.is_empty() {
                let set = blocked.join(", ");
                script.push_str(&format!(
                    "add rule inet {TABLE} input ip saddr {{ {set} }} drop\n\
                     add rule inet {TABLE} output ip daddr {{ {set} }} drop\n"
                ));
            }
            sh_in(
                "ip",
                &["netns", "exec", &self.node_ns(i), "nft", "-f", "-"],
                Some(&script),
            )?;
        }
        Ok(())
    }

    /// Degrades node `i`'s link: netem delay, or the tbf fallback.
    pub fn delay(&self, i: usize) -> Result<(), String> {
        let ns = self.node_ns(i);
        let mut args = vec![
            "netns", "exec", &ns, "tc", "qdisc", "replace", "dev", "eth0", "root",
        ];
        match self.delay_mode {
            DelayMode::Netem => args.extend(["netem", "delay", "50ms", "20ms"]),
            DelayMode::TbfFallback => {
                args.extend(["tbf", "rate", "512kbit", "burst", "8kb", "latency", "200ms"])
            }
        }
        sh("ip", &args).map(|_| ())
    }

    /// Removes every partition rule and qdisc; idempotent.
    pub fn heal(&self) -> Result<(), String> {
        self.partition(&[])?;
        for i in 1..=self.nodes {
            let ns = self.node_ns(i);
            let shown = sh(
                "ip",
                &["netns", "exec", &ns, "tc", "qdisc", "show", "dev", "eth0"],
            )?;
            if shown.contains("netem") || shown.contains("tbf") {
                sh(
                    "ip",
                    &[
                        "netns", "exec", &ns, "tc", "qdisc", "del", "dev", "eth0", "root",
                    ],
                )?;
            }
        }
        Ok(())
    }

    /// The rules and qdiscs in force, for a failure report.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        for i in 1..=self.nodes {
            let ns = self.node_ns(i);
            let rules = sh(
                "ip",
                &["netns", "exec", &ns, "nft", "list", "table", "inet", TABLE],
            )
            .unwrap_or_else(|e| e);
            let qdisc = sh(
                "ip",
                &["netns", "exec", &ns, "tc", "qdisc", "show", "dev", "eth0"],
            )
            .unwrap_or_else(|e| e);
            out.push_str(&format!("--- {ns}\n{rules}{qdisc}"));
        }
        out
    }

    /// Deletes everything this lab created; safe to call twice.
    pub fn destroy(&self) {
        for i in 1..=self.nodes {
            let _ = sh("ip", &["netns", "del", &self.node_ns(i)]);
        }
        let _ = sh("ip", &["netns", "del", &Self::bridge_ns(self.pid)]);
        Self::remove_leftovers(self.pid);
    }
}
