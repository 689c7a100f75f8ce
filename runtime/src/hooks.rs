//! OCI-style hooks: each hook runs with its own args and env, gets the pod's state JSON on
//! stdin, and must exit 0 within its timeout. Hooks of one kind run in order.

use crate::config::Hook;
use std::io::{Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Longest a hook may run when its config gives no timeout.
pub const DEFAULT_HOOK_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Cannot run hook {path}")]
    Spawn {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Hook {path} failed ({status}){stderr}")]
    Failed {
        path: PathBuf,
        status: String,
        stderr: String,
    },
    #[error("Hook {path} timed out after {timeout:?}")]
    Timeout { path: PathBuf, timeout: Duration },
    #[error("Cannot wait for hook {path}")]
    Wait {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Run `hooks` in order, stopping at the first failure (prestart semantics).
pub fn run_all(hooks: &[Hook], state_json: &str) -> Result<(), Error> {
    hooks.iter().try_for_each(|h| run_one(h, state_json))
}

/// Run every hook in order even when some fail (poststart/poststop semantics); returns the
/// failures.
pub fn run_all_best_effort(hooks: &[Hook], state_json: &str) -> Vec<Error> {
    hooks
        .iter()
        .filter_map(|h| run_one(h, state_json).err())
        .collect()
}

/// Run one hook.
pub fn run_one(hook: &Hook, state_json: &str) -> Result<(), Error> {
    let path = hook.path.clone();
    let mut cmd = Command::new(&hook.path);
    if let Some((argv0, rest)) = hook.args.split_first() {
        cmd.arg0(argv0).args(rest);
    }
    cmd.env_clear();
    for kv in &hook.env {
        match kv.split_once('=') {
            Some((k, v)) if !k.is_empty() => cmd.env(k, v),
            _ => cmd.env(kv, ""),
        };
    }
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|source| Error::Spawn {
        path: path.clone(),
        source,
    })?;
    // The state is small (well under a pipe buffer); a hook that does not read stdin is fine,
    // so a broken pipe is ignored.
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(state_json.as_bytes());
    }
    let timeout = hook
        .timeout
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_HOOK_TIMEOUT);
    let start = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if start.elapsed() >= timeout => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(Error::Timeout { path, timeout });
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(source) => return Err(Error::Wait { path, source }),
        }
    };
    if status.success() {
        return Ok(());
    }
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        let mut buf = Vec::new();
        let _ = e.by_ref().take(4096).read_to_end(&mut buf);
        let text = String::from_utf8_lossy(&buf);
        let text = text.trim();
        if !text.is_empty() {
            stderr = format!(": {text}");
        }
    }
    let status = match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(sig)) => format!("signal {sig}"),
        _ => status.to_string(),
    };
    Err(Error::Failed {
        path,
        status,
        stderr,
    })
}

/// The OCI-style state JSON hooks get on stdin.
pub(crate) fn state_json(
    rec: &crate::state::PodRecord,
    dir: &std::path::Path,
    status: &str,
) -> String {
    serde_json::json!({
        "ociVersion": "1.0.2",
        "id": rec.id,
        "status": status,
        "pid": rec.vmm.as_ref().map(|v| v.pid).unwrap_or(0),
        "bundle": dir,
        "annotations": rec.config.annotations,
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::test_dir;

    fn sh(script: &str) -> Hook {
        Hook {
            path: "/bin/sh".into(),
            args: vec!["sh".into(), "-c".into(), script.into()],
            env: vec![],
            timeout: Some(10),
        }
    }

    #[test]
    fn hooks_run_in_order_with_state_args_and_env() {
        let dir = test_dir("hooks-order");
        let log = dir.join("log");
        let l = log.display();
        let mut with_env = sh(&format!("echo \"$0 $1 $GREETING\" >> {l}"));
        with_env.args.push("second".into());
        with_env.args.push("arg1".into());
        with_env.env = vec!["GREETING=hello".into()];
        let hooks = vec![
            sh(&format!("echo first >> {l}")),
            with_env,
            sh(&format!("cat >> {l}; echo >> {l}")),
        ];
        run_all(&hooks, r#"{"id":"p1","status":"ready"}"#).unwrap();
        let text = std::fs::read_to_string(&log).unwrap();
        assert_eq!(
            text,
            "first\nsecond arg1 hello\n{\"id\":\"p1\",\"status\":\"ready\"}\n"
        );
    }

    #[test]
    fn first_failure_stops_the_chain() {
        let dir = test_dir("hooks-fail");
        let log = dir.join("log");
        let hooks = vec![
            sh(&format!("echo one >> {}", log.display())),
            sh("echo broken >&2; exit 7"),
            sh(&format!("echo three >> {}", log.display())),
        ];
        let err = run_all(&hooks, "{}").unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, Error::Failed { .. }));
        assert!(
            msg.contains("exit code 7") && msg.contains("broken"),
            "{msg}"
        );
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "one\n");
    }

    #[test]
    fn best_effort_runs_all_and_reports_failures() {
        let dir = test_dir("hooks-best");
        let log = dir.join("log");
        let hooks = vec![
            sh("exit 1"),
            sh(&format!("echo two >> {}", log.display())),
            Hook {
                path: dir.join("does-not-exist"),
                args: vec![],
                env: vec![],
                timeout: None,
            },
        ];
        let errs = run_all_best_effort(&hooks, "{}");
        assert_eq!(errs.len(), 2);
        assert!(matches!(errs[0], Error::Failed { .. }));
        assert!(matches!(errs[1], Error::Spawn { .. }));
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "two\n");
    }

    #[test]
    fn timeout_kills_the_hook() {
        let mut h = sh("sleep 30");
        h.timeout = Some(0);
        let err = run_one(&h, "{}").unwrap_err();
        assert!(matches!(err, Error::Timeout { .. }), "{err}");
    }
}
