//! Blocking calls for the tests that retry when a signal interrupts them.
//!
//! A test process runs many tests at once, each with child processes it
//! signals and reaps, and a blocking system call may come back with
//! `ErrorKind::Interrupted` (EINTR) when a signal is handled meanwhile. On
//! Linux, socket reads and writes with a timeout (`SO_RCVTIMEO`,
//! `SO_SNDTIMEO`) are never restarted by the kernel. An interrupted call
//! says nothing about the node under test, so every blocking call in the
//! tests goes through one of these helpers, which repeat it (a bounded
//! number of times in a row) instead of reading EINTR as a failure.
//!
//! Included by `tests/common/mod.rs` and, with `#[path]`, by the test
//! binaries that do not use that harness (`tests/cli.rs`, `tests/chaos.rs`).

#![allow(dead_code)]

use std::io::{self, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::process::{Child, ExitStatus, Output};
use std::time::Duration;

/// Interruptions in a row after which a call gives up and returns the error.
const MAX_INTERRUPTS: usize = 1000;

/// Runs `op` again as long as it fails with `Interrupted`, at most
/// [`MAX_INTERRUPTS`] times in a row.
pub fn retry<T>(mut op: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    let mut interrupts = 0;
    loop {
        match op() {
            Err(e) if e.kind() == ErrorKind::Interrupted && interrupts < MAX_INTERRUPTS => {
                interrupts += 1;
            }
            other => return other,
        }
    }
}

/// One `read`: the bytes that arrived, 0 at end of stream.
pub fn read(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    retry(|| r.read(buf))
}

/// Reads until end of stream into `out`; returns how many bytes were added.
pub fn read_to_end(r: &mut impl Read, out: &mut Vec<u8>) -> io::Result<usize> {
    let start = out.len();
    let mut buf = [0u8; 8192];
    loop {
        match read(r, &mut buf)? {
            0 => return Ok(out.len() - start),
            n => out.extend_from_slice(&buf[..n]),
        }
    }
}

/// Reads until end of stream, as (lossy) UTF-8.
pub fn read_to_string(r: &mut impl Read) -> io::Result<String> {
    let mut out = Vec::new();
    read_to_end(r, &mut out)?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// Writes all of `bytes`, each `write` retried on its own, so an
/// interruption never sends a byte twice.
pub fn write_all(w: &mut impl Write, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        match retry(|| w.write(bytes))? {
            0 => return Err(ErrorKind::WriteZero.into()),
            n => bytes = &bytes[n..],
        }
    }
    Ok(())
}

/// Opens a TCP connection.
pub fn connect(addr: impl ToSocketAddrs) -> io::Result<TcpStream> {
    let addrs: Vec<SocketAddr> = addr.to_socket_addrs()?.collect();
    retry(|| TcpStream::connect(&addrs[..]))
}

/// Opens a TCP connection within `timeout` (per attempt).
pub fn connect_timeout(addr: &SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    retry(|| TcpStream::connect_timeout(addr, timeout))
}

/// Accepts one connection.
pub fn accept(listener: &TcpListener) -> io::Result<(TcpStream, SocketAddr)> {
    retry(|| listener.accept())
}

/// Waits for a child process to exit and reaps it.
pub fn wait(child: &mut Child) -> io::Result<ExitStatus> {
    retry(|| child.wait())
}

/// Runs a command to completion: spawns it and waits for it.
pub fn status(cmd: &mut std::process::Command) -> io::Result<ExitStatus> {
    let mut child = cmd.spawn()?;
    wait(&mut child)
}

/// Waits for a child whose stdout and stderr are piped, collecting both
/// (read on their own threads, so neither pipe can fill up and stall it).
pub fn wait_with_output(mut child: Child) -> io::Result<Output> {
    let out = child.stdout.take().map(|mut pipe| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            read_to_end(&mut pipe, &mut v).map(|_| v)
        })
    });
    let err = child.stderr.take().map(|mut pipe| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            read_to_end(&mut pipe, &mut v).map(|_| v)
        })
    });
    let status = wait(&mut child)?;
    let collect = |h: Option<std::thread::JoinHandle<io::Result<Vec<u8>>>>| match h {
        None => Ok(Vec::new()),
        Some(h) => h
            .join()
            .map_err(|_| io::Error::other("pipe reader panicked"))?,
    };
    Ok(Output {
        status,
        stdout: collect(out)?,
        stderr: collect(err)?,
    })
}
