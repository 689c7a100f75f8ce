//! The pod/container state machine (virtcontainers' `ValidTransition`): ready → running |
//! stopped; running → paused | stopped; paused → running | stopped; stopped → running.

use serde::{Deserialize, Serialize};
use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Created, not started.
    Ready,
    Running,
    Paused,
    Stopped,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("Cannot go from {from} to {to}")]
pub struct TransitionError {
    pub from: State,
    pub to: State,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Ready => "ready",
            State::Running => "running",
            State::Paused => "paused",
            State::Stopped => "stopped",
        }
    }

    /// Whether `self → to` is allowed.
    pub fn can_go_to(self, to: State) -> bool {
        use State::*;
        matches!(
            (self, to),
            (Ready, Running)
                | (Ready, Stopped)
                | (Running, Paused)
                | (Running, Stopped)
                | (Paused, Running)
                | (Paused, Stopped)
                | (Stopped, Running)
        )
    }

    /// `Ok` when `self → to` is allowed, else an error naming both states.
    pub fn check(self, to: State) -> Result<(), TransitionError> {
        if self.can_go_to(to) {
            Ok(())
        } else {
            Err(TransitionError { from: self, to })
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::State::*;
    use super::*;

    const ALL: [State; 4] = [Ready, Running, Paused, Stopped];

    #[test]
    fn valid_transitions() {
        for (from, to) in [
            (Ready, Running),
            (Ready, Stopped),
            (Running, Paused),
            (Running, Stopped),
            (Paused, Running),
            (Paused, Stopped),
            (Stopped, Running),
        ] {
            assert_eq!(from.check(to), Ok(()), "{from} -> {to}");
        }
    }

    #[test]
    fn refused_transitions() {
        let refused = [
            (Ready, Ready),
            (Ready, Paused),
            (Running, Running),
            (Running, Ready),
            (Paused, Paused),
            (Paused, Ready),
            (Stopped, Stopped),
            (Stopped, Paused),
            (Stopped, Ready),
        ];
        for (from, to) in refused {
            let err = from.check(to).unwrap_err();
            assert_eq!(err, TransitionError { from, to });
            assert_eq!(err.to_string(), format!("Cannot go from {from} to {to}"));
        }
        // Every pair is either in the valid list or refused: 7 + 9 = 16.
        let allowed = ALL
            .iter()
            .flat_map(|a| ALL.iter().map(move |b| (*a, *b)))
            .filter(|(a, b)| a.can_go_to(*b))
            .count();
        assert_eq!(allowed + refused.len(), ALL.len() * ALL.len());
    }

    #[test]
    fn serialises_lowercase() {
        assert_eq!(serde_json::to_string(&Paused).unwrap(), "\"paused\"");
        assert_eq!(
            serde_json::from_str::<State>("\"stopped\"").unwrap(),
            Stopped
        );
        assert!(serde_json::from_str::<State>("\"exploded\"").is_err());
    }
}
