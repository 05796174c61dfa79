//! `sfb export --prometheus`: every namespace's gauges and counters in the
//! Prometheus text exposition format (version 0.0.4), for node_exporter's
//! textfile collector. Reads only, like `list` and `stat`.

use super::*;
use std::fmt::Write as _;

/// One metric family: name, type, help, and its samples (labels, value).
struct Family {
    name: &'static str,
    kind: &'static str,
    help: &'static str,
    samples: Vec<(Vec<(&'static str, String)>, f64)>,
}

impl Family {
    fn new(name: &'static str, kind: &'static str, help: &'static str) -> Self {
        Self {
            name,
            kind,
            help,
            samples: Vec::new(),
        }
    }

    fn add(&mut self, labels: Vec<(&'static str, String)>, value: f64) {
        self.samples.push((labels, value));
    }
}

/// A label value as the text format wants it: `\`, `"` and newlines escaped.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn render_families(families: &[Family]) -> String {
    let mut out = String::new();
    for f in families {
        let _ = writeln!(out, "# HELP {} {}", f.name, f.help);
        let _ = writeln!(out, "# TYPE {} {}", f.name, f.kind);
        for (labels, value) in &f.samples {
            let labels: Vec<String> = labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
                .collect();
            let _ = writeln!(out, "{}{{{}}} {}", f.name, labels.join(","), value);
        }
    }
    out
}

/// The exposition text of every namespace in the shm directory.
pub(crate) fn prometheus_text() -> Result<String, Box<dyn std::error::Error>> {
    let listing = read_listing()?;
    let mut chunks = Family::new(
        "sfb_namespace_chunk_files",
        "gauge",
        "Chunk files of the namespace.",
    );
    let mut tmpfs = Family::new(
        "sfb_namespace_tmpfs_bytes",
        "gauge",
        "Bytes the namespace's files occupy on tmpfs.",
    );
    let mut alive = Family::new(
        "sfb_namespace_creator_alive",
        "gauge",
        "1 if the namespace's creator holds its lock, else 0.",
    );
    let mut healthy = Family::new(
        "sfb_namespace_healthy",
        "gauge",
        "1 if the namespace's files are consistent, else 0 (see sfb stat).",
    );
    let mut max_chunks = Family::new(
        "sfb_namespace_max_chunks",
        "gauge",
        "The namespace's chunk limit (0: none).",
    );
    let mut pooled = Family::new(
        "sfb_namespace_pooled_chunks",
        "gauge",
        "Warm chunks waiting in the pool.",
    );
    let mut recycled = Family::new(
        "sfb_namespace_recycled_total",
        "counter",
        "Chunks recycled in place.",
    );
    let mut retired = Family::new(
        "sfb_namespace_retired_total",
        "counter",
        "Chunks released (files removed).",
    );
    let mut expired = Family::new(
        "sfb_namespace_expired_total",
        "counter",
        "Chunks reclaimed by the TTL (unacknowledged data dropped).",
    );
    let mut depth = Family::new(
        "sfb_channel_depth",
        "gauge",
        "Messages published that the slowest consumer has not received (a work queue: not taken).",
    );
    let mut published = Family::new(
        "sfb_channel_published_total",
        "counter",
        "Messages published on the channel.",
    );
    let mut held = Family::new(
        "sfb_channel_held",
        "gauge",
        "Messages the channel's consumers hold (received, not dropped).",
    );
    let mut lagged = Family::new(
        "sfb_channel_lagged_total",
        "counter",
        "Messages subscribers missed by falling a ring behind.",
    );
    let mut redelivered = Family::new(
        "sfb_channel_redelivered_total",
        "counter",
        "Work-queue messages requeued after their receiver died.",
    );
    let mut skipped = Family::new(
        "sfb_channel_skipped_total",
        "counter",
        "Ring entries skipped because their producer died before publishing.",
    );
    let mut evicted = Family::new(
        "sfb_channel_evicted_total",
        "counter",
        "Participants of the channel found dead and evicted.",
    );
    let mut chan_expired = Family::new(
        "sfb_channel_expired_total",
        "counter",
        "Messages consumers found expired in the store (its TTL ran out first).",
    );
    let mut unheard = Family::new(
        "sfb_channel_unheard_total",
        "counter",
        "Broadcast messages released at once because no subscriber was there.",
    );
    let mut let_go = Family::new(
        "sfb_channel_let_go_total",
        "counter",
        "Times a Block subscriber was let go by the stall timeout.",
    );
    let mut memory_bound = Family::new(
        "sfb_channel_memory_bound_bytes",
        "gauge",
        "Worst-case bytes the channel can take on tmpfs (its file fully backed, and a store chunk per message in flight).",
    );
    let mut blocked = Family::new(
        "sfb_channel_blocked_seconds",
        "gauge",
        "How long the channel's producers have waited for space (0: they do not wait).",
    );
    let mut p_alive = Family::new(
        "sfb_channel_participant_alive",
        "gauge",
        "1 if the participant's process holds its lock, 0 if it is dead and not yet evicted.",
    );
    let mut p_lag = Family::new(
        "sfb_channel_participant_lag",
        "gauge",
        "Messages published that the subscriber has not received.",
    );
    let mut p_held = Family::new(
        "sfb_channel_participant_held",
        "gauge",
        "Messages the consumer holds (received, not dropped).",
    );
    let mut p_waiting = Family::new(
        "sfb_channel_participant_waiting_seconds",
        "gauge",
        "How long the producer has waited for space (0: it does not wait).",
    );
    let mut p_holding = Family::new(
        "sfb_channel_participant_holding_back",
        "gauge",
        "1 for the consumer the channel's waiting producers wait for, else 0.",
    );
    let mut participants = Family::new(
        "sfb_channel_participants",
        "gauge",
        "Producers and consumers of the channel, by role and liveness.",
    );
    let dir = inspect::shm_dir();
    for info in &listing.namespaces {
        let ns = || ("namespace", info.namespace.clone());
        chunks.add(vec![ns()], info.chunk_files as f64);
        tmpfs.add(vec![ns()], info.tmpfs_bytes as f64);
        let live = matches!(info.creator, Creator::Alive { .. });
        alive.add(vec![ns()], f64::from(u8::from(live)));
        healthy.add(vec![ns()], f64::from(u8::from(info.health == Health::Ok)));
        // The full report for the control block's counters and the channels
        // (a namespace removed since the listing is skipped).
        let Ok(report) = inspect::inspect_namespace_in(&dir, &info.namespace) else {
            continue;
        };
        if let Some(c) = &report.control {
            max_chunks.add(vec![ns()], f64::from(c.max_chunks));
            pooled.add(vec![ns()], c.pool.len() as f64);
            recycled.add(vec![ns()], c.recycled as f64);
            retired.add(vec![ns()], c.retired as f64);
            expired.add(vec![ns()], c.expired as f64);
        }
        for ch in &report.channels {
            let labels = || {
                vec![
                    ns(),
                    ("channel", ch.name.clone()),
                    ("kind", ch.kind.to_owned()),
                ]
            };
            depth.add(labels(), ch.depth as f64);
            published.add(labels(), ch.published as f64);
            held.add(labels(), ch.held as f64);
            lagged.add(labels(), ch.lagged as f64);
            redelivered.add(labels(), ch.redelivered as f64);
            skipped.add(labels(), ch.skipped as f64);
            evicted.add(labels(), ch.evicted as f64);
            chan_expired.add(labels(), ch.expired as f64);
            unheard.add(labels(), ch.unheard as f64);
            let_go.add(labels(), ch.let_go as f64);
            if let Some(b) = ch.memory_bound {
                memory_bound.add(labels(), b as f64);
            }
            blocked.add(labels(), seconds(ch.blocked_ms.unwrap_or(0)));
            let holder = ch.held_back_by.as_ref().map(|h| h.record);
            for p in &ch.participants {
                // The record keeps apart two endpoints of one process.
                let mut l = labels();
                l.push(("record", p.record.to_string()));
                l.push(("pid", p.pid.to_string()));
                l.push(("role", p.role.to_owned()));
                p_alive.add(l.clone(), f64::from(u8::from(p.alive)));
                if let Some(lag) = p.lag {
                    p_lag.add(l.clone(), lag as f64);
                }
                if p.role == "consumer" {
                    p_held.add(l.clone(), f64::from(p.held));
                    p_holding.add(l, f64::from(u8::from(holder == Some(p.record))));
                } else {
                    p_waiting.add(l, seconds(p.waiting_ms.unwrap_or(0)));
                }
            }
            for (role, state, n) in [
                ("producer", "alive", ch.producers_alive),
                ("producer", "dead", ch.producers_dead),
                ("consumer", "alive", ch.consumers_alive),
                ("consumer", "dead", ch.consumers_dead),
            ] {
                let mut l = labels();
                l.push(("role", role.to_owned()));
                l.push(("state", state.to_owned()));
                participants.add(l, f64::from(n));
            }
        }
    }
    Ok(render_families(&[
        chunks,
        tmpfs,
        alive,
        healthy,
        max_chunks,
        pooled,
        recycled,
        retired,
        expired,
        depth,
        published,
        held,
        lagged,
        redelivered,
        skipped,
        evicted,
        participants,
        chan_expired,
        unheard,
        let_go,
        memory_bound,
        blocked,
        p_alive,
        p_lag,
        p_held,
        p_waiting,
        p_holding,
    ]))
}

/// Milliseconds as the seconds Prometheus wants.
fn seconds(ms: u64) -> f64 {
    ms as f64 / 1000.0
}

pub(crate) fn export_prometheus() -> AnyResult {
    emit(&prometheus_text()?)
}
