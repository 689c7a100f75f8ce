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

/// Runs the poststop hooks of a process that can no longer start programs itself: a pod
/// process's main thread records the VM's end and would run them, but it is confined by a
/// seccomp filter without `execve` by then. The runner is a child spawned before the filter
/// (`ember pod __hooks`, [`serve_runner`]); it waits on its stdin for the hooks and the state
/// JSON, runs them in order (best effort) and writes each failure as one line to its stdout,
/// which [`Runner::run`] hands back to be logged by the pod process (its own log and the
/// engine's). A runner given nothing (the pod was stopped by a client, which runs the hooks
/// itself) exits at once.
pub struct Runner {
    child: Option<std::process::Child>,
}

/// What a [`Runner`] gets on its stdin.
#[derive(serde::Serialize, serde::Deserialize)]
struct RunnerInput {
    hooks: Vec<Hook>,
    state: String,
}

impl Runner {
    /// Starts the runner (this binary, `pod __hooks`); its stderr is ours.
    pub fn spawn() -> std::io::Result<Runner> {
        let child = Command::new(std::env::current_exe()?)
            .args(["pod", "__hooks"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        Ok(Runner { child: Some(child) })
    }

    /// Runs `hooks` with `state_json` in the runner and waits for it: the failures, as text
    /// (one for a runner that could not be reached or did not finish).
    pub fn run(mut self, hooks: &[Hook], state_json: &str) -> Vec<String> {
        let Some(mut child) = self.child.take() else {
            return Vec::new();
        };
        let input = RunnerInput {
            hooks: hooks.to_vec(),
            state: state_json.to_string(),
        };
        let mut failures = Vec::new();
        if let Some(mut stdin) = child.stdin.take() {
            let sent = serde_json::to_vec(&input)
                .map_err(std::io::Error::other)
                .and_then(|b| stdin.write_all(&b));
            if let Err(e) = sent {
                failures.push(format!("cannot hand the hooks to their runner: {e}"));
            }
        }
        let mut out = String::new();
        if let Some(mut stdout) = child.stdout.take() {
            let _ = stdout.read_to_string(&mut out);
        }
        failures.extend(out.lines().map(str::to_string));
        match child.wait() {
            Ok(st) if st.success() => {}
            Ok(st) => failures.push(format!("the hook runner ended with {st}")),
            Err(e) => failures.push(format!("cannot wait for the hook runner: {e}")),
        }
        failures
    }
}

impl Drop for Runner {
    /// An unused runner gets an empty stdin, exits, and is waited for.
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            drop(child.stdin.take());
            let _ = child.wait();
        }
    }
}

/// `ember pod __hooks`: the [`Runner`]'s side. Returns its exit code.
pub fn serve_runner() -> i32 {
    let mut input = Vec::new();
    if let Err(e) = std::io::stdin().read_to_end(&mut input) {
        println!("the hook runner cannot read its input: {e}");
        return 1;
    }
    if input.is_empty() {
        return 0;
    }
    let input: RunnerInput = match serde_json::from_slice(&input) {
        Ok(i) => i,
        Err(e) => {
            println!("the hook runner got bad input: {e}");
            return 1;
        }
    };
    for e in run_all_best_effort(&input.hooks, &input.state) {
        println!("{}", crate::error::report(&e));
    }
    0
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
