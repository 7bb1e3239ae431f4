//! restartPolicy and CrashLoopBackOff: when a container starts again, and the state and
//! reason the agent reports for it. Pure: time comes in as `now`.
//!
//! Back-off, as Kubernetes documents it: after an exit the container waits 10 s, then 20 s,
//! 40 s, ... capped at 5 min; a container that ran 10 min or more before exiting starts
//! over at 10 s. Worked example: exits at t=0, 10, 30 (each after a few seconds of running)
//! restart at t=10, 30, 70; an exit after running 10 min restarts 10 s later.

use std::time::Duration;

use jiff::Timestamp;

pub const INITIAL_BACKOFF: Duration = Duration::from_secs(10);
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);
pub const RESET_AFTER: Duration = Duration::from_secs(600);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RestartPolicy {
    #[default]
    Always,
    OnFailure,
    Never,
}

impl RestartPolicy {
    /// The pod's `restartPolicy`; absent or unknown is `Always`, the Kubernetes default.
    pub fn from_spec(policy: Option<&str>) -> Self {
        match policy {
            Some("OnFailure") => RestartPolicy::OnFailure,
            Some("Never") => RestartPolicy::Never,
            _ => RestartPolicy::Always,
        }
    }

    pub fn restarts(self, exit_code: i32) -> bool {
        match self {
            RestartPolicy::Always => true,
            RestartPolicy::OnFailure => exit_code != 0,
            RestartPolicy::Never => false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    pub exit_code: i32,
    pub started_at: Timestamp,
    pub finished_at: Timestamp,
}

impl Exit {
    /// `Completed` for 0, `Error` otherwise, as the kubelet says.
    pub fn reason(&self) -> &'static str {
        if self.exit_code == 0 {
            "Completed"
        } else {
            "Error"
        }
    }
}

/// What the runtime shows of the container now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observed {
    /// No container in the runtime (never created, or deleted after an exit).
    Absent,
    Running {
        started_at: Timestamp,
    },
    Exited(Exit),
}

/// What the agent remembers of a container between rounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tracked {
    pub restart_count: u32,
    /// The wait before the next restart after an exit.
    pub backoff: Duration,
    pub last_exit: Option<Exit>,
    /// When the container may start again; `None` when it is not going to restart.
    pub restart_at: Option<Timestamp>,
}

impl Default for Tracked {
    fn default() -> Self {
        Tracked {
            restart_count: 0,
            backoff: INITIAL_BACKOFF,
            last_exit: None,
            restart_at: None,
        }
    }
}

/// A container's state as reported in `containerStatuses[].state`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    Waiting { reason: &'static str },
    Running { started_at: Timestamp },
    Terminated { exit: Exit, reason: &'static str },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// Start (or start again) the container now.
    pub start: bool,
    pub tracked: Tracked,
    pub state: State,
    /// `lastState`: the previous run, when there was one.
    pub last_state: Option<Exit>,
}

/// One round for one container: given what was tracked and what is observed at `now`,
/// whether to start it and what to report. When `start` is true the returned `tracked`
/// already counts the restart.
pub fn step(policy: RestartPolicy, tracked: Tracked, observed: Observed, now: Timestamp) -> Step {
    let mut tracked = tracked;
    match observed {
        Observed::Running { started_at } => Step {
            start: false,
            tracked,
            state: State::Running { started_at },
            last_state: tracked.last_exit,
        },
        Observed::Absent if tracked.last_exit.is_none() => Step {
            start: true,
            tracked,
            state: State::Waiting {
                reason: "ContainerCreating",
            },
            last_state: None,
        },
        Observed::Absent | Observed::Exited(_) => {
            let exit = match observed {
                Observed::Exited(exit) => exit,
                _ => match tracked.last_exit {
                    Some(exit) => exit,
                    None => return step(policy, tracked, Observed::Absent, now),
                },
            };
            let previous = tracked.last_exit;
            if previous != Some(exit) {
                tracked = after_exit(policy, tracked, exit);
            }
            match tracked.restart_at {
                Some(at) if now >= at => {
                    tracked.restart_count += 1;
                    tracked.restart_at = None;
                    Step {
                        start: true,
                        tracked,
                        state: State::Waiting {
                            reason: "ContainerCreating",
                        },
                        last_state: Some(exit),
                    }
                }
                Some(_) => Step {
                    start: false,
                    tracked,
                    state: State::Waiting {
                        reason: "CrashLoopBackOff",
                    },
                    last_state: Some(exit),
                },
                None => Step {
                    start: false,
                    tracked,
                    state: State::Terminated {
                        exit,
                        reason: exit.reason(),
                    },
                    last_state: previous.filter(|p| *p != exit),
                },
            }
        }
    }
}

/// Records an exit: when the policy restarts, the restart time and the next back-off.
pub fn after_exit(policy: RestartPolicy, tracked: Tracked, exit: Exit) -> Tracked {
    let mut tracked = Tracked {
        last_exit: Some(exit),
        restart_at: None,
        ..tracked
    };
    if !policy.restarts(exit.exit_code) {
        return tracked;
    }
    let ran = exit.finished_at.duration_since(exit.started_at);
    let ran = Duration::try_from(ran).unwrap_or(Duration::ZERO);
    let wait = if ran >= RESET_AFTER {
        INITIAL_BACKOFF
    } else {
        tracked.backoff
    };
    tracked.backoff = (wait * 2).min(MAX_BACKOFF);
    tracked.restart_at = Some(
        exit.finished_at
            .checked_add(wait)
            .unwrap_or(exit.finished_at),
    );
    tracked
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A clock: seconds after an arbitrary origin.
    fn t(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + seconds).expect("in range")
    }

    fn exit(code: i32, started: i64, finished: i64) -> Exit {
        Exit {
            exit_code: code,
            started_at: t(started),
            finished_at: t(finished),
        }
    }

    #[test]
    fn policies() {
        assert_eq!(RestartPolicy::from_spec(None), RestartPolicy::Always);
        assert_eq!(
            RestartPolicy::from_spec(Some("OnFailure")),
            RestartPolicy::OnFailure
        );
        assert_eq!(
            RestartPolicy::from_spec(Some("Never")),
            RestartPolicy::Never
        );
        for (policy, code, restarts) in [
            (RestartPolicy::Always, 0, true),
            (RestartPolicy::Always, 1, true),
            (RestartPolicy::OnFailure, 0, false),
            (RestartPolicy::OnFailure, 3, true),
            (RestartPolicy::Never, 0, false),
            (RestartPolicy::Never, 137, false),
        ] {
            assert_eq!(policy.restarts(code), restarts, "{policy:?} exit {code}");
        }
    }

    #[test]
    fn a_new_container_is_created() {
        let s = step(
            RestartPolicy::Always,
            Tracked::default(),
            Observed::Absent,
            t(0),
        );
        assert!(s.start);
        assert_eq!(
            s.state,
            State::Waiting {
                reason: "ContainerCreating"
            }
        );
        assert_eq!(s.tracked.restart_count, 0);
        let s = step(
            RestartPolicy::Always,
            s.tracked,
            Observed::Running { started_at: t(1) },
            t(2),
        );
        assert!(!s.start);
        assert_eq!(s.state, State::Running { started_at: t(1) });
    }

    #[test]
    fn crash_loop_backs_off_10_20_40_up_to_5_minutes() {
        let policy = RestartPolicy::Always;
        let mut tracked = Tracked::default();
        let mut now = 0;
        let mut waits = Vec::new();
        for round in 0..8 {
            // Runs 1 s, exits 1.
            let e = exit(1, now, now + 1);
            now += 1;
            let s = step(policy, tracked, Observed::Exited(e), t(now));
            assert!(!s.start, "round {round}: not before the back-off");
            assert_eq!(
                s.state,
                State::Waiting {
                    reason: "CrashLoopBackOff"
                }
            );
            assert_eq!(s.last_state, Some(e));
            let at = s.tracked.restart_at.expect("restarts");
            waits.push(at.duration_since(t(now)).as_secs());
            // One second early: still waiting; on time: start.
            let early = step(
                policy,
                s.tracked,
                Observed::Exited(e),
                at - jiff::SignedDuration::from_secs(1),
            );
            assert!(!early.start);
            now = at.duration_since(t(0)).as_secs();
            let s = step(policy, early.tracked, Observed::Exited(e), t(now));
            assert!(s.start);
            assert_eq!(s.tracked.restart_count, round + 1);
            tracked = s.tracked;
        }
        assert_eq!(waits, vec![10, 20, 40, 80, 160, 300, 300, 300]);
    }

    #[test]
    fn ten_minutes_of_running_resets_the_back_off() {
        let policy = RestartPolicy::Always;
        let tracked = Tracked {
            restart_count: 6,
            backoff: MAX_BACKOFF,
            ..Tracked::default()
        };
        let e = exit(1, 0, 600);
        let s = step(policy, tracked, Observed::Exited(e), t(600));
        assert_eq!(s.tracked.restart_at, Some(t(610)));
        assert_eq!(s.tracked.backoff, Duration::from_secs(20));
        // 9 min 59 s is not enough.
        let s = step(policy, tracked, Observed::Exited(exit(1, 1, 600)), t(600));
        assert_eq!(s.tracked.restart_at, Some(t(900)));
    }

    #[test]
    fn never_and_on_failure_stay_terminated_with_the_reason() {
        let s = step(
            RestartPolicy::Never,
            Tracked::default(),
            Observed::Exited(exit(3, 0, 5)),
            t(5),
        );
        assert!(!s.start);
        assert_eq!(
            s.state,
            State::Terminated {
                exit: exit(3, 0, 5),
                reason: "Error"
            }
        );
        let s = step(
            RestartPolicy::OnFailure,
            Tracked::default(),
            Observed::Exited(exit(0, 0, 5)),
            t(5),
        );
        assert_eq!(
            s.state,
            State::Terminated {
                exit: exit(0, 0, 5),
                reason: "Completed"
            }
        );
        // Later rounds, also after the container was deleted, report the same.
        let again = step(
            RestartPolicy::OnFailure,
            s.tracked,
            Observed::Absent,
            t(500),
        );
        assert!(!again.start);
        assert_eq!(again.state, s.state);
        assert_eq!(again.tracked.restart_count, 0);
    }

    #[test]
    fn on_failure_restarts_a_failure_and_always_restarts_a_success() {
        let s = step(
            RestartPolicy::OnFailure,
            Tracked::default(),
            Observed::Exited(exit(2, 0, 1)),
            t(1),
        );
        assert_eq!(
            s.state,
            State::Waiting {
                reason: "CrashLoopBackOff"
            }
        );
        let s = step(
            RestartPolicy::Always,
            Tracked::default(),
            Observed::Exited(exit(0, 0, 1)),
            t(11),
        );
        assert!(s.start);
    }

    #[test]
    fn a_deleted_exited_container_restarts_on_time() {
        let s = step(
            RestartPolicy::Always,
            Tracked::default(),
            Observed::Exited(exit(1, 0, 1)),
            t(1),
        );
        let s = step(RestartPolicy::Always, s.tracked, Observed::Absent, t(5));
        assert!(!s.start);
        assert_eq!(
            s.state,
            State::Waiting {
                reason: "CrashLoopBackOff"
            }
        );
        let s = step(RestartPolicy::Always, s.tracked, Observed::Absent, t(11));
        assert!(s.start);
        assert_eq!(s.tracked.restart_count, 1);
        // The restarted container runs: lastState keeps the previous exit.
        let s = step(
            RestartPolicy::Always,
            s.tracked,
            Observed::Running { started_at: t(12) },
            t(13),
        );
        assert_eq!(s.last_state, Some(exit(1, 0, 1)));
    }
}
