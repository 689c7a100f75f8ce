//! Parser for scenario sections on a console: `=== BEGIN <name>` ... `=== END <name> rc=<n>`.
//! Lines in between (other than nested markers) are the section's output. A section whose END
//! never came (the host hung or rebooted) gets `rc = -1` and `complete = false`.

use std::collections::BTreeMap;

pub const BEGIN: &str = "=== BEGIN ";
pub const END: &str = "=== END ";
/// Printed by the host's /init before each scenario file, with its name: `NNN-<file>`, NNN its
/// place in the run.
pub const SCENARIO: &str = "=== RIG SCENARIO ";

/// The place in the run (NNN) of a `=== RIG SCENARIO NNN-...` line.
fn scenario_index(line: &str) -> Option<usize> {
    let pos = line.find(SCENARIO)?;
    let name = &line[pos + SCENARIO.len()..];
    name.get(..3)?.parse().ok()
}

/// The scenario file (its place in the run) each section of `console` began in.
pub fn scenarios_of(console: &str) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    let mut current = None;
    for line in console.lines() {
        if let Some(i) = scenario_index(line) {
            current = Some(i);
        } else if let (Some(pos), Some(i)) = (line.find(BEGIN), current) {
            out.insert(line[pos + BEGIN.len()..].trim().to_string(), i);
        }
    }
    out
}

/// The scenario files (their places in the run) that `console` shows started, in order.
pub fn scenarios_started(console: &str) -> Vec<usize> {
    console.lines().filter_map(scenario_index).collect()
}

/// One scenario section.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Section {
    pub rc: i32,
    pub output: String,
    /// False when the END marker never appeared.
    pub complete: bool,
}

impl Section {
    /// A section whose END marker never came (rc -1).
    fn incomplete(output: String) -> Section {
        Section {
            rc: -1,
            output,
            complete: false,
        }
    }
}

/// Parses every section of `console`. A name seen twice keeps the last one.
pub fn parse(console: &str) -> BTreeMap<String, Section> {
    let mut out = BTreeMap::new();
    let mut current: Option<(String, String)> = None;
    for line in console.lines() {
        if let Some(pos) = line.find(END) {
            let (before, marker) = line.split_at(pos);
            let rest = &marker[END.len()..];
            let (name, rc) = match rest.rsplit_once(" rc=") {
                Some((n, rc)) => (n.trim(), rc.trim().parse::<i32>().unwrap_or(-1)),
                None => (rest.trim(), -1),
            };
            if let Some((cur, mut output)) = current.take() {
                output.push_str(before);
                if cur == name {
                    out.insert(
                        cur,
                        Section {
                            rc,
                            output,
                            complete: true,
                        },
                    );
                } else {
                    // An END for another section: close the open one as incomplete.
                    out.insert(cur, Section::incomplete(output));
                }
            }
            continue;
        }
        if let Some(pos) = line.find(BEGIN) {
            let name = line[pos + BEGIN.len()..].trim().to_string();
            if let Some((cur, output)) = current.take() {
                out.insert(cur, Section::incomplete(output));
            }
            current = Some((name, String::new()));
            continue;
        }
        if let Some((_, output)) = current.as_mut() {
            output.push_str(line);
            output.push('\n');
        }
    }
    if let Some((cur, output)) = current {
        out.insert(cur, Section::incomplete(output));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_belong_to_the_scenario_file_they_began_in() {
        let console = "=== RIG SCENARIO 000-10-a.sh\n=== BEGIN a1\n=== END a1 rc=0\n\
                       === RIG SCENARIO 001-20-b.sh\n=== BEGIN b1\n=== END b1 rc=1\n\
                       === BEGIN b2\n";
        let owner = scenarios_of(console);
        assert_eq!(owner["a1"], 0);
        assert_eq!(owner["b1"], 1);
        assert_eq!(owner["b2"], 1);
        assert_eq!(scenarios_started(console), vec![0, 1]);
        assert!(scenarios_of("=== BEGIN x\n").is_empty());
    }

    #[test]
    fn parses_complete_sections() {
        let console = "boot noise\n=== BEGIN boot\nline 1\nline 2\n=== END boot rc=0\n\
                       between\n=== BEGIN fail\noops\n=== END fail rc=3\n";
        let s = parse(console);
        assert_eq!(s.len(), 2);
        assert_eq!(s["boot"].rc, 0);
        assert_eq!(s["boot"].output, "line 1\nline 2\n");
        assert!(s["boot"].complete);
        assert_eq!(s["fail"].rc, 3);
        assert_eq!(s["fail"].output, "oops\n");
    }

    #[test]
    fn end_marker_after_unterminated_output() {
        // `printf foo` without newline, then the END marker on the same console line.
        let s = parse("=== BEGIN a\nfoo=== END a rc=0\n");
        assert_eq!(s["a"].output, "foo");
        assert_eq!(s["a"].rc, 0);
    }

    #[test]
    fn unterminated_and_mismatched_sections_fail() {
        let s = parse("=== BEGIN a\nx\n=== BEGIN b\ny\n=== END c rc=0\n=== BEGIN d\nhang\n");
        assert_eq!(s["a"].rc, -1);
        assert!(!s["a"].complete);
        assert_eq!(s["b"].rc, -1);
        assert_eq!(s["b"].output, "y\n");
        assert_eq!(s["d"].rc, -1);
        assert_eq!(s["d"].output, "hang\n");
        assert!(!s.contains_key("c"));
    }

    #[test]
    fn garbage_rc_is_a_failure() {
        let s = parse("=== BEGIN a\n=== END a rc=zero\n=== BEGIN b\n=== END b\n");
        assert_eq!(s["a"].rc, -1);
        assert_eq!(s["b"].rc, -1);
        assert!(parse("").is_empty());
        assert!(parse("=== END x rc=0\n").is_empty());
    }
}
