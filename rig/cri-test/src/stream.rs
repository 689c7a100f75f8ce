//! The kubelet's streaming side of the CRI: `kubectl exec -it` and `kubectl attach -it` reach
//! a container through the URL that the CRI's `Exec`/`Attach` return, served by containerd's
//! streaming server (the kubelet's `remotecommand` server). This is its websocket form, channel
//! protocol `v4.channel.k8s.io`: every binary message starts with a channel byte — 0 stdin,
//! 1 stdout, 2 stderr, 3 the status (a `metav1.Status` in JSON once the process ended), 4 the
//! terminal's size (`{"Width":…,"Height":…}`, which containerd turns into a `ResizePty`).

use futures_util::{SinkExt, StreamExt};
use std::time::Duration;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const STATUS: u8 = 3;
const RESIZE: u8 = 4;

/// The channel protocol asked of the server.
const PROTOCOL: &str = "v4.channel.k8s.io";

/// What one streaming session saw.
pub struct Seen {
    /// Everything on stdout (a terminal's output: stdout and stderr in one, with `\r\n`).
    pub output: String,
    /// The process's exit code from the status channel; `None` when the session was closed
    /// before the process ended (an attach that detaches).
    pub exit: Option<i32>,
}

/// Runs one session on `url` (as the CRI returned it): sends the terminal size `rows`×`cols`,
/// then `input` on stdin; reads until the status channel reports the end of the process or,
/// when `done` says the output is complete, closes the session (detaches). Bounded by
/// `deadline`.
pub async fn session(
    url: &str,
    (rows, cols): (u16, u16),
    input: &str,
    done: impl Fn(&str) -> bool,
    deadline: Duration,
) -> Result<Seen, String> {
    let url = match url.strip_prefix("http://") {
        Some(rest) => format!("ws://{rest}"),
        None => return Err(format!("not a plain-HTTP streaming URL: {url:?}")),
    };
    let mut req = url
        .as_str()
        .into_client_request()
        .map_err(|e| format!("{url}: {e}"))?;
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        PROTOCOL.parse().expect("a valid header value"),
    );
    let work = async {
        let (mut ws, _) = tokio_tungstenite::connect_async(req)
            .await
            .map_err(|e| format!("websocket to {url}: {e}"))?;
        let size = format!("{{\"Width\":{cols},\"Height\":{rows}}}");
        for (channel, data) in [(RESIZE, size.as_bytes()), (STDIN, input.as_bytes())] {
            let mut msg = vec![channel];
            msg.extend_from_slice(data);
            ws.send(Message::Binary(msg.into()))
                .await
                .map_err(|e| format!("send on channel {channel}: {e}"))?;
        }
        let mut seen = Seen {
            output: String::new(),
            exit: None,
        };
        while let Some(msg) = ws.next().await {
            let data = match msg.map_err(|e| format!("receive: {e}"))? {
                Message::Binary(b) => b.to_vec(),
                Message::Text(t) => t.as_bytes().to_vec(),
                Message::Close(_) => break,
                _ => continue,
            };
            let Some((&channel, data)) = data.split_first() else {
                continue;
            };
            match channel {
                STDOUT | STDERR => seen.output.push_str(&String::from_utf8_lossy(data)),
                STATUS if !data.is_empty() => {
                    seen.exit = Some(exit_code(&String::from_utf8_lossy(data))?);
                    break;
                }
                _ => {}
            }
            if seen.exit.is_none() && done(&seen.output) {
                break;
            }
        }
        let _ = ws.close(None).await;
        Ok(seen)
    };
    tokio::time::timeout(deadline, work)
        .await
        .map_err(|_| format!("no end within {deadline:?}"))?
}

/// The exit code in a `metav1.Status` of the status channel: 0 for `"status":"Success"`, the
/// `ExitCode` cause of a `NonZeroExitCode` failure.
fn exit_code(status: &str) -> Result<i32, String> {
    if status.contains("\"status\":\"Success\"") {
        return Ok(0);
    }
    const CAUSE: &str = "\"reason\":\"ExitCode\",\"message\":\"";
    status
        .find(CAUSE)
        .and_then(|at| {
            let rest = &status[at + CAUSE.len()..];
            rest[..rest.find('"')?].parse().ok()
        })
        .ok_or_else(|| format!("a status without an exit code: {status}"))
}

#[cfg(test)]
mod tests {
    use super::exit_code;

    #[test]
    fn exit_codes_are_read_from_the_status() {
        assert_eq!(exit_code(r#"{"metadata":{},"status":"Success"}"#), Ok(0));
        let failed = r#"{"metadata":{},"status":"Failure","message":"command terminated with non-zero exit code: error executing command [sh], exit code 5","reason":"NonZeroExitCode","details":{"causes":[{"reason":"ExitCode","message":"5"}]}}"#;
        assert_eq!(exit_code(failed), Ok(5));
        assert!(exit_code(r#"{"status":"Failure","message":"boom"}"#).is_err());
    }
}
