//! `pod delete --force` racing `status`, `start` and `stop` of the same pod, 100 rounds, in
//! separate ember processes (host-agent mode, so a start that wins the race really spawns a
//! pod process). After each round the id is either fully there (its record readable) or fully
//! gone (no directory, and `create` takes the id again), and once deleted nothing is left: no
//! pod process or agent, no directory, no socket.

mod support;

use std::process::Stdio;
use support::{prerequisites, Env};

const ROUNDS: usize = 100;

#[test]
fn delete_force_racing_status_start_stop_leaves_all_or_nothing() {
    let Some(agent) = prerequisites("delete_force_racing_status_start_stop_leaves_all_or_nothing")
    else {
        return;
    };
    let env = Env::new("race", agent);
    let dir = env.pod_dir("p");
    let mut stuck = Vec::new();
    for round in 0..ROUNDS {
        let created = env.run(&["pod", "create", "p"]);
        assert!(
            created.status.success(),
            "round {round}: create refused: {}",
            String::from_utf8_lossy(&created.stderr)
        );
        let verbs: [&[&str]; 4] = [
            &["pod", "delete", "--force", "p"],
            &["pod", "status", "p"],
            &["pod", "start", "p"],
            &["pod", "stop", "p"],
        ];
        // Rotate who goes first, so that each verb races the delete from either side.
        let mut children: Vec<_> = (0..verbs.len())
            .map(|i| verbs[(i + round) % verbs.len()])
            .map(|args| {
                env.cmd(args)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for c in &mut children {
            c.wait().unwrap();
        }
        // All or nothing.
        let there = dir.join("state.json").is_file();
        let status = env.run(&["pod", "status", "p"]);
        if there {
            assert!(
                status.status.success(),
                "round {round}: record there but status fails: {}",
                String::from_utf8_lossy(&status.stderr)
            );
        } else {
            let err = String::from_utf8_lossy(&status.stderr);
            assert!(err.contains("does not exist"), "round {round}: {err}");
            if dir.exists() {
                stuck.push((round, std::fs::read_dir(&dir).unwrap().count()));
            }
        }
        let _ = env.run(&["pod", "delete", "--force", "p"]);
        let leaks = env.leaks();
        assert!(
            leaks.none(),
            "round {round}: left after delete --force: {leaks:?}"
        );
    }
    assert!(
        stuck.is_empty(),
        "rounds leaving a directory without a record (round, entries): {stuck:?}"
    );
}
