//! The load tool's verdicts, as pure functions of counts: whether a run may go on once its
//! clients have connected, whether it may go on after losing streams, and whether it measured
//! what it set out to. The coordinator stops with the returned text (exit status 1).
//!
//! The policy: a client that cannot open its stream is an error unless `--allow-failed N`
//! allows that many; a run where no client is ready always stops (there is nothing to measure).
//! Streams that end during the run count against the same allowance, as do the clients that
//! failed to connect. A change that does not reach every client within `--change-timeout-ms`
//! makes the run fail after its report is printed.

/// Clients of the whole run (all client processes).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub clients: usize,
    pub ready: usize,
    pub failed: usize,
    pub dropped: usize,
}

fn first(e: Option<&str>) -> String {
    e.map(|e| format!("; first: {e}")).unwrap_or_default()
}

/// Once every client is ready or gave up. `Err`: stop with this text; `Ok(Some(w))`: go on,
/// printing the warning `w`.
pub fn after_connect(c: &Counts, allow_failed: usize, first_error: Option<&str>) -> Result<Option<String>, String> {
    let what = format!("{} of {} clients failed to open their stream", c.failed, c.clients);
    if c.ready == 0 {
        return Err(format!("{what}{}", first(first_error)));
    }
    if c.failed > allow_failed {
        let allowed = if allow_failed > 0 { format!(" (more than --allow-failed {allow_failed})") } else { String::new() };
        return Err(format!("{what}{allowed}{}", first(first_error)));
    }
    if c.failed > 0 {
        return Ok(Some(format!("{what} (allowed by --allow-failed {allow_failed}){}", first(first_error))));
    }
    Ok(None)
}

/// The connect phase ran out of time (`--connect-timeout-secs`).
pub fn connect_timed_out(c: &Counts, secs: u64, first_error: Option<&str>) -> String {
    format!(
        "only {} of {} clients had their initial state after {secs} s ({} failed){}",
        c.ready,
        c.clients,
        c.failed,
        first(first_error)
    )
}

/// After connecting: `Err` once the streams lost and the clients that failed to connect are
/// more than `allow_failed`, or every stream is gone.
pub fn during_run(c: &Counts, allow_failed: usize, first_error: Option<&str>) -> Result<(), String> {
    if c.dropped == 0 || (c.failed + c.dropped <= allow_failed && c.dropped < c.ready) {
        return Ok(());
    }
    Err(format!("{} of {} streams ended during the run{}", c.dropped, c.ready, first(first_error)))
}

/// After the change phase: every change reached every live client in time.
pub fn after_changes(timed_out: usize, changes: usize, timeout_ms: u64) -> Result<(), String> {
    if timed_out == 0 {
        return Ok(());
    }
    Err(format!("{timed_out} of {changes} changes did not reach every client within {timeout_ms} ms (see TIMED OUT above)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(ready: usize, failed: usize, dropped: usize) -> Counts {
        Counts { clients: ready + failed, ready, failed, dropped }
    }

    #[test]
    fn nobody_connected_always_stops_with_the_first_error() {
        let e = after_connect(&c(0, 50, 0), 0, Some("401 Unauthorized from http://h/x")).unwrap_err();
        assert_eq!(e, "50 of 50 clients failed to open their stream; first: 401 Unauthorized from http://h/x");
        assert!(after_connect(&c(0, 50, 0), 100, None).is_err(), "even when failures are allowed");
    }

    #[test]
    fn a_partial_failure_stops_unless_allowed_and_is_reported_either_way() {
        assert_eq!(
            after_connect(&c(47, 3, 0), 0, Some("x")).unwrap_err(),
            "3 of 50 clients failed to open their stream; first: x"
        );
        assert_eq!(
            after_connect(&c(47, 3, 0), 2, None).unwrap_err(),
            "3 of 50 clients failed to open their stream (more than --allow-failed 2)"
        );
        let w = after_connect(&c(47, 3, 0), 3, Some("x")).unwrap().unwrap();
        assert_eq!(w, "3 of 50 clients failed to open their stream (allowed by --allow-failed 3); first: x");
        assert_eq!(after_connect(&c(50, 0, 0), 0, None), Ok(None));
    }

    #[test]
    fn lost_streams_count_against_the_same_allowance() {
        assert_eq!(during_run(&c(50, 0, 0), 0, None), Ok(()));
        assert_eq!(during_run(&c(50, 0, 1), 0, Some("reset")).unwrap_err(), "1 of 50 streams ended during the run; first: reset");
        assert_eq!(during_run(&c(48, 2, 1), 3, None), Ok(()));
        assert!(during_run(&c(48, 2, 2), 3, None).is_err());
        assert!(during_run(&c(2, 0, 2), 10, None).is_err(), "every stream gone: nothing left to measure");
    }

    #[test]
    fn a_change_that_did_not_arrive_fails_the_run() {
        assert_eq!(after_changes(0, 10, 10_000), Ok(()));
        assert!(after_changes(2, 10, 10_000).unwrap_err().starts_with("2 of 10 changes did not reach every client within 10000 ms"));
        assert_eq!(connect_timed_out(&c(3, 1, 0), 300, None), "only 3 of 4 clients had their initial state after 300 s (1 failed)");
    }
}
