//! What each command of the demo does: pause, resume, kill, restart and
//! isolate a node, increment, read and check a read against the ledger.

use std::sync::Arc;

use super::*;

impl Demo {
    pub(super) async fn execute(self: &Arc<Self>, cmd: Command) {
        let said = match cmd {
            Command::Nothing | Command::Quit => return,
            Command::Help => command::HELP.to_string(),
            Command::Status => {
                let rows = self.rows().await;
                self.screen.show(&rows, true);
                return;
            }
            Command::Pause(n) => self.life(n, Life::Paused).await,
            Command::Resume(n) => self.life(n, Life::Up).await,
            Command::Kill(n) => self.life(n, Life::Killed).await,
            Command::Restart(n) => self.restart(n),
            Command::Isolate(n) => match self.index(n) {
                Ok(i) => {
                    let cut = self.net.isolate(i);
                    format!(
                        "isolate {n}: node {n} is cut off: no other node reaches it and it reaches no \
                         other node ({cut} open connections cut); it still answers on its own port {}",
                        self.listens[i]
                    )
                }
                Err(e) => e,
            },
            Command::Heal(n) => match self.index(n) {
                Ok(i) => {
                    self.net.heal(i);
                    format!("heal {n}: node {n} is back on the network")
                }
                Err(e) => e,
            },
            Command::Inc { name, amount, on } => self.inc(&name, amount, on.unwrap_or(1)).await,
            Command::Get { name, on } => self.get(&name, on.unwrap_or(1)).await,
        };
        self.screen.say(&said);
    }

    /// `pause`, `resume` and `kill`.
    async fn life(&self, n: u64, to: Life) -> String {
        let i = match self.index(n) {
            Ok(i) => i,
            Err(e) => return e,
        };
        let mut procs = self.procs();
        let now = procs.all[i].life;
        let done = match (now, to) {
            (Life::Up, Life::Paused) => procs.signal(i, libc::SIGSTOP).map(|()| {
                format!("pause {n}: node {n} is paused (SIGSTOP): it keeps its connections but answers nothing")
            }),
            (Life::Paused, Life::Up) => procs
                .signal(i, libc::SIGCONT)
                .map(|()| format!("resume {n}: node {n} runs again (SIGCONT)")),
            (Life::Up | Life::Paused, Life::Killed) => procs.kill(i).map(|()| {
                self.net.set_pid(i, None);
                format!("kill {n}: node {n} is killed (SIGKILL); `restart {n}` starts it again")
            }),
            (now, _) => Err(format!("node {n} is {}", life_word(now))),
        };
        match done {
            Ok(said) => {
                procs.all[i].life = to;
                said
            }
            Err(e) => e,
        }
    }

    fn restart(self: &Arc<Self>, n: u64) -> String {
        let i = match self.index(n) {
            Ok(i) => i,
            Err(e) => return e,
        };
        let life = self.procs().all[i].life;
        if matches!(life, Life::Up | Life::Paused) {
            return format!("node {n} is {}; `kill {n}` first", life_word(life));
        }
        if let Err(e) = self.start(i) {
            return e;
        }
        let demo = self.clone();
        let stop = self.work.clone();
        self.tasks.spawn(async move {
            let listen = demo.listens[i];
            let back = tokio::select! {
                r = wait_status(&demo.client, listen, START_BOUND, |s| s.me.is_some()) => r,
                () = stop.cancelled() => return,
            };
            demo.screen.say(&match back {
                Ok(s) => format!(
                    "node {n} is back: config version {} read from its data folder, it is {}",
                    s.config.version,
                    s.me.unwrap_or_default()
                ),
                Err(e) => format!("node {n} is not back: {e}"),
            });
        });
        format!("restart {n}: node {n} started again on its data folder, no config posted")
    }

    fn remember(&self, name: &str) {
        let mut names = self.names();
        if !names.iter().any(|n| n == name) {
            names.push(name.to_string());
        }
    }

    async fn inc(&self, name: &str, amount: u64, n: u64) -> String {
        let i = match self.index(n) {
            Ok(i) => i,
            Err(e) => return e,
        };
        self.remember(name);
        let key = format!(
            "demo-{:x}-cmd-{}",
            self.run,
            self.seq.fetch_add(1, Ordering::Relaxed)
        );
        self.ledger.sending(name, amount);
        let head = format!("inc {name} {amount} on node {n}");
        match post_increment(
            &self.client,
            self.listens[i],
            name,
            amount,
            Some(&key),
            REQUEST_TIMEOUT,
        )
        .await
        {
            Reply::Value(v) => {
                self.ledger.settle(name, amount, Some(i));
                format!("{head}: acknowledged; node {n}'s value is now {v}")
            }
            Reply::Error { status, message } if (400..500).contains(&status) => {
                self.ledger.settle(name, amount, None);
                format!("{head}: refused ({status}): {message}")
            }
            Reply::Error { status, message } => format!(
                "{head}: failed ({status}): {message}; it may still be applied (counted as in doubt)"
            ),
            Reply::NotSent(why) => {
                self.ledger.settle(name, amount, None);
                format!("{head}: not sent ({why}); nothing was applied")
            }
            Reply::NoAnswer(why) => {
                format!("{head}: no answer ({why}); it may still be applied (counted as in doubt)")
            }
        }
    }

    async fn get(&self, name: &str, n: u64) -> String {
        let i = match self.index(n) {
            Ok(i) => i,
            Err(e) => return e,
        };
        self.remember(name);
        let listen = self.listens[i];
        let before = self.ledger.of(name);
        let consistent_path = format!(
            "{}?timeout={}",
            paths::consistent_value(name),
            crate::input::format_duration(GET_TIMEOUT)
        );
        let (local, consistent) = tokio::join!(
            read_value(&self.client, listen, name),
            http(
                &self.client,
                hyper::Method::GET,
                listen,
                &consistent_path,
                Vec::new(),
                None,
                GET_TIMEOUT + Duration::from_secs(1),
            )
        );
        let after = self.ledger.of(name);
        let local = match local {
            Ok(v) => v.to_string(),
            Err(e) => format!("no answer ({e})"),
        };
        let mut out = format!("get {name} on node {n}: value {local}, ");
        match consistent {
            Ok((200, body)) => {
                let v: Option<u128> = body.trim().parse().ok();
                out.push_str(&format!("consistent_value {}", body.trim()));
                if let Some(v) = v {
                    out.push_str(&self.verdict(v, before, after));
                }
            }
            Ok((503, body)) => match serde_json::from_str::<Unavailable>(&body) {
                Ok(u) if !u.unreachable.is_empty() => {
                    let who: Vec<String> = u
                        .unreachable
                        .iter()
                        .map(|a| format!("{} ({a})", self.label(a)))
                        .collect();
                    out.push_str(&format!(
                        "consistent_value unavailable (503): could not hear from {} within {}; best known value {}",
                        who.join(", "),
                        crate::input::format_duration(GET_TIMEOUT),
                        u.best_known_value
                    ));
                }
                _ => out.push_str(&format!(
                    "consistent_value unavailable (503): {}",
                    error_message(&body)
                )),
            },
            Ok((status, body)) => out.push_str(&format!(
                "consistent_value failed ({status}): {}",
                error_message(&body)
            )),
            Err(e) => out.push_str(&format!("consistent_value: no answer ({e})")),
        }
        out
    }

    /// Holds a consistent value to what the demo saw acknowledged before the
    /// read began (G1: at least that) and sent by its end (G2: at most that).
    fn verdict(&self, v: u128, before: load::Sent, after: load::Sent) -> String {
        if !self.fresh {
            return format!(
                "; acknowledged in this run {} (the data folder held counts of earlier runs)",
                after.acked
            );
        }
        let low = before.acked;
        let high = after.acked + after.in_doubt;
        let range = if low == high {
            format!("{low}")
        } else {
            format!("{low} to {high} while it ran")
        };
        let ok = if (low..=high).contains(&v) {
            "ok"
        } else {
            "MISMATCH"
        };
        format!("; acknowledged {range}: {ok}")
    }
}
