//! The demo's interactive commands: one per line on stdin, parsed here
//! without I/O so that every form is tested as a table.

/// One line typed (or piped) into the demo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// SIGSTOP, like `docker pause`: the process holds its sockets but answers nothing.
    Pause(u64),
    /// SIGCONT.
    Resume(u64),
    /// SIGKILL: no clean shutdown.
    Kill(u64),
    /// Starts the node again with the same id and data folder; no config is posted.
    Restart(u64),
    /// Cuts the node off the network through the demo's proxies.
    Isolate(u64),
    Heal(u64),
    Inc {
        name: String,
        amount: u64,
        on: Option<u64>,
    },
    Get {
        name: String,
        on: Option<u64>,
    },
    Status,
    Help,
    Quit,
    /// An empty line.
    Nothing,
}

/// The text `help` prints.
pub const HELP: &str = "\
commands (N is a node number; `on N` defaults to node 1):
  inc NAME [AMOUNT] [on N]   add AMOUNT (default 1) on node N, straight to its own port
  get NAME [on N]            node N's value and consistent_value (deadline 2s)
  pause N | resume N         SIGSTOP / SIGCONT node N (like docker pause)
  kill N                     SIGKILL node N
  restart N                  start node N again on its data folder; no config is posted
  isolate N | heal N         cut node N off the network / join it again: the other nodes
                             cannot reach N and N cannot reach them (clients still reach N
                             on its own port)
  status                     print every node's line now
  help                       this text
  quit                       stop every node and end the demo (also Ctrl-C or end of input)";

/// Parses one line; the error says what was expected.
pub fn parse(line: &str) -> Result<Command, String> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let Some((&verb, args)) = words.split_first() else {
        return Ok(Command::Nothing);
    };
    let node = |what: fn(u64) -> Command| match args {
        [n] => Ok(what(node_number(n)?)),
        _ => Err(format!("usage: {verb} N (a node number)")),
    };
    match verb.to_ascii_lowercase().as_str() {
        "pause" => node(Command::Pause),
        "resume" => node(Command::Resume),
        "kill" => node(Command::Kill),
        "restart" => node(Command::Restart),
        "isolate" => node(Command::Isolate),
        "heal" => node(Command::Heal),
        "inc" => {
            let (rest, on) = split_on(args)?;
            match rest {
                [name] => Ok(Command::Inc {
                    name: name_of(name)?,
                    amount: 1,
                    on,
                }),
                [name, amount] => Ok(Command::Inc {
                    name: name_of(name)?,
                    amount: amount.parse().map_err(|_| {
                        format!(
                            "{amount:?} is not an amount (a non-negative integer that fits 64 bits)"
                        )
                    })?,
                    on,
                }),
                _ => Err("usage: inc NAME [AMOUNT] [on N]".into()),
            }
        }
        "get" => {
            let (rest, on) = split_on(args)?;
            match rest {
                [name] => Ok(Command::Get {
                    name: name_of(name)?,
                    on,
                }),
                _ => Err("usage: get NAME [on N]".into()),
            }
        }
        "status" if args.is_empty() => Ok(Command::Status),
        "help" | "?" if args.is_empty() => Ok(Command::Help),
        "quit" | "exit" if args.is_empty() => Ok(Command::Quit),
        _ => Err(format!("unknown command {line:?}; `help` lists them")),
    }
}

/// Splits a trailing `on N` off the arguments.
fn split_on<'a, 'b>(args: &'a [&'b str]) -> Result<(&'a [&'b str], Option<u64>), String> {
    match args {
        [rest @ .., on, n] if on.eq_ignore_ascii_case("on") => Ok((rest, Some(node_number(n)?))),
        _ => Ok((args, None)),
    }
}

fn node_number(raw: &str) -> Result<u64, String> {
    match raw.parse::<u64>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!("{raw:?} is not a node number (1, 2, ...)")),
    }
}

fn name_of(raw: &str) -> Result<String, String> {
    crate::input::validate_name(raw).map_err(|e| e.to_string())?;
    Ok(raw.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_form_parses() {
        let inc = |name: &str, amount, on| Command::Inc {
            name: name.into(),
            amount,
            on,
        };
        let table = [
            ("pause 2", Command::Pause(2)),
            ("  resume   2 ", Command::Resume(2)),
            ("kill 3", Command::Kill(3)),
            ("RESTART 3", Command::Restart(3)),
            ("isolate 1", Command::Isolate(1)),
            ("heal 1", Command::Heal(1)),
            ("inc visits", inc("visits", 1, None)),
            ("inc visits 5", inc("visits", 5, None)),
            ("inc visits on 2", inc("visits", 1, Some(2))),
            ("inc visits 5 on 2", inc("visits", 5, Some(2))),
            ("inc on", inc("on", 1, None)),
            (
                "get visits on 3",
                Command::Get {
                    name: "visits".into(),
                    on: Some(3),
                },
            ),
            (
                "get visits",
                Command::Get {
                    name: "visits".into(),
                    on: None,
                },
            ),
            ("status", Command::Status),
            ("help", Command::Help),
            ("quit", Command::Quit),
            ("exit", Command::Quit),
            ("", Command::Nothing),
            ("   ", Command::Nothing),
        ];
        for (line, want) in table {
            assert_eq!(parse(line), Ok(want), "{line:?}");
        }
    }

    #[test]
    fn bad_lines_say_what_was_expected() {
        for (line, needle) in [
            ("pause", "usage: pause N"),
            ("pause 0", "not a node number"),
            ("pause two", "not a node number"),
            ("kill 1 2", "usage: kill N"),
            ("inc", "usage: inc"),
            ("inc a -1", "not an amount"),
            ("inc a 18446744073709551616", "not an amount"),
            ("inc a 1 on x", "not a node number"),
            ("inc a 1 2 3", "usage: inc"),
            ("get", "usage: get"),
            ("get a b", "usage: get"),
            ("frobnicate", "unknown command"),
            ("quit now", "unknown command"),
        ] {
            let err = parse(line).expect_err(line);
            assert!(err.contains(needle), "{line:?}: {err}");
        }
    }
}
