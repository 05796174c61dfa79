//! `sfb list`: every namespace of the shm directory, and other programs' files.

use super::*;

/// Every namespace in the shm directory, or an error saying what to check.
pub(crate) fn read_listing() -> Result<inspect::Listing, String> {
    let dir = inspect::shm_dir();
    inspect::list_namespaces(&dir).map_err(|e| {
        format!(
            "cannot list {}: {e}; check that it exists and is readable (or set SFB_SHM_DIR)",
            dir.display()
        )
    })
}

pub(crate) fn list(as_json: bool) -> AnyResult {
    let listing = read_listing()?;
    if as_json {
        let mut v = serde_json::to_string_pretty(&serde_json::to_value(&listing)?)?;
        v.push('\n');
        return emit(&v);
    }
    emit(&listing_text(&listing))
}

pub(crate) fn listing_text(l: &Listing) -> String {
    let mut s = format!(
        "{}: {} namespace(s), {} other file(s)\n",
        l.dir.display(),
        l.namespaces.len(),
        l.other_files.len()
    );
    if !l.namespaces.is_empty() {
        let mut t = table(
            &[
                "NAMESPACE",
                "CREATOR",
                "CHUNKS",
                "TMPFS",
                "AGE",
                "VERSION",
                "HEALTH",
            ],
            &[2, 3, 4],
        );
        for i in &l.namespaces {
            t.add_row(vec![
                i.namespace.clone(),
                creator_text(&i.creator),
                i.chunk_files.to_string(),
                bytes(i.tmpfs_bytes),
                opt_duration(i.age_ms),
                i.format_version
                    .map(|v| v.to_string())
                    .unwrap_or_else(|| "-".into()),
                i.health.to_string(),
            ]);
        }
        s.push('\n');
        s.push_str(&render(&t));
    }
    let troubled: Vec<&NamespaceInfo> = l
        .namespaces
        .iter()
        .filter(|i| !i.problems.is_empty())
        .collect();
    if !troubled.is_empty() {
        s.push_str("\nproblems (see `sfb stat NAMESPACE`):\n");
        for i in troubled {
            for p in &i.problems {
                s.push_str(&format!("  {}: {p}\n", i.namespace));
            }
        }
    }
    if !l.other_files.is_empty() {
        s.push_str("\nother files (not stable-fragmented-buffer's; left alone):\n");
        let mut t = table(&["NAME", "KIND", "TMPFS"], &[2]);
        for f in &l.other_files {
            t.add_row(vec![f.name.clone(), f.kind.into(), bytes(f.tmpfs_bytes)]);
        }
        for line in render(&t).lines() {
            s.push_str(&format!("  {line}\n"));
        }
    }
    let dead = l.namespaces.iter().filter(|i| i.dead).count();
    if dead > 0 {
        s.push_str(&format!(
            "\n{dead} dead namespace(s): `sfb cleanup --dead --dry-run` shows what removing them would do, `sfb cleanup --dead` removes them\n"
        ));
    }
    s
}
