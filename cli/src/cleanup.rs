//! `sfb cleanup`: removes a dead namespace, or every dead one.

use super::*;

pub(crate) fn cleanup(ns: &str, force: bool, dry_run: bool) -> AnyResult {
    let report = match inspect::inspect_namespace(ns) {
        Ok(r) => r,
        Err(BlobError::NotFound { .. }) => {
            return emit(&format!(
                "namespace {ns} has no files in {}; nothing to remove (run `sfb list` to see the namespaces there)\n",
                inspect::shm_dir().display()
            ))
        }
        Err(e) => return Err(explain(e)),
    };
    if !report.foreign_files().is_empty() {
        return Err(foreign_refusal(&report).into());
    }
    let alive = matches!(report.creator, Creator::Alive { .. });
    if dry_run {
        if alive && !force {
            return Err(explain(BlobError::InUse {
                namespace: ns.to_owned(),
                pid: report.creator.pid().unwrap_or(0),
            }));
        }
        return emit(&format!(
            "{}dry run: nothing was removed\n",
            would_remove(&report)
        ));
    }
    let mut removed = if force {
        SharedBackend::cleanup_namespace_forced(ns)
    } else {
        SharedBackend::remove_namespace(ns)
    }
    .map_err(explain)?;
    removed += remove_leftover_orphans(ns)?;
    emit(&format!("removed {removed} file(s) of namespace {ns}\n"))
}

/// The library removes the chunk files of the control block's own
/// incarnation; chunk files of this format made by an earlier one (or
/// with a scribbled incarnation) stay behind as orphans. They have no
/// control block any more, so one more pass removes them, unless the name
/// was taken meanwhile (the library refuses a live namespace) or they hold
/// foreign files.
pub(crate) fn remove_leftover_orphans(ns: &str) -> Result<usize, Box<dyn std::error::Error>> {
    match inspect::inspect_namespace(ns) {
        Ok(r) if r.health == Health::Orphaned && r.foreign_files().is_empty() => {
            match SharedBackend::remove_namespace(ns) {
                Ok(n) => Ok(n),
                Err(BlobError::InUse { .. }) => Ok(0),
                Err(e) => Err(explain(e)),
            }
        }
        _ => Ok(0),
    }
}

pub(crate) fn would_remove(r: &NamespaceReport) -> String {
    let files = r.files();
    format!(
        "would remove namespace {} (creator {}, {}): {} file(s), {}: {}\n",
        r.namespace,
        creator_text(&r.creator),
        r.health,
        files.len(),
        bytes(r.tmpfs_bytes()),
        files.join(" ")
    )
}

pub(crate) fn cleanup_dead(dry_run: bool) -> AnyResult {
    let dir = inspect::shm_dir();
    let listing = read_listing()?;
    let mut out = String::new();
    let (mut removed_ns, mut removed_files, mut freed, mut failed) = (0usize, 0usize, 0u64, 0usize);
    let mut live = 0usize;
    for info in &listing.namespaces {
        if !info.dead {
            if matches!(info.creator, Creator::Alive { .. }) {
                live += 1;
            }
            continue;
        }
        if !info.foreign_files.is_empty() {
            out.push_str(&format!(
                "skipped {}: it holds files that are not stable-fragmented-buffer's ({}); remove it with `sfb cleanup {}` after removing those by hand\n",
                info.namespace,
                info.foreign_files.join(" "),
                info.namespace
            ));
            continue;
        }
        if dry_run {
            let report = inspect::inspect_namespace_in(&dir, &info.namespace);
            match report {
                Ok(r) => out.push_str(&would_remove(&r)),
                // Gone meanwhile: nothing would go.
                Err(_) => continue,
            }
            removed_ns += 1;
            removed_files += info.files.len();
            freed += info.tmpfs_bytes;
            continue;
        }
        // The library takes the creator lock itself: a namespace whose
        // creator came back to life since the listing is refused, not removed.
        let removed = SharedBackend::remove_namespace(&info.namespace)
            .map(|n| n + remove_leftover_orphans(&info.namespace).unwrap_or(0));
        match removed {
            Ok(n) => {
                out.push_str(&format!(
                    "removed namespace {} (creator {}): {n} file(s), {}\n",
                    info.namespace,
                    creator_text(&info.creator),
                    bytes(info.tmpfs_bytes)
                ));
                removed_ns += 1;
                removed_files += n;
                freed += info.tmpfs_bytes;
            }
            Err(BlobError::InUse { pid, .. }) => {
                live += 1;
                out.push_str(&format!(
                    "skipped {}: its creator (pid {pid}) is alive now\n",
                    info.namespace
                ));
            }
            Err(e) => {
                failed += 1;
                out.push_str(&format!("failed {}: {}\n", info.namespace, explain(e)));
            }
        }
    }
    let verb = if dry_run { "would remove" } else { "removed" };
    out.push_str(&format!(
        "{verb} {removed_ns} dead namespace(s), {removed_files} file(s), {} in {}; {live} live namespace(s) left alone\n",
        bytes(freed),
        dir.display()
    ));
    if dry_run {
        out.push_str("dry run: nothing was removed\n");
    }
    emit(&out)?;
    if failed > 0 {
        return Err(format!(
            "{failed} dead namespace(s) could not be removed (see above); fix the cause (permissions?) and run `sfb cleanup --dead` again"
        )
        .into());
    }
    Ok(())
}
