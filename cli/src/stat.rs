//! `sfb stat`: everything readable about one namespace, once or watched.

use super::*;
use stable_fragmented_buffer::channel::{ChannelReport, HeldBack};

pub(crate) fn stat(ns: &str, as_json: bool, watch: Option<(Duration, Option<u64>)>) -> AnyResult {
    // The first look decides the exit code: a namespace that is not there
    // (or cannot be read) is an error, even with --watch.
    let first = inspect::inspect_namespace(ns).map_err(explain)?;
    let Some((interval, count)) = watch else {
        emit(&stat_frame(&first, as_json, false, false))?;
        return if first.health == Health::Foreign {
            Err(foreign_refusal(&first).into())
        } else {
            Ok(())
        };
    };
    let tty = std::io::stdout().is_terminal();
    let mut report: Result<NamespaceReport, String> = Ok(first);
    let mut frame = 0u64;
    loop {
        frame += 1;
        let mut text = match &report {
            Ok(r) => stat_frame(r, as_json, true, tty),
            Err(e) if as_json => {
                format!("{}\n", json!({ "namespace": ns, "error": e.to_string() }))
            }
            Err(e) => format!("{e}\n"),
        };
        if tty && !as_json {
            // Home the cursor and clear the screen: refresh in place.
            text = format!("\x1b[H\x1b[2J{text}");
        } else if !as_json {
            text.push('\n');
        }
        emit(&text)?;
        if count.is_some_and(|c| frame >= c) {
            return Ok(());
        }
        std::thread::sleep(interval);
        report = inspect::inspect_namespace(ns).map_err(|e| explain(e).to_string());
    }
}

pub(crate) fn foreign_refusal(r: &NamespaceReport) -> String {
    let files: Vec<String> = r
        .foreign_files()
        .iter()
        .map(|f| r.dir.join(f).display().to_string())
        .collect();
    format!(
        "namespace \"{}\" holds files that are not stable-fragmented-buffer's ({}); sfb leaves them alone: if you are sure they are garbage, remove them yourself (rm {})",
        r.namespace,
        r.problems.first().map(String::as_str).unwrap_or("foreign content"),
        files.join(" ")
    )
}

/// One report as printed: JSON (one line while watching), or text whose
/// lines naming what holds producers back are in bold red with `highlight`
/// (a watched terminal).
pub(crate) fn stat_frame(
    r: &NamespaceReport,
    as_json: bool,
    watching: bool,
    highlight: bool,
) -> String {
    if as_json {
        // Through a `Value`: its keys come out sorted, as they always have.
        let v = serde_json::to_value(r).unwrap_or_else(|e| json!({ "error": e.to_string() }));
        // One object per line while watching (NDJSON), pretty otherwise.
        let mut s = if watching {
            v.to_string()
        } else {
            serde_json::to_string_pretty(&v).unwrap_or_else(|_| v.to_string())
        };
        s.push('\n');
        s
    } else {
        report_text(r, highlight)
    }
}

pub(crate) fn report_text(r: &NamespaceReport, highlight: bool) -> String {
    let mut s = format!(
        "namespace {} in {}: {}\n\n",
        r.namespace,
        r.dir.display(),
        r.health
    );
    // First, where an operator looks: channels whose producers wait.
    let alerts = blocked_lines(r);
    for line in &alerts {
        if highlight {
            s.push_str(&format!("\x1b[1;31m{line}\x1b[0m\n"));
        } else {
            s.push_str(&format!("{line}\n"));
        }
    }
    if !alerts.is_empty() {
        s.push('\n');
    }
    let mut kv = table(&["FIELD", "VALUE"], &[]);
    let mut row = |k: &str, v: String| {
        kv.add_row(vec![k.to_owned(), v]);
    };
    row("creator", creator_text(&r.creator));
    row(
        "format version",
        r.format_version
            .map(|v| v.to_string())
            .unwrap_or_else(|| "-".into()),
    );
    if let Some(c) = &r.control {
        row(
            "created",
            match r.age_ms() {
                Some(age) => format!("{} ago (unix ms {})", duration(age), c.created_unix_ms),
                None => "-".into(),
            },
        );
        row(
            "creator start",
            format!("{} clock ticks after boot", c.creator_start_ticks),
        );
        row(
            "chunk size",
            format!("{} ({} B)", bytes(c.chunk_size.into()), c.chunk_size),
        );
        row(
            "max chunks",
            if c.max_chunks == 0 {
                "unlimited".into()
            } else {
                c.max_chunks.to_string()
            },
        );
        row("decay", format!("{} ms", c.decay_ms));
        row("ttl", format!("{} ms", c.ttl_ms));
        row(
            "active",
            c.active
                .map(|a| format!("chunk {} (generation {})", a.id, a.generation))
                .unwrap_or_else(|| "none".into()),
        );
        row("live chunks", c.live_chunks.to_string());
        row("next chunk id", c.next_chunk_id.to_string());
        row("generation", c.generation.to_string());
        row(
            "warm pool",
            format!("{:?} of {} slot(s)", c.pool, c.pool_capacity),
        );
        row(
            "reclaimed",
            format!(
                "recycled {}, retired {}, expired {}",
                c.recycled, c.retired, c.expired
            ),
        );
        row(
            "closed",
            if c.closed {
                "yes (being removed)"
            } else {
                "no"
            }
            .into(),
        );
    }
    row(
        "tmpfs",
        format!("{} in {} file(s)", bytes(r.tmpfs_bytes()), r.files().len()),
    );
    s.push_str(&render_kv(&kv));
    if !r.chunks.is_empty() {
        let mut t = table(
            &[
                "ID",
                "GEN",
                "STATE",
                "USED / CAPACITY",
                "ENTRIES",
                "COMMITTED",
                "ACKED",
                "PINS",
                "AGE",
                "FLAGS",
            ],
            &[0, 1, 3, 4, 5, 6, 7, 8],
        );
        for c in &r.chunks {
            t.add_row(chunk_row(c));
        }
        s.push('\n');
        s.push_str(&render(&t));
    }
    let notes: Vec<String> = r
        .chunks
        .iter()
        .filter_map(|c| c.note.as_ref().map(|n| format!("  chunk {}: {n}\n", c.id)))
        .collect();
    if !notes.is_empty() {
        s.push_str("\nnotes:\n");
        s.extend(notes);
    }
    if !r.channels.is_empty() {
        let mut t = table(
            &[
                "NAME",
                "KIND",
                "SLOTS",
                "POLICY",
                "DEPTH",
                "HELD",
                "PUBLISHED",
                "LAGGED",
                "PRODUCERS",
                "CONSUMERS",
                "PROBLEM",
            ],
            &[4, 5, 6, 7],
        );
        for c in &r.channels {
            t.add_row(vec![
                c.name.clone(),
                if c.kind.is_empty() {
                    "-".into()
                } else {
                    c.kind.to_owned()
                },
                format!("{} x {} B", c.slots, c.slot_size),
                policy(c),
                c.depth.to_string(),
                c.held.to_string(),
                c.published.to_string(),
                c.lagged.to_string(),
                format!("{} alive, {} dead", c.producers_alive, c.producers_dead),
                format!("{} alive, {} dead", c.consumers_alive, c.consumers_dead),
                c.problem.clone().unwrap_or_default(),
            ]);
        }
        s.push_str(&format!("\nchannels:\n{}", render(&t)));
        for c in r.channels.iter().filter(|c| c.problem.is_none()) {
            s.push('\n');
            s.push_str(&channel_text(c, r.taken_unix_ms));
        }
    }
    if !r.problems.is_empty() {
        s.push_str("\nproblems:\n");
        for p in &r.problems {
            s.push_str(&format!("  {p}\n"));
        }
        match r.health {
            Health::Foreign => s.push_str(
                "sfb leaves files that are not its own alone; remove them yourself if they are garbage\n",
            ),
            _ if r.is_dead() => s.push_str(&format!(
                "its creator is dead: `sfb cleanup {}` removes it\n",
                r.namespace
            )),
            _ => {}
        }
    }
    s
}

/// One line per channel whose producers wait for space: for how long,
/// and which consumer holds them back (if the channel waits for its
/// consumers and one has something unread).
pub(crate) fn blocked_lines(r: &NamespaceReport) -> Vec<String> {
    r.channels
        .iter()
        .filter_map(|c| {
            let ms = c.blocked_ms?;
            let mut line = format!("chan \"{}\": producers blocked {}", c.name, duration(ms));
            if let Some(h) = &c.held_back_by {
                line += &format!(", held back by {}", held_back_text(h));
            }
            Some(line)
        })
        .collect()
}

/// `subscriber pid 4242 (lag 256)`, with `dead, not yet evicted` or the
/// receiver's idle time as they apply.
fn held_back_text(h: &HeldBack) -> String {
    let mut what = Vec::new();
    if !h.alive {
        what.push("dead, not yet evicted".to_owned());
    }
    match h.lag {
        Some(lag) => what.push(format!("lag {lag}")),
        None => {
            if let Some(idle) = h.idle_ms {
                what.push(format!("idle {}", duration(idle)));
            }
        }
    }
    format!("{} pid {} ({})", h.endpoint, h.pid, what.join(", "))
}

/// The detail of one channel: policy, counters, memory bound, the last
/// eviction, who holds producers back, and a table of its participants.
fn channel_text(c: &ChannelReport, taken_unix_ms: u64) -> String {
    let mut s = format!(
        "channel {} ({}, {}; {} x {} B slots, pool of {})\n",
        c.name,
        c.kind,
        policy(c),
        c.slots,
        c.slot_size,
        c.pool
    );
    let mut kv = table(&["FIELD", "VALUE"], &[]);
    kv.add_row(vec![
        "counters".to_owned(),
        format!(
            "published {}, lagged {}, evicted {}, expired {}, skipped {}, redelivered {}, unheard {}, let go {}",
            c.published,
            c.lagged,
            c.evicted,
            c.expired,
            c.skipped,
            c.redelivered,
            c.unheard,
            c.let_go
        ),
    ]);
    kv.add_row(vec![
        "memory bound".to_owned(),
        match c.memory_bound {
            Some(b) => format!(
                "{} ({b} B; {} on tmpfs now)",
                bytes(b),
                bytes(c.tmpfs_bytes)
            ),
            None => "- (the namespace's chunk size is unknown)".to_owned(),
        },
    ]);
    kv.add_row(vec![
        "last eviction".to_owned(),
        match &c.last_eviction {
            Some(e) => format!(
                "{} pid {}, {} ago (unix ms {})",
                e.endpoint,
                e.pid,
                duration(taken_unix_ms.saturating_sub(e.unix_ms)),
                e.unix_ms
            ),
            None => "none".to_owned(),
        },
    ]);
    kv.add_row(vec![
        "producers".to_owned(),
        match (c.blocked_ms, &c.held_back_by) {
            (None, _) => match c.full_for_ms {
                Some(ms) => format!(
                    "not blocked (no producer alive; the ring has been full for {})",
                    duration(ms)
                ),
                None => "not blocked".to_owned(),
            },
            (Some(ms), None) => format!("blocked {}", duration(ms)),
            (Some(ms), Some(h)) => format!(
                "blocked {}, held back by {}",
                duration(ms),
                held_back_text(h)
            ),
        },
    ]);
    for line in render_kv(&kv).lines() {
        s.push_str(&format!("  {line}\n"));
    }
    if c.participants.is_empty() {
        s.push_str("  no participants\n");
        return s;
    }
    let mut t = table(
        &[
            "REC", "PID", "ROLE", "STATE", "LAG", "HELD", "LAGGED", "COUNT", "WAITING", "IDLE",
            "NOTE",
        ],
        &[0, 1, 4, 5, 6, 7, 8, 9],
    );
    let holder = c.held_back_by.as_ref().map(|h| h.record);
    for p in &c.participants {
        let consumer = p.role == "consumer";
        let dash = || "-".to_owned();
        t.add_row(vec![
            p.record.to_string(),
            p.pid.to_string(),
            p.endpoint.to_owned(),
            if p.alive { "alive" } else { "dead" }.to_owned(),
            p.lag.map(|l| l.to_string()).unwrap_or_else(dash),
            if consumer { p.held.to_string() } else { dash() },
            if consumer {
                p.lagged.to_string()
            } else {
                dash()
            },
            p.count.to_string(),
            opt_duration(p.waiting_ms),
            opt_duration(p.idle_ms),
            if holder == Some(p.record) {
                "holds producers back".to_owned()
            } else if !p.alive {
                "not yet evicted".to_owned()
            } else {
                String::new()
            },
        ]);
    }
    for line in render(&t).lines() {
        s.push_str(&format!("  {line}\n"));
    }
    s
}

/// A channel's policy in a few words: overflow (with the stall timeout)
/// or delivery, and the held budget.
fn policy(c: &ChannelReport) -> String {
    if c.kind.is_empty() {
        return "-".into();
    }
    let what = if c.kind == "work queue" {
        c.delivery.to_owned()
    } else if c.stall_timeout_ms > 0 {
        format!("{}, stall {} ms", c.overflow, c.stall_timeout_ms)
    } else {
        c.overflow.to_owned()
    };
    format!("{what}, held <= {}", c.max_held)
}

/// The key/value table without its header line.
pub(crate) fn render_kv(t: &Table) -> String {
    render(t)
        .lines()
        .skip(1)
        .map(|l| format!("{l}\n"))
        .collect()
}

pub(crate) fn chunk_row(c: &ChunkReport) -> Vec<String> {
    let mut flags = Vec::new();
    for (on, name) in [
        (c.active, "active"),
        (c.pooled, "pooled"),
        (!c.registered && c.header.is_some(), "unregistered"),
        (c.foreign, "foreign"),
        (c.problem.is_some(), "CORRUPT"),
    ] {
        if on {
            flags.push(name.to_owned());
        }
    }
    let Some(h) = &c.header else {
        let state = if c.file.is_none() {
            "(no file)"
        } else if c.foreign {
            "(foreign)"
        } else if c.problem.is_some() {
            "(corrupt)"
        } else {
            "(unformatted)"
        };
        let dash = || "-".to_owned();
        return vec![
            c.id.to_string(),
            dash(),
            state.into(),
            format!("{} file", bytes(c.file_bytes)),
            dash(),
            dash(),
            dash(),
            dash(),
            dash(),
            flags.join(","),
        ];
    };
    if h.sealed {
        flags.push("sealed".into());
    }
    if h.activating {
        flags.push("activating".into());
    }
    if h.dedicated {
        flags.push("dedicated".into());
    }
    if h.pending_bytes > 0 {
        flags.push(format!(
            "pending={}",
            bytes(h.pending_bytes).replace(' ', "")
        ));
    }
    if let Some(b) = h.backed {
        flags.push(format!("backed={}", bytes(b).replace(' ', "")));
    }
    let pct = if h.capacity == 0 {
        0.0
    } else {
        h.used as f64 * 100.0 / h.capacity as f64
    };
    vec![
        c.id.to_string(),
        h.generation.to_string(),
        h.state.to_string(),
        format!("{} / {} ({pct:.0}%)", bytes(h.used), bytes(h.capacity)),
        h.entries.to_string(),
        h.committed().to_string(),
        h.acknowledged.to_string(),
        h.pins.to_string(),
        opt_duration(h.age_ms()),
        flags.join(","),
    ]
}
