//! What changes the data one environment's supervisor holds: a snapshot (resync, authoritative,
//! never applied without `meta.inited`), a change message (acted on as
//! [`order::classify`](super::order::classify) decides), the warm start from a persisted
//! snapshot, and persisting the held data for the next warm start.

use std::time::Instant;

use crate::model::Feature;
use crate::store::Update;

use super::message::{self, ChangeMessage, Op};
use super::order::{self, Decision, Held, Reason};
use super::supervisor::{EnvSync, Phase, Session};
use super::{snapshot, SyncError};
use crate::upstream::warm;

impl EnvSync {
    /// What the ordering rules read.
    fn held(&self) -> Held<'_> {
        Held {
            env: &self.env.id,
            uninitialised: self.phase == Phase::Uninitialised,
            rev: self.rev,
            epochs: &self.epochs,
            last_msg: self.last_msg.as_ref().map(|(e, r)| (e.as_str(), *r)),
        }
    }

    /// Takes a snapshot and makes it the held data (authoritative, even if its revision is lower).
    pub(super) async fn resync(&mut self, sess: &mut Session, reason: Reason) -> Result<(), SyncError> {
        // RESP2: a probe from before the resync must not be compared with the new revision.
        self.last_probe = None;
        // Warn when the environment becomes uninitialised, not at each retry (a retry passes
        // through Resyncing).
        let was_uninitialised = self.phase == Phase::Uninitialised;
        if let Some(label) = reason.label() {
            self.metrics.upstream_resyncs.with_label_values(&[&self.env.id, label]).inc();
        }
        self.set_phase(Phase::Resyncing, Some(format!("resyncing ({})", reason.name())));
        let raw = snapshot::fetch(&mut sess.snap, &self.keys, self.cfg.snapshot_timeout).await?;
        self.snapshots += 1;
        if !raw.inited {
            if !self.synced_once {
                self.try_warm_start();
            }
            let serving = self.serving();
            if !was_uninitialised {
                tracing::warn!(meta = %self.keys.meta, upstream_rev = raw.rev, "environment not initialised upstream (meta.inited missing); {serving}");
            }
            self.uninit_retry_at = Instant::now() + self.uninit_backoff.ceiling();
            let _ = self.uninit_backoff.next_delay();
            self.set_phase(
                Phase::Uninitialised,
                Some(format!("not initialised upstream ({}.inited missing): {serving}; run `flagrelay flags import`", self.keys.meta)),
            );
            return Ok(());
        }
        self.uninit_backoff.reset();
        let (rev, epoch) = (raw.rev, raw.epoch.clone());
        let map = snapshot::to_map(raw, &self.env, &self.metrics);
        let before = self.env.snapshot().revision;
        let change = self.env.replace(map, Some(rev), None);
        self.epochs.enter(epoch);
        self.rev = rev;
        self.synced_once = true;
        // The retry has no label; its log line keeps the empty reason it always had.
        let reason = reason.label().unwrap_or_default();
        match &change {
            Some(c) => tracing::info!(reason, revision = rev, previous = before, upserts = c.upserts.len(), deletes = c.deletes.len(), "resynced"),
            None => tracing::info!(reason, revision = rev, previous = before, "resynced; nothing changed"),
        }
        self.set_phase(Phase::Live, None);
        self.env.confirm();
        self.persist();
        Ok(())
    }

    fn malformed(&self, why: &str, payload: &[u8]) {
        self.metrics.upstream_messages.with_label_values(&[&self.env.id, "malformed"]).inc();
        let shown = String::from_utf8_lossy(payload);
        tracing::warn!(reason = %why, payload = %message::truncate(&shown, 200), "malformed change message skipped");
        self.env.record_error("redis", why);
    }

    /// Parses one message and does what [`order::classify`] decides.
    pub(super) async fn on_message(&mut self, sess: &mut Session, payload: &[u8]) -> Result<(), SyncError> {
        let msg = match ChangeMessage::parse(payload) {
            Ok(m) => m,
            Err(e) => {
                self.malformed(&e.to_string(), payload);
                return Ok(());
            }
        };
        let decision = order::classify(&self.held(), &msg);
        if decision.seen() {
            self.last_msg = Some((msg.epoch.clone(), msg.rev));
        }
        match decision {
            Decision::WrongEnv => {
                let why = format!("malformed change message: for environment {:?} on the channel of {:?}", message::truncate(&msg.env, 64), self.env.id);
                self.malformed(&why, payload);
                Ok(())
            }
            Decision::Rewind { previous } => {
                tracing::warn!(previous, got = msg.rev, "the revision went backwards on the subscription; resyncing");
                self.resync(sess, Reason::ProbeBehind).await
            }
            Decision::NotInitialised => {
                self.metrics.upstream_messages.with_label_values(&[&self.env.id, "ignored"]).inc();
                Ok(())
            }
            Decision::Stale => {
                self.metrics.upstream_messages.with_label_values(&[&self.env.id, "stale"]).inc();
                Ok(())
            }
            Decision::Reset => self.resync(sess, Reason::Reset).await,
            Decision::NewEpoch => self.resync(sess, Reason::Epoch).await,
            Decision::Gap => {
                tracing::info!(held = self.rev, got = msg.rev, "revision gap; resyncing");
                self.resync(sess, Reason::Gap).await
            }
            Decision::Apply => self.apply(sess, msg).await,
        }
    }

    /// Applies the next revision (reading a feature published without its body).
    async fn apply(&mut self, sess: &mut Session, msg: ChangeMessage) -> Result<(), SyncError> {
        let mut update = Update { revision: Some(msg.rev), upstream_ts_ms: msg.ts, ..Default::default() };
        let parsed = match msg.op {
            Op::Upsert { key, feature: Some(raw) } => Some((key.clone(), Feature::from_slice(&key, raw.as_bytes()))),
            Op::Upsert { key, feature: None } => {
                let limit = self.cfg.response_timeout.max(self.cfg.snapshot_timeout);
                let body: Option<Vec<u8>> = tokio::time::timeout(limit, redis::cmd("HGET").arg(&self.keys.features).arg(&key).query_async(&mut sess.snap))
                    .await
                    .map_err(|_| SyncError::Timeout(limit, "reading a large feature"))??;
                match body {
                    Some(b) => Some((key.clone(), Feature::from_slice(&key, &b))),
                    None => {
                        // Deleted since: a later message says so too; applying the deletion now is the same end state.
                        update.deletes.push(key);
                        None
                    }
                }
            }
            Op::Delete { key } => {
                update.deletes.push(key);
                None
            }
            Op::Reset => None,
        };
        match parsed {
            Some((_, Ok(f))) => update.upserts.push(f),
            Some((key, Err(e))) => {
                self.metrics.invalid_features.with_label_values(&[&self.env.id]).inc();
                self.metrics.upstream_messages.with_label_values(&[&self.env.id, "malformed"]).inc();
                tracing::warn!(feature = %key, revision = msg.rev, reason = %e.reason, "invalid feature in a change message skipped; the previous version stays");
                self.env.record_error("redis", &e.to_string());
            }
            None => {}
        }
        self.env.apply(update);
        self.rev = msg.rev;
        self.metrics.upstream_messages.with_label_values(&[&self.env.id, "applied"]).inc();
        self.env.confirm();
        Ok(())
    }

    /// Serves the persisted snapshot (marked stale) if nothing is loaded yet.
    pub(super) fn try_warm_start(&mut self) {
        if self.warm_tried || self.env.snapshot().loaded {
            return;
        }
        self.warm_tried = true;
        let Some(dir) = &self.cfg.snapshot_dir else { return };
        let Some(p) = warm::load(dir, &self.env.id) else { return };
        let n = p.features.len();
        self.env.replace(p.features, Some(p.revision), None);
        self.epochs.assume(p.epoch.clone());
        let saved_at = p.saved_at;
        let detail = format!("warm start: serving the snapshot persisted at revision {} until the first sync", p.revision);
        self.env.update_status(|s| {
            s.stale = true;
            s.epoch = Some(p.epoch);
            s.confirmed_at = Some(saved_at);
            s.detail = Some(detail);
        });
        tracing::warn!(revision = p.revision, features = n, skipped = p.invalid, "Redis unavailable: serving the persisted snapshot (stale) until the first sync");
    }

    /// Persists the held data for a warm start, when it changed (best effort, off-thread).
    pub(super) fn persist(&mut self) {
        let Some(dir) = self.cfg.snapshot_dir.clone() else { return };
        if !self.synced_once {
            return;
        }
        let snap = self.env.snapshot();
        if self.persisted == Some((snap.revision, snap.seq)) {
            return;
        }
        self.persisted = Some((snap.revision, snap.seq));
        warm::save(dir, snap, self.epochs.current().to_string(), self.persist_lock.clone());
    }
}
