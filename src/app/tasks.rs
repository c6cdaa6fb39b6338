//! The relay's long-lived tasks, each spawned under a name and joined at shutdown: [`Tasks`]
//! awaits every one until a deadline, logs (error level, by name) one that panicked or was
//! cancelled, and aborts one still running at the deadline (logged at warn level).

use std::future::Future;

use tokio::task::JoinHandle;
use tokio::time::Instant;

/// How a task ended, as [`Tasks::join`] saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    Finished,
    Panicked,
    Cancelled,
    /// Still running at the deadline: aborted.
    Overran,
}

/// Spawned tasks, by name, in the order they are joined.
#[derive(Default)]
pub struct Tasks {
    tasks: Vec<(&'static str, JoinHandle<()>)>,
}

impl Tasks {
    pub fn new() -> Tasks {
        Tasks::default()
    }

    /// Spawns `task` under `name`.
    pub fn spawn(&mut self, name: &'static str, task: impl Future<Output = ()> + Send + 'static) {
        self.tasks.push((name, tokio::spawn(task)));
    }

    /// Awaits every task, in spawn order, until `deadline`; returns how each ended, by name.
    pub async fn join(self, deadline: Instant) -> Vec<(&'static str, Ended)> {
        let mut ended = Vec::with_capacity(self.tasks.len());
        for (name, mut handle) in self.tasks {
            let how = match tokio::time::timeout_at(deadline, &mut handle).await {
                Ok(Ok(())) => Ended::Finished,
                Ok(Err(e)) if e.is_panic() => {
                    tracing::error!(task = name, error = %e, "task panicked");
                    Ended::Panicked
                }
                Ok(Err(e)) => {
                    tracing::error!(task = name, error = %e, "task was cancelled");
                    Ended::Cancelled
                }
                Err(_) => {
                    tracing::warn!(task = name, "task still running at the shutdown deadline; aborted");
                    handle.abort();
                    Ended::Overran
                }
            };
            ended.push((name, how));
        }
        ended
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn every_task_is_joined_and_named_by_how_it_ended() {
        let mut tasks = Tasks::new();
        tasks.spawn("finishes", async {});
        tasks.spawn("panics", async { panic!("on purpose") });
        tasks.spawn("never ends", std::future::pending());
        let ended = tasks.join(Instant::now() + Duration::from_millis(100)).await;
        assert_eq!(ended, vec![("finishes", Ended::Finished), ("panics", Ended::Panicked), ("never ends", Ended::Overran)]);
    }

    #[tokio::test]
    async fn a_task_that_ends_before_the_deadline_is_waited_for() {
        let mut tasks = Tasks::new();
        tasks.spawn("slow", tokio::time::sleep(Duration::from_millis(50)));
        let ended = tasks.join(Instant::now() + Duration::from_secs(5)).await;
        assert_eq!(ended, vec![("slow", Ended::Finished)]);
    }
}
