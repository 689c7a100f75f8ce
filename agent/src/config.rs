//! Agent settings: command-line flags and, as PID 1, `ember.*` options of the kernel cmdline.
//!
//! Kernel cmdline options (PID 1 only): `ember.debug`, `ember.port=N` (vsock port served,
//! default 1024), `ember.announce_port=N` (host port, default 1025; `ember.announce=off`
//! disables the announce), `ember.hostname=NAME`, `ember.no_pivot`.
//!
//! Flags (override the cmdline): `--listen unix:PATH|vsock:PORT`, `--announce
//! unix:PATH|vsock:CID:PORT`, `--state-dir DIR`, `--cgroup-root DIR`, `--hostname NAME`,
//! `--no-pivot`, `--debug`.

use crate::protocol::{ANNOUNCE_PORT, DEFAULT_PORT, HOST_CID};
use crate::transport::{self, Endpoint, CID_ANY};
use std::path::PathBuf;

/// Errors of configuration.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Unknown argument {0:?}")]
    UnknownArg(String),
    #[error("{0} needs a value")]
    MissingValue(String),
    #[error("Invalid endpoint for {flag}")]
    Endpoint {
        flag: String,
        #[source]
        source: transport::Error,
    },
    #[error("Invalid kernel option {0:?}")]
    Cmdline(String),
}

/// Everything the agent needs to start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Running as the guest's PID 1 (mounts, reboot, boot timer).
    pub pid1: bool,
    pub listen: Endpoint,
    pub announce: Option<Endpoint>,
    pub state_dir: PathBuf,
    pub cgroup_root: Option<PathBuf>,
    pub hostname: Option<String>,
    /// Never `pivot_root` container roots (see [`crate::mounts::RootSwitch`]).
    pub no_pivot: bool,
    pub debug: bool,
}

impl Config {
    fn defaults(pid1: bool) -> Config {
        if pid1 {
            Config {
                pid1,
                listen: Endpoint::Vsock {
                    cid: CID_ANY,
                    port: DEFAULT_PORT,
                },
                announce: Some(Endpoint::Vsock {
                    cid: HOST_CID,
                    port: ANNOUNCE_PORT,
                }),
                state_dir: PathBuf::from("/run/ember"),
                cgroup_root: Some(PathBuf::from("/sys/fs/cgroup")),
                hostname: Some("ember".to_string()),
                no_pivot: false,
                debug: false,
            }
        } else {
            Config {
                pid1,
                listen: Endpoint::Unix(PathBuf::from("/run/ember-agent/agent.sock")),
                announce: None,
                state_dir: PathBuf::from("/run/ember-agent"),
                cgroup_root: None,
                hostname: None,
                no_pivot: false,
                debug: false,
            }
        }
    }

    /// Builds the configuration from `args` (without argv[0]) and, when `pid1`, the kernel
    /// command line.
    pub fn parse(args: &[String], pid1: bool, cmdline: &str) -> Result<Config, Error> {
        let mut cfg = Config::defaults(pid1);
        if pid1 {
            cfg.apply_cmdline(cmdline)?;
        }
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            let mut value = || {
                it.next()
                    .cloned()
                    .ok_or_else(|| Error::MissingValue(arg.clone()))
            };
            let endpoint = |flag: &str, v: String| {
                v.parse::<Endpoint>().map_err(|source| Error::Endpoint {
                    flag: flag.to_string(),
                    source,
                })
            };
            match arg.as_str() {
                "--listen" => cfg.listen = endpoint(arg, value()?)?,
                "--announce" => cfg.announce = Some(endpoint(arg, value()?)?),
                "--state-dir" => cfg.state_dir = PathBuf::from(value()?),
                "--cgroup-root" => cfg.cgroup_root = Some(PathBuf::from(value()?)),
                "--hostname" => cfg.hostname = Some(value()?),
                "--debug" => cfg.debug = true,
                "--no-pivot" => cfg.no_pivot = true,
                other => return Err(Error::UnknownArg(other.to_string())),
            }
        }
        Ok(cfg)
    }

    fn apply_cmdline(&mut self, cmdline: &str) -> Result<(), Error> {
        let mut announce_port = ANNOUNCE_PORT;
        let mut announce = true;
        for word in cmdline.split_whitespace() {
            let Some(opt) = word.strip_prefix("ember.") else {
                continue;
            };
            let (key, val) = match opt.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (opt, None),
            };
            let num = |v: Option<&str>| {
                v.and_then(|v| v.parse::<u32>().ok())
                    .ok_or_else(|| Error::Cmdline(word.to_string()))
            };
            match key {
                "debug" => self.debug = !matches!(val, Some("0") | Some("off")),
                "port" => {
                    self.listen = Endpoint::Vsock {
                        cid: CID_ANY,
                        port: num(val)?,
                    }
                }
                "announce_port" => announce_port = num(val)?,
                "announce" => announce = !matches!(val, Some("0") | Some("off")),
                "no_pivot" => self.no_pivot = !matches!(val, Some("0") | Some("off")),
                "hostname" => {
                    self.hostname = Some(
                        val.filter(|v| !v.is_empty())
                            .ok_or_else(|| Error::Cmdline(word.to_string()))?
                            .to_string(),
                    )
                }
                // Options for other parts of ember are not ours to refuse.
                _ => {}
            }
        }
        self.announce = announce.then_some(Endpoint::Vsock {
            cid: HOST_CID,
            port: announce_port,
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn pid1_reads_cmdline() {
        let cfg = Config::parse(
            &[],
            true,
            "console=ttyS0 quiet ember.debug ember.port=2000 ember.announce_port=3000 ember.hostname=pod1",
        )
        .unwrap();
        assert!(cfg.debug);
        assert_eq!(
            cfg.listen,
            Endpoint::Vsock {
                cid: CID_ANY,
                port: 2000
            }
        );
        assert_eq!(
            cfg.announce,
            Some(Endpoint::Vsock {
                cid: HOST_CID,
                port: 3000
            })
        );
        assert_eq!(cfg.hostname.as_deref(), Some("pod1"));
        let cfg = Config::parse(&[], true, "ember.announce=off").unwrap();
        assert_eq!(cfg.announce, None);
        assert!(Config::parse(&[], true, "ember.port=abc").is_err());
    }

    #[test]
    fn host_mode_ignores_cmdline_and_takes_flags() {
        let cfg = Config::parse(
            &args(&[
                "--listen",
                "unix:/tmp/a",
                "--announce",
                "unix:/tmp/b",
                "--state-dir",
                "/tmp/s",
                "--debug",
            ]),
            false,
            "ember.port=5",
        )
        .unwrap();
        assert!(!cfg.pid1);
        assert_eq!(cfg.listen, Endpoint::Unix("/tmp/a".into()));
        assert_eq!(cfg.announce, Some(Endpoint::Unix("/tmp/b".into())));
        assert_eq!(cfg.state_dir, PathBuf::from("/tmp/s"));
        assert_eq!(cfg.cgroup_root, None);
        assert!(cfg.debug);
        assert!(matches!(
            Config::parse(&args(&["--bogus"]), false, ""),
            Err(Error::UnknownArg(_))
        ));
        assert!(matches!(
            Config::parse(&args(&["--listen"]), false, ""),
            Err(Error::MissingValue(_))
        ));
        assert!(matches!(
            Config::parse(&args(&["--listen", "tcp:1"]), false, ""),
            Err(Error::Endpoint { .. })
        ));
    }
}
