//! Signal names and numbers the way runc's `kill` takes them: `KILL`, `SIGKILL`, `9`.

use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum SignalError {
    #[error("Invalid signal: {0}")]
    Invalid(String),
}

/// Linux x86_64 signal names, without the `SIG` prefix.
const SIGNALS: &[(&str, i32)] = &[
    ("HUP", libc::SIGHUP),
    ("INT", libc::SIGINT),
    ("QUIT", libc::SIGQUIT),
    ("ILL", libc::SIGILL),
    ("TRAP", libc::SIGTRAP),
    ("ABRT", libc::SIGABRT),
    ("IOT", libc::SIGIOT),
    ("BUS", libc::SIGBUS),
    ("FPE", libc::SIGFPE),
    ("KILL", libc::SIGKILL),
    ("USR1", libc::SIGUSR1),
    ("SEGV", libc::SIGSEGV),
    ("USR2", libc::SIGUSR2),
    ("PIPE", libc::SIGPIPE),
    ("ALRM", libc::SIGALRM),
    ("TERM", libc::SIGTERM),
    ("STKFLT", libc::SIGSTKFLT),
    ("CHLD", libc::SIGCHLD),
    ("CONT", libc::SIGCONT),
    ("STOP", libc::SIGSTOP),
    ("TSTP", libc::SIGTSTP),
    ("TTIN", libc::SIGTTIN),
    ("TTOU", libc::SIGTTOU),
    ("URG", libc::SIGURG),
    ("XCPU", libc::SIGXCPU),
    ("XFSZ", libc::SIGXFSZ),
    ("VTALRM", libc::SIGVTALRM),
    ("PROF", libc::SIGPROF),
    ("WINCH", libc::SIGWINCH),
    ("IO", libc::SIGIO),
    ("POLL", libc::SIGPOLL),
    ("PWR", libc::SIGPWR),
    ("SYS", libc::SIGSYS),
];

/// Parse a signal given by name (`TERM`, `SIGTERM`, `sigterm`, `RTMIN+2`) or number (`15`).
pub fn parse(s: &str) -> Result<i32, SignalError> {
    let invalid = || SignalError::Invalid(s.to_string());
    if let Ok(n) = s.parse::<i32>() {
        return if (1..=libc::SIGRTMAX()).contains(&n) {
            Ok(n)
        } else {
            Err(invalid())
        };
    }
    let upper = s.to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    if let Some((_, n)) = SIGNALS.iter().find(|(k, _)| *k == name) {
        return Ok(*n);
    }
    // Real-time signals: RTMIN, RTMIN+n, RTMAX, RTMAX-n.
    let (base, rest, sign) = if let Some(rest) = name.strip_prefix("RTMIN") {
        (libc::SIGRTMIN(), rest, 1)
    } else if let Some(rest) = name.strip_prefix("RTMAX") {
        (libc::SIGRTMAX(), rest, -1)
    } else {
        return Err(invalid());
    };
    let off = match rest {
        "" => 0,
        r => {
            let digits = if sign > 0 {
                r.strip_prefix('+')
            } else {
                r.strip_prefix('-')
            };
            digits
                .and_then(|d| d.parse::<i32>().ok())
                .ok_or_else(invalid)?
        }
    };
    let n = base + sign * off;
    if (libc::SIGRTMIN()..=libc::SIGRTMAX()).contains(&n) {
        Ok(n)
    } else {
        Err(invalid())
    }
}

/// The name of a signal number (`SIGTERM`), for messages.
pub fn name(n: i32) -> String {
    match SIGNALS.iter().find(|(_, v)| *v == n) {
        Some((k, _)) => format!("SIG{k}"),
        None => format!("signal {n}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_numbers_and_prefixes() {
        assert_eq!(parse("KILL"), Ok(libc::SIGKILL));
        assert_eq!(parse("SIGKILL"), Ok(libc::SIGKILL));
        assert_eq!(parse("sigterm"), Ok(libc::SIGTERM));
        assert_eq!(parse("15"), Ok(libc::SIGTERM));
        assert_eq!(parse("9"), Ok(libc::SIGKILL));
        assert_eq!(parse("RTMIN"), Ok(libc::SIGRTMIN()));
        assert_eq!(parse("RTMIN+2"), Ok(libc::SIGRTMIN() + 2));
        assert_eq!(parse("SIGRTMAX-1"), Ok(libc::SIGRTMAX() - 1));
    }

    #[test]
    fn bad_signals_are_refused() {
        for bad in [
            "", "0", "-1", "65", "FOO", "SIG", "RTMIN+99", "RTMIN-1", "RTMAX+1",
        ] {
            assert!(parse(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn names_round_trip() {
        assert_eq!(name(libc::SIGTERM), "SIGTERM");
        assert_eq!(parse(&name(libc::SIGUSR1)), Ok(libc::SIGUSR1));
    }
}
