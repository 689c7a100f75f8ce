//! Error and debug logging the way runc does it, because the engines read it: with `--log`,
//! lines go to that file (`--log-format json`: `{"level","msg","time"}` per line, which
//! containerd's shim and podman parse) and the bare message to stderr; without `--log`, a
//! logrus-style text line goes to stderr.

use std::io::Write;
use std::path::PathBuf;

/// Where runc-style log lines go.
#[derive(Clone, Debug, Default)]
pub struct Logger {
    pub path: Option<PathBuf>,
    pub json: bool,
    pub debug: bool,
}

impl Logger {
    pub fn new(path: Option<PathBuf>, format: Option<&str>, debug: bool) -> Logger {
        Logger {
            path,
            json: format == Some("json"),
            debug,
        }
    }

    /// Format one line at `level`.
    pub fn line(&self, level: &str, msg: &str) -> String {
        let time = super::state::rfc3339_now();
        // Seconds precision, as runc writes it.
        let time = format!("{}Z", &time[..19]);
        if self.json {
            serde_json::json!({"level": level, "msg": msg, "time": time}).to_string()
        } else {
            format!("time=\"{time}\" level={level} msg={}", quote(msg))
        }
    }

    fn append(&self, line: &str) -> bool {
        let Some(path) = &self.path else {
            return false;
        };
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path);
        match file {
            Ok(mut f) => f.write_all(format!("{line}\n").as_bytes()).is_ok(),
            Err(_) => false,
        }
    }

    /// Report an error: to the log file and stderr.
    pub fn error(&self, msg: &str) {
        let line = self.line("error", msg);
        if self.append(&line) {
            eprintln!("{msg}");
        } else {
            eprintln!("{}", self.line_text("error", msg));
        }
    }

    fn line_text(&self, level: &str, msg: &str) -> String {
        Logger {
            json: false,
            ..self.clone()
        }
        .line(level, msg)
    }

    /// A debug line, written only with `--debug`, and only to the log file.
    pub fn debug(&self, msg: &str) {
        if self.debug {
            self.append(&self.line("debug", msg));
        }
    }

    /// An informational line to the log file (the shim's life events).
    pub fn info(&self, msg: &str) {
        self.append(&self.line("info", msg));
    }
}

/// Quote a message the way logrus does: always, with Go-style escapes.
fn quote(msg: &str) -> String {
    serde_json::Value::String(msg.to_string()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_lines_are_parsable_with_level_and_msg() {
        let dir = std::env::temp_dir().join(format!("ember-log-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("log.json");
        let l = Logger::new(Some(path.clone()), Some("json"), false);
        l.error("container does not exist");
        l.debug("not written without --debug");
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 1);
        let v: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
        assert_eq!(v["level"], "error");
        assert_eq!(v["msg"], "container does not exist");
        assert!(v["time"].as_str().unwrap().ends_with('Z'));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn text_lines_quote_the_message() {
        let l = Logger::new(None, None, false);
        let line = l.line("error", "say \"hi\"");
        assert!(line.starts_with("time=\""));
        assert!(line.ends_with(r#"level=error msg="say \"hi\"""#), "{line}");
    }
}
