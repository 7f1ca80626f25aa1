//! Talking to the nodes: the walk of consistent pages (`GET /backup`) and
//! the pages of a restore (`POST /restore`), each request to the first
//! `--node` that answers.

use crate::api::types::{
    BackupPage, MAX_RESTORE, RestoreAnswer, RestoreRequest, Status, StoredCounter, Unavailable,
    encode_query, paths,
};
use crate::client::{Conn, DEFAULT_TIMEOUT, EXIT_INCOMPLETE, EXIT_UNREACHABLE, server_deadline};
use tally_client::exchange::{Answer, Req, SendError, send};

use super::progress::Progress;
use super::{Failed, failed};

/// Sends counters to `POST /restore` in pages, skipping those up to
/// `after` (a resumed restore), and says how far it got when it stops.
pub(super) struct Sender<'a> {
    conn: &'a Conn,
    after: Option<String>,
    queued: Vec<StoredCounter>,
    progress: &'a Progress,
    sent: u64,
    changed: u64,
    last: Option<String>,
}

impl<'a> Sender<'a> {
    pub(super) fn new(conn: &'a Conn, after: Option<&str>, progress: &'a Progress) -> Sender<'a> {
        Sender {
            conn,
            after: after.map(str::to_string),
            queued: Vec::new(),
            progress,
            sent: 0,
            changed: 0,
            last: None,
        }
    }

    /// Keeps `page` to send with the next [`Sender::flush`].
    pub(super) fn queue(&mut self, page: Vec<StoredCounter>) {
        let after = self.after.as_deref();
        self.queued.extend(
            page.into_iter()
                .filter(|c| after.is_none_or(|a| c.name.as_str() > a)),
        );
    }

    pub(super) async fn flush(&mut self) -> Result<(), Failed> {
        while !self.queued.is_empty() {
            let n = self.queued.len().min(MAX_RESTORE);
            let counters: Vec<StoredCounter> = self.queued.drain(..n).collect();
            let last = counters.last().map(|c| c.name.clone());
            let body = serde_json::to_vec(&RestoreRequest { counters })
                .map_err(|e| failed(format!("cannot encode: {e}")))?;
            let answer = call(
                self.conn,
                hyper::Method::POST,
                &timed(self.conn, paths::RESTORE),
                body,
            )
            .await
            .map_err(|f| self.stopped(f))?;
            let done: RestoreAnswer = match answer.status {
                200 => serde_json::from_str(&answer.body)
                    .map_err(|e| self.stopped(failed(format!("unexpected answer: {e}"))))?,
                _ => return Err(self.stopped(refused("restore", &answer))),
            };
            self.sent += done.counters as u64;
            self.changed += done.changed as u64;
            self.last = last;
            self.progress.add(done.counters as u64);
        }
        Ok(())
    }

    /// `f`, with where to resume.
    pub(super) fn stopped(&self, f: Failed) -> Failed {
        let resume = match &self.last {
            Some(l) => format!(
                "; {} counters were merged, up to {l:?}: run again with --after '{l}' \
                 to go on from there (or from the start: merging again changes nothing)",
                self.sent
            ),
            None => "; nothing was merged".into(),
        };
        Failed(f.0, format!("{}{resume}", f.1))
    }

    pub(super) fn report(&self) -> String {
        format!(
            "merged {} counters; {} of them changed the cluster's state",
            self.sent, self.changed
        )
    }
}

/// Walks every consistent page from the start, handing each to `each`.
/// With `allow_partial`, nodes that cannot be heard from are left out
/// (from the page they failed on, for the rest of the walk) and returned;
/// without, the walk fails naming them.
pub(super) async fn walk(
    conn: &Conn,
    allow_partial: bool,
    progress: &Progress,
    mut each: impl FnMut(BackupPage) -> Result<(), Failed>,
) -> Result<Vec<String>, Failed> {
    let mut after: Option<String> = None;
    let mut without: Vec<String> = Vec::new();
    loop {
        let mut query = vec![format!("limit={}", crate::proto::MAX_LIST)];
        if let Some(a) = &after {
            query.push(format!("after={}", encode_query(a)));
        }
        if !without.is_empty() {
            query.push(format!("without={}", encode_query(&without.join(","))));
        }
        let path = timed(conn, &format!("{}?{}", paths::BACKUP, query.join("&")));
        let answer = call(conn, hyper::Method::GET, &path, Vec::new()).await?;
        match answer.status {
            200 => {}
            503 => {
                let u: Unavailable =
                    serde_json::from_str(&answer.body).map_err(|_| refused("backup", &answer))?;
                if u.unreachable.is_empty() {
                    return Err(refused("backup", &answer));
                }
                if !allow_partial {
                    return Err(Failed(
                        EXIT_INCOMPLETE,
                        format!(
                            "could not hear from {} ({}); nothing was written. \
                             --allow-partial writes a backup marked partial without them",
                            u.unreachable.join(", "),
                            u.error
                        ),
                    ));
                }
                progress.note(&format!("going on without {}", u.unreachable.join(", ")));
                without.extend(u.unreachable);
                without.sort();
                without.dedup();
                continue;
            }
            _ => return Err(refused("backup", &answer)),
        }
        let page: BackupPage = serde_json::from_str(&answer.body)
            .map_err(|e| failed(format!("unexpected answer to a backup page: {e}")))?;
        progress.add(page.counters.len() as u64);
        let next = page.next.clone();
        each(page)?;
        match next {
            Some(n) if after.as_ref().is_none_or(|a| n > *a) => after = Some(n),
            Some(n) => return Err(failed(format!("the node went back to {n:?}"))),
            None => return Ok(without),
        }
    }
}

/// `path` with `?timeout=` (or `&timeout=`) a little under the client's.
fn timed(conn: &Conn, path: &str) -> String {
    let t = server_deadline(conn.timeout.unwrap_or(DEFAULT_TIMEOUT));
    let sep = if path.contains('?') { '&' } else { '?' };
    format!("{path}{sep}timeout={}ms", t.as_millis())
}

/// One request to the first node that answers.
async fn call(
    conn: &Conn,
    method: hyper::Method,
    path: &str,
    body: Vec<u8>,
) -> Result<Answer, Failed> {
    let mut req = Req {
        method,
        path: path.to_string(),
        headers: Vec::new(),
        body,
        content_type: "application/json",
    };
    if let Some(token) = &conn.token {
        req.headers
            .push(("authorization", format!("Bearer {token}")));
    }
    let timeout = conn.timeout.unwrap_or(DEFAULT_TIMEOUT);
    let mut reasons = Vec::new();
    for node in &conn.nodes {
        match send(&req, &format!("{node}{path}"), timeout, &conn.tls).await {
            Ok(answer) => return Ok(answer),
            Err(SendError::Invalid(reason)) => return Err(failed(reason)),
            Err(SendError::Unreachable { reason, .. }) => {
                reasons.push(format!("{node}: {reason}"));
            }
        }
    }
    Err(Failed(
        EXIT_UNREACHABLE,
        format!("cannot reach a node: {}", reasons.join("; ")),
    ))
}

pub(super) async fn status(conn: &Conn) -> Result<Status, Failed> {
    let answer = call(conn, hyper::Method::GET, paths::STATUS, Vec::new()).await?;
    if answer.status != 200 {
        return Err(refused("status", &answer));
    }
    serde_json::from_str(&answer.body).map_err(|e| failed(format!("unexpected status: {e}")))
}

fn refused(what: &str, answer: &Answer) -> Failed {
    let message = serde_json::from_str::<serde_json::Value>(&answer.body)
        .ok()
        .and_then(|v| v.get("error")?.as_str().map(str::to_string))
        .unwrap_or_else(|| answer.body.clone());
    failed(format!("{what} refused ({}): {message}", answer.status))
}
